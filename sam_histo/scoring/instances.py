"""Instance metrics on 2-D or 3-D label maps (pure numpy): adapted Rand error, matched F1, mean accuracy.

Label maps are non-negative integers; 0 is background, every other id one object. Everything derives from the
contingency table ``n[i, j]`` = pixels with ground-truth object i and predicted object j, so one image's
numbers reduce to a few sums that add across images (``InstanceCounts``): the dataset-level value is the value
of all images laid side by side with distinct ids.

Adapted Rand (SNEMI3D, Arganda-Carreras et al. 2015), over pixels whose ground truth is not background, with
predicted background counted as one segment as scikit-image does. With pair counts (pairs of distinct pixels)
``J = sum n_ij^2 - N``, ``G = sum_i a_i^2 - N`` (a = ground-truth object sizes), ``P = sum_j b_j^2 - N``
(b = predicted segment sizes, restricted to those pixels):

- ``precision = J / P``: of the pixel pairs the prediction puts in one segment, the share that is one true
  object. A false **merge** lowers it.
- ``recall = J / G``: of the pixel pairs in one true object, the share the prediction keeps together. A false
  **split** (or an object broken into background and fragments) lowers it.
- ``adapted_rand_error = 1 - 2J / (G + P)``.

scikit-image's ``adapted_rand_error`` returns the same error but its ``prec`` is ``J / G`` and its ``rec`` is
``J / P`` (the reverse of its own docstring): its "precision" falls with splits. We keep the names above, also
given as ``split_score`` (= recall) and ``merge_score`` (= precision).

Matching: a ground-truth and a predicted object match at threshold t when IoU > t (strictly: "above the
threshold" as in the Data Science Bowl 2018 metric; stardist uses >=, which differs only at exact ties). For
t >= 0.5 these matches are one-to-one without any assignment step: IoU(g, p) > 0.5 implies
|g & p| > |g | p| / 2 >= max(|g|, |p|) / 2, so p covers more than half of g and g more than half of p, and
disjoint objects cannot both cover more than half of the same object. Counting the pairs above t therefore
equals the Hungarian matching. ``accuracy(t) = TP / (TP + FP + FN)``; mean segmentation accuracy averages it
over t = 0.5, 0.55, ..., 0.95 (DSB 2018 / stardist).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5 .. 0.95
_DENSE_LIMIT = 1 << 22  # dense contingency table up to 4 M cells (32 MB), sparse (sort-based) beyond


def relabel_consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Flattened int64 labels mapped to 0..n-1 with 0 kept as 0 (id 0 always reserved); returns (labels, n)."""
    x = np.asarray(labels)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    if x.dtype.kind not in "iu":
        raise TypeError(f"instance labels must be integers, got dtype {x.dtype}")
    x = x.ravel()
    if x.dtype == np.uint64:  # np.bincount only takes types that cast safely to int64
        if x.size and int(x.max()) >= 2**63:
            raise ValueError(f"instance label {int(x.max())} does not fit in int64")
        x = x.astype(np.int64)
    if x.size == 0:
        return x.astype(np.int64), 1
    lo, hi = int(x.min()), int(x.max())
    if lo < 0:
        raise ValueError(f"instance labels must be >= 0 (0 = background), found {lo}")
    if hi < max(1 << 20, 4 * x.size):  # lookup table: one O(n) pass instead of a sort
        present = np.bincount(x, minlength=hi + 1) > 0
        present[0] = True
        lut = np.cumsum(present) - 1
        return lut[x], int(present.sum())
    uniq, inv = np.unique(x, return_inverse=True)
    if uniq[0] != 0:
        return inv.astype(np.int64) + 1, len(uniq) + 1
    return inv.astype(np.int64), len(uniq)


