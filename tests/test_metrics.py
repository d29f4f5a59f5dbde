"""Semantic metrics against independent oracles (scikit-learn, torchmetrics, plain numpy) on random maps."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, jaccard_score, precision_recall_fscore_support
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassStatScores,
)

from sam_histo.scoring import confusion as M
from sam_histo.scoring import counting

C, K = 6, 0  # ids 0..5, id 0 ignored (like BCSS outside_roi)


def _maps(rng, shape=(40, 48), n_classes=C, absent=(4,), predicted_absent=(4,)):
    """Ground truth without the ``absent`` ids (but with ignore pixels); the prediction uses every id."""
    gt_ids = [c for c in range(n_classes) if c not in absent]
    target = rng.choice(gt_ids, size=shape)
    pred = np.where(rng.random(shape) < 0.5, target, rng.integers(0, n_classes, shape))
    for c in set(absent) - set(predicted_absent):
        pred[pred == c] = 1
    return pred, target


def _sk_counts(pred, target):
    keep = target.ravel() != K
    return confusion_matrix(target.ravel()[keep], pred.ravel()[keep], labels=list(range(C)))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.uint16])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_confusion_counts_match_sklearn_and_torchmetrics(dtype, kind):
    rng = np.random.default_rng(1)
    pred, target = _maps(rng, shape=(3, 17, 23))  # a small volume: any shape is one image
    pred, target = pred.astype(dtype), target.astype(dtype)
    if kind == "torch":  # torch has few uint16 kernels; a torch user holds int32 there
        inputs = [torch.from_numpy(x.astype(np.int32) if dtype == np.uint16 else x) for x in (pred, target)]
    else:
        inputs = [pred, target]
    ours = M.confusion_counts(*inputs, num_classes=C, ignore_index=K)
    np.testing.assert_array_equal(ours, _sk_counts(pred, target))
    tm = MulticlassConfusionMatrix(C, ignore_index=K)
    tm.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target.astype(np.int64)))
    np.testing.assert_array_equal(ours, tm.compute().numpy())
    assert ours.dtype == np.int64 and ours[K].sum() == 0


def _plain_bincount(pred, target, n, ignore):
    """The reviewer's two lines, in int64: bincount of the flattened codes, then the ignore row zeroed."""
    c = np.bincount((target.astype(np.int64) * n + pred.astype(np.int64)).ravel(), minlength=n * n)
    c = c.reshape(n, n)
    if ignore is not None:
        c[ignore] = 0
    return c


@pytest.mark.parametrize("min_pixels", [0, 1 << 20])  # pair counting at every size / never
@pytest.mark.parametrize("chunk", [7, 64, 1 << 17])  # several chunks, odd chunks, one chunk
def test_fast_path_equals_plain_bincount(monkeypatch, chunk, min_pixels):
    monkeypatch.setattr(counting, "_CHUNK", chunk)
    monkeypatch.setattr(counting, "_PAIRED_MIN_PIXELS", min_pixels)
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 6, 7, 11, 12):  # 12: C*C above the pair-counting limit
        for dtype in (np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64):
            for shape in ((1,), (5, 9), (33, 31), (2, 17, 19)):  # odd and even pixel counts
                target, pred = rng.integers(0, n, shape).astype(dtype), rng.integers(0, n, shape).astype(dtype)
                ignore = int(rng.integers(0, n)) if n > 1 else None
                expected = _plain_bincount(pred, target, n, ignore)
                np.testing.assert_array_equal(M.confusion_counts(pred, target, n, ignore), expected)
                t_t, p_t = torch.from_numpy(target), torch.from_numpy(pred)
                np.testing.assert_array_equal(M.confusion_counts(p_t, t_t, n, ignore), expected)
        big_t, big_p = rng.integers(0, n, (40, 60)), rng.integers(0, n, (60, 40))
        np.testing.assert_array_equal(M.confusion_counts(big_p.T[:, ::3], big_t[:, ::3], n),  # non-contiguous
                                      _plain_bincount(big_p.T[:, ::3], big_t[:, ::3], n, None))


@pytest.mark.parametrize("min_pixels", [0, 1 << 20])
@pytest.mark.parametrize("chunk", [64, 1 << 17])
def test_fast_path_refuses_an_out_of_range_id_anywhere(monkeypatch, chunk, min_pixels):
    """One bad pixel, last of 1000, is found whatever the dtype (a uint8 cast would wrap 256 to a valid 0)."""
    monkeypatch.setattr(counting, "_CHUNK", chunk)
    monkeypatch.setattr(counting, "_PAIRED_MIN_PIXELS", min_pixels)
    for dtype, bad in ((np.uint8, 6), (np.uint8, 255), (np.int64, 6), (np.int64, 256), (np.int64, -1),
                       (np.int8, -3), (np.uint16, 262), (np.int32, 2**20 + 1)):
        ok = np.ones(1000, dtype)
        wrong = ok.copy()
        wrong[-1] = bad
        for args, name in (((wrong, ok), "pred"), ((ok, wrong), "target")):
            with pytest.raises(ValueError, match=f"{name} holds id {bad}, outside 0..5"):
                M.confusion_counts(*args, C, K)
            with pytest.raises(ValueError, match=f"{name} holds id {bad}, outside 0..5"):
                M.confusion_counts(*(torch.from_numpy(a.astype(np.int32) if dtype == np.uint16 else a)
                                     for a in args), C, K)


