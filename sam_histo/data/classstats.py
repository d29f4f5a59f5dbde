"""Class statistics of a data split and the class weights derived from them.

Everything starts from one (N samples, C ids) table of pixel counts (``Adapter.class_counts``), which the
BCSS and LGG adapters fill from their index pass without decoding an RGB image; ``compute_stats`` can also
cache it as JSON (e.g. in the run folder) keyed by the dataset's fingerprint.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sam_histo.data.types import ClassSpec

log = logging.getLogger("sam_histo.data")


@dataclass
class ClassStats:
    """Pixel counts per sample and class id; every derived number excludes the ignore id."""

    names: tuple[str, ...]
    ignore_index: Optional[int]
    counts: np.ndarray  # (N, C) int64
    fingerprint: str = ""

    @property
    def classes(self) -> ClassSpec:
        return ClassSpec(tuple(self.names), self.ignore_index)

    @property
    def trained_ids(self) -> list[int]:
        return self.classes.trained_ids

    def _kept(self) -> np.ndarray:
        kept = self.counts.astype(np.int64)
        if self.ignore_index is not None:
            kept = kept.copy()
            kept[:, self.ignore_index] = 0
        return kept

    @property
    def pixels(self) -> np.ndarray:
        """(C,) pixels of each id over the split (0 for the ignore id)."""
        return self._kept().sum(0)

    @property
    def pixel_fraction(self) -> np.ndarray:
        """(C,) share of the non-ignored pixels in each class, in [0, 1]; 0 for the ignore id."""
        total = self.pixels.sum()
        return self.pixels / total if total else np.zeros(len(self.names))

    @property
    def image_share(self) -> np.ndarray:
        """(C,) share of samples that contain each class, in [0, 1]; 0 for the ignore id."""
        n = len(self.counts)
        return (self._kept() > 0).sum(0) / n if n else np.zeros(len(self.names))

    @property
    def ignored_fraction(self) -> float:
        """Share of all pixels that carry the ignore id (0 without one)."""
        total = self.counts.sum()
        if self.ignore_index is None or not total:
            return 0.0
        return float(self.counts[:, self.ignore_index].sum() / total)

    @property
    def present(self) -> np.ndarray:
        """(C,) bool: trained classes with at least one pixel."""
        out = self.pixels > 0
        if self.ignore_index is not None:
            out[self.ignore_index] = False
        return out

    def rarest(self) -> np.ndarray:
        """(N,) id of each sample's rarest present class (lowest split-wide pixel fraction); -1 if none."""
        kept = self._kept() > 0
        frac = np.where(kept, self.pixel_fraction[None, :], np.inf)
        out = frac.argmin(1)
        out[~kept.any(1)] = -1
        return out

    def to_json(self) -> dict:
        return {"names": list(self.names), "ignore_index": self.ignore_index, "fingerprint": self.fingerprint,
                "counts": self.counts.tolist()}

    @classmethod
    def from_json(cls, obj: dict) -> "ClassStats":
        counts = np.asarray(obj["counts"], np.int64).reshape(-1, len(obj["names"]))
        return cls(tuple(obj["names"]), obj["ignore_index"], counts, obj.get("fingerprint", ""))


def compute_stats(dataset, cache: str | Path | None = None, progress: bool = True) -> ClassStats:
    """Class statistics of an adapter; with ``cache`` (a JSON path) they are reused while the dataset's
    fingerprint is unchanged, so a run computes them once."""
    fingerprint = dataset.fingerprint()
    if cache is not None and Path(cache).is_file():
        try:
            stats = ClassStats.from_json(json.loads(Path(cache).read_text()))
            if stats.fingerprint == fingerprint and stats.names == tuple(dataset.classes.names):
                return stats
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is recomputed
    spec = dataset.classes
    stats = ClassStats(tuple(spec.names), spec.ignore_index, dataset.class_counts(progress), fingerprint)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        Path(cache).write_text(json.dumps(stats.to_json()))
    return stats


def _check_names(names, known, key: str) -> None:
    from sam_histo.config import ConfigError, nearest

    for name in names:
        if name not in known:
            raise ConfigError(f"{key} names class {name!r}, not one of {list(known)}" + nearest(name, known))


def class_weights(stats: ClassStats, cfg) -> np.ndarray:
    """Loss weight of every class id: (C,) float32; the ignore id gets 0.

    ``cfg`` is a ClassWeightConfig. Present trained classes get ``(f_max / f) ** power`` (f = pixel
    fraction, so the most frequent class starts at 1: FIELD_NOTES' BCSS list tumor 1.0 ... blood_vessel
    15.9 is this with power 1), clipped to ``cfg.clip``, then scaled to mean 1 over the present trained
    classes. Trained classes absent from the split get 1. ``cfg.override`` sets named weights last.
    """
    frac = stats.pixel_fraction
    present = stats.present
    w = np.ones(len(stats.names), np.float64)
    if present.any():
        raw = (frac[present].max() / frac[present]) ** cfg.power
        raw = np.clip(raw, cfg.clip[0], cfg.clip[1])
        w[present] = raw / raw.mean()
    trained = [n for i, n in enumerate(stats.names) if i != stats.ignore_index]
    absent = [n for i, n in enumerate(stats.names) if i != stats.ignore_index and not present[i]]
    if absent:
        log.warning("class(es) %s appear in no mask of this split: weight 1, and the model cannot learn them "
                    "from it; check data.classes / data.grouping or the split fractions", ", ".join(absent))
    _check_names(cfg.override, trained, "sampling.class_weights.override")
    for name, value in cfg.override.items():
        w[stats.names.index(name)] = value
    if stats.ignore_index is not None:
        w[stats.ignore_index] = 0.0
    return w.astype(np.float32)
