"""Automatic candidate masks of EM slices: a grid of point prompts through the prompted decoder.

Why not ``SAM2AutomaticMaskGenerator``: it binarises inside ``generate``, so every decoding setting of a sweep
would run the network again, and it cannot average logits over test-time views. Running the same steps here
(grid of single positive points, three masks per point, logits at full resolution, as its ``_process_batch``
does through ``SAM2ImagePredictor._predict``, which ``forward_prompted`` equals) keeps the logits: one pass
gives the candidates of every setting (``decode.Candidates``), and the views are averaged before any
threshold. The image is encoded once per view and the prompts go through the decoder
``points_per_batch`` at a time.

Test-time views (``em.tta``): the slice is flipped or rotated, the grid points moved with it, and each view's
logits, predicted IoU and object scores are mapped back to the original frame and averaged per point and per
mask output. A flip or rotation of a square grid maps it onto itself, so every view prompts the same
places of the slice.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from sam_histo.data.types import Prompts
from sam_histo.em.decode import Candidates


class View(NamedTuple):
    """image: (H, W, ...) -> viewed array; point: (x, y) continuous coordinates of an (H, W) slice, with
    (H, W) -> coordinates in the view; back: view-frame logits (..., h', w') tensor -> original frame."""

    image: Callable[[np.ndarray], np.ndarray]
    point: Callable[[np.ndarray, int, int], np.ndarray]
    back: Callable[[torch.Tensor], torch.Tensor]


def _xy(x, y) -> np.ndarray:
    return np.stack([x, y], axis=-1).astype(np.float32)


# np.rot90(a, 1)[i, j] = a[j, W - 1 - i]: a point (x, y) moves to (y, W - x) in continuous coordinates.
VIEWS: dict[str, View] = {
    "identity": View(lambda a: a, lambda p, h, w: p, lambda t: t),
    "hflip": View(lambda a: a[:, ::-1], lambda p, h, w: _xy(w - p[..., 0], p[..., 1]),
                  lambda t: torch.flip(t, dims=(-1,))),
    "vflip": View(lambda a: a[::-1], lambda p, h, w: _xy(p[..., 0], h - p[..., 1]),
                  lambda t: torch.flip(t, dims=(-2,))),
    "rot90": View(lambda a: np.rot90(a, 1), lambda p, h, w: _xy(p[..., 1], w - p[..., 0]),
                  lambda t: torch.rot90(t, -1, dims=(-2, -1))),
    "rot180": View(lambda a: np.rot90(a, 2), lambda p, h, w: _xy(w - p[..., 0], h - p[..., 1]),
                   lambda t: torch.rot90(t, 2, dims=(-2, -1))),
    "rot270": View(lambda a: np.rot90(a, 3), lambda p, h, w: _xy(h - p[..., 1], p[..., 0]),
                   lambda t: torch.rot90(t, 1, dims=(-2, -1))),
}


def point_grid(n: int, height: int, width: int) -> np.ndarray:
    """(n * n, 2) float32 (x, y): cell centres of an n x n grid over the slice (SAM2's ``build_point_grid``
    scaled to the slice), row by row."""
    centres = (np.arange(n, dtype=np.float64) + 0.5) / n
    xs, ys = np.meshgrid(centres * width, centres * height)
    return _xy(xs.ravel(), ys.ravel())


def view_names(em) -> list[str]:
    """The views one slice is decoded under: identity, plus ``em.tta_views`` when ``em.tta``."""
    extra = [v for v in em.tta_views if v != "identity"] if em.tta else []
    unknown = [v for v in extra if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown test-time view(s) {unknown}; the views are {sorted(VIEWS)}")
    return ["identity", *dict.fromkeys(extra)]


def _point_prompts(points: np.ndarray) -> Prompts:
    k = len(points)
    return Prompts(points=points[:, None, :].astype(np.float32), point_labels=np.ones((k, 1), np.int32),
                   boxes=None, has_box=np.zeros(k, bool), class_ids=np.ones(k, np.int64),
                   targets=np.zeros((k, 0, 0), bool))


@torch.inference_mode()
def _view_outputs(model, rgb: np.ndarray, points: np.ndarray, view: View, multimask: bool, batch: int):
    """Yield (logits (K, M, H, W), iou (K, M), obj (K,)) per chunk of points, in the original frame."""
    h, w = rgb.shape[:2]
    image = np.ascontiguousarray(view.image(rgb))
    feats = model.encode(model.preprocess(torch.from_numpy(image)[None]))
    moved = view.point(points, h, w)
    for start in range(0, len(points), batch):
        out = model.forward_prompted(feats, [_point_prompts(moved[start:start + batch])], multimask=multimask,
                                     orig_hw=image.shape[:2])
        yield view.back(out.logits.float()), out.iou_pred.float(), out.object_score[:, 0].float()


class Bounds(NamedTuple):
    """What a candidate must pass to be kept (so that no setting to be decoded could use the dropped ones).

    floor: its logits must exceed this somewhere (the lowest mask threshold minus the stability offset; also
    where its crop ends); iou_floor: its predicted IoU must exceed this (when > 0); ceiling, max_size: with
    max_size > 0, its area at the highest mask threshold must not exceed max_size (areas only grow as the
    threshold falls, so it is too large at every threshold)."""

    floor: float
    iou_floor: float = 0.0
    ceiling: float = 0.0
    max_size: int = 0


def bounds(em, sweep: bool = False) -> Bounds:
    """The Bounds of the configured decoding setting, and with ``sweep`` of every setting of ``em.sweep``."""
    thresholds = [em.mask_threshold, *(em.sweep.mask_threshold if sweep else [])]
    ious = [em.iou_thresh, *(em.sweep.iou_thresh if sweep else [])]
    return Bounds(min(thresholds) - em.stability_offset, min(ious), max(thresholds), em.max_size)


def _cut(logits: torch.Tensor, iou: torch.Tensor, obj: torch.Tensor, b: Bounds, shape) -> Candidates:
    """Candidates from (N, H, W) logits on any device: boxes found there, only the crops copied to the CPU."""
    above = logits > b.floor
    rows, cols = above.any(2), above.any(1)
    keep = rows.any(1)
    if b.iou_floor > 0:
        keep &= iou > b.iou_floor
    if b.max_size > 0:
        keep &= (logits > b.ceiling).flatten(1).sum(1) <= b.max_size
    idx = torch.nonzero(keep).flatten()
    h, w = logits.shape[-2:]
    y0, x0 = rows[idx].float().argmax(1), cols[idx].float().argmax(1)
    y1, x1 = h - rows[idx].flip(1).float().argmax(1), w - cols[idx].flip(1).float().argmax(1)
    boxes = torch.stack([y0, x0, y1, x1], 1).long().cpu().numpy()
    crops = [logits[i, a:c, l:r].cpu().numpy() for i, (a, l, c, r) in zip(idx.tolist(), boxes)]
    return Candidates.from_crops(crops, boxes, iou[idx].cpu().numpy(), obj[idx].cpu().numpy(), shape)


def slice_candidates(model, image: np.ndarray, em, b: Bounds) -> Candidates:
    """Candidate masks of one slice.

    image: (H, W) grey or (H, W, 3) RGB uint8. em: an EmConfig (points_per_side, points_per_batch, multimask,
    obj_score_thresh, tta, tta_views). Kept: candidates whose object score exceeds ``em.obj_score_thresh`` and
    that pass ``b`` (see Bounds).
    """
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"a slice must be (H, W) or (H, W, 3) uint8, got {image.shape} {image.dtype}")
    h, w = rgb.shape[:2]
    points = point_grid(em.points_per_side, h, w)
    views = [VIEWS[v] for v in view_names(em)]
    streams = [_view_outputs(model, rgb, points, v, em.multimask, em.points_per_batch) for v in views]
    parts = []
    for chunks in zip(*streams):  # one chunk of points, every view
        logits = sum(c[0] for c in chunks) / len(chunks)
        iou = sum(c[1] for c in chunks) / len(chunks)
        obj = sum(c[2] for c in chunks) / len(chunks)
        m = logits.shape[1]
        logits, iou, obj = logits.flatten(0, 1), iou.flatten(), obj.repeat_interleave(m)
        sure = obj > em.obj_score_thresh
        parts.append(_cut(logits[sure], iou[sure], obj[sure], b, (h, w)))
    return Candidates.concat(parts, (h, w))


def volume_candidates(model, volume: np.ndarray, em, b: Bounds, progress: bool = True,
                      desc: str = "slices") -> list[Candidates]:
    """``slice_candidates`` of every z-slice of a (Z, H, W) uint8 volume (the model in eval mode)."""
    from tqdm import tqdm

    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (Z, H, W), got shape {volume.shape}")
    was_training = model.training
    model.eval()
    try:
        return [slice_candidates(model, volume[z], em, b)
                for z in tqdm(range(volume.shape[0]), desc=desc, disable=not progress, leave=False)]
    finally:
        model.train(was_training)
