"""The configuration error type and the "did you mean" hint every message shares."""
from __future__ import annotations

import difflib

from sam_histo.errors import ConfigError

__all__ = ["ConfigError", "nearest"]


def nearest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""