def test_many_classes_path_and_no_ignore():
    rng = np.random.default_rng(2)
    n = 21  # C*C > 256: the int32 index path
    target, pred = rng.integers(0, n, (50, 50)), rng.integers(0, n, (50, 50))
    ours = M.confusion_counts(pred, target, n)
    np.testing.assert_array_equal(ours, confusion_matrix(target.ravel(), pred.ravel(), labels=list(range(n))))


def test_bool_maps_are_binary_ids():
    rng = np.random.default_rng(3)
    target, pred = rng.random((30, 30)) < 0.3, rng.random((30, 30)) < 0.4
    np.testing.assert_array_equal(M.confusion_counts(pred, target, 2),
                                  confusion_matrix(target.ravel(), pred.ravel(), labels=[0, 1]))


def test_streaming_merge_equals_one_pass_and_counts_images():
    rng = np.random.default_rng(4)
    images = [_maps(rng) for _ in range(5)]
    a, b = M.ConfusionMatrix(C, K), M.ConfusionMatrix(C, K)
    for i, (p, t) in enumerate(images):
        (a if i < 2 else b).update(p, t)
    total = a + b
    np.testing.assert_array_equal(total.counts, sum(_sk_counts(p, t) for p, t in images))
    assert total.n_images == 5
    expected_present = [sum(int((t == c).any()) for _, t in images) if c != K else 0 for c in range(C)]
    np.testing.assert_array_equal(total.images_present, expected_present)
    expected_pred = [sum(int((p[t != K] == c).any()) for p, t in images) for c in range(C)]
    np.testing.assert_array_equal(total.images_predicted, expected_pred)


def test_per_class_scores_match_oracles():
    rng = np.random.default_rng(5)
    pred, target = _maps(rng, shape=(64, 64), absent=(4, 5), predicted_absent=(4,))  # 4 predicted, 5 not
    counts = M.confusion_counts(pred, target, C, K)
    s = M.per_class_scores(counts, K)
    keep = target.ravel() != K
    t, p = target.ravel()[keep], pred.ravel()[keep]
    trained = [1, 2, 3, 4, 5]
    prec, rec, f1, support = precision_recall_fscore_support(t, p, labels=trained, zero_division=np.nan)
    np.testing.assert_allclose(s["precision"][trained], prec, atol=1e-6)
    np.testing.assert_allclose(s["recall"][trained], rec, atol=1e-6)
    np.testing.assert_allclose(s["f1"][trained], f1, atol=1e-6)
    np.testing.assert_allclose(s["dice"][trained], f1, atol=1e-6)
    # torchmetrics: stat scores, F1 (= Dice) and Jaccard per class, ignore index dropped from both sides.
    tt, pp = torch.from_numpy(target), torch.from_numpy(pred)
    stats = MulticlassStatScores(C, average=None, ignore_index=K)(pp, tt).numpy()  # tp, fp, tn, fn, support
    k = M.class_counts(counts, K)
    for col, name in ((0, "tp"), (1, "fp"), (3, "fn"), (4, "support")):
        np.testing.assert_array_equal(k[name][trained], stats[trained, col])
    jac = MulticlassJaccardIndex(C, average=None, ignore_index=K)(pp, tt).numpy()
    dice = MulticlassF1Score(C, average=None, ignore_index=K)(pp, tt).numpy()
    np.testing.assert_allclose(s["iou"][[1, 2, 3, 4]], jac[[1, 2, 3, 4]], atol=1e-6)
    np.testing.assert_allclose(s["dice"][[1, 2, 3, 4]], dice[[1, 2, 3, 4]], atol=1e-6)
    # The rule: absent but predicted -> false positives, scores 0 (not NaN); absent and unpredicted -> NaN.
    assert s["dice"][4] == s["iou"][4] == s["precision"][4] == 0.0 and np.isnan(s["recall"][4])
    assert all(np.isnan(s[key][5]) for key in s)
    assert all(np.isnan(s[key][K]) for key in s)


