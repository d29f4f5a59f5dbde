"""Macenko stain normalisation (Macenko et al., ISBI 2009), vectorised and safe on tiles without stain.

Method, with the parameter meanings of the original code and of torchstain's numpy backend
(``torchstain/numpy/normalizers/macenko.py``, read for semantics only):

1. OD = -ln((I + 1) / Io) per channel (Io: background intensity, default 240).
2. Keep pixels whose OD is at least ``beta`` in every channel (default 0.15: drops background).
3. Project those onto the plane of the two leading eigenvectors of their OD covariance; take the
   ``alpha`` and ``100 - alpha`` percentiles of the angle (default alpha = 1) as the two stain
   directions; the one with the larger red OD is hematoxylin (column 0), the other eosin.
4. Concentrations of every pixel by least squares (= the pseudo-inverse of the 3x2 stain matrix,
   computed once); their 99th percentile per stain is ``max_c``.
5. A tile is normalised by rescaling its concentrations by ``max_c_ref / max_c_tile`` and rebuilding
   it with the reference stain matrix: in OD space a single 3x3 linear map (base.od_affine_to_rgb).

Vectorised without per-pixel float work where the uint8 input allows it: OD comes from a 256-entry
table; the covariance from three 256x256 joint histograms (exact, float64); per-pixel projections and
concentrations from gathered tables; percentiles are exact order statistics found by partitioning
only the candidates of a tail (base.percentile, O(n)).

Differences from torchstain, by design: float32 per-pixel values (float64 for the 3x3 algebra), output
rounded (torchstain truncates ``Io * exp(-OD)`` and keeps the ``+ 1`` of step 1, so it sits about half
a level higher), and every degenerate case raises ``InsufficientStain`` instead of propagating NaN,
which ``MacenkoNormalizer.transform`` turns into a counted fallback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from sam_histo.stain.base import (FallbackCounter, InsufficientStain, StainError, channels, check_rgb,
                                  od_affine_to_rgb, od_table, pair_index, percentile)

# A tile below this many stained pixels (OD >= beta in every channel) gets no estimate: the eigen
# decomposition and percentiles are noise there (FIELD_NOTES: empty kthvalue / eigh failures).
MIN_STAINED_PIXELS = 64
# Two stain directions closer than this (radians) mean one colour only: the 3x2 matrix is singular.
MIN_ANGLE = 0.02
# Smallest usable 99th-percentile concentration (OD units); below it the rescaling would divide by ~0.
MIN_MAX_C = 0.01


@dataclass(frozen=True)
class StainEstimate:
    """he: (3, 2) float64 unit OD vectors (hematoxylin, eosin); max_c: (2,) float64 99th-percentile
    concentrations; pinv: (2, 3) float64 pseudo-inverse of ``he``; n_stained: pixels used."""

    he: np.ndarray
    max_c: np.ndarray
    pinv: np.ndarray
    n_stained: int


def _stained_planes(img: np.ndarray, vmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R, G, B (each (N_s,) uint8) of the pixels with OD >= beta in every channel.

    OD falls with intensity, so "OD >= beta in every channel" is "brightest channel <= vmax".
    """
    r, g, b = channels(img)
    keep = np.maximum(np.maximum(r, g), b) <= vmax
    return r[keep], g[keep], b[keep]


def _od_covariance(planes, lut: np.ndarray) -> tuple[np.ndarray, int]:
    """(3, 3) float64 covariance (ddof 1) of stained OD and the pixel count, from pair histograms.

    OD is a function of the uint8 level, so sums of OD products come exactly (in float64) from three
    256x256 joint histograms instead of a float32 pass over every pixel.
    """
    od = lut.astype(np.float64)
    joint = {}
    for i, j in ((0, 1), (0, 2), (1, 2)):
        counts = sum(np.bincount(pair_index(p[i], p[j]), minlength=65536) for p in planes)
        joint[i, j] = counts.reshape(256, 256).astype(np.float64)
    n = int(joint[0, 1].sum())
    hist = [joint[0, 1].sum(axis=1), joint[0, 1].sum(axis=0), joint[0, 2].sum(axis=0)]
    mean = np.array([h @ od for h in hist]) / max(n, 1)
    second = np.empty((3, 3))
    for k in range(3):
        second[k, k] = hist[k] @ (od * od)
    for (i, j), counts in joint.items():
        second[i, j] = second[j, i] = od @ counts @ od
    return (second - n * np.outer(mean, mean)) / max(n - 1, 1), n


