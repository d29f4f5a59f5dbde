"""Microns per pixel (mpp) of a tile, and resampling images and label maps between resolutions.

Where a tile's mpp comes from, first found wins (``resolve_mpp``):

1. ``table``: a per-file table (``data.mpp_table``: CSV or TSV with columns ``file`` and ``mpp``; ``file`` is
   the file name or its stem);
2. ``name``: the file name, ``..._MPP-0.2500.png`` (BCSS; any ``MPP-<number>`` / ``mpp=<number>`` token);
3. ``tiff``: TIFF resolution tags (XResolution with ResolutionUnit inch or centimetre) or an Aperio
   ``MPP = 0.2520`` in ImageDescription. Values outside ``PLAUSIBLE`` are ignored: many writers store a
   screen placeholder such as 72 dpi (352.8 um/px), which is no scan resolution;
4. ``data.mpp``: one value for the whole data set;
5. otherwise unknown (None, source ``unknown``): allowed, never resampled, and counted in reports.

Resampling (``resample_image`` / ``resample_labels``) scales by ``factor`` = new pixels per old pixel =
mpp / target_mpp: images with area averaging when shrinking and bilinear interpolation when enlarging,
label maps by a plurality vote over each new pixel's footprint when shrinking (aligned with the area-averaged
image) and nearest neighbour when enlarging, so ids are never blended. ``to_size`` brings a (C, H, W) probability
map back to an exact (H, W) grid with bilinear interpolation.
"""
from __future__ import annotations

import csv
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from sam_histo.errors import DataError

log = logging.getLogger("sam_histo.data")

