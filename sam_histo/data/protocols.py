"""Deterministic prompts of the prompt protocols (`sam-histo validate --protocols`).

Every protocol prompts the same objects (``prompts.select_objects``: components or instances, at most
``max_objects``, chosen with the sample's generator) and shares what they have in common, drawn once per
object in a fixed order whatever protocols are asked for:

- ``centroid``: one positive point at the object's interior centroid, the maximum of its distance transform
  (the image border counts as outside; ties: the first pixel in raster order), so it lies inside even for a
  C-shaped object whose centroid does not.
- ``points5``: that point and 4 more drawn from the object's core (distance >= half the maximum).
- ``box``: the tight box (x0, y0, x1, y1), x1 / y1 one past the last pixel, no noise.
- ``box+neg``: the box and ``N_NEG`` negative points outside the object, inside its box where there is
  room (where a negative click helps), else anywhere outside it off ignored pixels; none -> padding.

Points are (x, y) pixel coordinates (``mask[y, x]`` is the pixel named).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.ndimage import distance_transform_edt

from sam_histo.config.rules import PROMPT_PROTOCOLS
from sam_histo.data.prompts import select_objects
from sam_histo.data.types import ClassSpec, Prompts

N_POINTS = 5
N_NEG = 3


@dataclass
class ObjectPrompts:
    """N objects: class_ids (N,) int64, targets (N, H, W) bool, centroid (N, 2), points (N, N_POINTS, 2) whose
    first is the centroid, boxes (N, 4) float32 xyxy, negatives (N, N_NEG, 2) with labels (N, N_NEG) int32
    (0 = negative, -1 = padding)."""

    class_ids: np.ndarray
    targets: np.ndarray
    centroid: np.ndarray
    points: np.ndarray
    boxes: np.ndarray
    negatives: np.ndarray
    neg_labels: np.ndarray

    def __len__(self) -> int:
        return len(self.class_ids)


def interior_centroid(obj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((x, y) of the distance-transform maximum of a bool mask, the distance map (H, W))."""
    dist = distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], np.float32), dist


def _pick(rng, ys, xs, n: int) -> np.ndarray:
    idx = rng.choice(len(ys), n, replace=len(ys) < n)
    return np.stack([xs[idx], ys[idx]], 1).astype(np.float32)


def _object(rng, obj: np.ndarray, valid: np.ndarray):
    centroid, dist = interior_centroid(obj)
    ys, xs = np.nonzero(dist >= max(dist.max() / 2, 1.0))
    points = np.concatenate([centroid[None], _pick(rng, ys, xs, N_POINTS - 1)])
    oy, ox = np.nonzero(obj)
    box = np.array([ox.min(), oy.min(), ox.max() + 1, oy.max() + 1], np.float32)
    outside = ~obj & valid
    in_box = np.zeros_like(obj)
    in_box[oy.min():oy.max() + 1, ox.min():ox.max() + 1] = True
    where = outside & in_box if (outside & in_box).any() else outside
    ny, nx = np.nonzero(where)
    if len(ny):
        neg, lab = _pick(rng, ny, nx, N_NEG), np.zeros(N_NEG, np.int32)
    else:  # the object covers every valid pixel: nothing to point at
        neg, lab = np.zeros((N_NEG, 2), np.float32), np.full(N_NEG, -1, np.int32)
    return centroid, points, box, neg, lab


def object_prompts(mask: np.ndarray, classes: ClassSpec, prompt_cfg, rng: np.random.Generator,
                   instances: Optional[np.ndarray] = None) -> ObjectPrompts:
    """The shared prompts of one image; ``prompt_cfg`` (PromptConfig) gives exclude, min_area, max_objects."""
    mask = np.asarray(mask)
    objects = select_objects(mask, classes, prompt_cfg, rng, instances)
    h, w = mask.shape
    valid = mask != classes.ignore_index if classes.ignore_index is not None else np.ones((h, w), bool)
    targets = np.zeros((len(objects), h, w), bool)
    parts = []
    for k, (_, coords) in enumerate(objects):
        targets[k, coords[:, 0], coords[:, 1]] = True
        parts.append(_object(rng, targets[k], valid))
    cols = list(zip(*parts)) if parts else [np.zeros((0, 2)), np.zeros((0, N_POINTS, 2)), np.zeros((0, 4)),
                                             np.zeros((0, N_NEG, 2)), np.zeros((0, N_NEG))]
    centroid, points, boxes, neg, lab = (np.stack(c) if parts else c for c in cols)
    return ObjectPrompts(np.array([c for c, _ in objects], np.int64), targets, centroid.astype(np.float32),
                         points.astype(np.float32), boxes.astype(np.float32), neg.astype(np.float32),
                         lab.astype(np.int32))


def protocol_prompts(op: ObjectPrompts, protocol: str) -> tuple[Prompts, bool]:
    """(Prompts of ``protocol``, use_points_with_box for ``forward_prompted``)."""
    if protocol not in PROMPT_PROTOCOLS:
        raise ValueError(f"unknown prompt protocol {protocol!r}; use one of {list(PROMPT_PROTOCOLS)}")
    n = len(op)
    if protocol in ("centroid", "points5"):
        pts = op.centroid[:, None] if protocol == "centroid" else op.points
        return Prompts(points=pts, point_labels=np.ones(pts.shape[:2], np.int32), boxes=op.boxes,
                       has_box=np.zeros(n, bool), class_ids=op.class_ids, targets=op.targets), False
    if protocol == "box":
        return Prompts(points=np.zeros((n, 1, 2), np.float32), point_labels=np.full((n, 1), -1, np.int32),
                       boxes=op.boxes, has_box=np.ones(n, bool), class_ids=op.class_ids, targets=op.targets), False
    return Prompts(points=op.negatives, point_labels=op.neg_labels, boxes=op.boxes, has_box=np.ones(n, bool),
                   class_ids=op.class_ids, targets=op.targets), True
