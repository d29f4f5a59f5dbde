"""Tiling of large images shared by the BCSS and folder adapters: tile grids, per-tile label histograms,
the cached file index, and crop access through the decoded-image cache.

A file index maps each image name to a record ``{"name", "stamp", "shape", "tiles": [[y, x, hist]], ...}``
computed from the mask alone (never the RGB image) and cached as JSON under the cache folder; a record
is reused while the stamps (size, mtime) of its image and mask and the adapter's ``key`` are unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from sam_histo.data.base import Adapter, Problems, guard
from sam_histo.data.types import DataError, Sample
from sam_histo.files import write_json


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis; the last tile ends at the border (one tile if the axis is short)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_histograms(codes: np.ndarray, tile: int, stride: int, n: int,
                    keep: Callable[[np.ndarray], bool]) -> list[list]:
    """[[y, x, hist]] of the tiles whose code histogram (n bins, codes 0..n-1) passes ``keep``."""
    tiles = []
    h, w = codes.shape
    for y in tile_origins(h, tile, stride):
        for x in tile_origins(w, tile, stride):
            hist = np.bincount(codes[y:y + tile, x:x + tile].ravel(), minlength=n)[:n]
            if keep(hist):
                tiles.append([y, x, hist.tolist()])
    return tiles


def crop(arr: np.ndarray, y: int, x: int, tile: int, fill: Optional[int]) -> np.ndarray:
    """``arr[y:y+tile, x:x+tile]``, padded with ``fill`` to tile x tile when it is smaller (None: not padded)."""
    out = arr[y:y + tile, x:x + tile]
    if fill is not None and out.shape[:2] != (tile, tile):
        pad = ((0, tile - out.shape[0]), (0, tile - out.shape[1])) + ((0, 0),) * (arr.ndim - 2)
        out = np.pad(out, pad, constant_values=fill)
    return out


def stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def read_cached(path: Optional[Path]) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a broken cache is rebuilt


def build_index(pairs: list[tuple[Path, Path]], cache_file: Optional[Path], key, what: str, on_error: str,
                index_file: Callable[[Path, Path], dict]) -> list[dict]:
    """One record per (image, mask) pair: from the cache when stamps and ``key`` match, else
    ``index_file(image, mask)``; bad pairs raise or are skipped (``on_error``). The cache is rewritten
    (atomically: several processes may index at once) when anything changed."""
    cached = read_cached(cache_file)
    problems = Problems(on_error, what)
    records, fresh = [], {}
    for img, mask in tqdm(pairs, desc=what, leave=False):
        old = cached.get(img.name)
        st = [stamp(img), stamp(mask)] if mask.is_file() else None
        if old and st is not None and old.get("stamp") == st and old.get("key") == key:
            rec = old
        else:
            rec = guard(problems, img, index_file, img, mask)
            if rec is not None:
                rec.update(name=img.name, stamp=st, key=key)
        if rec is not None:
            records.append(rec)
            fresh[img.name] = rec
    problems.finish()
    if not records:
        raise DataError(f"{what}: every image was skipped; see the warnings above")
    if cache_file is not None and fresh != cached:
        write_json(cache_file, fresh)
    return records


class TiledAdapter(Adapter):
    """Tiles of large images. Subclasses set ``tile``, ``_items`` ((record, y, x, hist, split) tuples),
    ``_fill`` ((image fill, code fill) when smaller tiles are padded, else None) and ``decoded`` (a
    data.io.decoded.DecodedCache), and implement ``_paths(record) -> (image, mask)``, ``_read_codes(mask)``
    and ``_ids(codes) -> class ids``."""

    _fill: Optional[tuple[int, int]] = None

    def _paths(self, rec: dict) -> tuple[Path, Path]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read_codes(self, path: Path) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _ids(self, codes: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def label(self, i: int) -> np.ndarray:
        rec, y, x, _, _ = self._items[i]
        codes = self.decoded.get("codes", self._paths(rec)[1], self._read_codes)
        return self._ids(crop(codes, y, x, self.tile, None if self._fill is None else self._fill[1]))

    def _load(self, i: int) -> Sample:
        from sam_histo.data.io.readers import read_image

        rec, y, x, _, _ = self._items[i]
        rgb = self.decoded.get("rgb", self._paths(rec)[0], lambda p: read_image(p)[0])
        image = crop(rgb, y, x, self.tile, None if self._fill is None else self._fill[0])
        # a copy: the crop of a memory-mapped (read-only) image must be the sample's own, writable array
        return Sample(image=np.array(image, order="C", copy=True), mask=self.label(i), meta=self.meta(i))
