"""A trained model from whatever path a user gives: a weights file, a checkpoint folder or a run folder.

Run layout (written by ``sam_histo.training.checkpoint``)::

    <run>/checkpoints/best/model.safetensors        the best validation so far
    <run>/checkpoints/step_00000120/model.safetensors
    <run>/checkpoints/LATEST                        the name of the newest complete step folder
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from sam_histo.config import ModelConfig
from sam_histo.models.weights import MissingWeightsError

CKPT_DIR = "checkpoints"
LATEST = "LATEST"
WEIGHTS = "model.safetensors"


def resolve_model_file(path: str | Path, which: str = "best") -> Path:
    """The weights file behind ``path``: a file as is; a checkpoint folder's model.safetensors; for a run
    folder, ``which`` = "best" (checkpoints/best) or "last" (the newest complete step folder)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if (p / WEIGHTS).is_file():
        return p / WEIGHTS
    root = p / CKPT_DIR
    if root.is_dir():
        if which == "best" and (root / "best" / WEIGHTS).is_file():
            return root / "best" / WEIGHTS
        marker = root / LATEST
        if marker.is_file() and (root / marker.read_text().strip() / WEIGHTS).is_file():
            return root / marker.read_text().strip() / WEIGHTS
        steps = sorted(d for d in root.glob("step_*") if (d / WEIGHTS).is_file())
        if steps:
            return steps[-1] / WEIGHTS
        raise MissingWeightsError(f"{root} holds no complete checkpoint (no {WEIGHTS} in best/ or step_*/)")
    what = "a folder without" if p.is_dir() else "no file or folder"
    raise MissingWeightsError(
        f"{p}: {what} weights. Give a .pt/.safetensors file, a checkpoint folder with {WEIGHTS} "
        f"(RUN/{CKPT_DIR}/best or RUN/{CKPT_DIR}/step_*) or a run folder; official SAM2.1 weights go in "
        "model.checkpoint instead"
    )


def load_model(model_cfg: ModelConfig, num_classes: Optional[int] = None, checkpoint: Optional[str | Path] = None,
               which: str = "best"):
    """Build the configured model and load ``checkpoint`` (any path ``resolve_model_file`` takes; default
    ``model_cfg.checkpoint``). ``num_classes`` attaches the class-token head (semantic mode)."""
    from sam_histo.models.sam import build_sam

    if checkpoint is not None:
        model_cfg = dataclasses.replace(model_cfg, checkpoint=str(resolve_model_file(checkpoint, which)))
    return build_sam(model_cfg, num_classes)
