"""Heatmap post-processing: per-slide z-scores, threshold sweeps against brute force, clean-up."""
import inspect

import numpy as np
import pytest
from skimage import measure

from sam_histo.infer.postprocess import (absorb_small_regions, best_threshold, clean_mask, threshold_sweep,
                                        zscore_per_slide)


# ------------------------------------------------------------------------------------------- oracles
def brute_force(scores, targets, thresholds, valid=None, slide_ids=None):
    """Per threshold: (pooled IoU, pooled F1, mean IoU over slides, mean F1 over slides), by explicit masks."""
    slide_ids = list(range(len(scores))) if slide_ids is None else slide_ids
    rows = []
    for t in thresholds:
        per = {}
        for i, (s, y) in enumerate(zip(scores, targets)):
            keep = np.ones(s.shape, bool) if valid is None else valid[i]
            p = (s >= t) & keep
            y = y & keep
            c = per.setdefault(slide_ids[i], np.zeros(3))
            c += [np.sum(p & y), np.sum(p & ~y), np.sum(~p & y)]
        tp, fp, fn = sum(per.values())
        ious = [1.0 if c.sum() == 0 else c[0] / c.sum() for c in per.values()]
        f1s = [1.0 if c.sum() == 0 else 2 * c[0] / (2 * c[0] + c[1] + c[2]) for c in per.values()]
        rows.append((tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn), np.mean(ious), np.mean(f1s)))
    return np.array(rows)


def offset_slides(rng):
    """Two slides, three tiles each, the same blob pattern; slide B's baseline is 0.4 higher."""
    yy, xx = np.mgrid[:32, :32]
    scores, targets, slides = [], [], []
    for slide, base in (("A", 0.2), ("B", 0.6)):
        for k in range(3):
            target = (yy - 10 - 4 * k) ** 2 + (xx - 16) ** 2 < 36
            scores.append(np.round(base + 0.25 * target + rng.normal(0, 0.02, target.shape), 2))
            targets.append(target)
            slides.append(slide)
    return scores, targets, slides


# ------------------------------------------------------------------------------------------- z-scores
def test_zscore_removes_a_per_slide_offset():
    scores, targets, slides = offset_slides(np.random.default_rng(0))
    every = np.unique(np.concatenate([s.ravel() for s in scores]))
    raw = brute_force(scores, targets, every)[:, 0].max()  # the best any one global threshold can do
    z = zscore_per_slide(scores, slides)
    best_z = brute_force(z, targets, np.unique(np.concatenate([s.ravel() for s in z])))[:, 0].max()
    assert raw < 0.55 and best_z > 0.95  # a global threshold finds at most one slide's blob


def test_zscore_matches_pooled_numpy_statistics():
    rng = np.random.default_rng(1)
    scores = [rng.normal(loc, 2.0, size) for loc, size in ((5, (7, 9)), (-3, (4, 4)), (5, (3, 11)), (1, (6,)))]
    slides = ["a", "b", "a", "c"]
    tissue = [rng.random(s.shape) > 0.3 for s in scores]
    for use_tissue in (False, True):
        out = zscore_per_slide(scores, slides, tissue if use_tissue else None)
        for sid in set(slides):
            idx = [i for i, s in enumerate(slides) if s == sid]
            pooled = np.concatenate([(scores[i][tissue[i]] if use_tissue else scores[i]).ravel() for i in idx])
            for i in idx:
                np.testing.assert_allclose(out[i], (scores[i] - pooled.mean()) / pooled.std(), rtol=1e-5,
                                           atol=1e-5)
                assert out[i].dtype == np.float32 and out[i].shape == scores[i].shape


