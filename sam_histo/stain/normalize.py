"""Stain normalisation to a configured reference: the normaliser from a StainConfig and its
albumentations transform."""
from __future__ import annotations

from typing import Any, Optional, Union

import albumentations as A
import numpy as np

from sam_histo.config import ConfigError, StainConfig
from sam_histo.stain.base import FallbackCounter, StainError, check_rgb, load_references
from sam_histo.stain.macenko import MacenkoNormalizer
from sam_histo.stain.reinhard import ReinhardNormalizer

Normalizer = Union[MacenkoNormalizer, ReinhardNormalizer]


def make_normalizer(cfg: StainConfig, method: Optional[str] = None,
                    counter: Optional[FallbackCounter] = None) -> Normalizer:
    """An unfitted normaliser for ``method`` (default ``cfg.method``) with the config's parameters."""
    method = method or cfg.method
    if method == "macenko":
        return MacenkoNormalizer(cfg.io, cfg.alpha, cfg.beta, fallback=cfg.fallback,
                                 min_pixels=cfg.min_stained_pixels, counter=counter)
    if method == "reinhard":
        return ReinhardNormalizer(counter=counter)
    raise ConfigError(f"stain.method={method!r}: choose 'macenko' or 'reinhard' to normalise")


def build_normalizer(cfg: StainConfig, counter: Optional[FallbackCounter] = None) -> Optional[Normalizer]:
    """The normaliser fitted on ``cfg.reference`` (a tile or a folder of tiles), or None for method none."""
    if cfg.method == "none":
        return None
    if not cfg.reference:
        raise ConfigError(f"stain.method={cfg.method} needs stain.reference (an RGB tile or a folder of tiles)")
    try:
        refs = load_references(cfg.reference)
        return make_normalizer(cfg, counter=counter).fit(refs)
    except StainError as e:
        raise ConfigError(f"stain.reference={cfg.reference!r}: {e}") from None


def is_grey(img: np.ndarray) -> bool:
    """True when the three channels are equal everywhere (a grey tile read as RGB)."""
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]))


class StainNormalize(A.ImageOnlyTransform):
    """Albumentations wrapper of a fitted Macenko or Reinhard normaliser (always applied by default).

    Image: (H, W, 3) uint8 RGB -> same. Fallbacks go to ``normalizer.counter`` (also ``self.counter``).
    The normalisation of a tile is a function of its pixels, and training normalises the whole tile again for
    every crop of it, so results are kept per process for the last tiles seen (keyed by a digest of their
    pixels, up to ``cache_bytes``): a repeat costs a hash and a copy, and counts (with its fallback) as the
    first did.
    """

    def __init__(self, normalizer: Normalizer, p: float = 1.0, cache_bytes: int = 128 << 20):
        super().__init__(p=p)
        self.normalizer = normalizer
        self.cache_bytes = int(cache_bytes)
        self._cache: dict = {}  # digest -> (normalised image, fallback reason or None); insertion = LRU order

    @property
    def counter(self) -> FallbackCounter:
        return self.normalizer.counter

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        img = check_rgb(img, "StainNormalize input")
        if is_grey(img):  # a grey (L) tile has no stain to normalise: colouring it would invent one
            self.counter.record(True, "grey image, left unchanged")
            return img
        key = _digest(img) if img.nbytes <= self.cache_bytes else None  # a tile too big to keep is not hashed
        hit = self._cache.pop(key, None) if key is not None else None
        if hit is not None:
            self._cache[key] = hit  # most recent last
            self.counter.record(hit[1] is not None, hit[1] or "")
            return hit[0].copy()
        before = dict(self.counter.reasons)  # per process, unlike the shared totals
        out = self.normalizer.transform(img)
        if key is not None:
            reason = next((r for r, n in self.counter.reasons.items() if n > before.get(r, 0)), None)
            self._cache[key] = (out.copy(), reason)
            while sum(v[0].nbytes for v in self._cache.values()) > self.cache_bytes:
                self._cache.pop(next(iter(self._cache)))
        return out

    def __getstate__(self) -> dict:  # a spawned worker starts with an empty cache, not a pickled copy
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("normalizer",)


def _digest(img: np.ndarray) -> tuple:
    import hashlib

    return img.shape, hashlib.blake2b(np.ascontiguousarray(img).data, digest_size=16).digest()