def test_macro_micro_weighted_match_sklearn_and_torchmetrics():
    rng = np.random.default_rng(6)
    pred, target = _maps(rng, shape=(64, 64), absent=(4,), predicted_absent=(4,))
    counts = M.confusion_counts(pred, target, C, K)
    keep = target.ravel() != K
    t, p = target.ravel()[keep], pred.ravel()[keep]
    present = [1, 2, 3, 5]  # class 4 is absent from the ground truth: left out of macro
    np.testing.assert_array_equal(np.flatnonzero(M.present_classes(counts, K)), present)
    macro = M.macro_scores(counts, K)
    prec, rec, f1, _ = precision_recall_fscore_support(t, p, labels=present, average="macro", zero_division=0)
    assert macro["precision"] == pytest.approx(prec, abs=1e-6)
    assert macro["recall"] == pytest.approx(rec, abs=1e-6)
    assert macro["dice"] == pytest.approx(f1, abs=1e-6)
    assert macro["iou"] == pytest.approx(jaccard_score(t, p, labels=present, average="macro"), abs=1e-6)
    micro = M.micro_scores(counts, K)
    assert micro["accuracy"] == pytest.approx(accuracy_score(t, p), abs=1e-6)
    tt, pp = torch.from_numpy(target), torch.from_numpy(pred)
    assert micro["iou"] == pytest.approx(float(MulticlassJaccardIndex(C, average="micro", ignore_index=K)(pp, tt)),
                                         abs=1e-6)
    # pixels predicted as the ignore id are misses of no counted class's FP: micro Dice from pooled counts
    trained = [1, 2, 3, 4, 5]
    tp = sum(int(((t == c) & (p == c)).sum()) for c in trained)
    fp = sum(int(((t != c) & (p == c)).sum()) for c in trained)
    fn = sum(int(((t == c) & (p != c)).sum()) for c in trained)
    assert micro["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
    fw = M.frequency_weighted_scores(counts, K)
    assert fw["iou"] == pytest.approx(jaccard_score(t, p, labels=present, average="weighted"), abs=1e-6)


def test_image_level_means_match_per_image_oracle():
    rng = np.random.default_rng(7)
    images = [_maps(rng, shape=(20, 20), absent=(c,), predicted_absent=(c,) if c % 2 else ()) for c in (2, 3, 4)]
    per_image = np.stack([M.confusion_counts(p, t, C, K) for p, t in images])
    s = M.image_level_scores(per_image, K)
    for c in range(1, C):
        dices, ious = [], []
        for p, t in images:
            keep = t != K
            g, q = t[keep] == c, p[keep] == c
            if g.any() or q.any():  # an image enters class c's mean if c is in its GT or its prediction
                dices.append(2 * (g & q).sum() / (g.sum() + q.sum()))
                ious.append((g & q).sum() / (g | q).sum())
        assert s["n_images"][c] == len(dices)
        assert s["dice"][c] == pytest.approx(np.mean(dices), abs=1e-6)
        assert s["iou"][c] == pytest.approx(np.mean(ious), abs=1e-6)


def test_probability_counts_match_numpy_loop():
    rng = np.random.default_rng(8)
    pred, target = _maps(rng, shape=(2, 30, 30), absent=(4,))
    logits = rng.normal(size=(C, *target.shape)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(0)
    halves = [M.probability_counts(torch.from_numpy(probs[:, i]).float(), target[i], K) for i in range(2)]
    s = M.probability_scores(M.merge_probability_counts(halves))
    p32 = probs.astype(np.float32).astype(np.float64)
    for c in range(1, C):
        vals = p32[c][target == c]
        if c == 4:
            assert all(np.isnan(s[key][c]) for key in s)
            continue
        assert s["mean"][c] == pytest.approx(vals.mean(), abs=1e-6)
        assert s["max"][c] == pytest.approx(vals.max(), abs=1e-6)
        assert s["frac_above_0.3"][c] == pytest.approx((vals > 0.3).mean(), abs=1e-6)
        assert s["frac_above_0.5"][c] == pytest.approx((vals > 0.5).mean(), abs=1e-6)


def test_confusion_patterns_in_words():
    # The LGG case of the field notes: of 1000 IT pixels 610 went to CT, 265 to background, 125 to LE.
    names = ["background", "CT", "LE", "IT"]
    counts = np.zeros((4, 4), np.int64)
    counts[0, 0], counts[1, 1], counts[2, 2] = 1000, 1000, 1000
    counts[3] = [265, 610, 125, 0]
    lines = M.confusion_patterns(counts, names)
    assert "61.0 % of IT pixels predicted as CT" in lines
    assert "26.5 % of IT pixels predicted as background" in lines
    assert lines.index("61.0 % of IT pixels predicted as CT") < lines.index("12.5 % of IT pixels predicted as LE")
    assert "100.0 % of CT pixels predicted as CT; no other class takes 1 % or more" in lines


def test_bad_inputs_raise_clear_errors():
    t = np.zeros((4, 4), np.int64)
    with pytest.raises(ValueError, match="pred holds id 6, outside 0..5"):
        M.confusion_counts(np.full((4, 4), 6), t, C, K)
    for dtype in (np.int64, np.uint16, np.int32):  # 257 would wrap to a valid id 1 in a uint8 cast
        with pytest.raises(ValueError, match="pred holds id 257, outside"):
            M.confusion_counts(np.full((4, 4), 257, dtype), t, C, K)
    with pytest.raises(ValueError, match="target holds id -1"):
        M.confusion_counts(t, np.full((4, 4), -1), C, K)
    with pytest.raises(ValueError, match=r"pred shape \(4, 5\) differs from target shape \(4, 4\)"):
        M.confusion_counts(np.zeros((4, 5), np.int64), t, C, K)
    with pytest.raises(TypeError, match="argmax the logits"):
        M.confusion_counts(np.zeros((4, 4), np.float32), t, C, K)
    with pytest.raises(ValueError, match="ignore_index 6"):
        M.ConfusionMatrix(C, 6)