def test_zscore_of_a_constant_slide_is_zero_and_errors_are_named():
    out = zscore_per_slide([np.full((5, 5), 0.3), np.full((5, 5), 0.3), np.arange(4.0)], ["a", "a", "b"])
    assert (out[0] == 0).all() and (out[1] == 0).all() and np.isfinite(out[2]).all()
    with pytest.raises(ValueError, match=r"slide_ids has 1 entries for 2 score maps"):
        zscore_per_slide([np.zeros(3), np.zeros(3)], ["a"])
    with pytest.raises(ValueError, match=r"score map 1 \(slide 'b'\) has NaN"):
        zscore_per_slide([np.zeros(3), np.array([0.0, np.nan])], ["a", "b"])


# ------------------------------------------------------------------------------------ threshold sweeps
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sweep_equals_brute_force_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    shapes = [(9, 13), (20, 7), (5, 5), (16,)]
    targets = [rng.random(s) < 0.3 for s in shapes]
    scores = [t * rng.normal(0.6, 0.2, t.shape) + rng.normal(0.3, 0.2, t.shape) for t in targets]
    scores[2] = np.round(scores[2], 1)  # ties at candidate values
    valid = [rng.random(s) > 0.1 for s in shapes]
    slides = ["x", "y", "x", "z"]
    cands = np.unique(np.round(rng.uniform(-0.2, 1.4, 40), 1))
    oracle = brute_force(scores, targets, cands, valid, slides)
    pooled = threshold_sweep(scores, targets, cands, valid=valid, slide_ids=slides)
    mean = threshold_sweep(scores, targets, cands, valid=valid, average="slide", slide_ids=slides)
    np.testing.assert_allclose(pooled.iou, oracle[:, 0], atol=1e-12)
    np.testing.assert_allclose(pooled.f1, oracle[:, 1], atol=1e-12)
    np.testing.assert_allclose(mean.iou, oracle[:, 2], atol=1e-12)
    np.testing.assert_allclose(mean.f1, oracle[:, 3], atol=1e-12)
    # Pooled F1 = 2 IoU / (1 + IoU) rises with IoU: both metrics choose the same threshold.
    assert pooled.best("iou")[0] == pooled.best("f1")[0]


def two_slides_where_iou_and_f1_disagree():
    """Slide 1 gains recall below 0.7; slide 2 floods with false positives below 0.7 (see the test)."""
    s1, t1 = np.full((20, 20), 0.1), np.zeros((20, 20), bool)
    t1.flat[:10] = True
    s1.flat[:4], s1.flat[4:10] = 0.8, 0.6
    s2, t2 = np.full((20, 20), 0.1), np.zeros((20, 20), bool)
    t2.flat[:10] = True
    s2.flat[:20] = 0.8  # ten true, ten false positives at 0.8
    s2.flat[20:200] = 0.6  # 180 false positives at 0.6
    return [s1, s2], [t1, t2]


def test_iou_optimal_threshold_beats_the_f1_optimal_one_where_they_differ():
    # Per-slide IoU at t <= 0.6: (1, 0.05), mean 0.525; at 0.6 < t <= 0.8: (0.4, 0.5), mean 0.45.
    # Mean F1: 0.548 and 0.619, so F1 prefers the higher threshold.
    scores, targets = two_slides_where_iou_and_f1_disagree()
    t_iou, v_iou, sweep = best_threshold(scores, targets, "iou", average="slide")
    t_f1, v_f1, _ = best_threshold(scores, targets, "f1", average="slide")
    oracle = brute_force(scores, targets, sweep.thresholds)
    np.testing.assert_allclose(sweep.iou, oracle[:, 2], atol=1e-12)
    np.testing.assert_allclose(sweep.f1, oracle[:, 3], atol=1e-12)
    assert v_iou == pytest.approx(oracle[:, 2].max()) and v_f1 == pytest.approx(oracle[:, 3].max())
    assert t_iou <= 0.6 < t_f1 <= 0.8
    iou_at = dict(zip(sweep.thresholds, sweep.iou))
    f1_at = dict(zip(sweep.thresholds, sweep.f1))
    assert iou_at[t_iou] > iou_at[t_f1] and f1_at[t_f1] > f1_at[t_iou]
    assert iou_at[t_iou] == pytest.approx(0.525) and f1_at[t_f1] == pytest.approx((4 / 7 + 2 / 3) / 2)
    summary = sweep.summary()
    assert summary["iou_optimal"]["threshold"] == t_iou and summary["f1_optimal"]["threshold"] == t_f1
    assert summary["f1_optimal"]["iou"] == pytest.approx(0.45)
    assert sweep.table()[0].keys() == {"threshold", "iou", "f1"}


