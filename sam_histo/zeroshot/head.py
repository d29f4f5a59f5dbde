"""Ground-truth masks for CLIP: tune the head on the training split, and score "CLIP accuracy".

Ground-truth masks of a Sample are its instances (``Sample.instances``, labelled with the majority class
under them) plus the connected components (8-connectivity) of each class in ``Sample.mask`` outside any
instance; ignore pixels never belong to a mask. The head is tuned on frozen CLIP embeddings of their crops
(cross-entropy, optionally inverse-frequency weighted), then mixed with the zero-shot weights:
W = (1 - alpha) W_zs + alpha W_tuned (WiSE-FT, Wortsman et al. 2022).
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sam_histo.data.types import ClassSpec, Sample
from sam_histo.zeroshot.classify import ClipHead, MaskClassifier


def gt_masks(sample: Sample, spec: ClassSpec, min_area: int = 16, max_masks: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(bool [K, H, W] masks, int64 [K] class ids) of one sample, largest first, areas >= ``min_area``."""
    from skimage.measure import label, regionprops

    cls = np.asarray(sample.mask)
    valid = np.ones(cls.shape, bool) if spec.ignore_index is None else cls != spec.ignore_index
    found: list[tuple[int, int, np.ndarray]] = []  # (area, class id, region coords)
    free = valid
    if sample.instances is not None:
        inst = np.asarray(sample.instances)
        if inst.shape != cls.shape:
            raise ValueError(f"{sample.source}: instances {inst.shape} and mask {cls.shape} differ in shape")
        for region in regionprops(np.where(valid, inst, 0)):
            ids = cls[region.coords[:, 0], region.coords[:, 1]]
            found.append((int(region.area), int(np.bincount(ids).argmax()), region.coords))
        free = valid & (inst == 0)
    for cid in spec.trained_ids:
        for region in regionprops(label(free & (cls == cid), connectivity=2)):
            found.append((int(region.area), cid, region.coords))
    found = sorted((f for f in found if f[0] >= min_area), key=lambda f: -f[0])[:max_masks]
    masks = np.zeros((len(found), *cls.shape), bool)
    for k, (_, _, coords) in enumerate(found):
        masks[k, coords[:, 0], coords[:, 1]] = True
    return masks, np.array([f[1] for f in found], np.int64)


def mask_dataset(classifier: MaskClassifier, samples: Sequence[Sample], spec: ClassSpec,
                 clip_cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings float32 [N, D] of every ground-truth mask of ``samples`` and labels int64 [N] (head columns).

    Masks of classes the head does not know are skipped. ``clip_cfg``: min_mask_area, max_masks_per_image.
    """
    column = {spec.id_of(n): j for j, n in enumerate(classifier.class_names) if n in spec.names}
    embs, labels = [], []
    for sample in tqdm(samples, desc="CLIP mask crops", unit="image", leave=False):
        masks, ids = gt_masks(sample, spec, clip_cfg.min_mask_area, clip_cfg.max_masks_per_image)
        keep = np.array([i in column for i in ids], bool)
        if keep.any():
            embs.append(classifier.embed(sample.image, masks[keep]))
            labels.append(torch.tensor([column[i] for i in ids[keep]], dtype=torch.long))
    if not embs:
        raise ValueError("no ground-truth masks of the head's classes in these samples "
                         f"(classes {classifier.class_names}, min area {clip_cfg.min_mask_area})")
    return torch.cat(embs), torch.cat(labels)


def train_head(head: ClipHead, embeddings: torch.Tensor, labels: torch.Tensor, clip_cfg, seed: int = 0) -> ClipHead:
    """A copy of ``head`` with tuned weights (cross-entropy on [N, D] embeddings, labels [N] columns) and
    ``alpha = clip_cfg.head_alpha``; trains head_epochs epochs of AdamW(head_lr, head_weight_decay)."""
    tuned = copy.deepcopy(head).requires_grad_(True)
    tuned.alpha = 1.0  # train the tuned weights alone; the mix is applied afterwards
    c = len(head.class_names)
    weight = None
    if clip_cfg.head_balanced:
        counts = torch.bincount(labels, minlength=c).float()
        weight = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()), 0.0)
    opt = torch.optim.AdamW([tuned.ft_weight, tuned.ft_bias], lr=clip_cfg.head_lr,
                            weight_decay=clip_cfg.head_weight_decay)
    gen = torch.Generator().manual_seed(seed)
    x, y = embeddings.float(), labels.long()
    threads = torch.get_num_threads()
    # A [C, D] problem gains nothing from intra-op threads; on a busy CPU their synchronisation made each
    # backward ~500x slower (70 ms instead of 0.15 ms with 2 threads, measured on 2 shared cores).
    torch.set_num_threads(1)
    try:
        for _ in tqdm(range(clip_cfg.head_epochs), desc="CLIP head", unit="epoch", leave=False):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), clip_cfg.head_batch_size):
                idx = order[i:i + clip_cfg.head_batch_size]
                loss = F.cross_entropy(tuned(x[idx]), y[idx], weight=weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    tuned.alpha = float(clip_cfg.head_alpha)
    return tuned.requires_grad_(False)


def fit_head(classifier: MaskClassifier, samples: Sequence[Sample], spec: ClassSpec, clip_cfg,
             seed: int = 0) -> ClipHead:
    """Tune ``classifier.head`` on the ground-truth masks of ``samples`` (the training split)."""
    emb, labels = mask_dataset(classifier, samples, spec, clip_cfg)
    return train_head(classifier.head, emb, labels, clip_cfg, seed)


def clip_accuracy(y_true, y_pred, class_names: Sequence[str]) -> dict:
    """Mask-level scores from int labels in 0..C-1.

    accuracy: share of masks classified right; balanced_accuracy: mean recall over the classes present in
    ``y_true`` (as scikit-learn defines it); per_class_recall: null for a class without masks.
    """
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    c = len(class_names)
    cm = np.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c)
    support = cm.sum(axis=1)
    recall = [float(cm[i, i] / support[i]) if support[i] else None for i in range(c)]
    present = [r for r in recall if r is not None]
    return {
        "accuracy": float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan"),
        "balanced_accuracy": float(np.mean(present)) if present else float("nan"),
        "per_class_recall": dict(zip(class_names, recall)),
        "support": dict(zip(class_names, support.tolist())),
        "n_masks": int(cm.sum()),
        "confusion_matrix": cm.tolist(),
        "averaging": "masks (ground-truth instances and connected components); balanced = mean recall over "
                     "classes with masks",
    }


def evaluate_clip(classifier: MaskClassifier, samples: Sequence[Sample], spec: ClassSpec, clip_cfg,
                  alphas: Sequence[float] | None = None) -> dict:
    """"CLIP accuracy" on the ground-truth masks of ``samples``, at the head's alpha or at each of ``alphas``.

    Returns ``{"model", "prompts_sha256", "n_images", "alpha": {str(alpha): clip_accuracy(...)}}``.
    """
    emb, labels = mask_dataset(classifier, samples, spec, clip_cfg)
    head = classifier.head
    out = {}
    for a in (alphas if alphas is not None else [head.alpha]):
        with torch.no_grad():
            pred = head(emb, alpha=a).argmax(dim=-1)
        out[f"{float(a):g}"] = clip_accuracy(labels.numpy(), pred.numpy(), head.class_names)
    return {"model": head.model_name, "prompts_sha256": head.prompts_sha256, "n_images": len(samples), "alpha": out}
