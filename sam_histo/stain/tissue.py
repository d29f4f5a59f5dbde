"""HSV tissue detection for H&E: stained tissue is saturated and not bright; glass is bright and grey.

The rule that worked on the LGG crops (FIELD_NOTES): saturation > 15 and value < 240 on a 0-255 scale,
then a morphological close (fills gaps between nuclei) followed by an open (removes specks of dust), both
with a square kernel. Saturation and value are the standard HSV ones (V = max(R,G,B),
S = (V - min(R,G,B)) / V), the same quantities as ``skimage.color.rgb2hsv`` scaled to 0-255.
"""
from __future__ import annotations

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