def test_default_candidates_are_quantiles_and_bad_inputs_are_named():
    scores, targets = two_slides_where_iou_and_f1_disagree()
    sweep = threshold_sweep(scores, targets, n_candidates=5)
    # the distinct scores (quantiles) and five evenly spaced values from the lowest to the highest
    np.testing.assert_allclose(sweep.thresholds, [0.1, 0.275, 0.45, 0.6, 0.625, 0.8])
    with pytest.raises(ValueError, match="targets have no positive element"):
        threshold_sweep(scores, [np.zeros_like(t) for t in targets])
    with pytest.raises(ValueError, match="strictly increasing"):
        threshold_sweep(scores, targets, [0.5, 0.2])
    with pytest.raises(ValueError, match=r"map 1: score shape \(20, 20\) differs"):
        threshold_sweep(scores, [targets[0], targets[1][:5]])
    with pytest.raises(ValueError, match="metric='dice' must be 'iou' or 'f1'"):
        best_threshold(scores, targets, "dice")


# ------------------------------------------------------------------------------------------- clean-up
def test_clean_mask_on_a_hand_made_mask():
    m = np.zeros((20, 20), bool)
    m[1, 1:4] = True  # 3 pixels
    m[5, 1:6] = True  # 5 pixels
    m[10:15, 10:15] = True
    m[12, 12] = False  # an enclosed hole
    m[0:3, 17:20] = True
    m[0, 18] = False  # a notch open to the border: not a hole
    m[16, 3], m[17, 4] = True, True  # diagonal neighbours: two objects of 1, or one of 2 with corners
    out = clean_mask(m, min_size=4, fill_holes=True)
    expected = m.copy()
    expected[1, 1:4] = False
    expected[16, 3] = expected[17, 4] = False
    expected[12, 12] = True
    np.testing.assert_array_equal(out, expected)
    corners = clean_mask(m, min_size=2, connectivity=2)  # joined through the corner: one object of 2
    assert corners[16, 3] and corners[17, 4] and not clean_mask(m, min_size=2)[16, 3]
    np.testing.assert_array_equal(clean_mask(m, 0, False), m)


def test_clean_mask_matches_an_independent_oracle():
    rng = np.random.default_rng(3)
    for min_size, conn in ((6, 1), (9, 2), (1, 1)):
        m = rng.random((40, 50)) < 0.45
        lab = measure.label(m, connectivity=conn)
        sizes = np.bincount(lab.ravel())
        kept = m & (sizes[lab] >= min_size)
        bg = measure.label(~kept, connectivity=1)
        border = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
        filled = kept | ((bg > 0) & ~np.isin(bg, border))
        np.testing.assert_array_equal(clean_mask(m, min_size, False, conn), kept)
        np.testing.assert_array_equal(clean_mask(m, min_size, True, conn), filled)
    with pytest.raises(ValueError, match="min_size=-1 must be >= 0"):
        clean_mask(m, -1)