def contingency(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Sparse contingency table of two label maps of one shape.

    Returns (rows, cols, n, n_rows, n_cols): int64 arrays of the nonzero cells (rows index consecutive
    ground-truth labels, cols predicted labels, 0 = background on both sides) and the table's shape.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"instance maps differ in shape: ground truth {gt.shape}, prediction {pred.shape}")
    g, ng = relabel_consecutive(gt)
    p, npred = relabel_consecutive(pred)
    key = g * npred + p
    if ng * npred <= _DENSE_LIMIT:
        table = np.bincount(key, minlength=ng * npred)
        cells = np.flatnonzero(table)
        n = table[cells]
    else:
        cells, n = np.unique(key, return_counts=True)
    return cells // npred, cells % npred, n.astype(np.int64), ng, npred


@dataclass
class InstanceCounts:
    """Sums that add across images. Pair counts are Python ints (exact); ``tp`` is per threshold."""

    n_gt: int = 0
    n_pred: int = 0
    n_pixels: int = 0  # ground-truth foreground pixels (the adapted Rand domain)
    pairs_joint: int = 0  # J
    pairs_gt: int = 0  # G
    pairs_pred: int = 0  # P
    tp: list[int] = field(default_factory=lambda: [0] * len(THRESHOLDS))

    def __add__(self, other: "InstanceCounts") -> "InstanceCounts":
        return InstanceCounts(
            self.n_gt + other.n_gt, self.n_pred + other.n_pred, self.n_pixels + other.n_pixels,
            self.pairs_joint + other.pairs_joint, self.pairs_gt + other.pairs_gt,
            self.pairs_pred + other.pairs_pred, [a + b for a, b in zip(self.tp, other.tp)],
        )

    def to_list(self) -> list[int]:
        return [self.n_gt, self.n_pred, self.n_pixels, self.pairs_joint, self.pairs_gt, self.pairs_pred, *self.tp]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> "InstanceCounts":
        v = [int(x) for x in values]
        return cls(*v[:6], tp=v[6:])


def instance_counts(gt: np.ndarray, pred: np.ndarray) -> InstanceCounts:
    """One image's (or volume's) ``InstanceCounts``; gt and pred are label maps of one shape (0 = background)."""
    rows, cols, n, ng, npred = contingency(gt, pred)
    fg = rows > 0
    # Adapted Rand over ground-truth foreground, predicted background kept as one segment (scikit-image).
    a = np.bincount(rows[fg], weights=n[fg], minlength=ng).astype(np.int64)
    b = np.bincount(cols[fg], weights=n[fg], minlength=npred).astype(np.int64)
    total = int(n[fg].sum())
    out = InstanceCounts(
        n_gt=int((np.bincount(rows, minlength=ng)[1:] > 0).sum()),
        n_pred=int((np.bincount(cols, minlength=npred)[1:] > 0).sum()),
        n_pixels=total,
        pairs_joint=int((n[fg] * n[fg]).sum()) - total,
        pairs_gt=int((a * a).sum()) - total,
        pairs_pred=int((b * b).sum()) - total,
    )
    # IoU of every overlapping (object, object) pair, sizes over the whole map.
    size_g = np.bincount(rows, weights=n, minlength=ng)
    size_p = np.bincount(cols, weights=n, minlength=npred)
    both = fg & (cols > 0)
    inter = n[both].astype(np.float64)
    iou = inter / (size_g[rows[both]] + size_p[cols[both]] - inter)
    out.tp = [int((iou > t).sum()) for t in THRESHOLDS]
    return out


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def instance_scores(counts: InstanceCounts | Iterable[InstanceCounts]) -> dict:
    """Metrics from (summed) counts: the DESIGN.md ``instances`` keys plus clearly named extras.

    adapted_rand_error, precision (merge score), recall (split score) in [0, 1] (NaN when undefined, e.g. no
    pixel pairs); f1_at_0.5 = 2 TP / (n_gt + n_pred); mean_seg_accuracy over THRESHOLDS; accuracy_at per t.
    """
    if not isinstance(counts, InstanceCounts):
        total = InstanceCounts()
        for c in counts:
            total = total + c
        counts = total
    j, g, p = counts.pairs_joint, counts.pairs_gt, counts.pairs_pred
    acc = [_ratio(tp, counts.n_gt + counts.n_pred - tp) for tp in counts.tp]
    tp50 = counts.tp[0]
    return {
        "adapted_rand_error": 1.0 - _ratio(2 * j, g + p) if g + p > 0 else float("nan"),
        "precision": _ratio(j, p),
        "recall": _ratio(j, g),
        "f1_at_0.5": _ratio(2 * tp50, counts.n_gt + counts.n_pred),
        "n_gt": counts.n_gt,
        "n_pred": counts.n_pred,
        "matched_at_0.5": tp50,
        "mean_seg_accuracy": float(np.mean(acc)) if not np.isnan(acc).any() else float("nan"),
        "accuracy_at": {f"{t:.2f}": a for t, a in zip(THRESHOLDS, acc)},
        "split_score": _ratio(j, g),
        "merge_score": _ratio(j, p),
    }


def image_level_instance_scores(per_image: Sequence[InstanceCounts]) -> dict:
    """Means over images of each image's own scores (the DSB 2018 way of averaging), beside the pooled ones.

    Images where a score is undefined (no objects on either side) are left out of that score's mean;
    ``n_images`` counts the images given.
    """
    keys = ("adapted_rand_error", "precision", "recall", "f1_at_0.5", "mean_seg_accuracy")
    scores = [instance_scores(c) for c in per_image]
    out: dict = {"n_images": len(scores)}
    for key in keys:
        vals = [s[key] for s in scores if not np.isnan(s[key])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out


def instance_metrics(gt: np.ndarray, pred: np.ndarray) -> dict:
    """``instance_scores`` of one label map pair (2-D or 3-D)."""
    return instance_scores(instance_counts(gt, pred))
