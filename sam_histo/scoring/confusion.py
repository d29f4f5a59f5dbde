"""Per-class segmentation metrics from one confusion matrix accumulated over a whole split (pure: numpy, torch).

Conventions (DESIGN.md section 4), used by every evaluator and stated in every report:

- ``counts[t, p]`` counts pixels with ground-truth id ``t`` and predicted id ``p`` (rows = ground truth,
  columns = prediction), over all ``C`` ids, the ignore id included so ids match ``ClassSpec.names``.
- A pixel whose ground truth is the ignore id is dropped from both sides: its prediction counts nowhere
  (its row of the matrix stays zero). A pixel with a real ground-truth class that is *predicted* as the ignore
  id is kept: it is a miss (false negative) of its true class, shown in the ignore id's column. Dropping it
  would let a model hide its hardest pixels by predicting "ignore".
- Per class (ignore id excluded): ``support = TP + FN`` (ground-truth pixels), ``pred = TP + FP``.
  Dice = F1 = 2TP / (2TP + FP + FN); IoU = TP / (TP + FP + FN); precision = TP / pred; recall = TP / support.
  * class present in the ground truth: all four defined; precision is 0 when the class is never predicted.
  * class absent from the ground truth but predicted: its pixels are false positives, so Dice = IoU =
    precision = 0 (not NaN); recall is undefined (NaN, ``null`` in JSON).
  * class absent and not predicted: everything undefined (NaN).
- Macro = unweighted mean over the classes present in the ground truth of the split (support > 0); the
  absent classes are named in the report, and their false positives still lower the present classes' scores
  and show in ``per_class``. Micro pools TP, FP and FN of all non-ignore classes. Frequency-weighted = the
  per-class value weighted by support share.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from sam_histo.scoring.counting import Array, _as_tensor, _check_range, confusion_counts  # noqa: F401

PROB_THRESHOLDS = (0.3, 0.5)  # probability analysis: share of a class's true pixels above each


class ConfusionMatrix:
    """Streaming confusion matrix over a split, with per-image presence counts.

    ``update(pred, target)`` adds one image (a 2-D tile or a 3-D volume). ``counts`` (C, C) int64,
    rows = ground truth, cols = prediction. ``images_present[c]``: images whose ground truth holds class c;
    ``images_predicted[c]``: images whose prediction holds it (counted pixels only). Accumulators add with
    ``merge`` or ``+`` (e.g. after gathering them from several processes).
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None):
        if ignore_index is not None and not 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is not an id in 0..{num_classes - 1}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_classes, num_classes), np.int64)
        self.images_present = np.zeros(num_classes, np.int64)
        self.images_predicted = np.zeros(num_classes, np.int64)
        self.n_images = 0

    def update(self, pred: Array, target: Array) -> np.ndarray:
        """Add one image; returns its own (C, C) counts."""
        counts = confusion_counts(pred, target, self.num_classes, self.ignore_index)
        self.add_counts(counts)
        return counts

    def add_counts(self, counts: np.ndarray) -> None:
        """Add one image's precomputed (C, C) matrix."""
        counts = np.asarray(counts, np.int64)
        self.counts += counts
        self.images_present += counts.sum(1) > 0
        self.images_predicted += counts.sum(0) > 0
        self.n_images += 1

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError("cannot merge confusion matrices with different classes or ignore_index")
        self.counts += other.counts
        self.images_present += other.images_present
        self.images_predicted += other.images_predicted
        self.n_images += other.n_images
        return self

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        return out.merge(self).merge(other)


# ------------------------------------------------------------------------------- scores from counts
def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def _clean(counts: np.ndarray, ignore_index: Optional[int]) -> np.ndarray:
    """int64 copy with the ignore id's row zeroed (its pixels are not counted, whatever the caller passed)."""
    counts = np.array(counts, np.int64)
    if ignore_index is not None:
        counts[ignore_index, :] = 0
    return counts


def class_counts(counts: np.ndarray, ignore_index: Optional[int] = None) -> dict[str, np.ndarray]:
    """Per-id int64 ``tp``, ``fp``, ``fn``, ``support`` (GT pixels) and ``pred`` (predicted pixels).

    Everything is over counted pixels (ground truth not the ignore id); ``pred`` of the ignore id counts its
    predictions on real-class pixels.
    """
    counts = _clean(counts, ignore_index)
    tp = np.diag(counts).copy()
    support, pred = counts.sum(1), counts.sum(0)
    return {"tp": tp, "fp": pred - tp, "fn": support - tp, "support": support, "pred": pred}


