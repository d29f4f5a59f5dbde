"""Atomic file writing for everything another run (or a resumed one) reads or skips: checkpoints' markers,
weights, caches, manifests, predictions.

``with atomic_path(path) as tmp:`` yields a temporary path in the same folder (so ``os.replace`` stays on
one file system and is atomic); write it completely, and on a clean exit it replaces ``path`` in one step.
A crash leaves either the old file or none, never half a file, and the temporary file is removed. The
file gets the permissions ``open()`` would give it (0666 less the umask: 0644 under umask 022), not
mkstemp's owner-only 0600.
"""
from __future__ import annotations

import json
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
