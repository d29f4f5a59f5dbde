"""One forward pass and its loss, for either mode; kept apart from the loop so a bare-loop benchmark and
the tests can call exactly what the trainer calls."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from sam_histo.config import LossConfig
from sam_histo.losses import prompted_loss, semantic_loss
from sam_histo.training.samples import Batch


def batch_loss(model, batch: Batch, mode: str, class_weights: torch.Tensor, loss_cfg: LossConfig,
               ignore_index: Optional[int], device: torch.device) -> dict[str, torch.Tensor]:
    """Loss terms of one batch; ``total`` is what to back-propagate.

    ``model`` is the (possibly DDP-wrapped) SamHisto and is always called through ``forward`` so DDP sees
    the pass. Prompted batches without a single object give a zero loss that still touches every
    trainable parameter, so all ranks take part in the gradient all-reduce.
    """
    unwrapped = getattr(model, "module", model)
    pixels = unwrapped.preprocess(batch.images.to(device))
    masks = batch.masks.to(device)
    weights = class_weights.to(device)
    if mode == "semantic":
        logits = model(pixels)
        return semantic_loss(logits, masks, weights, ignore_index, kind=loss_cfg.semantic,
                             focal_gamma=loss_cfg.focal_gamma, dice_weight=loss_cfg.semantic_dice)
    out = model(pixels, batch.prompts, multimask=True)
    if out.logits.shape[0] == 0:
        zero = sum(p.sum() for p in unwrapped.parameters() if p.requires_grad) * 0.0
        return {"total": zero + 0.0 * out.logits.sum()}
    targets = torch.from_numpy(np.concatenate([p.targets for p in batch.prompts])).to(device)
    valid = None
    if ignore_index is not None:
        valid = (masks != ignore_index)[out.image_index]
    return prompted_loss(out.logits, out.iou_pred, out.object_score, targets, loss_cfg.weights,
                         class_weight=weights[out.class_ids], valid=valid, focal_alpha=loss_cfg.focal_alpha,
                         focal_gamma=loss_cfg.focal_gamma, supervise_all_iou=loss_cfg.supervise_all_iou)