def _stain_directions(planes, lut: np.ndarray, alpha: float) -> tuple[np.ndarray, int]:
    """(3, 2) float64 unit stain vectors (hematoxylin first) and the stained-pixel count."""
    cov, n = _od_covariance(planes, lut)
    if n < 2 or not np.all(np.isfinite(cov)):
        raise InsufficientStain("too few stained pixels", f"{n}")
    try:
        _, vecs = np.linalg.eigh(cov)
    except np.linalg.LinAlgError as e:
        raise InsufficientStain("eigendecomposition failed", str(e)) from None
    plane = vecs[:, 1:3].copy()  # (second, first) eigenvector, as in the reference code
    # Stained OD is positive, so orienting the leading eigenvector positive puts every angle in
    # (0, pi): no wrap-around at +-pi. The sign of the other axis only swaps the two percentiles.
    if plane[:, 1].sum() < 0:
        plane[:, 1] *= -1
    phi = np.concatenate([np.arctan2(*_project(p, lut, plane[:, ::-1])) for p in planes])
    lo, hi = percentile(phi, alpha), percentile(phi, 100.0 - alpha)
    if not (np.isfinite(lo) and np.isfinite(hi)) or abs(hi - lo) < MIN_ANGLE:
        raise InsufficientStain("one colour only", "no angular spread between the stain directions")
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    # Hematoxylin absorbs more red than eosin: the vector with the larger red OD goes first.
    return np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], axis=1), n


def _project(planes, lut: np.ndarray, basis: np.ndarray, rg: Optional[np.ndarray] = None) -> list[np.ndarray]:
    """Per-pixel ``OD @ basis[:, j]`` for each column j, as (N,) float32 arrays.

    planes: R, G, B uint8 (N,); basis: (3, m). R and G share a 65536-entry table per column.
    """
    r, g, b = planes
    if rg is None:
        rg = pair_index(r, g)
    od = lut.astype(np.float64)
    out = []
    for j in range(basis.shape[1]):
        t_rg = (od[:, None] * basis[0, j] + od[None, :] * basis[1, j]).astype(np.float32).ravel()
        col = np.take(t_rg, rg)
        col += np.take((od * basis[2, j]).astype(np.float32), b)
        out.append(col)
    return out


def estimate_stains(images, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15,
                    min_pixels: int = MIN_STAINED_PIXELS, rg: Optional[np.ndarray] = None) -> StainEstimate:
    """Stain matrix and 99th-percentile concentrations of one (H, W, 3) uint8 tile or a list of tiles.

    rg: optional ``pair_index(R, G)`` of a single tile (reused by the caller for the output).
    Raises InsufficientStain (with the reason) when the tiles hold too little stain for an estimate.
    """
    images = [check_rgb(im) for im in (images if isinstance(images, (list, tuple)) else [images])]
    lut = od_table(io)
    # The same float64 test as the reference code's ``OD < beta`` decides which levels count.
    vmax = int(np.count_nonzero(-np.log((np.arange(256.0) + 1.0) / io) >= beta)) - 1
    with np.errstate(all="ignore"):
        planes = [_stained_planes(im, vmax) for im in images]
        n = sum(p[0].shape[0] for p in planes)
        if n < max(min_pixels, 2):
            raise InsufficientStain("too few stained pixels", f"{n} < {max(min_pixels, 2)} "
                                    f"with OD >= beta={beta} in every channel")
        he, n = _stain_directions(planes, lut, alpha)
        pinv = np.linalg.pinv(he)
        if not np.all(np.isfinite(pinv)):
            raise InsufficientStain("singular stain matrix")
        # Concentrations of every pixel (background included, as in the original method).
        conc = [_project(channels(im), lut, pinv.T, rg if len(images) == 1 else None) for im in images]
        max_c = np.array([percentile(np.concatenate([c[j] for c in conc]), 99.0) for j in range(2)])
    if not np.all(np.isfinite(max_c)) or np.any(max_c < MIN_MAX_C):
        raise InsufficientStain("a stain is nearly absent", f"99th-percentile concentrations {max_c.round(4)}")
    return StainEstimate(he=he, max_c=max_c, pinv=pinv, n_stained=int(n))


