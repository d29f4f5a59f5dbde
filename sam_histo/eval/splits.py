"""Evaluate a model on a list of splits: the one helper behind the trainer's final report, the metrics a
release recomputes and `sam-histo validate`.

A split without samples raises :class:`~sam_histo.errors.MissingSplitError` in the validator; here it is
skipped (named in the returned ``missing`` list) unless ``required``. Every other exception propagates, so a
bug or a bad tile during evaluation fails the command instead of reading as "no such split".
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

from sam_histo.config import Config
from sam_histo.errors import MissingSplitError


def evaluate_splits(model, cfg: Config, splits: Sequence[str], *, out_dirs: Optional[Mapping[str, Path]] = None,
                    checkpoint: Optional[str] = None, accelerator=None, progress: bool = True,
                    required: bool = False) -> tuple[dict[str, dict], list[str]]:
    """``({split: metrics JSON}, [splits without samples])``; ``out_dirs[split]`` also gets the report."""
    from sam_histo.eval.validator import validate_split

    results, missing = {}, []
    for split in splits:
        out_dir = (out_dirs or {}).get(split)
        try:
            results[split] = validate_split(model, cfg, split, out_dir, checkpoint, accelerator, progress)
        except MissingSplitError:
            if required:
                raise
            missing.append(split)
    return results, missing
