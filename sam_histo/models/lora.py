"""LoRA adapters on SAM2's linear layers, with peft, and their merge back into plain SAM2 weights.

peft wraps the modules cleanly: every target is a plain ``nn.Linear`` (Hiera ``attn.qkv`` / ``attn.proj``,
Hiera ``mlp.layers.*``, the mask-decoder transformer's ``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj``)
called as ``layer(x)``, so ``peft.inject_adapter_in_model`` replaces each by a ``lora.Linear`` in place,
without the ``PeftModel`` wrapper (names keep the ``sam.`` layout the stage groups read). A wrapped layer's
weights become ``<layer>.base_layer.weight`` / ``.bias`` plus ``<layer>.lora_A.default.weight`` and
``.lora_B.default.weight``; B starts at zero, so an adapted model computes what its base does until it
trains. ``merge_lora`` folds ``(alpha / rank) * B A`` into each base weight and puts the plain
``nn.Linear`` back: the state dict is then SAM2's own layout again (what a release ships).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

# Module names (full match, in a SamHisto: "sam." prefix) of each target group of model.lora.targets.
TARGET_PATTERNS = {
    "encoder_attn": r"sam\.image_encoder\.trunk\.blocks\.\d+\.attn\.(qkv|proj)",
    "encoder_mlp": r"sam\.image_encoder\.trunk\.blocks\.\d+\.mlp\.layers\.\d+",
    "decoder": r"sam\.sam_mask_decoder\.transformer\..*(q_proj|k_proj|v_proj|out_proj)",
}
ADAPTER_KEYS = (".lora_A.", ".lora_B.")
BASE = ".base_layer."


def is_adapter(name: str) -> bool:
    return any(k in name for k in ADAPTER_KEYS)


def has_lora_keys(state: Mapping[str, torch.Tensor]) -> bool:
    return any(is_adapter(k) for k in state)


def add_lora(model: nn.Module, lora_cfg) -> nn.Module:
    """Put adapters of ``lora_cfg`` (LoraConfig, rank > 0) on ``model`` (a SamHisto) in place."""
    from peft import LoraConfig, inject_adapter_in_model

    pattern = "|".join(f"(?:{TARGET_PATTERNS[t]})" for t in lora_cfg.targets)
    config = LoraConfig(r=int(lora_cfg.rank), lora_alpha=float(lora_cfg.alpha), lora_dropout=float(lora_cfg.dropout),
                        target_modules=f"(?:{pattern})", bias="none")
    inject_adapter_in_model(config, model)
    if not has_lora_keys(dict(model.named_parameters())):
        raise ValueError(f"model.lora.targets {lora_cfg.targets} matched no linear layer of this model")
    return model


def to_adapted_keys(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict:
    """Plain weights (``X.weight``) for a model with adapters (``X.base_layer.weight``); other keys as they are."""
    out = {}
    for k, v in state.items():
        head, _, leaf = k.rpartition(".")
        wrapped = f"{head}.base_layer.{leaf}"
        out[wrapped if k not in own and wrapped in own else k] = v
    return out


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore the plain layers (in place)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model
