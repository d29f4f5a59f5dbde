"""The configuration error type and the "did you mean" hint every message shares."""
from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A configuration problem; the message names the key (or file) and the fix."""


def nearest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""
