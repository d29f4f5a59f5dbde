"""Label maps drawn over their image, and PNG writing that a resumed run can trust.

:func:`overlay` tints each pixel with its class colour, ``out = (1 - alpha) * image + alpha * colour``, and
(``image`` being the grey level of each tinted pixel, so the class colour is not shifted by the stain), and
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
    alpha: float = 0.5,
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
    # Tint the grey (luminance) of the tissue, not its colour: a tint over pink eosin or blue-purple
    # haematoxylin would change hue (green over pink reads as purple); over grey the class colour stays true
    # and the texture stays visible.
    grey = out[paint] @ np.array([0.299, 0.587, 0.114], np.float32)
    out[paint] = (1.0 - alpha) * grey[:, None] + alpha * lut[labels[paint]]
    if outline:
        edge = find_boundaries(labels, mode="inner") & paint
        out[edge] = lut[labels[edge]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def legend_band(width: int, entries: Sequence[tuple[str, Color]], title: str = "") -> np.ndarray:
    """(h, width, 3) uint8 white band naming each colour: a swatch and its name per entry, in rows that fit
    ``width``; the font grows with the width so the band stays legible when a large tile is viewed whole."""
    from PIL import ImageDraw, ImageFont

    size = int(np.clip(width / 45, 11, 48))
    font = ImageFont.load_default(size=size)
    pad, sw = size // 2, size
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = ([(title, None)] if title else []) + list(entries)
    rows, row, x = [], [], pad
    for text, colour in items:
        w = sw + pad // 2 + int(probe.textlength(text, font=font)) + 2 * pad if colour is not None else \
            int(probe.textlength(text, font=font)) + 2 * pad
        if row and x + w > width:
            rows.append(row)
            row, x = [], pad
        row.append((x, text, colour))
        x += w
    rows.append(row)
    line = size + pad
    band = Image.new("RGB", (width, pad + line * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for r, items_in_row in enumerate(rows):
        y = pad // 2 + r * line
        for x0, text, colour in items_in_row:
            if colour is None:
                draw.text((x0, y), text, fill=(0, 0, 0), font=font)
                continue
            draw.rectangle([x0, y, x0 + sw, y + sw], fill=tuple(int(v) for v in colour), outline=(60, 60, 60))
            draw.text((x0 + sw + pad // 2, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(band)


def overlay_with_legend(image: np.ndarray, label_map: np.ndarray, names: Sequence[str], colors: Sequence[Color],
                        ignore_index: Optional[int] = None, present_only: bool = True) -> np.ndarray:
    """:func:`overlay` with a :func:`legend_band` below it naming the classes drawn (the ignore id as
    "not tissue / ignored": left untinted)."""
    drawn = overlay(image, label_map, colors, ignore_index=ignore_index)
    ids = [int(i) for i in np.unique(label_map)] if present_only else list(range(len(names)))
    return np.concatenate([drawn, class_legend(drawn.shape[1], ids, names, colors, ignore_index)], axis=0)


def class_legend(width: int, ids: Sequence[int], names: Sequence[str], colors: Sequence[Color],
                 ignore_index: Optional[int] = None) -> np.ndarray:
    """The legend band of an overlay drawing the class ``ids`` (the ignore id as "untinted ... (ignored)")."""
    entries = [(names[i], colors[i]) for i in ids if i != ignore_index and colors[i] is not None]
    if ignore_index is not None and ignore_index in ids:
        entries.append((f"untinted: {names[ignore_index]} (ignored)", (255, 255, 255)))
    return legend_band(width, entries, "classes:")
