"""Everything a run needs before its first step: data, statistics, sampler, model, and the optimizer of
an unfreeze phase.

Under DDP only parameters that required grad when the model was wrapped are synchronised, so each
unfreeze boundary unwraps the model, sets the phase's trainable stages, builds a fresh optimizer over
exactly those parameters and prepares both again (DESIGN.md section 5).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sam_histo.config import Config, PhaseConfig, TrainConfig
from sam_histo.data.types import ClassSpec
from sam_histo.training.optim import param_groups

log = logging.getLogger("sam_histo.train")


@dataclass
class RunData:
    classes: ClassSpec
    train: object  # adapter
    stats: object  # ClassStats of the training split
    class_weights: torch.Tensor  # (C,) float32, 0 for the ignore id
    sampler: object  # RareClassSampler of this rank
    loader: torch.utils.data.DataLoader

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.sampler) // self.loader.batch_size)


def build_data(cfg: Config, run_dir: Path, rank: int, world: int, progress: bool, train=None) -> RunData:
    """Training adapter (``train`` when given, else from ``cfg.data``), class statistics (cached in the run
    folder), loss weights, sampler and loader."""
    from sam_histo.augment import build_train_transform
    from sam_histo.data.dataset import build_dataset
    from sam_histo.data.sampling import build_sampler, class_weights, compute_stats
    from sam_histo.config.datasets import modality
    from sam_histo.training.samples import TrainSet, make_loader

    train = build_dataset(cfg.data, "train") if train is None else train
    if len(train) == 0:
        raise ValueError(f"the train split of {cfg.data.root} is empty: check data.root and the split fractions")
    classes = train.classes
    stats = compute_stats(train, cache=run_dir / "class_stats.json", progress=progress)
    weights = class_weights(stats, cfg.sampling.class_weights)
    sampler = build_sampler(stats, cfg.sampling, seed=cfg.seed, num_replicas=world, rank=rank)
    fill = classes.ignore_index if classes.ignore_index is not None else 0
    transform = build_train_transform(cfg.augment, cfg.stain, cfg.model.image_size,
                                      modality(cfg.data.dataset), mask_fill=fill, seed=cfg.seed)
    prompt_cfg = cfg.prompts if cfg.model.mode == "prompted" else None
    trainset = TrainSet(train, transform, classes, prompt_cfg, target_mpp=cfg.model.target_mpp)
    report_resolution(train, cfg.model.target_mpp)
    loader = make_loader(trainset, sampler, cfg.seed, cfg.train.batch_size, cfg.train.num_workers)
    return RunData(classes, train, stats, torch.as_tensor(weights, dtype=torch.float32), sampler, loader)


def report_resolution(adapter, target_mpp) -> dict:
    """Logs where the training tiles' mpp came from and warns when model.target_mpp meets unknown ones."""
    try:
        res = adapter.resolutions()
    except NotImplementedError:  # an adapter without meta(i) (test doubles): nothing to report
        return {}
    unknown = res["sources"].get("unknown", 0)
    log.info("tile resolution: %s (sources %s); model.target_mpp=%s", {k: v for k, v in res["mpp"].items()},
             res["sources"], target_mpp)
    if target_mpp is not None and unknown:
        log.warning("%d of %d training tiles have no known mpp and are not resampled to model.target_mpp=%s: "
                    "set data.mpp or data.mpp_table", unknown, len(adapter), target_mpp)
    return res


def describe_weights(classes: ClassSpec, weights: torch.Tensor, stats) -> str:
    rows = [f"{'class':<24} {'pixels %':>9} {'weight':>8}"]
    for i in classes.trained_ids:
        rows.append(f"{classes.names[i]:<24} {100 * stats.pixel_fraction[i]:>8.2f}% {float(weights[i]):>8.3f}")
    return "\n".join(rows)


