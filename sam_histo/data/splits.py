"""Splits by slide, never by tile: every tile of one slide lands in the same split.

``random``: the slides are shuffled with ``data.split_seed`` and cut by ``val_fraction`` / ``test_fraction``.
``institute``: the TCGA tissue-source-site code (``TCGA-XX-...``: XX) decides, through ``data.val_sites``
and ``data.test_sites``; held-out institutes test generalisation across scanners and staining protocols.
"""
from __future__ import annotations

import re

import numpy as np

from sam_histo.data.types import DataError

_TCGA = re.compile(r"^TCGA-([A-Z0-9]{2})-")


def tcga_site(slide: str) -> str:
    """The tissue source site of a TCGA barcode: ``TCGA-A1-A0SK-DX1`` -> ``A1``."""
    m = _TCGA.match(slide)
    if not m:
        raise DataError(f"slide {slide!r} is not a TCGA barcode (TCGA-XX-...); the institute split needs one")
    return m.group(1)


def split_by_slide(slides, split: str, val_fraction: float, test_fraction: float, seed: int,
                   val_sites=(), test_sites=()) -> dict[str, str]:
    """Slide name -> "train" | "val" | "test"."""
    unique = sorted(set(slides))
    if split == "institute":
        return _by_site(unique, set(val_sites), set(test_sites))
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    n_val, n_test = _counts(len(unique), val_fraction, test_fraction)
    out = {}
    for k, slide in enumerate(order):
        out[slide] = "val" if k < n_val else "test" if k < n_val + n_test else "train"
    return out


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Slides for val and test: rounded, but at least one each when its fraction is positive and slides
    remain for training (a 3-slide set with val_fraction 0.15 still gets a validation slide)."""
    n_val = int(round(val_fraction * n))
    n_test = int(round(test_fraction * n))
    if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    if test_fraction > 0 and n_test == 0 and n - n_val >= 2:
        n_test = 1
    return n_val, n_test


def _by_site(slides: list[str], val_sites: set, test_sites: set) -> dict[str, str]:
    sites = {s: tcga_site(s) for s in slides}
    present = set(sites.values())
    for name, wanted in (("data.val_sites", val_sites), ("data.test_sites", test_sites)):
        missing = wanted - present
        if missing:
            raise DataError(f"{name} {sorted(missing)} match no slide; the sites present are {sorted(present)}")
    return {s: "val" if site in val_sites else "test" if site in test_sites else "train"
            for s, site in sites.items()}
