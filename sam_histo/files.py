"""Atomic file writing for everything another run (or a resumed one) reads or skips: checkpoints' markers,
weights, caches, manifests, predictions, and every PNG (:func:`save_png`).

``with atomic_path(path) as tmp:`` yields a temporary path in the same folder (so ``os.replace`` stays on
one file system and is atomic); write it completely, and on a clean exit it replaces ``path`` in one step.
A crash leaves either the old file or none, never half a file, and the temporary file is removed. The
file gets the permissions ``open()`` would give it (0666 less the umask: 0644 under umask 022), not
mkstemp's owner-only 0600.
"""
from __future__ import annotations

import json
import re
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def current_umask() -> int:
    """The process umask (read from /proc where it is published, so it is never changed, even briefly)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the final suffix last: writers such as PIL pick the format from it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj, indent: int | None = None, **dumps_kwargs) -> Path:
    """Write JSON atomically; returns ``path``. Extra keyword arguments go to ``json.dumps``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, **dumps_kwargs))
    return Path(path)


def save_png(path: str | Path, array, compress_level: int = 6) -> Path:
    """The package's one PNG writer: write ``array`` atomically (temporary file in the same folder, then ``os.replace``); returns ``path``.

    array: uint8 (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint16 (H, W) 16-bit grey; any other
    integer (H, W) map (e.g. an int64 label map) is stored as 8-bit when its ids fit in 0..255, else 16-bit.
    """
    import numpy as np
    from PIL import Image

    a = np.asarray(array)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"save_png got dtype {a.dtype}; give integers (a mask as mask.astype(np.uint8) * 255, "
                         "probabilities as np.rint(p * 255).astype(np.uint8))")
    if a.ndim == 3 and (a.shape[2] not in (3, 4) or a.dtype != np.uint8):
        raise ValueError(f"save_png got shape {a.shape} {a.dtype}; colour images are uint8 (H, W, 3 or 4)")
    if a.ndim not in (2, 3):
        raise ValueError(f"save_png got shape {a.shape}; expected (H, W) or (H, W, 3|4)")
    if a.ndim == 2 and a.dtype not in (np.uint8, np.uint16):
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"ids {a.min()}..{a.max()} do not fit a 16-bit PNG (0..65535)")
        a = a.astype(np.uint8 if a.size == 0 or a.max() <= 255 else np.uint16)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(a)).save(tmp, format="PNG", compress_level=compress_level)
    return Path(path)


def safe_file_part(name: str) -> str:
    """``name`` made safe as one file-name part: anything but letters, digits and ``_.+-`` becomes ``_``, no
    leading dot (so never ``.`` or ``..``), never empty."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name).lstrip(".") or "_"
