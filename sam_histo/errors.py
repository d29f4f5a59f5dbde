"""The two error types every layer raises for bad input: the message names the key or file and the fix.

Kept at the bottom of the package so that any module (config, stain, data, models, ...) can raise them
without importing a layer above it; ``sam-histo`` turns both into one line and exit code 2.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem; the message names the key (or file) and the fix."""


class DataError(ValueError):
    """Bad input data; the message names the file and the fix."""


class MissingSplitError(DataError):
    """The asked-for split has no samples (e.g. ``data.val_fraction=0``): callers that report every split
    they can skip it; anything else raised during an evaluation is a real failure and propagates."""


class RunError(RuntimeError):
    """An expected failure of a long command (disk full, a diverged run, a checkpoint that cannot be read):
    the message names the cause, what survived and the fix; ``sam-histo`` prints it as one line, exit 2."""
