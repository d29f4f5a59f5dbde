"""What every adapter shares: the sequence interface, file readers with clear errors, the skip policy.

An adapter is a ``Sequence[Sample]`` with ``.classes`` (a ClassSpec), ``.split`` and three cheap views
the sampler and the statistics use without decoding RGB pixels: ``meta(i)``, ``label(i)`` and
``class_counts()``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from sam_histo.data.types import ClassSpec, DataError, Sample

log = logging.getLogger("sam_histo.data")

SPLITS = ("train", "val", "test", "all")


class Adapter(Sequence):
    """Base of the BCSS, LGG and vesicle adapters. Subclasses fill ``_items`` and implement ``_load``."""

    classes: ClassSpec
    split: str

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        i %= len(self)
        sample = self._load(i)
        if "mpp" not in sample.meta:
            sample.meta["mpp"], sample.meta["mpp_source"] = self._mpp_of(sample.meta.get("source", ""))
        return sample

    def mpp(self, i: int) -> tuple[Optional[float], str]:
        """(microns per pixel or None, where it came from) of sample ``i``: data.mpp_table, the file name,
        TIFF tags, data.mpp, else unknown (``data.io.resolution.resolve_mpp``)."""
        return self._mpp_of(self.meta(i)["source"])

    def _mpp_of(self, source) -> tuple[Optional[float], str]:
        from sam_histo.data.io.resolution import data_mpp, resolve_mpp

        if getattr(self, "_mpp_conf", None) is None:
            self._mpp_conf = data_mpp(getattr(self, "cfg", None))
        return resolve_mpp(source, *self._mpp_conf)

    def resolutions(self) -> dict:
        """{"sources": tiles per mpp source, "mpp": tiles per mpp value (None = unknown)} without pixels."""
        sources: dict[str, int] = {}
        values: dict = {}
        for i in range(len(self)):
            mpp, source = self.mpp(i)
            sources[source] = sources.get(source, 0) + 1
            values[mpp] = values.get(mpp, 0) + 1
        return {"sources": sources, "mpp": values}

    def _load(self, i: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def meta(self, i: int) -> dict:
        """Sample metadata without reading pixels (source, slide, split, tile y/x or z)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def label(self, i: int) -> np.ndarray:
        """The class map of sample ``i`` (H, W) int64, without decoding its RGB image."""
        return self[i].mask

    def class_counts(self, progress: bool = True) -> np.ndarray:
        """Pixels of each class id in each sample: (N, num_classes) int64, the ignore id included."""
        from tqdm import tqdm

        c = self.classes.num_classes
        out = np.zeros((len(self), c), np.int64)
        for i in tqdm(range(len(self)), desc=f"class counts ({self.split})", disable=not progress, leave=False):
            out[i] = np.bincount(self.label(i).ravel(), minlength=c)[:c]
        return out

    def fingerprint(self) -> str:
        """Identifies the samples and their labels (file names, sizes, times, class table) for caches."""
        raise NotImplementedError  # pragma: no cover - abstract


class Problems:
    """``data.on_error``: raise at the first bad file, or log each one with its reason and count them."""

    def __init__(self, on_error: str, what: str):
        self.on_error = on_error
        self.what = what
        self.skipped: list[tuple[str, str]] = []

    def report(self, path, reason: str) -> None:
        if self.on_error != "skip":
            raise DataError(f"{path}: {reason}")
        log.warning("skipping %s: %s", path, reason)
        self.skipped.append((str(path), reason))

    def finish(self) -> None:
        if self.skipped:
            log.warning("%s: skipped %d file(s) (data.on_error=skip); see the warnings above",
                        self.what, len(self.skipped))


def guard(problems: Problems, path, fn: Callable, *args):
    """Run ``fn``; a DataError becomes a skip (or is raised) through ``problems``. None when skipped."""
    try:
        return fn(*args)
    except DataError as e:
        reason = str(e)
        prefix = f"{path}: "
        problems.report(path, reason[len(prefix):] if reason.startswith(prefix) else reason)
        return None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read the image ({e}); re-export it as PNG or remove it") from None
    return h, w


def read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3); grey or RGBA inputs are converted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read the image ({e}); re-export it as PNG or remove it") from None


def check_decodes(path: Path) -> None:
    """Decode the whole image once (a truncated or corrupt file passes the header read and fails only
    here): a DataError now, at indexing, instead of at the training step that first reads it."""
    read_rgb(path)


class DecodeCache:
    """Which images decoded completely, keyed by name with their (size, mtime) stamp, in one JSON file of
    the cache folder: every image is decoded once, not at every index build."""

    def __init__(self, cache_dir: Optional[Path], name: str):
        import json

        self.path = cache_dir / name if cache_dir is not None else None
        try:
            self.seen = json.loads(self.path.read_text()) if self.path and self.path.is_file() else {}
        except (OSError, ValueError):
            self.seen = {}  # a broken cache is rebuilt
        self.changed = False

    def check(self, path: Path) -> None:
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        if self.seen.get(path.name) != stamp:
            check_decodes(path)
            self.seen[path.name], self.changed = stamp, True

    def save(self) -> None:
        if self.changed and self.path is not None:
            from sam_histo.files import write_json

            write_json(self.path, self.seen)


def read_codes(path: Path) -> np.ndarray:
    """A label PNG as (H, W) uint8 codes; palette images keep their indices, RGB masks are refused."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                arr = np.asarray(im)
                if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                    raise DataError(f"{path}: the mask is colour RGB; masks hold one class code per pixel "
                                    "(8-bit grey or palette PNG)")
                return np.ascontiguousarray(arr[..., 0])
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read the mask ({e}); re-export it as PNG or remove it") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: mask has shape {arr.shape}; expected (H, W) class codes")
    if arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise DataError(f"{path}: mask codes outside 0..255")
        arr = arr.astype(np.uint8)
    return arr


def list_images(folder: Path) -> list[Path]:
    exts = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and not p.name.startswith("."))


def read_only(folder: Path) -> bool:
    """No write permission for this user, or no write bit for anyone (a folder marked read-only, which
    root could still write into)."""
    import os

    return not os.access(folder, os.W_OK) or not folder.stat().st_mode & 0o222


def cache_root(root: Path, cache_dir: str) -> Optional[Path]:
    """The cache folder, created: ``data.cache_dir``, else ``<root>/.sam_histo_cache``, else, for a read-only
    data root, ``$SAM_HISTO_CACHE/data/<hash of root>`` (default ~/.cache/sam_histo): a shared or read-only
    data set is never written into. None (with a warning) when it cannot be written."""
    import hashlib
    import os

    if cache_dir:
        path = Path(cache_dir).expanduser()
    elif read_only(root):
        base = Path(os.environ.get("SAM_HISTO_CACHE") or "~/.cache/sam_histo").expanduser()
        path = base / "data" / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
        log.info("data.root %s is read-only: derived files go to %s (data.cache_dir to choose)", root, path)
    else:
        path = root / ".sam_histo_cache"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        log.warning("cache folder %s is not writable (%s); set data.cache_dir to cache derived files", path, e)
        return None
    return path


def check_root(root: str, dataset: str, expect: str) -> Path:
    if not root:
        raise DataError(f"data.root is not set: give data.root=PATH to the {dataset} data ({expect})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root {path} is not a folder; it should hold the {dataset} data ({expect})")
    return path


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