def _absorb_oracle(labels: np.ndarray, min_pixels: int) -> np.ndarray:
    """Region by region: scipy labels each class's 4-connected regions; a small one takes the most common
    label among the pixels that touch it from outside (4-neighbours), lowest label on a tie."""
    from scipy import ndimage

    out = labels.copy()
    cross = ndimage.generate_binary_structure(2, 1)
    for c in np.unique(labels):
        regions, n = ndimage.label(labels == c, structure=cross)
        for r in range(1, n + 1):
            inside = regions == r
            if inside.sum() >= min_pixels:
                continue
            # each edge from the region to a pixel outside counts once: shift the region in each direction
            votes = {}
            for axis in (0, 1):
                for step in (1, -1):
                    moved = np.zeros_like(inside)
                    src = [slice(None)] * 2
                    dst = [slice(None)] * 2
                    src[axis] = slice(0, -1) if step == 1 else slice(1, None)
                    dst[axis] = slice(1, None) if step == 1 else slice(0, -1)
                    moved[tuple(dst)] = inside[tuple(src)]
                    for v in labels[moved & ~inside]:
                        votes[int(v)] = votes.get(int(v), 0) + 1
            if votes:
                out[inside] = min(votes, key=lambda v: (-votes[v], v))
    return out


def test_absorb_small_regions_on_a_hand_made_map():
    """A nucleus speck is dropped, a hole in a nucleus filled, a sliver between two classes goes to the
    class along most of its edge; regions at the size limit stay."""
    lab = np.zeros((12, 12), np.int64)
    lab[1:6, 1:6] = 1
    lab[3, 3] = 0  # a 1-pixel hole in a 25-pixel nucleus
    lab[9, 9] = 1  # a 1-pixel speck
    lab[7:12, 0:4] = 2
    lab[8:10, 4] = 1  # a 2-pixel sliver: 4 edges to background, 2 to class 2
    lab[0, 8:12] = 1  # 4 pixels: at the limit, kept
    out = absorb_small_regions(lab, 4)
    want = lab.copy()
    want[3, 3], want[9, 9], want[8:10, 4] = 1, 0, 0
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(absorb_small_regions(lab, 1), lab)
    np.testing.assert_array_equal(absorb_small_regions(np.full((4, 4), 3), 100), np.full((4, 4), 3))


def test_absorb_small_regions_matches_a_region_by_region_oracle():
    rng = np.random.default_rng(5)
    for trial in range(40):
        h, w = rng.integers(2, 25, 2)
        lab = rng.integers(0, int(rng.integers(2, 5)), (h, w)).astype(np.uint8)
        if trial % 2:  # blocky maps: regions of many sizes
            lab = np.kron(lab, np.ones((3, 3), np.uint8))[:h, :w]
        m = int(rng.integers(2, 15))
        got = absorb_small_regions(lab, m)
        assert got.dtype == lab.dtype
        np.testing.assert_array_equal(got, _absorb_oracle(lab, m), err_msg=f"trial {trial}, min {m}")


def test_absorb_small_regions_is_remove_small_objects_and_holes_on_a_binary_map():
    """On nucleus / background maps with specks in the background and pinholes in the nuclei (none inside
    the other), it equals scikit-image's two clean-ups at one size."""
    from scipy import ndimage
    from skimage.morphology import remove_small_holes, remove_small_objects

    rng = np.random.default_rng(8)
    m = np.zeros((96, 96), bool)
    yy, xx = np.mgrid[:96, :96]
    for cy, cx, r in rng.integers([6, 6, 3], [90, 90, 9], (25, 3)):
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    quiet_bg = ~ndimage.binary_dilation(m, iterations=3)
    quiet_fg = ndimage.binary_erosion(m, iterations=3)
    flips = (rng.random(m.shape) < 0.02) & (quiet_bg | quiet_fg)
    m = m ^ flips
    got = absorb_small_regions(m.astype(np.uint8), 10) == 1
    new_api = "max_size" in inspect.signature(remove_small_objects).parameters
    size = {"max_size": 9} if new_api else {"min_size": 10}  # scikit-image 0.26 renamed it (drop <= 9)
    holes = {"max_size": 9} if new_api else {"area_threshold": 10}
    ref = remove_small_holes(remove_small_objects(m, **size), **holes)
    assert flips.sum() > 50 and (got != m).sum() >= flips.sum()
    np.testing.assert_array_equal(got, ref)
