"""Stain augmentation: HED colour jitter and a Macenko-space stain perturbation, as albumentations
transforms whose randomness comes from the transform's own generator (``A.Compose(..., seed=S)``
reproduces them).

HED jitter (Tellez et al. 2018, "H and E stain augmentation"): colour deconvolution with the fixed
Ruifrok & Johnston H/E/DAB matrix (the one scikit-image's ``rgb2hed``/``hed2rgb`` use), each stain
channel scaled by ``U(1 - alpha, 1 + alpha)`` and shifted by ``U(-beta, beta)``, then recombined.
Units: the shift is in optical density (natural log) per stain; scikit-image's ``rgb2hed`` values are
these divided by ln(1e6) ~ 13.8. Unlike ``rgb2hed`` we do not clamp negative stain amounts to zero,
so the whole map is affine in OD (base.od_affine_to_rgb: two table gathers per pixel) and zero
strength is exactly the identity.
"""
from __future__ import annotations

from typing import Any, Optional

import albumentations as A
import numpy as np

from sam_histo.stain.base import (FallbackCounter, InsufficientStain, StainError, channels, check_rgb,
                                  od_affine_to_rgb, od_table, pair_index)
from sam_histo.stain.macenko import MIN_STAINED_PIXELS, estimate_stains

# Ruifrok & Johnston (2001) OD vectors of hematoxylin, eosin and DAB (rows), as in scikit-image's
# ``skimage.color.rgb_from_hed``; ``hed = od @ HED_FROM_RGB``.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# Background intensity 256 makes od_table's OD(255) = 0, like scikit-image's -ln(I / 255) for white.
_HED_IO = 256.0
_HED_OD = od_table(_HED_IO)


def hed_jitter(img: np.ndarray, scale, shift) -> np.ndarray:
    """(H, W, 3) uint8 -> uint8 with H, E, D amounts mapped to ``hed * scale + shift`` (each (3,))."""
    img = check_rgb(img)
    scale = np.asarray(scale, np.float64).reshape(3)
    shift = np.asarray(shift, np.float64).reshape(3)
    matrix = HED_FROM_RGB @ np.diag(scale) @ RGB_FROM_HED
    return od_affine_to_rgb(img, _HED_OD, matrix, shift @ RGB_FROM_HED, _HED_IO)


def _check_range(name: str, value: float, upper: Optional[float] = None) -> float:
    value = float(value)
    if value < 0 or (upper is not None and value >= upper):
        bound = f" and below {upper}" if upper is not None else ""
        raise ValueError(f"{name}={value} must be >= 0{bound}")
    return value


class HEDJitter(A.ImageOnlyTransform):
    """Per-stain scale ``U(1-alpha, 1+alpha)`` and shift ``U(-beta, beta)`` (OD units) in HED space.

    Image: (H, W, 3) uint8 RGB. ``alpha = beta = 0`` is the identity.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.3, p: float = 0.5):
        super().__init__(p=p)
        self.alpha = _check_range("HEDJitter alpha", alpha, 1.0)
        self.beta = _check_range("HEDJitter beta", beta)

    def get_params(self) -> dict[str, Any]:
        rng = self.random_generator
        return {"scale": rng.uniform(1 - self.alpha, 1 + self.alpha, 3),
                "shift": rng.uniform(-self.beta, self.beta, 3)}

    def apply(self, img: np.ndarray, scale=None, shift=None, **params) -> np.ndarray:
        return hed_jitter(img, scale, shift)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("alpha", "beta")


def ruifrok_he() -> np.ndarray:
    """(3, 2) unit OD vectors of hematoxylin and eosin from the fixed Ruifrok & Johnston matrix."""
    he = RGB_FROM_HED[:2].T.copy()
    return he / np.linalg.norm(he, axis=0, keepdims=True)


def perturb_stains(img: np.ndarray, he: np.ndarray, conc_scale, conc_shift, he_noise, io: float) -> np.ndarray:
    """Re-render a tile with perturbed stain vectors and concentrations, keeping the residual.

    img: (H, W, 3) uint8; he: (3, 2) the tile's unit stain vectors; conc_scale, conc_shift: (2,);
    he_noise: (3, 2) added to ``he`` before re-normalising the columns. With C = OD @ pinv(he).T,
    ``OD' = OD - C @ he.T + (C * conc_scale + conc_shift) @ he'.T``: the part of OD outside the stain
    plane is kept, so zero perturbation returns the input.
    """
    he2 = np.clip(he + np.asarray(he_noise, np.float64), 1e-3, None)
    he2 /= np.linalg.norm(he2, axis=0, keepdims=True)
    pinv_t = np.linalg.pinv(he).T  # (3, 2)
    matrix = np.eye(3) - pinv_t @ he.T + pinv_t @ np.diag(np.asarray(conc_scale, np.float64)) @ he2.T
    offset = np.asarray(conc_shift, np.float64) @ he2.T
    return od_affine_to_rgb(img, od_table(io), matrix, offset, io)


class MacenkoAugment(A.ImageOnlyTransform):
    """Stain augmentation in the tile's own Macenko stain space (cf. torchstain's MacenkoAugmentor,
    which perturbs concentrations only): concentrations scaled by ``U(1-alpha, 1+alpha)`` and shifted
    by ``U(-beta, beta)`` (OD units), and each stain vector moved by Gaussian noise of std ``sigma``.

    A tile whose stains cannot be estimated uses the fixed Ruifrok H&E vectors instead; that fallback
    is counted in ``counter``.
    """

    def __init__(self, alpha: float = 0.2, beta: float = 0.2, sigma: float = 0.05, io: float = 240.0,
                 od_beta: float = 0.15, p: float = 0.5, counter: Optional[FallbackCounter] = None):
        super().__init__(p=p)
        self.alpha = _check_range("MacenkoAugment alpha", alpha, 1.0)
        self.beta = _check_range("MacenkoAugment beta", beta)
        self.sigma = _check_range("MacenkoAugment sigma", sigma)
        self.io, self.od_beta = float(io), float(od_beta)
        self.counter = counter if counter is not None else FallbackCounter()

    def get_params(self) -> dict[str, Any]:
        rng = self.random_generator
        return {"conc_scale": rng.uniform(1 - self.alpha, 1 + self.alpha, 2),
                "conc_shift": rng.uniform(-self.beta, self.beta, 2),
                "he_noise": rng.normal(0.0, self.sigma, (3, 2)) if self.sigma > 0 else np.zeros((3, 2))}

    def apply(self, img: np.ndarray, conc_scale=None, conc_shift=None, he_noise=None, **params) -> np.ndarray:
        img = check_rgb(img)
        try:
            rg = pair_index(*channels(img)[:2])
            he = estimate_stains(img, self.io, 1.0, self.od_beta, MIN_STAINED_PIXELS, rg=rg).he
            self.counter.record(False)
        except (InsufficientStain, np.linalg.LinAlgError) as e:
            reason = e.reason if isinstance(e, InsufficientStain) else "linear algebra failure"
            self.counter.record(True, f"macenko-augment: {reason} -> fixed H&E vectors")
            he = ruifrok_he()
        try:
            return perturb_stains(img, he, conc_scale, conc_shift, he_noise, self.io)
        except (InsufficientStain, np.linalg.LinAlgError) as e:  # pragma: no cover - finite inputs
            raise StainError(f"MacenkoAugment: cannot re-render the tile ({e})") from None

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("alpha", "beta", "sigma", "io", "od_beta")
