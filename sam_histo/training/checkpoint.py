"""Checkpoints that survive a kill: write into a temporary folder, then rename.

Layout under ``<run>/checkpoints``::

    step_00000120/            model.safetensors  optimizer.pt  state.json  rng_rank0.pt ...
    LATEST                    the name of the newest complete checkpoint folder
    best/                     model.safetensors  state.json   (the best validation so far; may be the start)
    start/                    model.safetensors  state.json   (the weights before the first step)

A folder appears under its final name only after every file in it is written (``os.replace`` of the
folder is atomic on POSIX file systems), and LATEST is replaced atomically after it, so a SIGKILL at any
moment leaves either the previous or the new checkpoint, never half of one. Model weights are
safetensors; the optimizer and RNG states are read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sam_histo.files import atomic_path
from sam_histo.models.load import CKPT_DIR, LATEST


def state_dict_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous, de-aliased copy of the state dict that safetensors accepts (shared tensors cloned)."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in model.state_dict().items():
        ptr = v.data_ptr()
        out[k] = v.detach().clone().contiguous() if ptr in seen else v.detach().contiguous()
        seen.setdefault(ptr, k)
    return out


def rng_state() -> dict:
    kind, keys, *rest = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), *rest],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(accelerator, run_dir: Path, model: torch.nn.Module, optimizer, state: dict, keep: int = 2) -> Path:
    """Write a complete checkpoint for ``state["step"]`` on every process's behalf; returns its folder.

    ``model`` is the unwrapped model; ``state`` is JSON-serialisable (epoch, step, best metric, sampler
    state, counters). Collective: every process must call it (each saves its own RNG state).
    """
    root = Path(run_dir) / CKPT_DIR
    name = f"step_{int(state['step']):08d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    with _guarded(tmp, run_dir):
        torch.save(rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt")
        if accelerator.is_main_process:
            save_file(state_dict_for_save(model), str(tmp / "model.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # same step written before (a resumed run re-saving): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        with atomic_path(root / LATEST) as tmp_marker:
            tmp_marker.write_text(name)
        _prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def save_best(accelerator, run_dir: Path, model, state: dict, name: str = "best") -> Optional[Path]:
    """Replace ``checkpoints/<name>`` (best, or start: the weights before the first step) atomically with
    ``model``'s weights, or a state dict of tensors (main process only)."""
    if not accelerator.is_main_process:
        return None
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = state_dict_for_save(model) if isinstance(model, torch.nn.Module) else model
    with _guarded(tmp, run_dir):
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    old = root / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if (root / name).exists():
        os.replace(root / name, old)
    os.replace(tmp, root / name)
    shutil.rmtree(old, ignore_errors=True)
    return root / name


@contextmanager
def _guarded(tmp: Path, run_dir: Path):
    """A full disk while filling ``tmp``: the half-written folder is removed, one RunError names the survivor."""
    from sam_histo.training.recovery import disk_guard

    try:
        with disk_guard(tmp.parent / tmp.name.strip(".").removesuffix(".tmp"), latest_checkpoint(run_dir)):
            yield
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / CKPT_DIR
    marker = root / LATEST
    if marker.exists():
        path = root / marker.read_text().strip()
        if (path / "state.json").exists():
            return path
    complete = sorted(p for p in root.glob("step_*") if (p / "state.json").exists())
    return complete[-1] if complete else None


def read_state(ckpt: Path) -> dict:
    path = Path(ckpt) / "state.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {ckpt} is not a complete checkpoint folder")
    return json.loads(path.read_text())


def load_model_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Load ``model.safetensors`` of a checkpoint folder strictly into ``model`` (unwrapped)."""
    path = Path(ckpt) / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {ckpt} is not a checkpoint folder")
    model.load_state_dict(load_file(str(path)), strict=True)


def restore(accelerator, ckpt: Path, model: torch.nn.Module, optimizer=None) -> dict:
    """Load weights, optimizer and this process's RNG state from ``ckpt``; returns its state dict."""
    ckpt = Path(ckpt)
    state = read_state(ckpt)
    load_model_weights(model, ckpt)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    rng = ckpt / f"rng_rank{accelerator.process_index}.pt"
    if rng.exists():
        set_rng_state(torch.load(rng, weights_only=True))
    return state
