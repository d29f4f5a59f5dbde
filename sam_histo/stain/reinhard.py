"""Reinhard colour transfer in CIE L*a*b* (Reinhard et al. 2001): match per-channel mean and std.

The sRGB <-> L*a*b* (D65) conversions are our own float32 versions of scikit-image's ``rgb2lab`` /
``lab2rgb`` formulas (same constants; a test compares them with scikit-image on random colours): the
sRGB decoding is a 256-entry table and the encoding back to uint8 is a ``searchsorted`` against the 255
level boundaries, so no ``pow`` runs per pixel. ``sam-histo bench stain`` does not time this path, but on
a 1000x1000 tile it is several times faster than ``skimage.color.rgb2lab`` + ``lab2rgb`` (float64).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from sam_histo.stain.base import FallbackCounter, InsufficientStain, StainError, check_rgb

# sRGB (D65) -> XYZ, as in scikit-image's colorconv.xyz_from_rgb; white point D65 (2 degree observer).
XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_EPS = (6.0 / 29.0) ** 3  # CIE linear-segment threshold
# Tissue for the statistics: L* below this (white background is L* ~ 95-100).
TISSUE_L_MAX = 85.0
MIN_TISSUE_PIXELS = 64
# Below this L* standard deviation a tile is flat (one colour): its statistics cannot be matched.
MIN_L_STD = 0.5
# Per-channel std ratio is clipped to this range so near-flat tiles are not blown up into noise.
SCALE_RANGE = (0.25, 4.0)


def _srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


_LINEAR_OF_LEVEL = _srgb_decode(np.arange(256) / 255.0)  # (256,) float64
# Linear intensity at the midpoint between consecutive uint8 levels: the rounding boundaries.
_LEVEL_BOUNDS = _srgb_decode((np.arange(255) + 0.5) / 255.0).astype(np.float32)


def rgb_to_lab(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 sRGB -> (H, W, 3) float32 L* (0-100), a*, b*."""
    img = check_rgb(img)
    m = (XYZ_FROM_RGB / WHITE_D65[:, None]).astype(np.float32)  # XYZ already divided by the white
    lin = np.take(_LINEAR_OF_LEVEL.astype(np.float32), img.reshape(-1, 3))
    xyz = lin @ m.T
    f = np.where(xyz > _EPS, np.cbrt(xyz), xyz * np.float32(1.0 / (3 * (6 / 29) ** 2)) + np.float32(4 / 29))
    lab = np.empty_like(f)
    lab[:, 0] = 116.0 * f[:, 1] - 16.0
    lab[:, 1] = 500.0 * (f[:, 0] - f[:, 1])
    lab[:, 2] = 200.0 * (f[:, 1] - f[:, 2])
    return lab.reshape(img.shape)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(H, W, 3) float L*a*b* -> (H, W, 3) uint8 sRGB (out-of-gamut colours clipped, rounded)."""
    shape = lab.shape
    lab = np.asarray(lab, np.float32).reshape(-1, 3)
    f = np.empty_like(lab)
    f[:, 1] = (lab[:, 0] + 16.0) / 116.0
    f[:, 0] = f[:, 1] + lab[:, 1] / 500.0
    f[:, 2] = np.maximum(f[:, 1] - lab[:, 2] / 200.0, 0.0)  # out of gamut: as skimage's _lab2xyz
    xyz = np.where(f > 6 / 29, f * f * f, np.float32(3 * (6 / 29) ** 2) * (f - np.float32(4 / 29)))
    m = (RGB_FROM_XYZ * WHITE_D65[None, :]).astype(np.float32)
    lin = xyz @ m.T
    # uint8 level = number of rounding boundaries below the linear value (sRGB encoding is monotone).
    return np.searchsorted(_LEVEL_BOUNDS, lin.ravel()).astype(np.uint8).reshape(shape)


def lab_stats(images, tissue_l_max: float = TISSUE_L_MAX) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel L*a*b* mean and std (each (3,) float64) over the tissue pixels (L* < tissue_l_max)
    of one tile or a list of tiles, and the number of those pixels."""
    images = images if isinstance(images, (list, tuple)) else [images]
    labs = [rgb_to_lab(im).reshape(-1, 3) for im in images]
    lab = np.concatenate(labs) if len(labs) > 1 else labs[0]
    lab = lab[lab[:, 0] < tissue_l_max]
    if lab.shape[0] == 0:
        return np.full(3, np.nan), np.full(3, np.nan), 0
    return lab.mean(axis=0, dtype=np.float64), lab.std(axis=0, dtype=np.float64), int(lab.shape[0])


