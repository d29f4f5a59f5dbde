"""Label maps drawn over their image, and PNG writing that a resumed run can trust.

:func:`overlay` tints each pixel with its class colour, ``out = (1 - alpha) * image + alpha * colour``, and
with ``outline`` draws every region's border (the outermost pixels of each region, so the lines stay inside
it: ``skimage.segmentation.find_boundaries(mode="inner")``) in the full colour, so small regions and touching
classes stay visible at a glance. Pixels with ``ignore_index`` and classes whose colour is ``None`` (e.g.
background) are left as they are. ``colors`` is usually ``ClassSpec.colors()``; a heatmap is drawn with
``overlay(image, mask.astype(int), [None, (255, 0, 0)])``.

:func:`save_png` is ``sam_histo.files.save_png``, the one PNG writer of the package (atomic).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from sam_histo.files import save_png  # noqa: F401  (the one PNG writer; re-exported for callers)

Color = Optional[Sequence[int]]


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image has dtype {image.dtype}; expected uint8 (H, W, 3) RGB or (H, W) grey")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[..., :3]
    raise ValueError(f"image has shape {image.shape}; expected (H, W, 3), (H, W, 4) or (H, W)")


def _palette(colors: Sequence[Color]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float colours and (N,) bool 'is drawn'."""
    lut = np.zeros((len(colors), 3), np.float32)
    drawn = np.zeros(len(colors), bool)
    for i, c in enumerate(colors):
        if c is None:
            continue
        if len(c) != 3 or not all(0 <= int(v) <= 255 for v in c):
            raise ValueError(f"colors[{i}]={c!r} must be an (R, G, B) triple of 0..255 or None (not drawn)")
        lut[i], drawn[i] = c, True
    return lut, drawn


def overlay(
    image: np.ndarray,
    label_map: np.ndarray,
    colors: Sequence[Color],
    alpha: float = 0.45,
    ignore_index: Optional[int] = None,
    outline: bool = True,
) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` tinted by ``label_map`` (H, W) ids with ``colors[id]``.

    image: uint8 (H, W, 3) RGB, (H, W, 4) (alpha dropped) or (H, W) grey; alpha in [0, 1].
    """
    rgb = _rgb(image)
    labels = np.asarray(label_map)
    if labels.shape != rgb.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label map {labels.shape} {labels.dtype} must be integer ids of the image's "
                         f"size {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    if labels.size and (labels.min() < 0 or labels.max() >= len(colors)):
        raise ValueError(f"label ids span {labels.min()}..{labels.max()} but {len(colors)} colours were given")
    lut, drawn = _palette(colors)
    paint = drawn[labels]
    if ignore_index is not None:
        paint &= labels != ignore_index
    out = rgb.astype(np.float32)
    out[paint] = (1.0 - alpha) * out[paint] + alpha * lut[labels[paint]]
    if outline:
        edge = find_boundaries(labels, mode="inner") & paint
        out[edge] = lut[labels[edge]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
