"""`sam-histo bench zeroshot`: CLIP mask classification, our batched and cached pipeline against the naive one.

Ours: the text classifier comes from the in-memory cache (computed once per model and prompt file), the crops
of all masks of the image go through the image tower in batches. Peer ("one call per mask"): every mask is
cropped and encoded on its own, and the prompts are re-encoded for every mask. Same model (random init:
weights do not change the timing), same masks, same crops, same head math, so the probabilities must agree
(``agreement`` = max abs difference). The peer is timed on ``--peer-masks`` masks and extrapolated to the
whole image, because re-encoding a full prompt file per mask takes tens of seconds on a CPU.
Extra keys: ``ours_s_per_image``, ``ours_cold_s`` (first image, text encoding included),
``peer_s_per_image``, ``unbatched_s_per_image`` (cached text, but one image-tower call per mask: the share
of the gain that batching alone gives), ``masks``, ``texts``, ``peer_masks_timed``, ``arch``, ``prompts``,
``image``.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import torch

from sam_histo.bench import result, timeit


def add_arguments(parser) -> None:
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random init), or 'tiny'")
    parser.add_argument("--prompts", default="bcss", help="prompt file name in prompts/ or a path")
    parser.add_argument("--masks", type=int, default=30, help="masks on the synthetic tile")
    parser.add_argument("--size", type=int, default=512, help="side of the synthetic tile in pixels")
    parser.add_argument("--peer-masks", type=int, default=3, help="masks the peer is timed on (extrapolated)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N timings of our pipeline")


def synthetic_tile(size: int, n_masks: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-coloured tile (uint8 [S, S, 3]) with ``n_masks`` elliptic nuclei-like masks (bool [K, S, S])."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = (236, 190, 214)  # eosin-pink background
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n_masks, size, size), bool)
    for k in range(n_masks):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(size / 60, size / 8, 2)
        masks[k] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if not masks[k].any():
            masks[k, int(cy) % size, int(cx) % size] = True
        image[masks[k]] = rng.integers(60, 140, 3)  # haematoxylin-purple objects
    return image, masks


def _peer_probabilities(model, prompts, head, image, masks, clip_cfg) -> np.ndarray:
    """One mask at a time, prompts re-encoded for each mask: the straightforward loop."""
    from sam_histo.zeroshot.classify import ensemble
    from sam_histo.zeroshot.mask_crops import mask_crops

    rows = []
    for k in range(len(masks)):
        crop = mask_crops(image, masks[k:k + 1], model.image_size, margin=clip_cfg.crop_margin,
                          min_side=clip_cfg.crop_min_side, blank_background=clip_cfg.blank_background,
                          fill=model.fill_rgb)
        emb = model.encode_image(crop)
        text = torch.stack([ensemble(model.encode_text(prompts.texts(c))) for c in head.class_names])
        logits = head.logit_scale * emb @ text.T
        rows.append(logits.softmax(dim=-1)[0].numpy())
    return np.stack(rows)


def run(args) -> dict:
    from sam_histo.config import ClipConfig
    from sam_histo.zeroshot.classify import MaskClassifier, clear_text_cache, zero_shot_head
    from sam_histo.zeroshot.text_prompts import PROMPTS_DIR, load_prompts
    from sam_histo.models.clip import build_open_clip

    args = SimpleNamespace(**{**vars(_defaults()), **vars(args)})
    path = PROMPTS_DIR / f"{args.prompts}.json" if "/" not in args.prompts else args.prompts
    prompts = load_prompts(path)
    clip_cfg = ClipConfig(arch=args.arch, cache_dir="")  # memory cache only: no files left behind
    model = build_open_clip(args.arch, None)
    image, masks = synthetic_tile(args.size, args.masks)

    clear_text_cache()
    t0 = time.perf_counter()
    head = zero_shot_head(model, prompts, prompts.class_names, clip_cfg)
    classifier = MaskClassifier(model, head, clip_cfg)
    ours = classifier.probabilities(image, masks)
    cold = time.perf_counter() - t0

    def ours_fn():
        zero_shot_head(model, prompts, prompts.class_names, clip_cfg)  # a cache hit, as for every later image
        classifier.probabilities(image, masks)

    ours_s = timeit(ours_fn, repeat=args.repeat)
    t0 = time.perf_counter()
    for k in range(len(masks)):
        classifier.probabilities(image, masks[k:k + 1])
    unbatched_s = time.perf_counter() - t0
    n_peer = max(1, min(args.peer_masks, len(masks)))
    t0 = time.perf_counter()
    peer = _peer_probabilities(model, prompts, head, image, masks[:n_peer], clip_cfg)
    peer_s = (time.perf_counter() - t0) / n_peer * len(masks)
    agreement = float(np.abs(ours[:n_peer] - peer).max())
    texts = sum(len(prompts.texts(c)) for c in prompts.class_names)
    return result(
        "zeroshot", 1.0 / ours_s, "one model call per mask, prompts re-encoded per mask", 1.0 / peer_s, agreement,
        ours_s_per_image=ours_s, ours_cold_s=cold, peer_s_per_image=peer_s, unbatched_s_per_image=unbatched_s,
        masks=len(masks), texts=texts,
        peer_masks_timed=n_peer, arch=f"open_clip {args.arch} (random init)", prompts=f"{path} {prompts.sha256[:12]}",
        image=f"synthetic {args.size}x{args.size} tile",
    )


def _defaults():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([])
