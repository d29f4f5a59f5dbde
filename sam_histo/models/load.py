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
from sam_histo.models.weights import RELEASE_SUMS, MissingWeightsError, release_folder  # noqa: F401  (re-exported)

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


# ------------------------------------------------------------------ a release bundle as a starting point
RELEASE_CLASSES = "classes.json"
RELEASE_HEADS = {"semantic": "semantic_head.safetensors", "clip": "clip_head.safetensors"}


def _verified(folder: Path, names: list[str]) -> None:
    """Each of ``names`` is listed in SHA256SUMS with its current sha256 (what `sam-histo release` wrote)."""
    import hashlib

    from sam_histo.config import ConfigError

    listed = {}
    for line in (folder / RELEASE_SUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name.strip()] = digest.strip()
    for name in names:
        h = hashlib.sha256()
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if listed.get(name) != h.hexdigest():
            why = "is not listed in" if name not in listed else "does not match its sha256 in"
            raise ConfigError(f"model.checkpoint={folder}: {name} {why} {RELEASE_SUMS}; the bundle changed "
                              "since it was released (release it again, or give a weights file)")


def start_from_release(model_cfg: ModelConfig, class_names, num_classes: Optional[int] = None):
    """A model to fine-tune from a verified release bundle: ``(model, clip_head_path | None, note)``.

    SAM2 weights always load (strictly: the architecture must match); the class-token head (semantic mode)
    and the tuned CLIP head only when the release's classes equal ``class_names``, else the class-token head
    is initialised from the decoder as for a fresh start. ``note`` is one line saying what was loaded."""
    import json

    from safetensors.torch import load_file

    from sam_histo.models.sam import build_sam
    from sam_histo.models.weights import load_into

    folder = release_folder(model_cfg.checkpoint)
    heads = {k: v for k, v in RELEASE_HEADS.items() if (folder / v).is_file()}
    _verified(folder, [WEIGHTS, RELEASE_CLASSES, *heads.values()])
    theirs = list(json.loads((folder / RELEASE_CLASSES).read_text())["names"])
    same = theirs == list(class_names)
    model = build_sam(dataclasses.replace(model_cfg, checkpoint=str(folder / WEIGHTS)), num_classes)
    loaded = [f"SAM2 weights ({WEIGHTS})"]
    if num_classes and "semantic" in heads and same:
        load_into(model.semantic_head, load_file(str(folder / heads["semantic"])), source=str(folder / heads["semantic"]))
        loaded.append(f"class-token head ({len(theirs)} classes)")
    clip_head = folder / heads["clip"] if "clip" in heads and same else None
    if clip_head is not None:
        loaded.append("CLIP head")
    note = f"start from release {folder}: {', '.join(loaded)}"
    if not same:
        note += (f"; its classes ({', '.join(theirs)}) differ from data.classes ({', '.join(class_names)}): "
                 "class-token head re-initialised from the decoder" + (", CLIP head not used" if "clip" in heads else ""))
    elif num_classes and "semantic" not in heads:
        note += "; the release has no class-token head: initialised from the decoder"
    return model, clip_head, note