class ReinhardNormalizer:
    """Match a tile's L*a*b* mean and std to the reference's, both measured on tissue pixels.

    Statistics come from tissue only (L* < ``tissue_l_max``), not the whole tile as in Reinhard's
    paper: on a mostly-white tile (the usual reason Macenko falls back) whole-tile statistics would
    drag the white background to the reference's tissue colour. A tile with fewer than
    ``min_pixels`` tissue pixels or a flat one (L* std < MIN_L_STD) is returned unchanged and counted
    in ``counter`` as a fallback.
    """

    def __init__(self, counter: Optional[FallbackCounter] = None, *, tissue_l_max: float = TISSUE_L_MAX,
                 min_pixels: int = MIN_TISSUE_PIXELS):
        self.counter = counter if counter is not None else FallbackCounter()
        self.tissue_l_max, self.min_pixels = float(tissue_l_max), int(min_pixels)
        self.mean: Optional[np.ndarray] = None
        self.std: Optional[np.ndarray] = None

    def fit(self, references) -> "ReinhardNormalizer":
        refs = [check_rgb(r, "reference") for r in (references if isinstance(references, (list, tuple))
                                                    else [references])]
        self.mean, self.std, n = lab_stats(refs, self.tissue_l_max)
        if n < self.min_pixels or self.std[0] < MIN_L_STD:
            raise StainError(f"Reinhard reference unusable: {n} tissue pixels (L* < {self.tissue_l_max}), "
                             f"L* std {self.std[0]:.3g}; choose tile(s) with stained tissue")
        return self

    def lab_transform(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lab, scale, shift): the tile's L*a*b* and the per-channel map ``lab * scale + shift``."""
        if self.mean is None:
            raise StainError("ReinhardNormalizer is not fitted: call fit(reference_tiles) first")
        lab = rgb_to_lab(img)
        flat = lab.reshape(-1, 3)
        tissue = flat[flat[:, 0] < self.tissue_l_max]
        if tissue.shape[0] < self.min_pixels:
            raise InsufficientStain("too little tissue", f"{tissue.shape[0]} pixels with L* < {self.tissue_l_max}")
        mean = tissue.mean(axis=0, dtype=np.float64)
        std = tissue.std(axis=0, dtype=np.float64)
        if not np.all(np.isfinite(std)) or std[0] < MIN_L_STD:
            raise InsufficientStain("flat tile", f"L* std {std[0]:.3g} < {MIN_L_STD}")
        scale = np.clip(self.std / np.maximum(std, 1e-6), *SCALE_RANGE)
        return lab, scale, self.mean - mean * scale

    def transform(self, img) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W, 3) uint8 with the reference's colour statistics."""
        img = check_rgb(img)
        try:
            lab, scale, shift = self.lab_transform(img)
        except InsufficientStain as e:
            self.counter.record(True, f"reinhard: {e.reason}")
            return img.copy()
        self.counter.record(False)
        return self.apply(lab, scale, shift)

    @staticmethod
    def apply(lab: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 L*a*b* (modified in place) -> uint8 RGB of ``lab * scale + shift``."""
        lab *= scale.astype(np.float32)
        lab += shift.astype(np.float32)
        return lab_to_rgb(lab)

    __call__ = transform
