"""HSV tissue detection for H&E: stained tissue is saturated and not bright; glass is bright and grey.

The rule that worked on the LGG crops (FIELD_NOTES): saturation > 15 and value < 240 on a 0-255 scale,
then a morphological close (fills gaps between nuclei) followed by an open (removes specks of dust), both
with a square kernel. Saturation and value are the standard HSV ones (V = max(R,G,B),
S = (V - min(R,G,B)) / V), the same quantities as ``skimage.color.rgb2hsv`` scaled to 0-255.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of an RGB uint8 (H, W, 3) image, each (H, W) float32 in [0, 255]."""
    rgb = np.asarray(rgb)
    hi = rgb.max(axis=-1).astype(np.float32)
    lo = rgb.min(axis=-1).astype(np.float32)
    sat = np.divide((hi - lo) * 255.0, hi, out=np.zeros_like(hi), where=hi > 0)
    return sat, hi


def tissue_mask(rgb: np.ndarray, cfg) -> np.ndarray:
    """Tissue pixels of an RGB uint8 (H, W, 3) image: bool (H, W).

    ``cfg`` is a TissueConfig: ``sat_min`` and ``val_max`` on the 0-255 scale, ``kernel`` the side of the
    square used to close then open the raw mask (0 or 1 disables the clean-up).
    """
    from skimage.morphology import closing, footprint_rectangle, opening

    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"tissue_mask expects RGB uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    sat, val = saturation_value(rgb)
    mask = (sat > cfg.sat_min) & (val < cfg.val_max)
    if cfg.kernel > 1:
        fp = footprint_rectangle((cfg.kernel, cfg.kernel))
        mask = opening(closing(mask, fp), fp)
    return mask.astype(bool)


BAND = 512  # rows per band of tissue_mask_rows


def tissue_mask_rows(rows, h: int, w: int, cfg, band: Optional[int] = None) -> tuple[np.ndarray, bool]:
    """:func:`tissue_mask` of an (h, w) image read by ``rows(y0, y1) -> uint8 (y1 - y0, w, 3)``, a band at a
    time, and whether the image is grey (no pixel with R, G, B unequal: HSV finds no stain there).

    Equal to the whole-image mask: each band is computed with ``2 * kernel`` rows of context on either
    side, more than the close and the open reach (each of their four passes moves a pixel's influence by
    less than ``kernel`` rows). Memory: one band of pixels besides the (h, w) bool result.
    """
    band = band or BAND
    mask = np.empty((h, w), bool)
    halo = 2 * cfg.kernel if cfg.kernel > 1 else 0
    grey = True
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        a, b = max(0, y0 - halo), min(h, y1 + halo)
        rgb = rows(a, b)
        grey = grey and not (rgb[y0 - a:y1 - a].max(-1) != rgb[y0 - a:y1 - a].min(-1)).any()
        mask[y0:y1] = tissue_mask(rgb, cfg)[y0 - a:y1 - a]
    return mask, grey
