"""Read, check and write model weights: the official SAM2 ``.pt`` and ``.safetensors``.

Build and load are separate steps (as in sam2's ``build_sam.py``). ``.pt`` files are read with
``torch.load(weights_only=True)``: a file that needs arbitrary unpickling (code objects, custom classes) is
refused, never executed. Loading is strict by default; a mismatch names the first missing, unexpected and
mis-shaped keys and says which architecture the checkpoint's keys look like. Pure torch + safetensors.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from sam_histo.config import ConfigError

_SHOW = 8  # keys listed per kind in an error
_BLOCK = re.compile(r"image_encoder\.trunk\.blocks\.(\d+)\.")
# (Hiera embed_dim, number of blocks) -> size name, from sam2's configs/sam2.1/*.yaml.
_HIERA = {(96, 12): "hiera_t", (96, 16): "hiera_s", (112, 24): "hiera_b+", (144, 48): "hiera_l"}


class WeightsError(ConfigError):
    """A checkpoint that cannot be used as given; the message says why and what to do."""


class MissingWeightsError(FileNotFoundError):
    """A checkpoint file that is not there; the message says where to put it and how to fetch it."""


def missing_message(path: Path, url: Optional[str] = None, name: Optional[str] = None) -> str:
    lines = [f"checkpoint file {str(path)!r} not found."]
    if url:
        lines.append(f"Download it from {url} and put it at {path},")
        lines.append(f"or run `sam-histo fetch-weights {name}` where a network exists.")
    else:
        lines.append(
            "Put the file there, or use a known checkpoint name: `sam-histo fetch-weights NAME` downloads it "
            "(`sam-histo fetch-weights --list` shows the names)."
        )
    return " ".join(lines)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``.pt`` holding ``{"model": state_dict}`` or a bare state
    dict, on the CPU. Raises MissingWeightsError / WeightsError with the file name and the fix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(missing_message(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError on a bad header
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{path}: refused to load: the file needs arbitrary unpickling, which can run code "
            f"(torch.load(weights_only=True) said: {first}). Load it only if you trust its source and "
            "re-save the bare state dict, e.g. with sam_histo.models.weights.save_state_dict, "
            "as .safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{path}: expected a state dict (name -> tensor) or {{'model': state_dict}} as sam2 saves it"
        )
    return dict(obj)


def save_state_dict(obj: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                    metadata: Optional[dict[str, str]] = None) -> Path:
    """Write ``{"model": state_dict}`` (.pt, the sam2 format) or a .safetensors file, atomically."""
    path = Path(path)
    state = obj.state_dict() if isinstance(obj, nn.Module) else dict(obj)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if path.suffix not in (".safetensors", ".pt", ".pth"):
        raise WeightsError(f"{path}: use a .pt or .safetensors file name")
    from sam_histo.files import atomic_path

    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            # safetensors refuses tensors that share storage; cloning gives each its own.
            save_file({k: v.clone() for k, v in state.items()}, str(tmp), metadata=metadata)
        else:
            torch.save({"model": state}, tmp)
    return path


def describe_arch(state: Mapping[str, torch.Tensor]) -> str:
    """What the keys look like: 'sam2.1_hiera_b+ (D=256)', with ' + class-token head (C classes)'."""
    keys = [k[len("sam."):] if k.startswith("sam.") else k for k in state]
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight",
                      state.get("sam.image_encoder.trunk.patch_embed.proj.weight"))
    blocks = {int(m.group(1)) for k in keys if (m := _BLOCK.match(k))}
    if patch is None or not blocks:
        return f"not a SAM2 model (first keys: {', '.join(list(state)[:3]) or 'none'})"
    embed, depth = int(patch.shape[0]), max(blocks) + 1
    version = "sam2.1" if "no_obj_embed_spatial" in keys or "obj_ptr_tpos_proj.weight" in keys else "sam2"
    size = _HIERA.get((embed, depth))
    name = f"{version}_{size}" if size else f"{version} with a Hiera of embed_dim {embed} and {depth} blocks"
    token = state.get("sam_mask_decoder.iou_token.weight", state.get("sam.sam_mask_decoder.iou_token.weight"))
    if token is not None:
        name += f" (D={int(token.shape[-1])})"
    head = state.get("semantic_head.class_tokens")
    if head is not None:
        name += f" + class-token head ({int(head.shape[0])} classes)"
    return name


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True,
              source: str = "checkpoint") -> tuple[list[str], list[str]]:
    """``module.load_state_dict`` with a readable error. Shape mismatches always fail (torch would too);
    missing/unexpected keys fail when ``strict``. Returns (missing, unexpected)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if mismatched or (strict and (missing or unexpected)):
        raise WeightsError(_mismatch_message(source, state, own, missing, unexpected, mismatched))
    module.load_state_dict(state, strict=False)
    return missing, unexpected


def _mismatch_message(source, state, own, missing, unexpected, mismatched) -> str:
    parts = [
        f"{source} does not fit the model: its keys look like {describe_arch(state)}, "
        f"the model is {describe_arch(own)}."
    ]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:_SHOW])}{more}.")
    parts.append(
        "Set model.arch to the checkpoint's architecture (and build with the same number of classes for a "
        "fine-tuned checkpoint), or model.strict=false to load what fits."
    )
    return " ".join(parts)


def is_wrapped(state: Mapping[str, torch.Tensor]) -> bool:
    """True for a SamHisto state dict (keys 'sam.*' / 'semantic_head.*'), False for a bare SAM2 one."""
    return any(k.startswith("sam.") for k in state)


def unwrap_sam(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The SAM2Base part of a SamHisto state dict (drops 'semantic_head.*'); a bare one unchanged."""
    if not is_wrapped(state):
        return dict(state)
    return {k[len("sam."):]: v for k, v in state.items() if k.startswith("sam.")}


RELEASE_SUMS = "SHA256SUMS"


def release_folder(path: str | Path) -> Optional[Path]:
    """The bundle folder behind ``model.checkpoint`` (the folder, or its model.safetensors), else None."""
    p = Path(path).expanduser()
    folder = p.parent if p.is_file() and p.name == "model.safetensors" else p
    if folder.is_dir() and (folder / RELEASE_SUMS).is_file() and (folder / "model.safetensors").is_file():
        return folder
    return None
