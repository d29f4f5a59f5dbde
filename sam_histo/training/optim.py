"""Unfreeze phases, learning-rate schedule and optimizer parameter groups.

The phase and the learning rate are pure functions of the epoch and the step (nanoGPT's ``get_lr``):
a resumed run recomputes them instead of restoring scheduler objects. Within each phase the rate rises
linearly over ``warmup_steps`` and then follows a cosine from ``lr`` to ``min_lr`` until the phase ends.
Parameter groups apply layer-wise decay inside the image encoder (``layer_decay ** (depth - layer)``,
as SAM2's fine-tuning configs do with 0.9) and no weight decay on norms, biases and embeddings
(``models.stages.no_weight_decay``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from sam_histo.config import PhaseConfig
from sam_histo.models.stages import no_weight_decay


def phase_index(epoch: int, phases: list[PhaseConfig]) -> int:
    """Index of the phase active at ``epoch`` (the last one whose start_epoch <= epoch)."""
    idx = 0
    for i, p in enumerate(phases):
        if p.start_epoch <= epoch:
            idx = i
    return idx


def phase_epochs(i: int, phases: list[PhaseConfig], total_epochs: int) -> int:
    """Number of epochs phase ``i`` lasts (the last phase runs to ``total_epochs``)."""
    end = phases[i + 1].start_epoch if i + 1 < len(phases) else total_epochs
    return max(end - phases[i].start_epoch, 0)


def lr_at(step_in_phase: int, steps_in_phase: int, phase: PhaseConfig) -> float:
    """Learning rate ``step_in_phase`` optimizer steps into a phase of ``steps_in_phase`` steps."""
    warm = min(phase.warmup_steps, max(steps_in_phase - 1, 0))
    if step_in_phase < warm:
        return phase.lr * (step_in_phase + 1) / (warm + 1)
    span = max(steps_in_phase - warm, 1)
    progress = min(max(step_in_phase - warm, 0) / span, 1.0)
    return phase.min_lr + 0.5 * (phase.lr - phase.min_lr) * (1 + math.cos(math.pi * progress))


@dataclass
class GroupSpec:
    lr_scale: float
    weight_decay: float
    names: list[str]
    params: list[torch.nn.Parameter]


def param_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    weight_decay: float,
    layer_decay: float = 1.0,
    layer_of: Optional[Callable[[str], Optional[int]]] = None,
    num_layers: int = 0,
) -> list[dict]:
    """Optimizer groups for the trainable parameters.

    ``layer_of(name)`` gives an encoder parameter's depth in [0, num_layers] (None outside the encoder,
    which trains at the full rate). Each group carries ``lr_scale``; the loop sets ``lr = base * lr_scale``.
    """
    groups: dict[tuple[float, float], GroupSpec] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        layer = layer_of(name) if layer_of is not None else None
        scale = 1.0 if layer is None else layer_decay ** (num_layers - layer)
        wd = 0.0 if no_weight_decay(name, p) else weight_decay
        key = (round(scale, 12), wd)
        spec = groups.setdefault(key, GroupSpec(scale, wd, [], []))
        spec.names.append(name)
        spec.params.append(p)
    return [
        {"params": g.params, "names": g.names, "lr_scale": g.lr_scale, "weight_decay": g.weight_decay}
        for g in groups.values()
    ]


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_scale", 1.0)
