"""A minimal prompted overfit on the slices of an EM volume, for the learning tests (not the trainer).

Each step draws ``batch`` slices that hold a vesicle (flipped / rotated by the project's EM pipeline with
probability ``flips``; 0 by default: the learning test overfits the very volume it evaluates, and the tiny
random-init model needs several times the steps to become equivariant), prompts every vesicle with one
positive point (``make_prompts`` with instances) and adds ``n_background`` positive clicks on background with
an empty target: those get only the object-score loss, so the object score learns to say "nothing here" for
a grid point that misses every vesicle, which the decoder then uses (``em.obj_score_thresh``).

Loss: ``prompted_loss`` with Dice-heavy weights; AdamW with warm-up and cosine decay (``training.optim.lr_at``),
gradient clipping at 1. The image encoder stays frozen for the first ``frozen_encoder_steps`` steps: the decoder
first learns to read the random features, then everything trains (as the config's staged phases do); without
that the loss sat on a plateau for a seed-dependent few hundred steps.
"""
from __future__ import annotations

import numpy as np
import torch

from sam_histo.augment import build_train_transform
from sam_histo.config import AugmentConfig, PhaseConfig, PromptConfig, StainConfig
from sam_histo.data.prompts import make_prompts
from sam_histo.data.types import ClassSpec, Prompts
from sam_histo.losses import prompted_loss
from sam_histo.training.optim import lr_at

CLASSES = ClassSpec(("background", "vesicle"))
WEIGHTS = {"mask": 2.0, "dice": 5.0, "iou": 1.0, "class": 1.0}


def _with_background(p: Prompts, mask: np.ndarray, rng, n: int) -> Prompts:
    ys, xs = np.nonzero(mask == 0)
    pick = rng.integers(0, len(ys), n)
    pts = np.stack([xs[pick], ys[pick]], 1).astype(np.float32)[:, None, :] + 0.5
    return Prompts(points=np.concatenate([p.points, pts]),
                   point_labels=np.concatenate([p.point_labels, np.ones((n, 1), np.int32)]),
                   boxes=None, has_box=np.zeros(len(p) + n, bool),
                   class_ids=np.concatenate([p.class_ids, np.zeros(n, np.int64)]),
                   targets=np.concatenate([p.targets, np.zeros((n, *mask.shape), bool)]))


def overfit_prompted(model, volume: np.ndarray, labels: np.ndarray, steps: int, *, batch: int = 4,
                     lr: float = 1e-3, n_background: int = 4, seed: int = 0,
                     multimask: bool = True, warmup: int = 50, frozen_encoder_steps: int = 0,
                     flips: float = 0.0) -> list[float]:
    """Train ``model`` (a SamHisto) in place for ``steps`` AdamW steps; returns the total loss per step.
    volume: (Z, H, W) uint8; labels: (Z, H, W) instance ids."""
    rng = np.random.default_rng(seed)
    size = volume.shape[1]
    transform = build_train_transform(AugmentConfig(flip=flips, rot90=flips), StainConfig(), size, "em", seed=seed)
    prompt_cfg = PromptConfig(n_pos=1, n_neg=0, p_box=0.0, max_objects=16, min_area=4)
    slices = np.flatnonzero((labels > 0).reshape(len(labels), -1).any(1))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)
    model.train()
    phase = PhaseConfig(lr=lr, warmup_steps=warmup, min_lr=lr / 20)
    losses = []
    encoder = [p for p in model.sam.image_encoder.parameters() if p.requires_grad]
    for step in range(steps):
        for p in encoder:  # AdamW skips parameters without a gradient
            p.requires_grad_(step >= frozen_encoder_steps)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, phase)
        images, prompts = [], []
        for z in rng.choice(slices, batch):
            inst = labels[z].astype(np.int64)
            out = transform(image=np.repeat(volume[z][..., None], 3, -1), mask=(inst > 0).astype(np.int64),
                            instances=inst)
            p = make_prompts(out["mask"], CLASSES, prompt_cfg, rng, instances=out["instances"])
            images.append(out["image"])
            prompts.append(_with_background(p, out["mask"], rng, n_background))
        feats = model.encode(model.preprocess(torch.from_numpy(np.stack(images))))
        res = model.forward_prompted(feats, prompts, multimask=multimask, orig_hw=(size, size))
        targets = torch.from_numpy(np.concatenate([p.targets for p in prompts]))
        loss = prompted_loss(res.logits, res.iou_pred, res.object_score, targets, WEIGHTS)["total"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
