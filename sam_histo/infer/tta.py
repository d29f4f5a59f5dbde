"""Prompted masks under test-time views: flips and a rotation of image and prompts, logits averaged back.

A view moves the image (``np.flip`` / ``np.rot90``) and every prompt coordinate with it, decodes, and maps
each object's logits back to the original frame; the average over the views is returned. Coordinates move
so that the prompt lands on the mirrored place of the model's S x S input exactly: SAM2 scales a pixel
coordinate x of a width-w image to x * S / w and adds half a pixel, so a horizontal flip maps x to
``w - x - w / S`` (``w - 1 - x`` when S = w). Box corners move the same way and are re-sorted.
Each view picks its own best multimask output (highest predicted IoU) before the average.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from sam_histo.data.types import Prompts
from sam_histo.infer.image import best_mask_logits

TTA_VIEWS = ("identity", "hflip", "vflip", "rot90")


class View(NamedTuple):
    """image: (H, W, ...) -> viewed array; point: (P, 2) (x, y) of an (h, w) image at model size s -> the
    view's frame; back: view-frame logits (N, h', w') -> original frame."""

    image: Callable[[np.ndarray], np.ndarray]
    point: Callable[[np.ndarray, int, int, int], np.ndarray]
    back: Callable[[torch.Tensor], torch.Tensor]


def _xy(x, y) -> np.ndarray:
    return np.stack([x, y], axis=-1).astype(np.float32)


def _mirror(v, n: int, s: int):
    return n - v - n / s


VIEWS = {
    "identity": View(lambda a: a, lambda p, h, w, s: p, lambda t: t),
    "hflip": View(lambda a: a[:, ::-1], lambda p, h, w, s: _xy(_mirror(p[..., 0], w, s), p[..., 1]),
                  lambda t: torch.flip(t, dims=(-1,))),
    "vflip": View(lambda a: a[::-1], lambda p, h, w, s: _xy(p[..., 0], _mirror(p[..., 1], h, s)),
                  lambda t: torch.flip(t, dims=(-2,))),
    # np.rot90(a)[i, j] = a[j, w - 1 - i]: (x, y) -> (y, mirror(x)); the view is (w, h)
    "rot90": View(lambda a: np.rot90(a, 1), lambda p, h, w, s: _xy(p[..., 1], _mirror(p[..., 0], w, s)),
                  lambda t: torch.rot90(t, -1, dims=(-2, -1))),
}


def move_prompts(prompts: Prompts, view: View, h: int, w: int, s: int) -> Prompts:
    """The prompts of an (h, w) image in ``view``'s frame (padding points move too; they are ignored)."""
    points = view.point(np.asarray(prompts.points, np.float32), h, w, s) if len(prompts) else prompts.points
    boxes = prompts.boxes
    if boxes is not None and len(boxes):
        corners = view.point(np.asarray(boxes, np.float32).reshape(-1, 2, 2), h, w, s)
        boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32)
    return Prompts(points=points, point_labels=prompts.point_labels, boxes=boxes, has_box=prompts.has_box,
                   class_ids=prompts.class_ids, targets=prompts.targets)


@torch.no_grad()
def view_logits(model, image: np.ndarray, prompt_sets: dict, views=TTA_VIEWS) -> dict:
    """{name: (N, H, W) best-mask logits averaged over ``views``} for each ``name: (Prompts,
    use_points_with_box)`` of ``prompt_sets``; the image is encoded once per view for all of them."""
    h, w = image.shape[:2]
    s = int(model.image_size)
    sums: dict = {}
    for name in views:
        view = VIEWS[name]
        viewed = np.ascontiguousarray(view.image(image))
        feats = model.encode(model.preprocess(viewed[None]))
        for key, (prompts, with_points) in prompt_sets.items():
            logits, _ = best_mask_logits(model, feats, move_prompts(prompts, view, h, w, s), viewed.shape[:2],
                                         use_points_with_box=with_points)
            back = view.back(logits)
            sums[key] = back if key not in sums else sums[key] + back
    return {k: v / len(views) for k, v in sums.items()}
