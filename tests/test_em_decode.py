"""Decoding candidate masks of one slice, and the decoding sweep over cached candidates (pure numpy)."""
import numpy as np
import pytest

from sam_histo.config import EmConfig, EmSweepConfig
from sam_histo.em.decode import Candidates, DecodeParams, decode, mask_stats, select
from sam_histo.em.sweep import grid, run_sweep, sweep_markdown, write_sweep


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def _cands(logits, iou=None, obj=None, floor=-5.0):
    logits = np.asarray(logits, np.float32)
    n = len(logits)
    return Candidates.from_logits(logits, np.full(n, 0.9) if iou is None else iou,
                                  np.ones(n) if obj is None else obj, floor)


def test_crops_keep_every_logit_above_the_floor():
    rng = np.random.default_rng(0)
    logits = rng.normal(-3, 2, (6, 20, 24)).astype(np.float32)
    logits[2] = -9  # never above the floor: dropped
    c = _cands(logits, floor=0.5)
    assert len(c) == 5
    kept = [i for i in range(6) if i != 2]
    for j, i in enumerate(kept):
        y0, x0, y1, x1 = c.boxes[j]
        assert np.array_equal(c.crop(j), logits[i, y0:y1, x0:x1])
        outside = logits[i].copy()
        outside[y0:y1, x0:x1] = -np.inf
        assert (outside <= 0.5).all() and (logits[i, y0:y1, x0:x1] > 0.5).any()


def test_mask_stats_against_direct_counts():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (7, 16, 16)).astype(np.float32)
    c = _cands(logits, floor=-1.5)
    area, stab = mask_stats(c, 0.5, 1.0)
    full = np.full_like(logits, -np.inf)
    for j in range(len(c)):
        y0, x0, y1, x1 = c.boxes[j]
        full[j, y0:y1, x0:x1] = c.crop(j)
    full = full[:len(c)]
    assert np.array_equal(area, (full > 0.5).sum((1, 2)))
    # sam2's stability: |logits > t + offset| / |logits > t - offset|
    expect = (full > 1.5).sum((1, 2)) / (full > -0.5).sum((1, 2))
    assert np.allclose(stab, expect)


def test_decode_suppresses_duplicates_and_parts_keeps_separate_objects():
    shape = (40, 40)
    a, b = _disc(shape, 10, 10, 6), _disc(shape, 28, 28, 6)
    part = a & (np.mgrid[:40, :40][1] < 10)  # left half of a
    logit = lambda m: np.where(m, 6.0, -6.0)  # noqa: E731
    c = _cands([logit(a), logit(a), logit(part), logit(b)], iou=np.array([0.9, 0.8, 0.7, 0.6]))
    labels, scores = decode(c, DecodeParams(iou_thresh=0, stability_thresh=0, min_size=1))
    assert labels.max() == 2 and np.allclose(scores, [0.9, 0.6])
    assert np.array_equal(labels == 1, a) and np.array_equal(labels == 2, b)


def test_nms_threshold_suppresses_overlapping_masks_painting_alone_would_keep():
    shape = (30, 40)
    a, shifted = _disc(shape, 15, 12, 7), _disc(shape, 15, 18, 7)  # IoU about 0.3; most of `shifted` is free
    inter = (a & shifted).sum()
    assert 0.2 < inter / (a | shifted).sum() < 0.4 and inter / shifted.sum() < 0.5
    c = _cands([np.where(a, 6.0, -6.0), np.where(shifted, 6.0, -6.0)], iou=np.array([0.9, 0.8]))
    base = dict(iou_thresh=0, stability_thresh=0, min_size=1)
    assert decode(c, DecodeParams(**base, nms_thresh=0.2))[0].max() == 1
    loose = decode(c, DecodeParams(**base, nms_thresh=0.5))[0]
    assert loose.max() == 2 and np.array_equal(loose == 2, shifted & ~a)


def test_decode_thresholds_filter_as_named():
    shape = (30, 30)
    a = _disc(shape, 8, 8, 5)
    big = _disc(shape, 20, 20, 9)
    c = _cands([np.where(a, 6.0, -6.0), np.where(big, 6.0, -6.0)], iou=np.array([0.4, 0.9]))
    area_a, area_big = int(a.sum()), int(big.sum())
    base = dict(iou_thresh=0, stability_thresh=0, min_size=1)
    assert decode(c, DecodeParams(**base))[0].max() == 2
    assert set(np.unique(decode(c, DecodeParams(**{**base, "iou_thresh": 0.5}))[0] > 0)) == {False, True}
    assert (decode(c, DecodeParams(**{**base, "iou_thresh": 0.5}))[0] > 0).sum() == area_big
    assert (decode(c, DecodeParams(**{**base, "max_size": area_big - 1}))[0] > 0).sum() == area_a
    assert (decode(c, DecodeParams(**{**base, "min_size": area_a + 1}))[0] > 0).sum() == area_big
    # A soft mask (logits ramp through the threshold) is unstable; a hard one is perfectly stable.
    ramp = np.tile(np.linspace(-3, 3, 30, dtype=np.float32), (30, 1))
    soft = _cands([ramp])
    assert mask_stats(soft, 0.0, 1.0)[1][0] < 0.8
    assert decode(soft, DecodeParams(**{**base, "stability_thresh": 0.8}))[0].max() == 0


