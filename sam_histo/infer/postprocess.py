"""Score maps of one class -> binary heatmaps: per-slide z-scores, a threshold chosen on labels, clean-up.

Pure numpy / scipy / scikit-image. A *score map* is a float array of any shape (a pixel map (H, W) or a
tile-level grid) holding the class-of-interest score (a probability, a logit, an anomaly score); a *target*
is a bool array of the same shape. Lists of maps are given with one slide id per map, so the tiles of a slide
(or one large image) share their statistics.

- :func:`zscore_per_slide` subtracts each slide's mean and divides by its standard deviation, pooled over
  all its maps (FIELD_NOTES "Heatmaps over whole slides": score baselines varied 46 % between slides, so one
  global threshold painted some slides entirely red). A constant slide becomes all zeros instead of NaN.
  Caveat: a slide without the class still gets its own upper tail above a z threshold; clean-up and the
  validation numbers show how much that costs.
- :func:`threshold_sweep` counts TP / FP / FN for many candidate thresholds at once (a pixel is positive
  when score >= threshold) and gives IoU and F1 per candidate; :func:`best_threshold` picks the best.
  ``average="dataset"`` pools the counts over all maps (DESIGN.md section 4). At that level F1 = 2 IoU /
  (1 + IoU) is increasing in IoU, so the IoU- and F1-optimal thresholds coincide exactly; they differ under
  ``average="slide"``, the mean over slides (or maps) of per-slide IoU / F1, which is how FIELD_NOTES
  reports heatmap IoU. A slide whose target and prediction are both empty scores 1 there (nothing to find,
  nothing found); without any positive target pixel a dataset-level threshold cannot be chosen.
- :func:`clean_mask` drops connected components smaller than ``min_size`` elements (pixels, or tiles of a
  tile-level heatmap) and then fills enclosed holes.
- :func:`absorb_small_regions` is the same clean-up for a class map of any number of classes: every connected
  region of one class smaller than ``min_pixels`` takes the class that borders it most. On a binary map that
  removes specks and fills small holes in one rule (``eval.min_region_um2``).

The pipeline over these steps, driven by a ``HeatmapConfig``, is :func:`sam_histo.infer.heatmap.run_heatmap`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Hashable, Literal, Optional, Sequence

import numpy as np
from scipy import ndimage
from skimage.morphology import remove_small_objects

Average = Literal["dataset", "slide"]
Metric = Literal["iou", "f1"]


# ------------------------------------------------------------------------------------------- z-scores
def _check_lists(name: str, items: Optional[Sequence], scores: Sequence) -> None:
    if items is not None and len(items) != len(scores):
        raise ValueError(f"{name} has {len(items)} entries for {len(scores)} score maps; give one per map")


def zscore_per_slide(
    scores: Sequence[np.ndarray],
    slide_ids: Sequence[Hashable],
    tissue: Optional[Sequence[np.ndarray]] = None,
) -> list[np.ndarray]:
    """Per-slide z-scores: float32 maps (s - mean_slide) / std_slide, shapes unchanged.

    The mean and standard deviation of a slide pool every element of its maps (only those where ``tissue``
    is True when given, so glass does not set the baseline; all elements are transformed). A slide whose
    scores are constant gets std 1 (all zeros out); one with no tissue element is returned unchanged.
    """
    _check_lists("slide_ids", slide_ids, scores)
    _check_lists("tissue", tissue, scores)
    selected = []
    for i, (s, sid) in enumerate(zip(scores, slide_ids)):
        s = np.asarray(s, np.float64)
        if not np.isfinite(s).all():
            raise ValueError(f"score map {i} (slide {sid!r}) has NaN or infinite values")
        selected.append(s if tissue is None else s[np.asarray(tissue[i], bool)])
    # Two passes (mean, then squared deviations) instead of sum of squares: no cancellation when the
    # baseline is large against the spread.
    sums: dict = {}
    for sel, sid in zip(selected, slide_ids):
        n, total = sums.get(sid, (0, 0.0))
        sums[sid] = (n + sel.size, total + sel.sum())
    means = {sid: (total / n if n else 0.0) for sid, (n, total) in sums.items()}
    dev: dict = {}
    for sel, sid in zip(selected, slide_ids):
        dev[sid] = dev.get(sid, 0.0) + np.square(sel - means[sid]).sum()
    out = []
    for s, sid in zip(scores, slide_ids):
        n, mean = sums[sid][0], means[sid]
        var = dev[sid] / n if n else 1.0
        # A constant slide has zero variance up to rounding of the mean; dividing by that rounding noise
        # would turn a flat map into speckle, so it keeps std 1 (all zeros out).
        std = np.sqrt(var) if var > 1e-20 * max(1.0, mean * mean) else 1.0
        out.append(((np.asarray(s, np.float64) - mean) / std).astype(np.float32))
    return out


# ------------------------------------------------------------------------------------ threshold sweep
@dataclass
class ThresholdSweep:
    """IoU and F1 of the class over candidate thresholds (ascending); counts pooled over all maps.

    ``iou`` / ``f1`` follow ``average``: dataset-level from the pooled counts, or the mean over slides.
    """

    thresholds: np.ndarray  # (K,) float64, ascending
    tp: np.ndarray  # (K,) int64, pooled over all maps
    fp: np.ndarray
    fn: np.ndarray
    iou: np.ndarray  # (K,) float64
    f1: np.ndarray
    average: str

    def best(self, metric: Metric = "iou") -> tuple[float, float]:
        """(threshold, value) maximising ``metric``; ties go to the lowest threshold."""
        values = {"iou": self.iou, "f1": self.f1}[metric]
        k = int(np.argmax(values))
        return float(self.thresholds[k]), float(values[k])

    def table(self) -> list[dict]:
        """Rows {threshold, iou, f1} for a report."""
        return [{"threshold": float(t), "iou": float(i), "f1": float(f)}
                for t, i, f in zip(self.thresholds, self.iou, self.f1)]

    def summary(self) -> dict:
        """The IoU-optimal threshold with the F1-optimal one beside it, each with both scores."""
        out = {"average": self.average}
        for metric in ("iou", "f1"):
            t, _ = self.best(metric)
            k = int(np.searchsorted(self.thresholds, t))
            out[f"{metric}_optimal"] = {"threshold": t, "iou": float(self.iou[k]), "f1": float(self.f1[k])}
        return out


def default_candidates(scores: Sequence[np.ndarray], n: int = 256, max_samples: int = 2_000_000) -> np.ndarray:
    """Candidate thresholds, ascending: ``n`` quantiles of the pooled scores and ``n`` evenly spaced values.

    Quantiles put candidates where the scores are dense; the even grid puts some into the sparse gap
    between the classes, where the best threshold usually lies and quantiles put almost none. Quantiles
    come from at most ``max_samples`` values (a regular subsample) and are observed scores.
    """
    total = sum(np.asarray(s).size for s in scores)
    step = max(1, total // max_samples)
    pooled = np.concatenate([np.asarray(s, np.float64).ravel()[::step] for s in scores])
    quantiles = np.quantile(pooled, np.linspace(0.0, 1.0, n), method="lower")
    even = np.linspace(pooled.min(), pooled.max(), n)
    return np.unique(np.concatenate([quantiles, even]))


def iou_f1(tp, fp, fn) -> tuple[np.ndarray, np.ndarray]:
    """IoU and F1 from counts (arrays or scalars); an empty union (nothing to find, nothing found) is 1."""
    union = tp + fp + fn
    empty = union == 0
    # Nothing to find and nothing found is a perfect slide (only reachable under average="slide").
    iou = np.where(empty, 1.0, tp / np.maximum(union, 1))
    f1 = np.where(empty, 1.0, 2 * tp / np.maximum(2 * tp + fp + fn, 1))
    return iou, f1


def _counts(score, target, valid, cands) -> tuple[np.ndarray, np.ndarray, int]:
    """TP and FP per candidate and the positive count of one map, with one searchsorted and two bincounts."""
    score, target = np.asarray(score), np.asarray(target, bool)
    if valid is not None:
        keep = np.asarray(valid, bool)
        score, target = score[keep], target[keep]
    # k = number of candidates <= score: the pixel is positive exactly for candidates 0 .. k-1.
    k = np.searchsorted(cands, score.ravel(), side="right")
    t = target.ravel()
    kk = len(cands)
    tp = np.cumsum(np.bincount(k[t], minlength=kk + 1)[::-1])[::-1][1:]
    fp = np.cumsum(np.bincount(k[~t], minlength=kk + 1)[::-1])[::-1][1:]
    return tp.astype(np.int64), fp.astype(np.int64), int(t.sum())


def threshold_sweep(
    scores: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    candidates: Optional[Sequence[float] | np.ndarray] = None,
    *,
    valid: Optional[Sequence[np.ndarray]] = None,
    average: Average = "dataset",
    slide_ids: Optional[Sequence[Hashable]] = None,
    n_candidates: int = 256,
) -> ThresholdSweep:
    """IoU and F1 at every candidate threshold, vectorised over candidates.

    scores: float maps; targets: bool maps of the same shapes; valid: optional bool maps of the elements
    that count (e.g. target != ignore). candidates: thresholds; None = :func:`default_candidates`.
    n_candidates: quantiles and grid points of the default candidates.
    average: ``dataset`` (pooled counts) or ``slide`` (mean over slides; each map is its own slide when
    ``slide_ids`` is None). Cost O(N log K) for N elements and K candidates.
    """
    _check_lists("targets", targets, scores)
    _check_lists("valid", valid, scores)
    _check_lists("slide_ids", slide_ids, scores)
    if average not in ("dataset", "slide"):
        raise ValueError(f"average={average!r} must be 'dataset' or 'slide'")
    for i, (s, t) in enumerate(zip(scores, targets)):
        if np.shape(s) != np.shape(t) or (valid is not None and np.shape(valid[i]) != np.shape(s)):
            raise ValueError(f"map {i}: score shape {np.shape(s)} differs from its target or valid mask")
        if not np.isfinite(s).all():
            raise ValueError(f"score map {i} has NaN or infinite values")
    cands = default_candidates(scores, n_candidates) if candidates is None else np.asarray(candidates, np.float64)
    if cands.ndim != 1 or cands.size == 0 or np.any(np.diff(cands) <= 0):
        raise ValueError("candidates must be a non-empty, strictly increasing 1-D sequence of thresholds")
    groups: dict = {}
    for i, (s, t) in enumerate(zip(scores, targets)):
        tp, fp, pos = _counts(s, t, None if valid is None else valid[i], cands)
        key = i if slide_ids is None else slide_ids[i]
        g = groups.setdefault(key, [0, 0, 0])
        g[0], g[1], g[2] = g[0] + tp, g[1] + fp, g[2] + pos
    tp = sum(g[0] for g in groups.values())
    fp = sum(g[1] for g in groups.values())
    fn = sum(g[2] for g in groups.values()) - tp
    if average == "dataset":
        if not np.any(tp + fn):
            raise ValueError("the targets have no positive element: a dataset-level threshold cannot be chosen "
                             "(use labelled slides that contain the class, or average='slide')")
        iou, f1 = iou_f1(tp, fp, fn)
    else:
        per = [iou_f1(g[0], g[1], g[2] - g[0]) for g in groups.values()]
        iou, f1 = np.mean([p[0] for p in per], axis=0), np.mean([p[1] for p in per], axis=0)
    return ThresholdSweep(cands, tp, fp, fn, iou, f1, average)


def best_threshold(
    scores: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    metric: Metric = "iou",
    candidates: Optional[Sequence[float] | np.ndarray] = None,
    **sweep_kwargs,
) -> tuple[float, float, ThresholdSweep]:
    """(threshold, best value of ``metric``, the whole sweep) on a labelled set; see :func:`threshold_sweep`.

    ``sweep.summary()`` holds the IoU-optimal threshold with the F1-optimal one beside it.
    """
    if metric not in ("iou", "f1"):
        raise ValueError(f"metric={metric!r} must be 'iou' or 'f1'")
    sweep = threshold_sweep(scores, targets, candidates, **sweep_kwargs)
    t, value = sweep.best(metric)
    return t, value, sweep


# ------------------------------------------------------------------------------------------- clean-up
# scikit-image 0.26 replaced min_size (drop < N) by max_size (drop <= N); older releases have only min_size.
_HAS_MAX_SIZE = "max_size" in inspect.signature(remove_small_objects).parameters


def clean_mask(mask: np.ndarray, min_size: int = 0, fill_holes: bool = False, connectivity: int = 1) -> np.ndarray:
    """Bool mask with components of fewer than ``min_size`` elements removed, then enclosed holes filled.

    mask: bool array (a pixel map or a tile grid; any dimension). connectivity: 1 = edge neighbours,
    ndim = edge and corner neighbours. Small components go first, so a speck inside a hole does not keep
    the hole open. Holes are background regions not connected to the array border
    (``scipy.ndimage.binary_fill_holes``).
    """
    mask = np.asarray(mask, bool)
    if min_size < 0:
        raise ValueError(f"min_size={min_size} must be >= 0 (0 keeps every component)")
    if not 1 <= connectivity <= max(mask.ndim, 1):
        raise ValueError(f"connectivity={connectivity} must be in 1..{mask.ndim}")
    out = mask.copy()
    if min_size > 1:
        if _HAS_MAX_SIZE:
            out = remove_small_objects(out, max_size=min_size - 1, connectivity=connectivity)
        else:  # pragma: no cover - scikit-image < 0.26
            out = remove_small_objects(out, min_size=min_size, connectivity=connectivity)
    if fill_holes:
        out = ndimage.binary_fill_holes(out)
    return out


def absorb_small_regions(labels: np.ndarray, min_pixels: int) -> np.ndarray:
    """Class map (H, W) with every 4-connected region of one class smaller than ``min_pixels`` relabelled to
    the class along most of its outer edge (ties: the lower id). One pass: regions are judged on the input
    map, so a speck inside a small hole goes with its hole's new class only when the hole is its border.
    A region with no neighbour (the whole map is one class) is kept."""
    from skimage.measure import label as label_regions

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    if min_pixels <= 1 or labels.size == 0:
        return labels.copy()
    values, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(labels.shape)
    regions = label_regions(codes + 1, background=0, connectivity=1)  # equal neighbours share a region
    area = np.bincount(regions.ravel())
    small = area < min_pixels
    small[0] = False
    if not small.any():
        return labels.copy()
    region_code = np.zeros(len(area), np.int64)
    region_code[regions.ravel()] = codes.ravel()
    inside, border = [], []
    for a, b in ((regions[:, :-1], regions[:, 1:]), (regions[:-1], regions[1:])):
        for x, y in ((a, b), (b, a)):  # both sides of every edge between two regions
            sel = small[x] & (x != y)
            inside.append(x[sel])
            border.append(region_code[y[sel]])
    inside, border = np.concatenate(inside), np.concatenate(border)
    if inside.size == 0:  # one region: nothing borders it
        return labels.copy()
    ids, slot = np.unique(inside, return_inverse=True)
    votes = np.bincount(slot * len(values) + border, minlength=len(ids) * len(values)).reshape(len(ids), -1)
    region_code[ids] = votes.argmax(1)
    return values[region_code[regions]]