PLAUSIBLE = (0.01, 50.0)  # um/px: from super-resolution to a coarse slide overview
_NAME = re.compile(r"(?:^|[_\-. ])mpp[-=_]?(\d+(?:\.\d+)?)", re.IGNORECASE)
_APERIO = re.compile(r"\bMPP\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_UM_PER_UNIT = {2: 25400.0, 3: 10000.0}  # ResolutionUnit: 2 inch, 3 centimetre (1 = none)
SOURCES = ("table", "name", "tiff", "data.mpp", "unknown")


def plausible(mpp: Optional[float]) -> bool:
    return mpp is not None and PLAUSIBLE[0] <= mpp <= PLAUSIBLE[1]


def mpp_from_name(name: str) -> Optional[float]:
    """The ``MPP-0.2500`` token of a file name (case-insensitive), else None."""
    m = _NAME.search(Path(str(name)).stem)
    if m is None:
        return None
    value = float(m.group(1))
    return value if plausible(value) else None


@lru_cache(maxsize=4096)
def _tiff_mpp(path: str, stamp: tuple) -> Optional[float]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = page.tags
            desc = tags.get("ImageDescription")
            if desc is not None:
                m = _APERIO.search(str(desc.value))
                if m and plausible(float(m.group(1))):
                    return float(m.group(1))
            res, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
            if res is None or unit is None or int(unit.value) not in _UM_PER_UNIT:
                return None
            num, den = res.value if isinstance(res.value, tuple) else (res.value, 1)
            if not num or not den:
                return None
            value = _UM_PER_UNIT[int(unit.value)] * den / num
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    return value if plausible(value) else None


def mpp_from_tiff(path) -> Optional[float]:
    """mpp from a TIFF's tags (Aperio description, else XResolution / ResolutionUnit); None when absent,
    a placeholder (72 dpi and the like), or the file is no TIFF."""
    p = Path(path)
    if p.suffix.lower() not in (".tif", ".tiff", ".svs") or not p.is_file():
        return None
    st = p.stat()
    return _tiff_mpp(str(p), (st.st_size, st.st_mtime_ns))


def read_mpp_table(path) -> dict[str, float]:
    """``data.mpp_table`` -> {file name or stem: mpp}; a bad row fails naming the file and line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.mpp_table {p} not found: give a CSV/TSV with columns file,mpp")
    text = p.read_text()
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    if not rows or not {"file", "mpp"} <= set(rows[0]):
        raise DataError(f"{p}: expected a header with columns 'file' and 'mpp'")
    out = {}
    for k, row in enumerate(rows, start=2):
        try:
            value = float(row["mpp"])
        except (TypeError, ValueError):
            raise DataError(f"{p} line {k}: mpp {row['mpp']!r} is not a number") from None
        if not plausible(value):
            raise DataError(f"{p} line {k}: mpp {value} is outside {PLAUSIBLE} um/px")
        out[str(row["file"]).strip()] = value
    return out


def resolve_mpp(path, default: Optional[float] = None,
                table: Optional[dict[str, float]] = None) -> tuple[Optional[float], str]:
    """(mpp, source) of one image file; source is one of ``SOURCES`` (see the module docstring)."""
    p = Path(str(path))
    if table:
        for key in (p.name, p.stem):
            if key in table:
                return float(table[key]), "table"
    value = mpp_from_name(p.name)
    if value is not None:
        return value, "name"
    value = mpp_from_tiff(p)
    if value is not None:
        return value, "tiff"
    if default is not None:
        return float(default), "data.mpp"
    return None, "unknown"


def data_mpp(data_cfg) -> tuple[Optional[float], Optional[dict[str, float]]]:
    """(data.mpp, the data.mpp_table read) of a DataConfig; either may be None."""
    default = getattr(data_cfg, "mpp", None)
    table_path = getattr(data_cfg, "mpp_table", "")
    return default, (read_mpp_table(table_path) if table_path else None)


# ------------------------------------------------------------------------------------ resampling
def scale_factor(mpp: Optional[float], target_mpp: Optional[float]) -> float:
    """New pixels per old pixel to bring ``mpp`` to ``target_mpp``; 1 when either is unknown / unset."""
    if mpp is None or target_mpp is None:
        return 1.0
    return float(mpp) / float(target_mpp)


def scaled_size(h: int, w: int, factor: float) -> tuple[int, int]:
    return max(1, int(round(h * factor))), max(1, int(round(w * factor)))


def resample_image(image: np.ndarray, factor: float) -> np.ndarray:
    """An (H, W[, C]) image scaled by ``factor``: area averaging when shrinking, bilinear when enlarging."""
    import cv2

    if factor == 1.0:
        return image
    h, w = image.shape[:2]
    nh, nw = scaled_size(h, w, factor)
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


# Shrinking a map with at most this many distinct ids is a vote (class maps); more (instance maps) is nearest.
VOTE_MAX_IDS = 64


def resample_labels(labels: np.ndarray, factor: float = 1.0, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """An (H, W) integer label map scaled by ``factor`` (or to ``size`` = (h, w)).

    Enlarging: nearest neighbour. Shrinking a map of at most ``VOTE_MAX_IDS`` ids: each new pixel takes the id
    covering most of its footprint (every id's indicator area-averaged as ``resample_image`` averages the
    pixels, then the argmax; ties go to the smaller id), so labels stay aligned with the shrunk image.
    Nearest would pick one corner sample of each footprint: half an old pixel off the image at 2x. Maps
    with more ids (instances): nearest.
    """
    import cv2

    h, w = labels.shape[:2]
    nh, nw = size if size is not None else scaled_size(h, w, factor)
    if (nh, nw) == (h, w):
        return labels
    if nh <= h and nw <= w:
        ids = _ids(labels)
        if len(ids) <= VOTE_MAX_IDS:
            return _vote(labels, ids, nh, nw)
    dtype = labels.dtype
    work = labels
    if dtype not in (np.uint8, np.uint16, np.int16, np.int32):
        if labels.size and (labels.min() < -2**31 or labels.max() >= 2**31):
            raise ValueError("label ids beyond 32 bits cannot be resampled")
        work = labels.astype(np.int32)
    out = cv2.resize(work, (nw, nh), interpolation=cv2.INTER_NEAREST)
    return out.astype(dtype, copy=False)


def _ids(labels: np.ndarray) -> np.ndarray:
    """The distinct ids of a label map, sorted: a bincount for ids in 0..65535 (1-2 ms a megapixel, where
    np.unique sorts for 13: this runs per training sample), else np.unique."""
    if labels.size and labels.dtype.kind in "iub" and 0 <= labels.min() and labels.max() < 1 << 16:
        return np.flatnonzero(np.bincount(labels.ravel())).astype(labels.dtype)
    return np.unique(labels)


def _vote(labels: np.ndarray, ids: np.ndarray, nh: int, nw: int) -> np.ndarray:
    import cv2

    out = np.full((nh, nw), ids[0], labels.dtype)
    best = np.full((nh, nw), -1.0, np.float32)
    for v in ids:
        share = cv2.resize((labels == v).astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
        wins = share > best
        out[wins] = v
        np.maximum(best, share, out=best)
    return out


def to_size(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) float32 probabilities brought to (C, H, W) = size with bilinear interpolation."""
    import cv2

    c, h, w = probs.shape
    if (h, w) == tuple(size):
        return probs
    out = np.empty((c, *size), np.float32)
    for start in range(0, c, 256):  # cv2 takes at most 512 channels at once
        chunk = np.ascontiguousarray(np.moveaxis(probs[start:start + 256], 0, -1), dtype=np.float32)
        res = cv2.resize(chunk, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out[start:start + 256] = res.reshape(size[0], size[1], -1).transpose(2, 0, 1)
    return out


def to_target(sample, target_mpp: Optional[float]):
    """The Sample brought to ``target_mpp`` (image, class map and instance map; meta["mpp"] updated and
    meta["native_mpp"] kept). Unchanged when the target is unset or the sample's mpp is unknown."""
    mpp = sample.meta.get("mpp")
    factor = scale_factor(mpp, target_mpp)
    if factor == 1.0:
        return sample
    size = scaled_size(*sample.mask.shape[:2], factor)
    sample.image = resample_image(sample.image, factor)
    if sample.image.shape[:2] != size:  # rounding agrees with scaled_size; kept exact for safety
        sample.image = sample.image[:size[0], :size[1]]
    sample.mask = resample_labels(sample.mask, size=size)
    if sample.instances is not None:
        sample.instances = resample_labels(sample.instances, size=size)
    sample.meta = {**sample.meta, "native_mpp": mpp, "mpp": float(target_mpp)}
    return sample


class MppCounter:
    """Counts tiles by mpp source; warns once per run about tiles of unknown resolution."""

    def __init__(self):
        self.counts = {s: 0 for s in SOURCES}
        self.warned = False

    def add(self, source: str, path, target_mpp: Optional[float]) -> None:
        self.counts[source] = self.counts.get(source, 0) + 1
        if source == "unknown" and target_mpp is not None and not self.warned:
            self.warned = True
            log.warning("%s: resolution unknown (no MPP- in the name, no TIFF resolution, no data.mpp); "
                        "used at its own scale, not resampled to model.target_mpp=%s", path, target_mpp)