def per_class_scores(counts: np.ndarray, ignore_index: Optional[int] = None) -> dict[str, np.ndarray]:
    """(C,) float64 ``dice``, ``iou``, ``precision``, ``recall``, ``f1`` per id; NaN = undefined.

    See the module docstring for the cases: an absent-but-predicted class scores 0 (not NaN) on Dice, IoU and
    precision; recall of an absent class and every score of the ignore id are NaN.
    """
    k = class_counts(counts, ignore_index)
    tp, fp, fn, support, pred = k["tp"], k["fp"], k["fn"], k["support"], k["pred"]
    dice = _div(2 * tp, 2 * tp + fp + fn)
    iou = _div(tp, tp + fp + fn)
    recall = _div(tp, support)
    precision = np.where(pred > 0, _div(tp, pred), np.where(support > 0, 0.0, np.nan))
    out = {"dice": dice, "iou": iou, "precision": precision, "recall": recall, "f1": dice.copy()}
    if ignore_index is not None:
        for v in out.values():
            v[ignore_index] = np.nan
    return out


def present_classes(counts: np.ndarray, ignore_index: Optional[int] = None) -> np.ndarray:
    """(C,) bool: ids with ground-truth pixels, the ignore id excluded (the classes macro averages over)."""
    present = _clean(counts, ignore_index).sum(1) > 0
    if ignore_index is not None:
        present[ignore_index] = False
    return present


def macro_scores(counts: np.ndarray, ignore_index: Optional[int] = None) -> dict[str, float]:
    """Unweighted mean of Dice, IoU, precision and recall over the classes present in the ground truth."""
    scores = per_class_scores(counts, ignore_index)
    present = present_classes(counts, ignore_index)
    if not present.any():
        return {key: float("nan") for key in ("dice", "iou", "precision", "recall")}
    return {key: float(scores[key][present].mean()) for key in ("dice", "iou", "precision", "recall")}


def micro_scores(counts: np.ndarray, ignore_index: Optional[int] = None) -> dict[str, float]:
    """TP, FP and FN pooled over all non-ignore classes.

    accuracy = sum TP / counted pixels. Dice equals accuracy unless some pixels are predicted as the ignore id
    (those are FN of their class but FP of no counted class).
    """
    counts = _clean(counts, ignore_index)
    k = class_counts(counts)
    keep = np.ones(len(k["tp"]), bool)
    if ignore_index is not None:
        keep[ignore_index] = False
    tp, fp, fn = (int(k[name][keep].sum()) for name in ("tp", "fp", "fn"))
    total = int(counts.sum())
    return {
        "dice": float(_div(2 * tp, 2 * tp + fp + fn)),
        "iou": float(_div(tp, tp + fp + fn)),
        "accuracy": float(_div(tp, total)),
    }


def frequency_weighted_scores(counts: np.ndarray, ignore_index: Optional[int] = None) -> dict[str, float]:
    """Dice and IoU of the present classes weighted by their share of the counted ground-truth pixels."""
    scores = per_class_scores(counts, ignore_index)
    present = present_classes(counts, ignore_index)
    support = _clean(counts, ignore_index).sum(1).astype(np.float64)
    if not present.any():
        return {"dice": float("nan"), "iou": float("nan")}
    w = support[present] / support[present].sum()
    return {key: float((w * scores[key][present]).sum()) for key in ("dice", "iou")}


def image_level_scores(per_image: np.ndarray, ignore_index: Optional[int] = None) -> dict[str, np.ndarray]:
    """Per-class means over images of each image's own Dice and IoU.

    per_image: (N, C, C) int64, one confusion matrix per image. An image enters class c's mean when c is in
    its ground truth or its prediction (so false positives on images without the class count as 0); images
    with neither are left out, never scored 1. Returns (C,) float64 ``dice``, ``iou`` (NaN where no image
    qualifies) and (C,) int64 ``n_images``.
    """
    per_image = np.asarray(per_image, np.int64).reshape(-1, *np.shape(per_image)[-2:])
    tp = np.diagonal(per_image, axis1=1, axis2=2)
    support, pred = per_image.sum(2), per_image.sum(1)
    union = support + pred - tp
    seen = union > 0
    dice = np.where(seen, _div(2 * tp, support + pred), 0.0)
    iou = np.where(seen, _div(tp, union), 0.0)
    n = seen.sum(0)
    out = {"dice": _div(dice.sum(0), n), "iou": _div(iou.sum(0), n), "n_images": n.astype(np.int64)}
    if ignore_index is not None:
        out["dice"][ignore_index] = out["iou"][ignore_index] = np.nan
        out["n_images"][ignore_index] = 0
    return out


