"""Atomic file writing for everything another run (or a resumed one) reads or skips: checkpoints' markers,
weights, caches, manifests, predictions.

``with atomic_path(path) as tmp:`` yields a temporary path in the same folder (so ``os.replace`` stays on
one file system and is atomic); write it completely, and on a clean exit it replaces ``path`` in one step.
A crash leaves either the old file or none, never half a file, and the temporary file is removed.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the final suffix last: writers such as PIL pick the format from it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
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
