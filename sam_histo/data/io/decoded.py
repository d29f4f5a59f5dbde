"""Decoded images without a decode per sample (``data.decode_cache``).

A 256 px crop of a 2000 px PNG should cost a crop, not a PNG decode. ``memmap`` (default) converts each
image and mask once to an uncompressed ``.npy`` under ``<cache>/decoded/`` and opens it memory-mapped:
a crop reads only its pages, DataLoader workers share the OS page cache, and the file is reused by
every later run while the source's size and modification time are unchanged (the name holds them).
``memory`` keeps decoded arrays in a per-process LRU of at most ``data.decode_cache_mb``; ``none``
decodes at every access. Without a writable cache folder, ``memmap`` falls back to ``memory``.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from sam_histo.data.base import log
from sam_histo.files import atomic_path


class DecodedCache:
    def __init__(self, folder: Optional[Path], mode: str = "memmap", max_mb: int = 1024):
        if mode == "memmap" and folder is None:
            log.warning("data.decode_cache=memmap needs a writable cache folder; decoded images stay in memory")
            mode = "memory"
        self.mode = mode
        self.folder = None if folder is None else Path(folder) / "decoded"
        self.max_bytes = max(0, int(max_mb)) << 20
        self._lru: OrderedDict = OrderedDict()
        self._bytes = 0
        self.decodes = 0  # how many times a source file was decoded (tests and benchmarks read it)

    def get(self, kind: str, path: Path, read: Callable[[Path], np.ndarray]) -> np.ndarray:
        """The decoded array of ``path`` (``read(path)`` on a miss)."""
        if self.mode == "none":
            self.decodes += 1
            return read(path)
        key = (kind, str(path))
        hit = self._lru.get(key)
        if hit is not None:
            self._lru.move_to_end(key)
            return hit
        arr = self._memmap(kind, path, read) if self.mode == "memmap" else self._decode(read, path)
        size = 0 if isinstance(arr, np.memmap) else arr.nbytes  # a memmap's pages belong to the OS
        self._lru[key] = arr
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._lru) > 1:
            _, old = self._lru.popitem(last=False)
            self._bytes -= 0 if isinstance(old, np.memmap) else old.nbytes
        return arr

    def _decode(self, read, path: Path) -> np.ndarray:
        self.decodes += 1
        return read(path)

    def _memmap(self, kind: str, path: Path, read) -> np.ndarray:
        st = path.stat()
        tag = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        file = self.folder / f"{path.stem[:60]}.{kind}.{tag}.npy"
        if not file.is_file():
            arr = np.ascontiguousarray(self._decode(read, path))
            try:
                with atomic_path(file) as tmp:
                    np.save(tmp, arr, allow_pickle=False)
            except OSError as e:
                log.warning("cannot write the decoded cache %s (%s); keeping %s in memory", file, e, path)
                return arr
        try:
            return np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):  # a damaged cache file is rebuilt
            file.unlink(missing_ok=True)
            return self._decode(read, path)
