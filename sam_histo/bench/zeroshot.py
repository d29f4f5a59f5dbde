"""`sam-histo bench zeroshot`: CLIP mask classification, our batched and cached pipeline against the loops a
user would write.

Ours: the text classifier comes from the in-memory cache (computed once per model and prompt file), the crops
of all masks of the image are cut together and go through the image tower in batches of ``clip.batch_size``.
Contenders, all with the same model (random init: weights do not change the timing), masks, crop settings and
head math, so the probabilities must agree (``agreement`` = max abs difference over every contender):

- peer, "one image call per mask": the fastest straightforward loop. Text embeddings computed once; for
  each mask, cut its crop and call the image tower on it alone. ``ratio`` = ours over this.
- "batched masks, crops cut one by one": text once, each mask's crop cut on its own in a Python loop, then
  all crops in one image-tower call. ``peer`` over this names the saving of batching the model call;
  this over ours names the saving of cutting the crops together.
- "prompts re-encoded per mask" (the old peer, kept only as a labelled row): the loop above that also
  re-encodes every prompt for every mask. No user writes that; it is timed on ``--peer-masks`` masks and
  extrapolated, because re-encoding a full prompt file per mask takes tens of seconds on a CPU.

Extra keys: ``s_per_image`` (every contender), ``saving`` (the named ratios), ``ours_cold_s`` (first image,
text encoding included), ``masks``, ``texts``, ``peer_masks_timed``, ``arch``, ``prompts``, ``image``;
``ours_s_per_image``, ``peer_s_per_image`` and ``unbatched_s_per_image`` as before.
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
    parser.add_argument("--peer-masks", type=int, default=3,
                        help="masks the old re-encoding peer is timed on (extrapolated)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N timings of ours and of each loop")


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


PER_MASK = "one image call per mask, text embeddings computed once"
BATCHED = "batched masks, crops cut one by one, text once"
REENCODE = "prompts re-encoded per mask (old peer, not a fair baseline; extrapolated)"


def _reencode_probabilities(model, prompts, head, image, masks, classifier) -> np.ndarray:
    """One mask at a time, prompts re-encoded for each mask: the old, unfair peer."""
    from sam_histo.zeroshot.classify import ensemble

    rows = []
    for k in range(len(masks)):
        emb = model.encode_image(classifier.crops(image, masks[k:k + 1]))
        text = torch.stack([ensemble(model.encode_text(prompts.texts(c))) for c in head.class_names])
        logits = head.logit_scale * emb @ text.T
        rows.append(logits.softmax(dim=-1)[0].numpy())
    return np.stack(rows)


def _loops(classifier, image, masks) -> dict:
    """The straightforward loops (text embeddings already in the head): name -> fn returning [K, C]."""
    model, head = classifier.model, classifier.head

    def per_mask():
        return np.concatenate([head.probabilities(model.encode_image(classifier.crops(image, masks[k:k + 1])))
                               .numpy() for k in range(len(masks))])

    def batched():
        crops = np.concatenate([classifier.crops(image, masks[k:k + 1]) for k in range(len(masks))])
        return head.probabilities(model.encode_image(crops, batch_size=len(crops))).numpy()

    return {PER_MASK: per_mask, BATCHED: batched}


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
        return classifier.probabilities(image, masks)

    fns = {"ours": ours_fn, **_loops(classifier, image, masks)}
    secs = {name: timeit(fn, repeat=args.repeat) for name, fn in fns.items()}
    n_peer = max(1, min(args.peer_masks, len(masks)))
    t0 = time.perf_counter()
    old = _reencode_probabilities(model, prompts, head, image, masks[:n_peer], classifier)
    secs[REENCODE] = (time.perf_counter() - t0) / n_peer * len(masks)
    agreement = max(float(np.abs(fn() - ours).max()) for fn in fns.values())
    agreement = max(agreement, float(np.abs(ours[:n_peer] - old).max()))
    texts = sum(len(prompts.texts(c)) for c in prompts.class_names)
    saving = {"batching the image-tower call (per-mask loop / batched loop)": secs[PER_MASK] / secs[BATCHED],
              "cutting crops together (batched loop / ours)": secs[BATCHED] / secs["ours"],
              "caching text embeddings (old peer / per-mask loop)": secs[REENCODE] / secs[PER_MASK]}
    return result(
        "zeroshot", 1.0 / secs["ours"], PER_MASK, 1.0 / secs[PER_MASK], agreement,
        s_per_image=secs, saving=saving, ratio_vs_batched_loop=secs[BATCHED] / secs["ours"],
        ratio_vs_old_peer=secs[REENCODE] / secs["ours"],
        ours_s_per_image=secs["ours"], ours_cold_s=cold, peer_s_per_image=secs[PER_MASK],
        unbatched_s_per_image=secs[PER_MASK], masks=len(masks), texts=texts,
        peer_masks_timed=n_peer, arch=f"open_clip {args.arch} (random init)", prompts=f"{path} {prompts.sha256[:12]}",
        image=f"synthetic {args.size}x{args.size} tile",
    )


def _defaults():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([])