def build_model(cfg: Config, classes: ClassSpec):
    """The model to train. ``model.checkpoint`` may be a release bundle (folder or its model.safetensors):
    then its SAM2 weights load, and its heads when its classes are ours (``model.start_note`` says which;
    an unset ``clip.head`` becomes the release's CLIP head)."""
    from sam_histo.models.load import release_folder, start_from_release
    from sam_histo.models.sam import build_sam

    num = classes.num_classes if cfg.model.mode == "semantic" else None
    if cfg.model.checkpoint and release_folder(cfg.model.checkpoint) is not None:
        model, clip_head, note = start_from_release(cfg.model, classes.names, num)
        if clip_head is not None and not cfg.clip.head:
            cfg.clip.head = str(clip_head)
        model.start_note = note
        return model
    return build_sam(cfg.model, num)


def set_phase(model, train_cfg: TrainConfig, phase: PhaseConfig, mode: str) -> dict:
    """Set the trainable parameters of ``phase`` on the unwrapped model; returns trainable counts."""
    from sam_histo.models.stages import set_trainable

    return set_trainable(model, phase.stages, train_decoder=train_cfg.train_decoder,
                         train_prompt_encoder=train_cfg.train_prompt_encoder, mode=mode)


def make_optimizer(model, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, grouped by layer-wise LR scale and weight decay."""
    from sam_histo.models.stages import layer_id, num_layers

    n = num_layers(model)
    groups = param_groups(model.named_parameters(), train_cfg.weight_decay, train_cfg.layer_decay,
                          layer_of=lambda name: layer_id(name, n), num_layers=n + 1)
    if not groups:
        raise ValueError("no parameter is trainable in this phase: check train.phases[*].stages, "
                         "train.train_decoder and train.train_prompt_encoder")
    for g in groups:
        g.pop("names")
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999))


def prepare_phase(accelerator, model, cfg: Config, phase: PhaseConfig):
    """(wrapped model, optimizer) for ``phase``: unwrap, set stages, new optimizer, prepare both again."""
    accelerator.free_memory()
    counts = set_phase(model, cfg.train, phase, cfg.model.mode)
    optimizer = make_optimizer(model, cfg.train)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    return wrapped, optimizer, counts


def describe_counts(counts: dict) -> str:
    trainable = sum(v[0] for v in counts.values())
    total = sum(v[1] for v in counts.values())
    parts = [f"{k}: {v[0]:,}/{v[1]:,}" for k, v in counts.items() if v[1]]
    return f"trainable {trainable:,} of {total:,} parameters ({'; '.join(parts)})"


class JsonlLog:
    """metrics.jsonl in the run folder: one JSON object per line, flushed at once (main process)."""

    def __init__(self, path: Path, enabled: bool, resumed_at: Optional[int] = None):
        self.path, self.enabled = Path(path), enabled
        if enabled and resumed_at is not None:
            self.drop_after(resumed_at)

    def drop_after(self, step: int) -> None:
        """A resume from ``step`` trains the steps after it again: their records from the interrupted run
        are superseded and removed (atomically), so every step appears once."""
        from sam_histo.files import atomic_path

        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        keep = [ln for ln in lines if not _superseded(ln, step)]
        if len(keep) != len(lines):
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(ln + "\n" for ln in keep))

    def write(self, record: dict) -> None:
        from sam_histo.training.recovery import json_safe

        if not self.enabled:
            return
        with self.path.open("a") as f:  # valid JSON: a non-finite loss is null
            f.write(json.dumps(json_safe(record), default=_json_default, allow_nan=False) + "\n")


def _superseded(line: str, step: int) -> bool:
    try:
        rec = json.loads(line)
    except ValueError:
        return False
    return isinstance(rec, dict) and rec.get("event") in ("train", "val") and (rec.get("step") or 0) > step


def _json_default(x):
    from sam_histo.training.recovery import json_safe

    if isinstance(x, (np.integer, np.floating)):
        return json_safe(x.item())
    if isinstance(x, torch.Tensor):
        return json_safe(x.tolist())
    raise TypeError(f"not JSON-serialisable: {type(x)}")