# ----------------------------------------------------------------------------- probability analysis
def probability_counts(probs: Array, target: Array, ignore_index: Optional[int] = None) -> np.ndarray:
    """Per class, statistics of the model's probability for that class on that class's true pixels.

    probs: (C, *S) float probabilities (softmax over the C ids, not logits); target: (*S) integer ids.
    Returns float64 (C, 5): [sum of p, n pixels, max p, n with p > 0.3, n with p > 0.5]; the ignore id's row
    is zero and ``max`` is NaN where a class has no pixels. Rows add across images (max by maximum).
    """
    t = _as_tensor(target, "target")
    if not isinstance(probs, torch.Tensor):
        probs = torch.from_numpy(np.ascontiguousarray(probs))
    num_classes = probs.shape[0]
    if tuple(probs.shape[1:]) != tuple(t.shape):
        raise ValueError(f"probs shape {tuple(probs.shape)} must be (C, *target shape {tuple(t.shape)})")
    if not probs.is_floating_point():
        raise TypeError(f"probs has dtype {probs.dtype}; pass float probabilities")
    _check_range(t, num_classes, "target")
    t = t.to(probs.device).reshape(-1).long()
    p_true = probs.reshape(num_classes, -1).gather(0, t[None]).squeeze(0).double()
    out = torch.zeros(num_classes, 5, dtype=torch.float64, device=probs.device)
    out[:, 0] = torch.bincount(t, weights=p_true, minlength=num_classes)
    out[:, 1] = torch.bincount(t, minlength=num_classes).double()
    out[:, 2] = torch.full((num_classes,), float("nan"), dtype=torch.float64, device=probs.device).scatter_reduce(
        0, t, p_true, "amax", include_self=False
    )
    for j, thr in enumerate(PROB_THRESHOLDS):
        out[:, 3 + j] = torch.bincount(t, weights=(p_true > thr).double(), minlength=num_classes)
    out = out.cpu().numpy()
    if ignore_index is not None:
        out[ignore_index] = 0.0
        out[ignore_index, 2] = np.nan
    return out


def merge_probability_counts(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Sum a sequence of (C, 5) ``probability_counts`` (maximum for the max column)."""
    stack = np.stack([np.asarray(r, np.float64) for r in rows])
    out = stack.sum(0)
    with warnings.catch_warnings():  # all-NaN max column of a class absent everywhere
        warnings.simplefilter("ignore", RuntimeWarning)
        out[:, 2] = np.nanmax(stack[:, :, 2], axis=0)
    return out


def probability_scores(prob_counts: np.ndarray) -> dict[str, np.ndarray]:
    """(C,) ``mean``, ``max``, ``frac_above_0.3``, ``frac_above_0.5`` (NaN for classes without pixels)."""
    c = np.asarray(prob_counts, np.float64)
    out = {"mean": _div(c[:, 0], c[:, 1]), "max": np.where(c[:, 1] > 0, c[:, 2], np.nan)}
    for j, thr in enumerate(PROB_THRESHOLDS):
        out[f"frac_above_{thr}"] = _div(c[:, 3 + j], c[:, 1])
    return out


def confusion_patterns(
    counts: np.ndarray, names: Sequence[str], ignore_index: Optional[int] = None, min_share: float = 0.01, top: int = 3
) -> list[str]:
    """Where each present class's pixels went, in words: "61.0 % of IT pixels predicted as CT".

    For every class with ground-truth pixels, the ``top`` largest off-diagonal shares of its row that reach
    ``min_share``, largest first; a class with none gets a line saying so.
    """
    counts = _clean(counts, ignore_index)
    lines = []
    for c in np.flatnonzero(present_classes(counts, ignore_index)):
        row = counts[c].astype(np.float64) / counts[c].sum()
        others = [j for j in np.argsort(-row, kind="stable") if j != c and row[j] >= min_share][:top]
        if not others:
            lines.append(f"{100 * row[c]:.1f} % of {names[c]} pixels predicted as {names[c]}; no other class "
                         f"takes {100 * min_share:.0f} % or more")
        for j in others:
            note = " (the ignore id)" if j == ignore_index else ""
            lines.append(f"{100 * row[j]:.1f} % of {names[c]} pixels predicted as {names[j]}{note}")
    return lines