def test_select_orders_by_predicted_iou():
    masks = [np.where(_disc((20, 20), 10, 10, r), 5.0, -5.0) for r in (3, 5, 7)]
    c = _cands(masks, iou=np.array([0.2, 0.9, 0.5]))
    assert list(select(c, DecodeParams(iou_thresh=0, stability_thresh=0, min_size=1))) == [1, 2, 0]


# ----------------------------------------------------------------------------- the sweep
def _constructed_case():
    """Three vesicles (discs through 4 slices) whose logits equal (r + 1 - distance): thresholding at 1 gives
    exactly the true discs, -1 dilates them by 2 px (the first two are half a pixel apart, so the first then
    takes pixels of the second) and 3 erodes them by 2 px (rims become background). Two background blobs per
    slice have predicted IoU 0.3: they do not touch the vesicles (the adapted Rand error ignores them) but they
    are false objects, so iou_thresh 0.5 wins the tie through matched F1."""
    shape, depth = (40, 40), 4
    centres = [(10, 10, 5.0), (10, 21, 5.5), (28, 18, 6.0)]
    gt = np.zeros((depth, *shape), np.int64)
    yy, xx = np.mgrid[:40, :40]
    cands = []
    for z in range(depth):
        logits, ious = [], []
        for k, (cy, cx, r) in enumerate(centres, 1):
            d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            gt[z][d < r] = k
            logits.append((r + 1 - d).astype(np.float32))
            ious.append(0.9)
        for cy, cx in ((34, 4), (34, 35)):
            logits.append(np.where(_disc(shape, cy, cx, 3), 5.0, -5.0).astype(np.float32))
            ious.append(0.3)
        cands.append(Candidates.from_logits(np.stack(logits), np.array(ious), np.ones(len(ious)), floor=-2.0))
    return cands, gt


def test_sweep_picks_the_known_best_setting(tmp_path):
    cands, gt = _constructed_case()
    em = EmConfig(stability_offset=0.5, nms_thresh=0.5, link_overlap=0.5, sweep=EmSweepConfig(
        mask_threshold=[-1.0, 1.0, 3.0], iou_thresh=[0.0, 0.5], stability_thresh=[0.0], min_size=[1]))
    result = run_sweep(cands, gt, em, progress=False)
    assert len(result.rows) == len(grid(em.sweep)) == 6
    assert result.best_setting == {"mask_threshold": 1.0, "iou_thresh": 0.5, "stability_thresh": 0.0, "min_size": 1}
    best = result.rows[result.best]
    assert best["adapted_rand_error"] == pytest.approx(0.0) and best["f1_at_0.5"] == 1.0
    assert best["n_pred"] == best["n_gt"] == 3
    others = [r for r in result.rows if r["mask_threshold"] != 1.0]
    assert all(r["adapted_rand_error"] > 0.01 for r in others)
    junk = [r for r in result.rows if r["mask_threshold"] == 1.0 and r["iou_thresh"] == 0.0][0]
    assert junk["adapted_rand_error"] == pytest.approx(0.0) and junk["n_pred"] == 5 and junk["f1_at_0.5"] < 1
    result.split, result.checkpoint = "val", "ckpt-x"
    paths = write_sweep(result, tmp_path)
    import json

    data = json.loads(paths["json"].read_text())
    assert data["best"]["mask_threshold"] == 1.0 and len(data["rows"]) == 6 and data["split"] == "val"
    text = paths["markdown"].read_text()
    assert "split `val`" in text and "ckpt-x" in text and "em.mask_threshold=1.0" in text
    assert text.splitlines()[6].startswith("| **1.0000** | **0.5000**")  # best row first, in bold
    assert sweep_markdown(result) == text


def test_sweep_decoding_equals_direct_decoding_at_each_setting():
    """The cached candidates (floor = loosest threshold) decode every setting exactly as candidates cut for
    that setting alone: the sweep's reuse loses nothing."""
    rng = np.random.default_rng(3)
    logits = (rng.normal(0, 1, (12, 32, 32)) * 4).astype(np.float32)
    from scipy.ndimage import gaussian_filter

    logits = np.stack([gaussian_filter(x, 2) * 6 for x in logits]).astype(np.float32)
    iou = rng.uniform(0.2, 1.0, 12)
    loose = Candidates.from_logits(logits, iou, np.ones(12), floor=-2.0)
    for t in (-1.0, 0.0, 1.0):
        own = Candidates.from_logits(logits, iou, np.ones(12), floor=t - 1.0)
        p = DecodeParams(mask_threshold=t, iou_thresh=0.5, stability_thresh=0.3, min_size=4)
        assert np.array_equal(decode(loose, p)[0], decode(own, p)[0])
