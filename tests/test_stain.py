"""Macenko, Reinhard, the shared OD machinery and the fallback counter (CPU, small synthetic tiles)."""
import multiprocessing
import pickle
import warnings

import numpy as np
import pytest
from skimage import color

from sam_histo.stain.base import FallbackCounter, StainError, od_affine_to_rgb, od_table, percentile
from sam_histo.stain.macenko import MacenkoNormalizer, estimate_stains
from sam_histo.stain.reinhard import ReinhardNormalizer, lab_to_rgb, rgb_to_lab
from sam_histo.stain.synthetic import DEFAULT_HE, blob_concentrations, render

# A stain matrix deliberately unlike the usual H&E reference (unit columns: hematoxylin, eosin).
TRUE_HE = np.array([[0.70, 0.15], [0.62, 0.85], [0.35, 0.50]])
TRUE_HE = TRUE_HE / np.linalg.norm(TRUE_HE, axis=0)


def mixed_concentrations(size, seed):
    """Every pixel a random H/E mixture (so the extreme angles are nearly pure stains) plus background."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, (size, size))
    amount = rng.uniform(0.3, 1.5, (size, size))
    conc = np.stack([amount * t, amount * (1 - t)], axis=-1)
    conc[: size // 8] = 0  # a strip of background
    return conc


def mixed_tile(he, size=128, seed=0, residual=0.0):
    img = render(he, mixed_concentrations(size, seed)).astype(np.float64)
    if residual:
        img += np.random.default_rng(seed + 100).normal(0, residual, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def oracle_macenko(img, io=240.0, alpha=1.0, beta=0.15):
    """The textbook method in float64 with np.cov / eigh / np.percentile / lstsq, as an independent check."""
    od = -np.log((img.reshape(-1, 3).astype(np.float64) + 1) / io)
    od_hat = od[~np.any(od < beta, axis=1)]
    _, vecs = np.linalg.eigh(np.cov(od_hat.T))
    proj = od_hat @ vecs[:, 1:3]
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v1 = vecs[:, 1:3] @ [np.cos(lo), np.sin(lo)]
    v2 = vecs[:, 1:3] @ [np.cos(hi), np.sin(hi)]
    he = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1], axis=1)
    he *= np.sign(he.sum(axis=0))  # the oracle may return either sign of an eigenvector
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
    return he, np.percentile(conc, 99, axis=1), conc


def test_percentile_matches_numpy_on_random_arrays():
    rng = np.random.default_rng(1)
    for n in (1, 2, 17, 5000, 40001):
        for values in (rng.normal(size=n).astype(np.float32), rng.integers(0, 5, n).astype(np.float32)):
            for q in (0.0, 1.0, 37.3, 50.0, 99.0, 100.0):
                assert percentile(values.copy(), q) == pytest.approx(float(np.percentile(values, q)), abs=1e-6)


def test_od_affine_identity_returns_input_exactly():
    img = np.random.default_rng(2).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    for io in (240.0, 256.0):
        out = od_affine_to_rgb(img, od_table(io), np.eye(3), np.zeros(3), io)
        assert np.array_equal(out, img)


def test_known_stain_matrix_is_recovered():
    conc = mixed_concentrations(160, seed=0)
    est = estimate_stains(render(TRUE_HE, conc))
    cosines = np.sum(est.he * TRUE_HE, axis=0)
    assert np.all(cosines > 0.998), (est.he, TRUE_HE)
    # The 1st/99th-percentile angles are slightly mixed stains, so concentrations come out a bit low.
    np.testing.assert_allclose(est.max_c, np.percentile(conc.reshape(-1, 2), 99, axis=0), rtol=0.05)


def test_matches_float64_textbook_implementation():
    img = mixed_tile(DEFAULT_HE, size=128, seed=3, residual=2.0)
    he, max_c, _ = oracle_macenko(img)
    est = estimate_stains(img)
    np.testing.assert_allclose(est.he, he, atol=1e-4)
    np.testing.assert_allclose(est.max_c, max_c, rtol=1e-4)
    # Transform against the oracle: rescale concentrations, rebuild with the reference matrix.
    ref = mixed_tile(TRUE_HE, size=96, seed=4, residual=2.0)
    ref_he, ref_max, _ = oracle_macenko(ref)
    _, _, conc = oracle_macenko(img)
    od = (ref_he @ (conc * (ref_max / max_c)[:, None])).T
    expected = np.clip(np.rint(240 * np.exp(-od) - 1), 0, 255).reshape(img.shape)
    out = MacenkoNormalizer().fit(ref).transform(img)
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_reference_normalised_to_itself_is_near_identity():
    ref = mixed_tile(DEFAULT_HE, size=128, seed=5, residual=1.5)
    out = MacenkoNormalizer().fit(ref).transform(ref)
    assert np.abs(out.astype(int) - ref).mean() < 2.0


def test_several_references_are_pooled():
    a, b = mixed_tile(TRUE_HE, 96, seed=6), mixed_tile(TRUE_HE, 96, seed=7)
    pooled = MacenkoNormalizer().fit([a, b]).reference
    single = estimate_stains(np.concatenate([a, b], axis=0))
    np.testing.assert_allclose(pooled.he, single.he, atol=1e-6)
    np.testing.assert_allclose(pooled.max_c, single.max_c, rtol=1e-6)


def degenerate_tiles():
    rng = np.random.default_rng(8)
    tiny = np.full((16, 16, 3), 250, np.uint8)
    tiny[3:6, 3:6] = (120, 60, 150)  # 9 stained pixels: below the 64-pixel minimum
    return {
        "blank_white": np.full((64, 64, 3), 255, np.uint8),
        "black": np.zeros((64, 64, 3), np.uint8),
        "single_colour": np.tile(np.array([200, 120, 160], np.uint8), (40, 50, 1)),
        "tiny_16x16": tiny,
        "one_pixel": np.array([[[150, 90, 170]]], np.uint8),
        "near_white": np.clip(rng.normal(246, 3, (64, 64, 3)), 0, 255).astype(np.uint8),
        "hematoxylin_only": render(DEFAULT_HE, np.stack([np.full((32, 32), 1.0), np.zeros((32, 32))], -1)),
    }


@pytest.mark.parametrize("fallback", ["reinhard", "identity"])
def test_degenerate_tiles_fall_back_finite_and_counted(fallback):
    norm = MacenkoNormalizer(fallback=fallback).fit(mixed_tile(DEFAULT_HE, 96, seed=9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NaN or overflow anywhere would raise here
        for name, img in degenerate_tiles().items():
            before = norm.counter.fallbacks
            out = norm.transform(img)
            assert out.dtype == np.uint8 and out.shape == img.shape, name
            assert norm.counter.fallbacks == before + 1, name
            if fallback == "identity":
                assert np.array_equal(out, img), name
    snap = norm.counter.snapshot()
    assert snap["calls"] == snap["fallbacks"] == len(degenerate_tiles())
    assert any("too few stained pixels" in r for r in snap["reasons"])
    assert any("one colour only" in r for r in snap["reasons"])


def test_pen_mark_and_noise_never_crash():
    rng = np.random.default_rng(10)
    norm = MacenkoNormalizer().fit(mixed_tile(DEFAULT_HE, 96, seed=11))
    pen = np.clip(rng.normal((40, 60, 170), 8, (48, 48, 3)), 0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for img in (pen, noise):
            out = norm.transform(img)
            assert out.shape == img.shape and out.dtype == np.uint8
    assert norm.counter.calls == 2


def test_degenerate_reference_is_a_clear_error():
    with pytest.raises(StainError, match="reference unusable.*too few stained pixels.*choose"):
        MacenkoNormalizer().fit(np.full((32, 32, 3), 255, np.uint8))
    with pytest.raises(StainError, match="not fitted"):
        MacenkoNormalizer().transform(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(StainError, match="uint8"):
        MacenkoNormalizer().fit(np.zeros((8, 8, 3), np.float32))


def test_lab_conversion_matches_scikit_image():
    rgb = np.random.default_rng(12).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_lab(rgb), color.rgb2lab(rgb), atol=2e-3)
    assert np.array_equal(lab_to_rgb(color.rgb2lab(rgb)), rgb)
    lab = np.random.default_rng(13).uniform([0, -60, -60], [100, 60, 60], (32, 32, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image warns about the out-of-gamut colours it clips
        expected = np.rint(np.clip(color.lab2rgb(lab), 0, 1) * 255).astype(int)
    assert np.abs(lab_to_rgb(lab).astype(int) - expected).max() <= 1


def test_reinhard_matches_reference_statistics():
    ref = mixed_tile(DEFAULT_HE, 96, seed=14)
    src = mixed_tile(TRUE_HE, 96, seed=15)
    norm = ReinhardNormalizer().fit(ref)
    lab_src = rgb_to_lab(src).reshape(-1, 3)
    tissue = lab_src[:, 0] < norm.tissue_l_max
    out = rgb_to_lab(norm.transform(src)).reshape(-1, 3)[tissue]
    np.testing.assert_allclose(out.mean(axis=0), norm.mean, atol=1.5)
    np.testing.assert_allclose(out.std(axis=0), norm.std, rtol=0.1, atol=0.5)
    assert np.abs(ReinhardNormalizer().fit(src).transform(src).astype(int) - src).max() <= 1


def test_reinhard_flat_tile_is_returned_and_counted():
    norm = ReinhardNormalizer().fit(mixed_tile(DEFAULT_HE, 64, seed=16))
    flat = np.tile(np.array([90, 40, 120], np.uint8), (20, 20, 1))
    assert np.array_equal(norm.transform(flat), flat)
    assert norm.counter.snapshot()["reasons"] == {"reinhard: flat tile": 1}


def _record_in_child(counter):
    counter.record(True, "child")


def test_counter_is_shared_with_forked_workers_and_pickles():
    counter = FallbackCounter()
    counter.record(False)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_in_child, args=(counter,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert (counter.calls, counter.fallbacks) == (3, 2)
    copy = pickle.loads(pickle.dumps(counter))
    assert (copy.calls, copy.fallbacks) == (3, 2)
    counter.reset()
    assert counter.snapshot() == {"calls": 0, "fallbacks": 0, "rate": 0.0, "reasons": {}}


def test_references_from_file_folder_and_bad_paths(tmp_path):
    from PIL import Image

    from sam_histo.stain.base import load_references

    tiles = [mixed_tile(DEFAULT_HE, 32, seed=s) for s in (20, 21)]
    (tmp_path / "refs").mkdir()
    for i, t in enumerate(tiles):
        Image.fromarray(t).save(tmp_path / "refs" / f"r{i}.png")
    Image.fromarray(tiles[0][..., 0]).save(tmp_path / "grey.png")
    loaded = load_references(tmp_path / "refs")
    assert len(loaded) == 2 and all(np.array_equal(a, b) for a, b in zip(loaded, tiles))
    assert load_references(str(tmp_path / "grey.png"))[0].shape == (32, 32, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StainError, match="empty holds no images"):
        load_references(tmp_path / "empty")
    with pytest.raises(StainError, match="nope.png: no such image file"):
        load_references(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(StainError, match="junk.png: cannot read as an image"):
        load_references(tmp_path / "junk.png")


def test_stain_normalize_keeps_each_tiles_result_and_counts_every_call(monkeypatch):
    """Training normalises the whole tile for every crop: a repeat is served from the per-process cache
    (the normaliser runs once), equal to the first result, counted again with its fallback; a returned
    array can be changed without touching the cache; the byte budget evicts the oldest tile."""
    from sam_histo.stain.macenko import MacenkoNormalizer
    from sam_histo.stain.normalize import StainNormalize
    from sam_histo.stain.synthetic import synthetic_tiles

    ref, tile, other = synthetic_tiles(3, size=96, seed=4)
    glass = np.full((96, 96, 3), (246, 240, 243), np.uint8)  # too few stained pixels: Macenko falls back
    norm = MacenkoNormalizer().fit([ref])
    runs = []
    real = norm.transform
    monkeypatch.setattr(norm, "transform", lambda img: runs.append(1) or real(img))
    t = StainNormalize(norm)
    first = t.apply(tile)
    first[:5] = 0  # the caller's copy
    again = t.apply(tile.copy())
    np.testing.assert_array_equal(again, real(tile))
    assert len(runs) == 1 and t.counter.calls == 3 and t.counter.fallbacks == 0  # 2 applies + the check
    t.apply(glass), t.apply(glass)
    assert len(runs) == 2 and t.counter.fallbacks == 2 and sum(t.counter.reasons.values()) == 2
    small = StainNormalize(norm, cache_bytes=tile.nbytes)  # room for one tile
    for img in (tile, other, tile, other):
        small.apply(img)
    assert len(runs) == 6
    off = StainNormalize(norm, cache_bytes=0)
    off.apply(tile), off.apply(tile)
    assert len(runs) == 8


def test_a_pickled_stain_normalize_starts_with_an_empty_cache():
    import pickle

    from sam_histo.stain.macenko import MacenkoNormalizer
    from sam_histo.stain.normalize import StainNormalize
    from sam_histo.stain.synthetic import synthetic_tiles

    ref, tile = synthetic_tiles(2, size=64, seed=2)
    t = StainNormalize(MacenkoNormalizer().fit([ref]))
    out = t.apply(tile)
    copy = pickle.loads(pickle.dumps(t))
    assert len(t._cache) == 1 and copy._cache == {}
    np.testing.assert_array_equal(copy.apply(tile), out)
