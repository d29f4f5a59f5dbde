"""Pure tensor losses and their class weighting.

Prompted mode follows the recipe of SAM2's image fine-tuning (sam2 ``training/loss_fns.py``,
``MultiStepMultiMasksAndIous``: focal + dice on the best of the multimask outputs, an IoU-prediction
regression and an object-score loss, combined with a weight dict). Two additions for classes: each
object's loss is multiplied by the weight of its class and the sum is normalised by the sum of weights,
and pixels with the ignore label (``valid`` False) contribute nothing.

Semantic mode: class-weighted cross-entropy or focal loss plus a multiclass soft Dice over dense logits,
with the ignore index.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from sam_histo.config.schema import LOSS_KEYS


def _masked_mean(values: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over the last two (spatial) dims of (N, M, H, W), counting only ``valid`` (N, 1|M, H, W)."""
    if valid is None:
        return values.flatten(2).mean(-1)
    valid = valid.to(values.dtype)
    return (values * valid).flatten(2).sum(-1) / valid.flatten(2).sum(-1).clamp(min=1.0)


def sigmoid_focal(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) per mask. logits, targets: (N, M, H, W); returns (N, M).

    ``alpha < 0`` disables the class-balancing factor; ``gamma = 0`` gives plain binary cross-entropy.
    """
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = logits.sigmoid()
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return _masked_mean(loss, valid)


def soft_dice(logits: torch.Tensor, targets: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1 - (2|P∩T| + 1) / (|P| + |T| + 1) per mask, P = sigmoid(logits). (N, M, H, W) -> (N, M)."""
    p = logits.sigmoid()
    if valid is not None:
        p = p * valid
        targets = targets * valid
    inter = (p * targets).flatten(2).sum(-1)
    total = p.flatten(2).sum(-1) + targets.flatten(2).sum(-1)
    return 1 - (2 * inter + 1) / (total + 1)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """IoU of the binarised prediction (logit > 0) with the target. (N, M, H, W) -> (N, M), no grad."""
    with torch.no_grad():
        pred = logits > 0
        tgt = targets > 0
        if valid is not None:
            pred = pred & valid
            tgt = tgt & valid
        inter = (pred & tgt).flatten(2).sum(-1).float()
        union = (pred | tgt).flatten(2).sum(-1).float()
        return inter / union.clamp(min=1.0)


def prompted_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    object_score: torch.Tensor,
    targets: torch.Tensor,
    weights: dict[str, float],
    class_weight: Optional[torch.Tensor] = None,
    valid: Optional[torch.Tensor] = None,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    supervise_all_iou: bool = True,
) -> dict[str, torch.Tensor]:
    """SAM2's mask losses for N prompted objects with M candidate masks each.

    logits: (N, M, H, W) mask logits; iou_pred: (N, M); object_score: (N, 1) logits;
    targets: (N, H, W) bool or {0, 1}; class_weight: (N,) weight of each object's class (default 1);
    valid: (N, H, W) bool, False on ignore pixels. ``weights`` maps "mask", "dice", "iou", "class" to
    factors (SAM2's default 20:1:1:1). Focal and Dice are taken on the candidate with the smallest
    weighted focal + dice (as SAM2 does, so multimask outputs can specialise); IoU regression (MSE) on all
    candidates when ``supervise_all_iou`` (the sam2.1 training configs set it), else on the best.
    Objects with an empty target only get the object-score loss. Returns the four weighted-averaged
    terms and ``total`` = sum of weight * term.
    """
    unknown = set(weights) - set(LOSS_KEYS)
    if unknown:
        raise KeyError(f"unknown loss weight(s) {sorted(unknown)}; the keys are {list(LOSS_KEYS)}")
    n = logits.shape[0]
    tgt = targets.to(logits.dtype).unsqueeze(1).expand_as(logits)
    v = None if valid is None else valid.unsqueeze(1)
    focal = sigmoid_focal(logits, tgt, focal_alpha, focal_gamma, v)
    dice = soft_dice(logits, tgt, v)
    iou_err = (iou_pred - mask_iou(logits, tgt, v)) ** 2
    combo = weights.get("mask", 0.0) * focal + weights.get("dice", 0.0) * dice
    best = combo.argmin(dim=1)
    rows = torch.arange(n, device=logits.device)
    has_obj = tgt[:, 0].flatten(1).amax(dim=1)  # (N,) 1 where the target is not empty
    per_obj = {
        "mask": focal[rows, best] * has_obj,
        "dice": dice[rows, best] * has_obj,
        "iou": (iou_err.mean(1) if supervise_all_iou else iou_err[rows, best]) * has_obj,
        "class": F.binary_cross_entropy_with_logits(object_score[:, 0], has_obj, reduction="none"),
    }
    w = torch.ones(n, device=logits.device, dtype=logits.dtype) if class_weight is None else class_weight.to(logits.dtype)
    norm = w.sum().clamp(min=1e-8)
    out = {k: (per_obj[k] * w).sum() / norm for k in LOSS_KEYS}
    out["total"] = sum(weights.get(k, 0.0) * out[k] for k in LOSS_KEYS)
    return out


def semantic_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: Optional[torch.Tensor] = None,
    ignore_index: Optional[int] = None,
    kind: str = "ce",
    focal_gamma: float = 2.0,
    dice_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Dense class loss. logits: (B, C, H, W); target: (B, H, W) int64 ids in [0, C).

    ``kind`` "ce": class-weighted cross-entropy (mean over valid pixels, normalised by the sum of their
    class weights, as torch does); "focal": the multiclass focal loss -w_t (1 - p_t)^gamma log p_t with
    the same normalisation. Plus ``dice_weight`` x a multiclass soft Dice averaged over the non-ignored
    classes with their class weights. Pixels whose target is ``ignore_index`` count nowhere.
    Returns {"ce" | "focal", "dice", "total"}.
    """
    c = logits.shape[1]
    w = torch.ones(c, device=logits.device) if class_weights is None else class_weights.to(logits.device, torch.float32)
    if ignore_index is not None:
        w = w.clone()
        w[ignore_index] = 0.0
        valid = target != ignore_index
    else:
        valid = torch.ones_like(target, dtype=torch.bool)
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    logp = F.log_softmax(logits.float(), dim=1)
    logp_t = logp.gather(1, safe_target.unsqueeze(1)).squeeze(1)  # (B, H, W)
    w_t = w[safe_target] * valid
    if kind == "ce":
        term = -(w_t * logp_t)
    elif kind == "focal":
        term = -(w_t * (1 - logp_t.exp()) ** focal_gamma * logp_t)
    else:
        raise ValueError(f"semantic loss kind {kind!r} is not 'ce' or 'focal'")
    main = term.sum() / w_t.sum().clamp(min=1e-8)
    out = {kind: main}
    if dice_weight:
        prob = logp.exp() * valid.unsqueeze(1)
        onehot = F.one_hot(safe_target, c).permute(0, 3, 1, 2).to(prob.dtype) * valid.unsqueeze(1)
        inter = (prob * onehot).sum((0, 2, 3))
        total = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        dice_c = 1 - (2 * inter + 1) / (total + 1)
        out["dice"] = (dice_c * w).sum() / w.sum().clamp(min=1e-8)
        out["total"] = main + dice_weight * out["dice"]
    else:
        out["total"] = main
    return out
