"""Instance metrics against scikit-image (adapted Rand) and a brute-force Hungarian matching oracle."""
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from skimage.metrics import adapted_rand_error
from skimage.segmentation import relabel_sequential

from sam_histo.scoring.instances import (
    THRESHOLDS,
    InstanceCounts,
    image_level_instance_scores,
    instance_counts,
    instance_metrics,
    instance_scores,
)


def _blobs(rng, shape, n_cells=6, p_bg=0.3):
    """A label map of blocky objects (ids 1..) on background 0; 2-D or 3-D."""
    coarse = rng.integers(1, n_cells * n_cells, size=tuple(max(2, s // 4) for s in shape))
    coarse[rng.random(coarse.shape) < p_bg] = 0
    labels = coarse
    for axis in range(len(shape)):
        labels = np.repeat(labels, 4, axis=axis)
    return labels[tuple(slice(0, s) for s in shape)]


def _perturb(rng, gt):
    """A plausible prediction: shifted, some objects merged/relabelled, some pixels noise."""
    pred = np.roll(gt, 1, axis=-1) * 3  # shifted, other ids
    pred[(pred % 7) == 0] = 0  # some objects missed
    noise = rng.random(gt.shape) < 0.05
    pred[noise] = rng.integers(0, 50, noise.sum())
    return pred


@pytest.mark.parametrize("shape", [(48, 40), (6, 24, 20)])
def test_adapted_rand_matches_skimage_with_correct_names(shape):
    rng = np.random.default_rng(0)
    gt = _blobs(rng, shape)
    pred = _perturb(rng, gt)
    ours = instance_metrics(gt, pred)
    are, sk_prec, sk_rec = adapted_rand_error(gt, pred)
    assert ours["adapted_rand_error"] == pytest.approx(are, abs=1e-6)
    # scikit-image's "precision" is the split score (divided by true-object pairs): our recall.
    assert ours["recall"] == pytest.approx(sk_prec, abs=1e-6)
    assert ours["precision"] == pytest.approx(sk_rec, abs=1e-6)
    assert ours["split_score"] == ours["recall"] and ours["merge_score"] == ours["precision"]


def test_sums_over_images_equal_the_images_side_by_side():
    rng = np.random.default_rng(1)
    pairs = [(g, _perturb(rng, g)) for g in (_blobs(rng, (32, 32)) for _ in range(3))]
    total = InstanceCounts()
    for g, p in pairs:
        total = total + InstanceCounts.from_list(instance_counts(g, p).to_list())
    # oracle: one mosaic with ids made distinct per image (predicted background too: one segment per image)
    off_g, off_p, gs, ps = 0, 0, [], []
    for g, p in pairs:
        gs.append(np.where(g > 0, g + off_g, 0))
        ps.append(p + off_p + 1)
        off_g, off_p = off_g + g.max() + 1, off_p + p.max() + 2
    are, sk_prec, sk_rec = adapted_rand_error(np.concatenate(gs, 1), np.concatenate(ps, 1))
    m = instance_scores(total)
    assert m["adapted_rand_error"] == pytest.approx(are, abs=1e-6)
    assert m["recall"] == pytest.approx(sk_prec, abs=1e-6)
    assert m["precision"] == pytest.approx(sk_rec, abs=1e-6)


def test_merge_lowers_precision_split_lowers_recall():
    gt = np.zeros((20, 40), int)
    gt[2:18, 2:18], gt[2:18, 22:38] = 1, 2
    merged = np.where(gt > 0, 7, 0)  # both objects one segment
    split = gt.copy()
    split[2:18, 2:10] = 5  # object 1 cut in two
    perfect = instance_metrics(gt, gt)
    assert perfect["precision"] == perfect["recall"] == 1.0 and perfect["adapted_rand_error"] == 0.0
    m = instance_metrics(gt, merged)
    assert m["precision"] < 1.0 and m["recall"] == 1.0
    s = instance_metrics(gt, split)
    assert s["recall"] < 1.0 and s["precision"] == 1.0
    # and scikit-image names them the other way round (DESIGN.md section 5)
    _, sk_prec_merge, sk_rec_merge = adapted_rand_error(gt, merged)
    assert sk_prec_merge == 1.0 and sk_rec_merge < 1.0


def _brute_force_matching(gt, pred):
    """IoU matrix from per-object masks, Hungarian matching, count matches with IoU > t."""
    g_ids, p_ids = [i for i in np.unique(gt) if i], [j for j in np.unique(pred) if j]
    iou = np.zeros((len(g_ids), len(p_ids)))
    for a, i in enumerate(g_ids):
        for b, j in enumerate(p_ids):
            gi, pj = gt == i, pred == j
            iou[a, b] = (gi & pj).sum() / (gi | pj).sum()
    tps = []
    for t in THRESHOLDS:
        rows, cols = linear_sum_assignment(-(iou > t).astype(float) - iou / 1e3)
        tps.append(int((iou[rows, cols] > t).sum()))
    return tps, len(g_ids), len(p_ids)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_matched_f1_and_mean_accuracy_match_hungarian(seed):
    rng = np.random.default_rng(seed)
    gt = _blobs(rng, (40, 40), p_bg=0.5)
    pred = np.roll(gt, rng.integers(0, 2), axis=0)
    pred[rng.random(gt.shape) < 0.1] = 0
    pred = relabel_sequential(pred)[0] * 2
    tps, n_gt, n_pred = _brute_force_matching(gt, pred)
    m = instance_metrics(gt, pred)
    assert (m["n_gt"], m["n_pred"]) == (n_gt, n_pred)
    assert m["matched_at_0.5"] == tps[0]
    assert m["f1_at_0.5"] == pytest.approx(2 * tps[0] / (n_gt + n_pred), abs=1e-6)
    acc = [tp / (n_gt + n_pred - tp) for tp in tps]
    assert m["mean_seg_accuracy"] == pytest.approx(np.mean(acc), abs=1e-6)
    assert 0 < tps[0] and tps[-1] < tps[0]  # the case is not trivial


def test_huge_ids_take_the_sort_path_with_the_same_result():
    rng = np.random.default_rng(5)
    gt = _blobs(rng, (32, 32))
    pred = _perturb(rng, gt)
    big = np.where(pred > 0, pred.astype(np.int64) * 10**12 + 3, 0)
    assert instance_metrics(gt, big) == instance_metrics(gt, pred)


def test_bad_instance_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        instance_metrics(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="must be >= 0"):
        instance_metrics(np.full((3, 3), -2), np.zeros((3, 3), int))
    with pytest.raises(TypeError, match="must be integers"):
        instance_metrics(np.zeros((3, 3), float), np.zeros((3, 3), int))


def test_image_level_means_average_each_images_scores():
    rng = np.random.default_rng(6)
    gts = [_blobs(rng, (40, 40), p_bg=0.5) for _ in range(3)]
    preds = [np.roll(g, 1, axis=1) for g in gts]
    preds[1][:20] = 0  # one image much worse
    m = image_level_instance_scores([instance_counts(g, p) for g, p in zip(gts, preds)])
    assert m["n_images"] == 3
    assert m["adapted_rand_error"] == pytest.approx(np.mean([adapted_rand_error(g, p)[0] for g, p in zip(gts, preds)]),
                                                    abs=1e-6)
    f1s = []
    for g, p in zip(gts, preds):
        tps, n_gt, n_pred = _brute_force_matching(g, p)
        f1s.append(2 * tps[0] / (n_gt + n_pred))
    assert m["f1_at_0.5"] == pytest.approx(np.mean(f1s), abs=1e-6)
