"""A model's predictions for one image, shared by the validator, the trainer's validation and predict.

Semantic mode: class probabilities from the class-token head, over windows of the model's input size
blended by ``sliding.sliding_window`` (tiles larger or smaller than the input both work). The ignore id
is never predicted: its logit is set to -inf before the softmax.

Prompted mode: every object's prompts go through SAM2 with the whole image resized to the model input
(as SAM2ImagePredictor does); each object's best mask (highest predicted IoU among the multimask
outputs) is pasted back with the object's class, and where masks overlap the one with the larger logit
wins. Pixels no mask covers get ``unassigned_id``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from sam_histo.data.io.resolution import resample_image, scale_factor, to_size
from sam_histo.data.types import Prompts
from sam_histo.infer.postprocess import absorb_small_regions
from sam_histo.infer.sliding import sliding_window


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# Test-time views of a window batch (B, S, S, ...): each flip is its own inverse.
FLIPS = (lambda a: a, lambda a: a[:, :, ::-1], lambda a: a[:, ::-1], lambda a: a[:, ::-1, ::-1])


def semantic_predict_fn(model, ignore_index: Optional[int] = None, autocast_dtype=None, tta: bool = False):
    """A ``predict_fn`` for sliding_window: uint8 tiles (B, S, S, 3) -> float32 probabilities (B, C, S, S).

    ``tta``: each window is also predicted flipped left-right, up-down and both, in one model call of 4B
    windows, and the four probability maps, flipped back, are averaged (4x the cost)."""
    device = model_device(model)

    @torch.no_grad()
    def probs(tiles: np.ndarray) -> np.ndarray:
        pixels = model.preprocess(np.ascontiguousarray(tiles))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(pixels).float()
        if ignore_index is not None:
            logits[:, ignore_index] = float("-inf")
        return logits.softmax(dim=1).cpu().numpy()

    def predict(tiles: np.ndarray) -> np.ndarray:
        if not tta:
            return probs(tiles)
        b = len(tiles)
        out = probs(np.concatenate([f(tiles) for f in FLIPS]))  # (4B, C, S, S)
        views = [f(out[k * b:(k + 1) * b].transpose(0, 2, 3, 1)) for k, f in enumerate(FLIPS)]  # back, (B,S,S,C)
        return np.ascontiguousarray((sum(views) / len(FLIPS)).transpose(0, 3, 1, 2), dtype=np.float32)

    return predict


def semantic_probs(model, image: np.ndarray, num_classes: int, ignore_index: Optional[int] = None,
                   overlap: float = 0.25, batch_size: int = 4, autocast_dtype=None, *,
                   mpp: Optional[float] = None, target_mpp: Optional[float] = None, tta: bool = False,
                   scales: Sequence[float] = (1.0,)) -> np.ndarray:
    """Class probabilities (C, H, W) float32 of an RGB uint8 image (H, W, 3) of any size; with both ``mpp``
    (the image's) and ``target_mpp`` (the model's) known, computed at the target and brought back. ``tta``:
    flips of every window averaged (``semantic_predict_fn``); ``scales``: the (target-resolution) image also
    predicted resized by each relative scale, the maps brought back to its grid and averaged."""
    fn = semantic_predict_fn(model, ignore_index, autocast_dtype, tta)

    def windows(im: np.ndarray) -> np.ndarray:
        return sliding_window(im, fn, model.image_size, overlap, batch_size, num_classes)

    def multi_scale(im: np.ndarray) -> np.ndarray:
        total = None
        for s in scales:
            p = windows(im) if s == 1.0 else to_size(windows(resample_image(im, s)), im.shape[:2])
            total = p if total is None else total + p
        return total if len(scales) == 1 else (total / len(scales)).astype(np.float32)

    return at_resolution(multi_scale, image, mpp, target_mpp)


def region_pixels(min_region_um2: float, *mpps: Optional[float]) -> int:
    """Pixels of ``min_region_um2`` square microns at the first known of ``mpps`` (0 when off or none known)."""
    mpp = next((m for m in mpps if m), None)
    if not min_region_um2 or mpp is None:
        return 0
    return int(np.ceil(min_region_um2 / mpp ** 2 - 1e-9))


def class_map(probs: np.ndarray, min_pixels: int = 0) -> np.ndarray:
    """The predicted class map (H, W) int64 of probabilities (C, H, W): argmax, then regions of one class
    under ``min_pixels`` absorbed by the class that borders them most (``postprocess.absorb_small_regions``)."""
    label = probs.argmax(0).astype(np.int64)
    return absorb_small_regions(label, min_pixels) if min_pixels > 1 else label


def at_resolution(probs_fn, image: np.ndarray, mpp: Optional[float], target_mpp: Optional[float]) -> np.ndarray:
    """``probs_fn(image) -> (C, h, w)`` run on the image resampled from ``mpp`` to ``target_mpp`` (area /
    bilinear), its probabilities resized back (bilinear) to the image's own (H, W). No resampling when
    either resolution is unknown or they agree."""
    factor = scale_factor(mpp, target_mpp)
    if factor == 1.0:
        return probs_fn(image)
    return to_size(probs_fn(resample_image(image, factor)), image.shape[:2])


def take(prompts: Prompts, idx) -> Prompts:
    """The objects ``idx`` of a Prompts (a slice or an index array)."""
    return Prompts(points=prompts.points[idx], point_labels=prompts.point_labels[idx],
                   boxes=None if prompts.boxes is None else prompts.boxes[idx], has_box=prompts.has_box[idx],
                   class_ids=prompts.class_ids[idx], targets=prompts.targets[idx])


@torch.no_grad()
def best_mask_logits(model, feats, prompts: Prompts, orig_hw: tuple[int, int], chunk: int = 32,
                     use_points_with_box: bool = False):
    """Each object's best mask (highest predicted IoU of the multimask outputs) for encoded features of one
    image: logits (N, H, W) float32 on the CPU at ``orig_hw``, and that mask's predicted IoU (N,)."""
    logits, ious = [], []
    for start in range(0, len(prompts), chunk):
        out = model.forward_prompted(feats, [take(prompts, slice(start, start + chunk))], multimask=True,
                                     orig_hw=orig_hw, use_points_with_box=use_points_with_box)
        best = out.iou_pred.argmax(dim=1)
        rows = torch.arange(len(best), device=best.device)
        logits.append(out.logits[rows, best].float().cpu())
        ious.append(out.iou_pred[rows, best].float().cpu())
    if not logits:
        return torch.zeros(0, *orig_hw), torch.zeros(0)
    return torch.cat(logits), torch.cat(ious)


