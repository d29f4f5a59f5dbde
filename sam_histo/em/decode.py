"""Decoding the candidate masks of one slice into a 2-D instance map (pure numpy).

A candidate is one mask the prompted decoder returned for one grid point (three per point with multimask).
Its full-resolution logits are kept only inside the box where they exceed a floor (the lowest mask threshold
that will be tried minus the stability offset): vesicles are small, so a slice's candidates take little memory
and every decoding setting of a sweep reuses them instead of running the network again. Outside its box a
candidate's logits count as below every threshold.

Decoding one setting (``DecodeParams``), in the order of SAM2's automatic mask generator
(sam2 ``automatic_mask_generator.py``: predicted IoU filter, stability filter, binarise, NMS):

1. binarise at ``mask_threshold``; keep candidates with predicted IoU > ``iou_thresh`` (no filter at 0),
   stability >= ``stability_thresh`` (no filter at 0), ``min_size`` <= area (<= ``max_size`` when set);
   stability = |logits > t + offset| / |logits > t - offset| (sam2 ``utils/amg.calculate_stability_score``);
2. visit them by predicted IoU, highest first; suppress one whose mask IoU with an already kept mask exceeds
   ``nms_thresh`` (exact mask IoU, not box IoU: touching round vesicles have overlapping boxes);
3. a survivor claims the pixels no kept mask holds; it is kept (painted) unless it would claim fewer than
   ``min_size`` pixels or less than ``MIN_FREE_SHARE`` of its area (it lies mostly inside kept masks: a part
   of an object already found, e.g. the smaller of the multimask outputs).

Step 3 already drops any mask whose IoU with one kept mask exceeds 1/2 (it then lies more than half inside
it), so ``nms_thresh`` acts below 0.5: lower values also suppress masks that overlap a kept one less.
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass

import numpy as np

from sam_histo.config.schema import EmConfig

# A candidate must bring at least this share of its own pixels that no earlier (better) mask holds.
MIN_FREE_SHARE = 0.5


# The decoding fields of EmConfig (cfg.em): DecodeParams takes their names, types and defaults from there,
# so a default changes in one place.
DECODE_KEYS = ("mask_threshold", "iou_thresh", "stability_thresh", "stability_offset", "nms_thresh",
               "min_size", "max_size")


def _from_config(cls, em, **overrides) -> "DecodeParams":
    """From an EmConfig (``cfg.em``), with keyword overrides (the sweep's settings)."""
    return cls(**{**{k: getattr(em, k) for k in DECODE_KEYS}, **overrides})


DecodeParams = make_dataclass(
    "DecodeParams",
    [(k, EmConfig.__dataclass_fields__[k].type, field(default=EmConfig.__dataclass_fields__[k].default))
     for k in DECODE_KEYS],
    frozen=True, namespace={"from_config": classmethod(_from_config),
                            "__doc__": "One decoding setting (the module docstring); logit units for thresholds "
                                       "on logits. Fields and defaults: EmConfig's decoding keys.",
                            "__module__": __name__},
)


@dataclass
class Candidates:
    """The candidate masks of one (H, W) slice as crops of their logits, stored flat.

    shape: (H, W); boxes: (N, 4) int64 crop boxes (y0, x0, y1, x1), half-open pixel ranges; flat: float32
    logits of all crops, row-major, one after the other; offsets: (N + 1,) int64 start of each crop in
    ``flat``; iou_pred: (N,) float32 predicted IoU; obj_score: (N,) float32 object-score logits.
    """

    shape: tuple[int, int]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    flat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    iou_pred: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    obj_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def crop(self, i: int) -> np.ndarray:
        """Logits of candidate ``i`` inside its box, (h, w) float32 (a view)."""
        y0, x0, y1, x1 = self.boxes[i]
        return self.flat[self.offsets[i]:self.offsets[i + 1]].reshape(y1 - y0, x1 - x0)

    @classmethod
    def from_crops(cls, crops: list, boxes, iou_pred, obj_score, shape) -> "Candidates":
        """Candidates from their logit crops (h_i, w_i), boxes (N, 4) (y0, x0, y1, x1) in a slice of ``shape``,
        iou_pred (N,) and obj_score (N,)."""
        sizes = [c.size for c in crops]
        return cls(
            shape=tuple(shape),
            boxes=np.asarray(boxes, np.int64).reshape(-1, 4),
            flat=np.concatenate([np.ravel(c) for c in crops]).astype(np.float32) if crops else np.zeros(0, np.float32),
            offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            iou_pred=np.asarray(iou_pred, np.float32).reshape(-1),
            obj_score=np.asarray(obj_score, np.float32).reshape(-1),
        )

    @classmethod
    def from_logits(cls, logits: np.ndarray, iou_pred, obj_score, floor: float) -> "Candidates":
        """Candidates from full masks: logits (N, H, W) float, iou_pred (N,), obj_score (N,). Each keeps the
        box where its logits exceed ``floor``; masks with no such pixel are dropped."""
        logits = np.asarray(logits, np.float32)
        above = logits > floor
        rows, cols = above.any(2), above.any(1)
        keep = np.flatnonzero(rows.any(1))
        boxes, crops = [], []
        for i in keep:
            ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
            boxes.append((ys[0], xs[0], ys[-1] + 1, xs[-1] + 1))
            crops.append(logits[i, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1])
        return cls.from_crops(crops, np.reshape(boxes, (-1, 4)), np.asarray(iou_pred)[keep],
                              np.asarray(obj_score)[keep], logits.shape[1:])

    @classmethod
    def concat(cls, parts: list["Candidates"], shape) -> "Candidates":
        """One slice's candidates from several chunks of prompts."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(shape=tuple(shape))
        starts = np.cumsum([0] + [p.flat.size for p in parts[:-1]])
        offsets = [p.offsets[:-1] + s for p, s in zip(parts, starts)] + [[sum(p.flat.size for p in parts)]]
        return cls(shape=tuple(shape), boxes=np.concatenate([p.boxes for p in parts]),
                   flat=np.concatenate([p.flat for p in parts]), offsets=np.concatenate(offsets).astype(np.int64),
                   iou_pred=np.concatenate([p.iou_pred for p in parts]),
                   obj_score=np.concatenate([p.obj_score for p in parts]))


def counts_above(c: Candidates, threshold: float) -> np.ndarray:
    """(N,) int64 pixels of each candidate whose logit exceeds ``threshold``."""
    if not len(c):
        return np.zeros(0, np.int64)
    above = (c.flat > threshold).astype(np.int64)
    sums = np.add.reduceat(above, c.offsets[:-1]) if above.size else np.zeros(len(c), np.int64)
    return np.where(np.diff(c.offsets) > 0, sums, 0)  # reduceat repeats a value for an empty crop


def mask_stats(c: Candidates, threshold: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """(area (N,) int64, stability (N,) float64 in [0, 1]; 0 for an empty mask) at ``threshold``."""
    area = counts_above(c, threshold)
    high, low = counts_above(c, threshold + offset), counts_above(c, threshold - offset)
    stability = np.divide(high, low, out=np.zeros(len(c)), where=low > 0)
    return area, stability


def select(c: Candidates, p: DecodeParams, stats=None) -> np.ndarray:
    """Indices of the candidates that pass the filters of step 1, best predicted IoU first.
    ``stats``: (area, stability) from ``mask_stats`` at ``p.mask_threshold`` (computed when None)."""
    area, stability = stats if stats is not None else mask_stats(c, p.mask_threshold, p.stability_offset)
    keep = area >= max(p.min_size, 1)
    if p.max_size:
        keep &= area <= p.max_size
    if p.iou_thresh > 0:
        keep &= c.iou_pred > p.iou_thresh
    if p.stability_thresh > 0:
        keep &= stability >= p.stability_thresh
    idx = np.flatnonzero(keep)
    return idx[np.argsort(-c.iou_pred[idx], kind="stable")]


def _tight(mask: np.ndarray, y0: int, x0: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The mask cut to its tight box, and that box in slice coordinates (y0, x0, y1, x1)."""
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    a, b, l, r = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    return mask[a:b, l:r], (y0 + a, x0 + l, y0 + b, x0 + r)


def _intersection(m1, b1, m2, b2) -> int:
    y0, x0 = max(b1[0], b2[0]), max(b1[1], b2[1])
    y1, x1 = min(b1[2], b2[2]), min(b1[3], b2[3])
    if y0 >= y1 or x0 >= x1:
        return 0
    s1 = m1[y0 - b1[0]:y1 - b1[0], x0 - b1[1]:x1 - b1[1]]
    s2 = m2[y0 - b2[0]:y1 - b2[0], x0 - b2[1]:x1 - b2[1]]
    return int(np.count_nonzero(s1 & s2))


def decode(c: Candidates, p: DecodeParams, stats=None) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D instance map of one slice: (H, W) int32 ids 1..n in order of decreasing predicted IoU (0 =
    background), and (n,) float32 the predicted IoU of each id. ``stats`` as in ``select``."""
    labels = np.zeros(c.shape, np.int32)
    kept: list[tuple[np.ndarray, tuple, int]] = []
    scores: list[float] = []
    for i in select(c, p, stats):
        y0, x0 = int(c.boxes[i, 0]), int(c.boxes[i, 1])
        mask, box = _tight(c.crop(i) > p.mask_threshold, y0, x0)
        area = int(np.count_nonzero(mask))
        if any(_suppressed(mask, box, area, m, b, a, p.nms_thresh) for m, b, a in kept):
            continue
        window = labels[box[0]:box[2], box[1]:box[3]]
        claim = mask & (window == 0)
        n = int(np.count_nonzero(claim))
        if n < max(p.min_size, 1) or n < MIN_FREE_SHARE * area:
            continue
        kept.append((mask, box, area))
        scores.append(float(c.iou_pred[i]))
        window[claim] = len(scores)
    return labels, np.asarray(scores, np.float32)


def _suppressed(mask, box, area, other, other_box, other_area, nms_thresh: float) -> bool:
    inter = _intersection(mask, box, other, other_box)
    return inter > 0 and inter / (area + other_area - inter) > nms_thresh
