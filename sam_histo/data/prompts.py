"""Point and box prompts for SAM-style training and validation.

Objects are the instances of a Sample (EM vesicles) or, for semantic masks, the connected components
(8-connectivity) of each prompted class; ``prompts.exclude`` names classes that get none (default
background) and the ignore id never gets one. Positive points lie inside their object, negative points
in the same image outside it (and off ignored pixels when possible); boxes are the object's tight box
with Gaussian corner noise. Validation prompts are a pure function of (seed, sample index):
``make_prompts(..., rng=prompt_rng(seed, index))``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from sam_histo.data.types import ClassSpec, Prompts


def prompt_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``'s prompts: the same prompts every epoch and on every process."""
    return np.random.default_rng([int(seed), int(index)])


def find_objects(mask: np.ndarray, classes: ClassSpec, exclude=("background",), min_area: int = 1,
                 instances: Optional[np.ndarray] = None) -> list[tuple[int, np.ndarray]]:
    """(class id, pixel coordinates (n, 2) int (row, col)) of every component or instance of at least
    ``min_area`` pixels. With ``instances`` each id > 0 is one object whose class is the most common
    class id under it."""
    from skimage.measure import label, regionprops

    skip = {classes.id_of(n) for n in exclude if n in classes.names}
    if classes.ignore_index is not None:
        skip.add(classes.ignore_index)
    objects = []
    if instances is not None:
        for region in regionprops(np.asarray(instances, np.int64)):
            rc = region.coords
            cls = int(np.bincount(mask[rc[:, 0], rc[:, 1]]).argmax())
            if region.area >= min_area and cls not in skip:
                objects.append((cls, rc))
        return objects
    for cid in classes.trained_ids:
        if cid in skip or not (mask == cid).any():
            continue
        for region in regionprops(label(mask == cid, connectivity=2)):
            if region.area >= min_area:
                objects.append((cid, region.coords))
    return objects


def _as_mask(coords: np.ndarray, shape) -> np.ndarray:
    obj = np.zeros(shape, bool)
    obj[coords[:, 0], coords[:, 1]] = True
    return obj


def _points(rng, obj: np.ndarray, valid: np.ndarray, n_pos: int, n_neg: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) float32 (x, y) and (P,) int32 labels: n_pos inside ``obj``, n_neg outside it."""
    ys, xs = np.nonzero(obj)
    pick = rng.integers(0, len(ys), n_pos)
    pts = [np.stack([xs[pick], ys[pick]], 1)]
    labels = [np.ones(n_pos, np.int32)]
    if n_neg:
        outside = ~obj & valid
        if not outside.any():
            outside = ~obj
        ny, nx = np.nonzero(outside)
        if len(ny):
            pick = rng.integers(0, len(ny), n_neg)
            pts.append(np.stack([nx[pick], ny[pick]], 1))
            labels.append(np.zeros(n_neg, np.int32))
        else:  # the object fills the image: nothing to point at outside it
            pts.append(np.zeros((n_neg, 2)))
            labels.append(np.full(n_neg, -1, np.int32))
    return np.concatenate(pts).astype(np.float32), np.concatenate(labels)


def _box(rng, obj: np.ndarray, noise: float) -> np.ndarray:
    """(4,) float32 xyxy: the tight box, each corner moved by N(0, noise * box side), kept in the image."""
    ys, xs = np.nonzero(obj)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    w, h = x1 - x0, y1 - y0
    jitter = rng.normal(0, noise, 4) * np.array([w, h, w, h]) if noise else np.zeros(4)
    box = np.array([x0, y0, x1, y1], np.float64) + jitter
    box[[0, 2]] = np.clip(box[[0, 2]], 0, obj.shape[1])
    box[[1, 3]] = np.clip(box[[1, 3]], 0, obj.shape[0])
    return np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])],
                    np.float32)


def select_objects(mask: np.ndarray, classes: ClassSpec, cfg, rng: np.random.Generator,
                   instances: Optional[np.ndarray] = None) -> list:
    """The objects of ``mask`` (``find_objects`` with cfg.exclude and cfg.min_area), at most cfg.max_objects
    of them drawn by ``rng`` in their original order: one rule for training, validation and protocols."""
    objects = find_objects(mask, classes, cfg.exclude, cfg.min_area, instances)
    if len(objects) > cfg.max_objects:
        keep = np.sort(rng.choice(len(objects), cfg.max_objects, replace=False))
        objects = [objects[i] for i in keep]
    return objects


def make_prompts(mask: np.ndarray, classes: ClassSpec, cfg, rng: np.random.Generator,
                 instances: Optional[np.ndarray] = None) -> Prompts:
    """Prompts for up to ``cfg.max_objects`` objects of one image, plus ``cfg.n_background`` background
    clicks with empty targets. ``cfg`` is a PromptConfig.

    mask: (H, W) int class ids; instances: optional (H, W) int instance ids. Points are integer pixel
    coordinates (x, y), so ``mask[y, x]`` is the pixel a point names. See ``Prompts`` for the shapes.
    """
    mask = np.asarray(mask)
    objects = select_objects(mask, classes, cfg, rng, instances)
    h, w = mask.shape
    p = cfg.n_pos + cfg.n_neg
    valid = mask != classes.ignore_index if classes.ignore_index is not None else np.ones((h, w), bool)
    points, labels, boxes = [], [], []
    targets = [_as_mask(coords, (h, w)) for _, coords in objects]
    for obj in targets:
        pts, lab = _points(rng, obj, valid, cfg.n_pos, cfg.n_neg)
        points.append(pts)
        labels.append(lab)
        boxes.append(_box(rng, obj, cfg.box_noise))
    out = Prompts(points=np.stack(points) if points else np.zeros((0, p, 2), np.float32),
                  point_labels=np.stack(labels) if labels else np.zeros((0, p), np.int32),
                  boxes=np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
                  has_box=rng.random(len(objects)) < cfg.p_box,
                  class_ids=np.array([c for c, _ in objects], np.int64),
                  targets=np.stack(targets) if targets else np.zeros((0, h, w), bool))
    n_bg = getattr(cfg, "n_background", 0)
    return _add_background_clicks(out, mask, classes, cfg.exclude, valid, instances, rng, n_bg) if n_bg else out


def _add_background_clicks(p: Prompts, mask, classes: ClassSpec, exclude, valid, instances, rng, n: int) -> Prompts:
    """``n`` extra objects, each one positive click on background (an excluded class, or no instance) with
    an empty target; the other point slots are padding (label -1). Nothing is added without background."""
    excluded = [classes.id_of(c) for c in exclude if c in classes.names]
    if instances is not None:
        background = (np.asarray(instances) == 0) & valid
    else:
        background = np.isin(mask, excluded) & valid
    ys, xs = np.nonzero(background)
    if not len(ys) or not excluded:
        return p
    pick = rng.integers(0, len(ys), n)
    slots = p.points.shape[1]
    pts = np.zeros((n, slots, 2), np.float32)
    pts[:, 0] = np.stack([xs[pick], ys[pick]], 1)
    lab = np.full((n, slots), -1, np.int32)
    lab[:, 0] = 1
    h, w = mask.shape
    return Prompts(points=np.concatenate([p.points, pts]), point_labels=np.concatenate([p.point_labels, lab]),
                   boxes=np.concatenate([p.boxes, np.zeros((n, 4), np.float32)]),
                   has_box=np.concatenate([p.has_box, np.zeros(n, bool)]),
                   class_ids=np.concatenate([p.class_ids, np.full(n, excluded[0], np.int64)]),
                   targets=np.concatenate([p.targets, np.zeros((n, h, w), bool)]))
