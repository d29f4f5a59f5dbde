"""Masks with class probabilities -> one class map: the zero-shot step after SAM2's automatic masks.

Pure numpy. Input for one image: K bool masks [K, H, W], their mask scores [K] (SAM2's predicted IoU, in
[0, 1]) and class probabilities [K, C] whose columns are the class ids ``column_ids`` [C]. Each mask votes
for its most probable class; where masks overlap one wins:

- ``score``: the highest priority = mask score x top class probability (a confident, well-formed mask beats a
  doubtful one); ties go to the smaller mask.
- ``area``: the smallest covering mask (details drawn on top of the regions around them, as SAM's own
  visualisation does).

Pixels no (kept) mask covers get ``fill_id`` (see :func:`unassigned_id`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sam_histo.data.types import ClassSpec


def generator_kwargs(zs_cfg) -> dict:
    """SAM2AutomaticMaskGenerator keyword arguments from a ZeroShotConfig (small masks are dropped by
    :func:`masks_from_records`, not by sam2's ``min_mask_region_area``, which post-processes with OpenCV)."""
    keys = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "crop_n_layers",
            "box_nms_thresh")
    return {k: getattr(zs_cfg, k) for k in keys} | {"output_mode": "binary_mask"}


def masks_from_records(records: Sequence[dict], shape: tuple[int, int],
                       min_area: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """SAM2 automatic-mask records (``segmentation`` bool [H, W], ``predicted_iou``) -> (bool [K, H, W],
    float64 [K] scores), dropping masks with fewer than ``min_area`` pixels."""
    keep = [r for r in records if int(np.count_nonzero(r["segmentation"])) >= max(min_area, 1)]
    masks = np.zeros((len(keep), *shape), bool)
    for k, r in enumerate(keep):
        seg = np.asarray(r["segmentation"], bool)
        if seg.shape != tuple(shape):
            raise ValueError(f"mask {k} has shape {seg.shape}, the image {tuple(shape)}; "
                             "build the generator with output_mode='binary_mask'")
        masks[k] = seg
    return masks, np.array([float(r["predicted_iou"]) for r in keep], np.float64)


def unassigned_id(spec: ClassSpec, name: str = "") -> int:
    """Class id for uncovered pixels: class ``name`` if given, else ``background`` if it is a class, else the
    ignore id; raises ValueError when none applies (configure zeroshot.unassigned)."""
    if name:
        return spec.id_of(name)
    if "background" in spec.names and spec.id_of("background") != spec.ignore_index:
        return spec.id_of("background")
    if spec.ignore_index is not None:
        return spec.ignore_index
    raise ValueError(f"classes {list(spec.names)} have no 'background' and no ignore id: set zeroshot.unassigned "
                     "to the class that uncovered pixels should get")


def paint_order(masks: np.ndarray, scores: np.ndarray, probs: np.ndarray, method: str) -> np.ndarray:
    """Mask indices in painting order: the last painted wins its pixels."""
    area = masks.reshape(len(masks), -1).sum(axis=1)
    if method == "score":
        priority = np.asarray(scores, np.float64) * probs.max(axis=1)
        return np.lexsort((-area, priority))  # ascending priority; among equals, larger first (smaller on top)
    if method == "area":
        return np.argsort(-area, kind="stable")  # largest first, smallest last
    raise ValueError(f"overlap method {method!r} is not 'score' or 'area'")


def resolve_overlaps(masks: np.ndarray, scores: Sequence[float], probs: np.ndarray, column_ids: Sequence[int],
                     fill_id: int, method: str = "score", min_class_prob: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(class map int64 [H, W], winner int64 [H, W]: index of the mask that set each pixel, -1 where none).

    Masks whose top probability is below ``min_class_prob`` are dropped (their pixels stay unassigned).
    """
    masks = np.asarray(masks, bool)
    probs = np.asarray(probs, np.float64)
    scores = np.asarray(scores, np.float64)
    column_ids = np.asarray(column_ids, np.int64)
    if masks.ndim != 3 or probs.shape != (len(masks), len(column_ids)) or scores.shape != (len(masks),):
        raise ValueError(f"shapes disagree: masks {masks.shape} (want [K, H, W]), scores {scores.shape} (want [K]), "
                         f"probs {probs.shape} (want [K, {len(column_ids)}])")
    winner = np.full(masks.shape[1:], -1, np.int64)
    if len(masks):
        keep = probs.max(axis=1) >= min_class_prob
        for k in paint_order(masks, scores, probs, method):
            if keep[k]:
                winner[masks[k]] = k
    label = np.full(masks.shape[1:], fill_id, np.int64)
    covered = winner >= 0
    if len(masks):
        label[covered] = column_ids[probs.argmax(axis=1)][winner[covered]]
    return label, winner


def pixel_probabilities(winner: np.ndarray, probs: np.ndarray, column_ids: Sequence[int], num_classes: int,
                        fill_id: int) -> np.ndarray:
    """float32 [num_classes, H, W]: each pixel gets its winning mask's class probabilities; uncovered pixels
    are one-hot at ``fill_id`` (for the validator's per-class probability analysis)."""
    out = np.zeros((num_classes, *winner.shape), np.float32)
    covered = winner >= 0
    out[fill_id][~covered] = 1.0
    if covered.any():
        full = np.zeros((len(probs), num_classes), np.float32)
        full[:, np.asarray(column_ids)] = probs
        out[:, covered] = full[winner[covered]].T
    return out
