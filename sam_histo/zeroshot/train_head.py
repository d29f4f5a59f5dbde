"""Tune the CLIP head of a run on the ground-truth masks of its training split (``clip.train_head=true``).

The trainer calls ``train_clip_head(cfg, run_dir, train_adapter, val_adapter)`` after SAM2 training (on the
main process only: the head is small and trains on one process in seconds to minutes). It writes
``run_dir/clip_head.safetensors`` (zero-shot and tuned weights, alpha, CLIP model name, prompt hash; loaded by
``ClipHead.load`` or ``sam-histo zeroshot --clip-head``) and ``run_dir/clip_head_metrics.json`` with CLIP
accuracy at alpha 0 (zero-shot), ``clip.head_alpha`` and 1 (tuned only) on the training and validation masks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HEAD_FILE = "clip_head.safetensors"
METRICS_FILE = "clip_head_metrics.json"


def _accuracy_at(head, embeddings: torch.Tensor, labels: torch.Tensor, alphas) -> dict:
    from sam_histo.zeroshot.head import clip_accuracy

    out = {}
    with torch.no_grad():
        for a in alphas:
            pred = head(embeddings, alpha=a).argmax(dim=-1)
            out[f"{float(a):g}"] = clip_accuracy(labels.numpy(), pred.numpy(), head.class_names)
    return out


def train_clip_head(cfg, run_dir, train_adapter, val_adapter=None, *, classifier=None) -> dict:
    """Fit the head on ``train_adapter``'s ground-truth masks, save it, score it; returns the metrics written.

    cfg: the whole Config (``cfg.clip`` settings, ``cfg.data.dataset`` / ``cfg.clip.prompts`` for the prompt
    file, ``cfg.seed``). train_adapter / val_adapter: Sequences of Sample with ``.classes`` (dataset adapters).
    classifier: a MaskClassifier to start from (default: CLIP of ``cfg.clip`` with the zero-shot text head;
    ``clip.head`` is not used, training always starts from the prompts).
    """
    from sam_histo.zeroshot.classify import MaskClassifier, build_mask_classifier
    from sam_histo.zeroshot.head import evaluate_clip, mask_dataset, train_head
    from sam_histo.files import write_json
    from sam_histo.scoring.metrics_json import jsonable
    from sam_histo.zeroshot.text_prompts import prompt_file_for

    spec = train_adapter.classes
    if classifier is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        classifier = build_mask_classifier(cfg.clip, spec.trained_names,
                                           prompt_file_for(cfg.clip.prompts, cfg.data.dataset), device)
    emb, labels = mask_dataset(classifier, train_adapter, spec, cfg.clip)
    head = train_head(classifier.head, emb, labels, cfg.clip, seed=cfg.seed)
    path = head.save(Path(run_dir) / HEAD_FILE)
    alphas = sorted({0.0, float(cfg.clip.head_alpha), 1.0})
    tuned = MaskClassifier(classifier.model, head, cfg.clip)
    val = None
    if val_adapter is not None and len(val_adapter):
        val = evaluate_clip(tuned, val_adapter, spec, cfg.clip, alphas=alphas)
        val["split"] = getattr(val_adapter, "split", None)
    out = {
        "head_file": str(path),
        "model": head.model_name,
        "prompts_sha256": head.prompts_sha256,
        "class_names": head.class_names,
        "head_alpha": head.alpha,
        "settings": {k: getattr(cfg.clip, k) for k in ("head_lr", "head_epochs", "head_weight_decay",
                                                       "head_batch_size", "head_balanced", "min_mask_area",
                                                       "max_masks_per_image")} | {"seed": cfg.seed},
        "train": {"split": getattr(train_adapter, "split", None), "n_images": len(train_adapter),
                  "masks_per_class": dict(zip(head.class_names, np.bincount(labels.numpy(),
                                                                            minlength=len(head.class_names)).tolist())),
                  "alpha": _accuracy_at(head, emb, labels, alphas)},
        "val": val,
        "averaging": "masks (ground-truth instances and connected components); balanced accuracy = mean recall "
                     "over classes with masks; alpha 0 = zero-shot text classifier, 1 = tuned weights only",
    }
    out = jsonable(out)
    write_json(Path(run_dir) / METRICS_FILE, out, indent=2)
    return out
