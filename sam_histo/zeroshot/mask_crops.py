"""Square image crops around masks, for classifying each mask with CLIP. Pure numpy + torch resize.

Each crop is the mask's bounding box grown by a context margin and made square (so cells and glands keep
their aspect ratio), at least ``min_side`` pixels, padded with ``fill`` where it leaves the image, optionally
with the pixels outside the mask set to ``fill`` too, then resized (bilinear, antialiased) to ``size``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def as_mask_stack(masks, shape: tuple[int, int]) -> np.ndarray:
    """Masks as bool [K, H, W]; accepts an array [K, H, W] or a list of [H, W] arrays; checks the shape."""
    if isinstance(masks, np.ndarray) and masks.ndim == 3:
        stack = masks.astype(bool, copy=False)
    elif len(masks) == 0:
        stack = np.zeros((0, *shape), bool)
    else:
        stack = np.stack([np.asarray(m, dtype=bool) for m in masks])
    if stack.shape[1:] != tuple(shape):
        raise ValueError(f"masks have shape {stack.shape[1:]} but the image is {tuple(shape)}")
    return stack


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """bool [K, H, W] -> int64 [K, 4] boxes (x0, y0, x1, y1), end-exclusive; an empty mask raises ValueError."""
    rows = masks.any(axis=2)  # [K, H]
    cols = masks.any(axis=1)  # [K, W]
    boxes = np.zeros((len(masks), 4), np.int64)
    for k in range(len(masks)):
        ys, xs = np.flatnonzero(rows[k]), np.flatnonzero(cols[k])
        if ys.size == 0:
            raise ValueError(f"mask {k} is empty; drop empty masks before classifying them")
        boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def square_boxes(boxes: np.ndarray, margin: float, min_side: int) -> np.ndarray:
    """Grow boxes [K, 4] to squares of side max(w, h) * (1 + 2 * margin), at least ``min_side``, same centre.

    The result may leave the image (negative or too large coordinates); crops pad those parts.
    """
    boxes = np.asarray(boxes, np.float64)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(np.ceil(np.maximum(w, h) * (1 + 2 * margin)), min_side).astype(np.int64)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    x0 = np.floor(cx - side / 2).astype(np.int64)
    y0 = np.floor(cy - side / 2).astype(np.int64)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def mask_crops(image: np.ndarray, masks, size: int, *, margin: float = 0.25, min_side: int = 32,
               blank_background: bool = False, fill: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Crops around masks: uint8 image [H, W, 3] + masks (see ``as_mask_stack``) -> uint8 [K, size, size, 3]."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    masks = as_mask_stack(masks, image.shape[:2])
    out = np.empty((len(masks), size, size, 3), np.uint8)
    if not len(masks):
        return out
    fill = np.asarray(fill, np.uint8)
    for k, box in enumerate(square_boxes(mask_boxes(masks), margin, min_side)):
        canvas = _padded_crop(image, box, fill)
        if blank_background:
            canvas[~_padded_crop(masks[k][..., None], box, np.zeros(1, bool))[..., 0]] = fill
        out[k] = _resize(canvas, size)
    return out


def _padded_crop(array: np.ndarray, box, fill: np.ndarray) -> np.ndarray:
    """array[y0:y1, x0:x1] for a box that may leave the array; outside pixels get ``fill``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = array.shape[:2]
    canvas = np.empty((y1 - y0, x1 - x0, array.shape[2]), array.dtype)
    canvas[...] = fill
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return canvas


def _resize(canvas: np.ndarray, size: int) -> np.ndarray:
    if canvas.shape[0] == size and canvas.shape[1] == size:
        return canvas
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
