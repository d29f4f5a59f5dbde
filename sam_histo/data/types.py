"""The types every adapter, sampler, model and evaluator share.

A ``Sample`` is one 2-D tile: RGB uint8 (H, W, 3), a class map int64 (H, W) whose values are ids into
``ClassSpec.names`` (the ignore id included), an optional instance map int64 (H, W) with 0 = none, and
metadata naming its source file so any error or report can point back to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from sam_histo.errors import DataError  # noqa: F401  (re-exported: data.types.DataError)

# Distinct colours for overlays and reports (class id -> RGB); the ignore id is drawn black.
# Class colours: Okabe & Ito's colour-blind-safe set, without its reddish purple (reads as eosin) and with
# the blues kept for ids that are not tissue classes of H&E (id 0: LGG background, ignored in BCSS), so a
# tint never looks like haematoxylin (blue-purple) or eosin (pink). Ids 1-6 (BCSS: tumor, stroma,
# lymphocytic_infiltrate, necrosis_or_debris, blood_vessel, other) are orange, bluish green, sky blue,
# vermillion, yellow and neutral grey; further ids repeat darker shades.
PALETTE = [
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (86, 180, 233), (213, 94, 0), (240, 228, 66),
    (160, 160, 160), (153, 102, 0), (0, 102, 77), (43, 90, 117), (128, 60, 0), (153, 145, 40),
]


@dataclass(frozen=True)
class ClassSpec:
    """Class ids in order from 0. ``ignore_index`` (if set) is one of those ids and never a class."""

    names: tuple[str, ...]
    ignore_index: Optional[int] = None

    def __post_init__(self):
        if self.ignore_index is not None and not 0 <= self.ignore_index < len(self.names):
            raise ValueError(f"ignore_index {self.ignore_index} is not an id of {self.names}")

    @property
    def num_classes(self) -> int:
        """Number of ids, the ignore id included (the width of a class-logit tensor)."""
        return len(self.names)

    @property
    def trained_ids(self) -> list[int]:
        return [i for i in range(len(self.names)) if i != self.ignore_index]

    @property
    def trained_names(self) -> list[str]:
        return [self.names[i] for i in self.trained_ids]

    def id_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown class {name!r}; classes are {list(self.names)}") from None

    def colors(self) -> list[tuple[int, int, int]]:
        return [
            (0, 0, 0) if i == self.ignore_index else PALETTE[i % len(PALETTE)]
            for i in range(len(self.names))
        ]

    def to_json(self) -> dict:
        return {
            "names": list(self.names),
            "ids": list(range(len(self.names))),
            "ignore_index": self.ignore_index,
            "colors": [list(c) for c in self.colors()],
        }


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) int64 class ids; ignore pixels carry ClassSpec.ignore_index
    instances: Optional[np.ndarray] = None  # (H, W) int64, 0 = no instance
    meta: dict = field(default_factory=dict)  # at least {"source": path}; adapters add slide, split, ...

    @property
    def source(self) -> str:
        return str(self.meta.get("source", "?"))

    @property
    def mpp(self) -> Optional[float]:
        """Microns per pixel (meta["mpp"], set by the adapter; data/resolution.py), None when unknown."""
        value = self.meta.get("mpp")
        return None if value is None else float(value)


@dataclass
class Prompts:
    """Prompts for K objects of one image, in the image's pixel coordinates (x, y).

    points: (K, P, 2) float32; point_labels: (K, P) int32 with 1 positive, 0 negative, -1 padding;
    boxes: (K, 4) float32 xyxy or None; has_box: (K,) bool, which objects use their box instead of
    points; class_ids: (K,) int64; targets: (K, H, W) bool, each object's ground-truth mask.
    """

    points: np.ndarray
    point_labels: np.ndarray
    boxes: Optional[np.ndarray]
    has_box: np.ndarray
    class_ids: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])