@torch.no_grad()
def prompted_masks(model, image: np.ndarray, prompts: Prompts, chunk: int = 32):
    """Each object's best mask logits for one image: (N, H, W) float32 tensor on the CPU, and the
    predicted IoU of that mask (N,). Objects are decoded ``chunk`` at a time to bound memory."""
    h, w = image.shape[:2]
    feats = model.encode(model.preprocess(image[None]))
    return best_mask_logits(model, feats, prompts, (h, w), chunk)


def paste_masks(logits: torch.Tensor, class_ids, unassigned_id: int, threshold: float = 0.0) -> np.ndarray:
    """Class map (H, W) int64 from per-object mask logits (N, H, W): a pixel takes the class of the object
    with the largest logit if that logit is above ``threshold``, else ``unassigned_id``."""
    h, w = logits.shape[-2:]
    out = np.full((h, w), unassigned_id, np.int64)
    if len(logits) == 0:
        return out
    top, which = logits.max(dim=0)
    cls = torch.as_tensor(np.asarray(class_ids, np.int64))[which]
    covered = top > threshold
    out[covered.numpy()] = cls[covered].numpy()
    return out


def prompted_class_map(model, image: np.ndarray, prompts: Prompts, unassigned_id: int) -> np.ndarray:
    """Class map (H, W) int64 of one image from its prompts (see the module docstring)."""
    logits, _ = prompted_masks(model, image, prompts)
    return paste_masks(logits, prompts.class_ids, unassigned_id)