class MacenkoNormalizer:
    """Fit on reference tile(s), then map any RGB uint8 tile to the reference's stain appearance.

    ``fallback``: "reinhard" (LAB statistics of the same reference) or "identity" (input returned
    unchanged) for tiles with too little stain; each fallback increments ``counter.fallbacks``
    (a FallbackCounter, shareable between normalisers and DataLoader workers).
    """

    def __init__(self, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15, *,
                 fallback: str = "reinhard", min_pixels: int = MIN_STAINED_PIXELS,
                 counter: Optional[FallbackCounter] = None):
        if fallback not in ("reinhard", "identity"):
            raise StainError(f"fallback={fallback!r} must be 'reinhard' or 'identity'")
        if not 0 <= alpha < 50:
            raise StainError(f"alpha={alpha} must be a percentile in [0, 50)")
        if io <= 0 or beta < 0:
            raise StainError(f"need io > 0 and beta >= 0, got io={io}, beta={beta}")
        self.io, self.alpha, self.beta = float(io), float(alpha), float(beta)
        self.fallback, self.min_pixels = fallback, int(min_pixels)
        self.counter = counter if counter is not None else FallbackCounter()
        self.reference: Optional[StainEstimate] = None
        self._reinhard = None
        self._lut = od_table(self.io)

    def fit(self, references) -> "MacenkoNormalizer":
        """references: one (H, W, 3) uint8 tile or a list of them (pooled). StainError if unusable."""
        refs = [check_rgb(r, "reference") for r in (references if isinstance(references, (list, tuple))
                                                    else [references])]
        try:
            self.reference = estimate_stains(refs, self.io, self.alpha, self.beta, self.min_pixels)
        except InsufficientStain as e:
            raise StainError(f"Macenko reference unusable: {e}; choose reference tile(s) with "
                             "stained tissue (not background, pen or a single colour)") from None
        if self.fallback == "reinhard":
            from sam_histo.stain.reinhard import ReinhardNormalizer

            self._reinhard = ReinhardNormalizer(counter=FallbackCounter()).fit(refs)
        return self

    @property
    def stain_matrix(self) -> np.ndarray:
        """(3, 2) reference OD vectors, hematoxylin then eosin."""
        return self._fitted().he

    def _fitted(self) -> StainEstimate:
        if self.reference is None:
            raise StainError("MacenkoNormalizer is not fitted: call fit(reference_tiles) first")
        return self.reference

    def od_transform(self, img: np.ndarray, rg: Optional[np.ndarray] = None) -> np.ndarray:
        """(3, 3) map from the tile's OD rows to normalised OD rows; InsufficientStain if degenerate."""
        ref = self._fitted()
        src = estimate_stains(img, self.io, self.alpha, self.beta, self.min_pixels, rg=rg)
        scale = ref.max_c / src.max_c
        return src.pinv.T @ np.diag(scale) @ ref.he.T

    def transform(self, img) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W, 3) uint8 normalised; never raises for lack of stain, never NaN."""
        img = check_rgb(img)
        self._fitted()
        try:
            rg = pair_index(*channels(img)[:2])
            matrix = self.od_transform(img, rg)
            out = od_affine_to_rgb(img, self._lut, matrix, np.zeros(3), self.io, rg=rg)
        except InsufficientStain as e:
            return self._fall_back(img, e.reason)
        except (np.linalg.LinAlgError, FloatingPointError):
            return self._fall_back(img, "linear algebra failure")
        self.counter.record(False)
        return out

    __call__ = transform

    def _fall_back(self, img: np.ndarray, reason: str) -> np.ndarray:
        """Reinhard (if configured and the tile has tissue to measure) else the input; counted once."""
        if self._reinhard is not None:
            try:
                lab, scale, shift = self._reinhard.lab_transform(img)
            except InsufficientStain as e:
                self.counter.record(True, f"macenko: {reason} -> identity (reinhard: {e.reason})")
                return img.copy()
            self.counter.record(True, f"macenko: {reason} -> reinhard")
            return self._reinhard.apply(lab, scale, shift)
        self.counter.record(True, f"macenko: {reason} -> identity")
        return img.copy()
