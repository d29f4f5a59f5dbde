"""``Evaluator``: per-image accumulation of a split, exact reduction across processes, the metrics object.

Usage (the validator and ``sam-histo score`` do this)::

    ev = Evaluator(classes)                       # ClassSpec; instances=True for instance tasks
    for sample, pred, probs in ...:
        ev.add(pred, sample.mask, probs, meta=sample.meta)    # meta["index"] = dataset index (the key)
    ev.reduce(accelerator)                        # no-op in one process
    metrics = ev.result(split="val", checkpoint="runs/x/best")

Distributed design: every image keeps a small record (its (C, C) counts, optional (C, 5) probability
statistics and instance sums) under a key that identifies the sample (the dataset index). ``reduce`` gathers
all records to every process (``accelerate.utils.gather_object``, or ``torch.distributed.all_gather_object``
when a process group is up) and keeps one record per key. This drops the duplicates that a padding sampler
adds (``DistributedSampler`` and accelerate's ``even_batches`` repeat samples to fill the last batch) without
relying on the dataloader's internal remainder state, so it works for any sampler and any batch layout.
Results are computed from the records sorted by key, so one process and N processes sum the very same
numbers in the same order and agree exactly, floating-point sums included. A record costs about
(C*C + 5*C) numbers, so gathering is cheap next to the forward passes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from sam_histo.data.types import ClassSpec
from sam_histo.scoring import confusion as M
from sam_histo.scoring.instances import InstanceCounts, image_level_instance_scores, instance_counts
from sam_histo.scoring.metrics_json import jsonable, metrics_json

_META_TYPES = (str, int, float, bool)


@dataclass
class ImageScore:
    """One image's score for one class (for best/worst overlays and listings)."""

    key: Any
    dice: float
    iou: float
    support_pixels: int
    pred_pixels: int
    meta: dict


def _sort_key(key) -> tuple:
    if isinstance(key, (bool, np.bool_)):
        key = int(key)
    if isinstance(key, (int, np.integer)):
        return (0, int(key), "")
    if isinstance(key, str):
        return (1, 0, key)
    if isinstance(key, tuple) and len(key) == 3 and key[0] == "auto":  # ("auto", rank, i)
        return (2, (int(key[1]) << 40) + int(key[2]), "")
    raise TypeError(f"sample key must be an int or a str, got {key!r}")


def _rank() -> int:
    try:
        import torch.distributed as dist

        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    except Exception:  # pragma: no cover - torch without distributed support
        return 0


def gather_records(records: list, accelerator=None) -> list:
    """All processes' records, concatenated in rank order, on every process (identity in one process)."""
    if accelerator is not None:
        if accelerator.num_processes <= 1:
            return list(records)
        from accelerate.utils import gather_object

        return list(gather_object(list(records)))
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return list(records)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(records))
    return [r for part in parts for r in part]


class Evaluator:
    """Accumulates one split image by image; see the module docstring for the distributed design.

    classes: the ClassSpec (names in id order, ignore id). instances: also compute instance metrics; then
    ``add`` needs ``gt_instances`` and ``pred_instances``.
    """

    def __init__(self, classes: ClassSpec, instances: bool = False):
        self.classes = classes
        self.instances = instances
        self._records: list[dict] = []
        self._n_auto = 0
        self._n_dropped = 0

    # ------------------------------------------------------------------------------------- adding
    def add(self, pred, target, probs=None, meta: Optional[dict] = None, *, key=None,
            gt_instances=None, pred_instances=None) -> np.ndarray:
        """Add one image (2-D) or volume (3-D); returns its (C, C) int64 counts.

        pred, target: integer id maps of one shape (numpy or torch, any device); probs: optional (C, *shape)
        float probabilities; meta: the sample's metadata (str/int/float/bool values are kept for reports);
        key: the sample's identity, default meta["index"], else meta["source"], else an automatic key (which
        cannot recognise the duplicates of a padding sampler: pass the dataset index under several processes).
        """
        meta = {k: v for k, v in (meta or {}).items() if isinstance(v, _META_TYPES)}
        if key is None:
            key = meta.get("index", meta.get("source"))
        if key is None:
            key = ("auto", _rank(), self._n_auto)
            self._n_auto += 1
        _sort_key(key)  # fail early on a key that cannot be ordered
        counts = M.confusion_counts(pred, target, self.classes.num_classes, self.classes.ignore_index)
        record = {"key": key, "counts": counts, "meta": meta}
        if probs is not None:
            record["prob"] = M.probability_counts(probs, target, self.classes.ignore_index)
        if self.instances:
            if gt_instances is None or pred_instances is None:
                raise ValueError("Evaluator(instances=True).add needs gt_instances and pred_instances")
            record["inst"] = instance_counts(_numpy(gt_instances), _numpy(pred_instances)).to_list()
        self._records.append(record)
        return counts

    def reduce(self, accelerator=None) -> "Evaluator":
        """Gather every process's records and keep one per key (call once, on every process)."""
        records = gather_records(self._records, accelerator)
        if _world_size(accelerator) > 1 and any(isinstance(r["key"], tuple) for r in records):
            warnings.warn("Evaluator.reduce: samples without a key (meta['index']) cannot be told apart from "
                          "a padding sampler's duplicates; pass key= or meta['index'] to add()")
        self._records = records
        return self

    # ------------------------------------------------------------------------------------ reading
    def records(self) -> list[dict]:
        """Records sorted by key, one per key (first occurrence kept)."""
        ordered = sorted(self._records, key=lambda r: _sort_key(r["key"]))
        out, seen = [], set()
        for r in ordered:
            k = _sort_key(r["key"])
            if k not in seen:
                seen.add(k)
                out.append(r)
        self._n_dropped = len(ordered) - len(out)
        return out

    def __len__(self) -> int:
        return len(self.records())

    def per_image_counts(self) -> np.ndarray:
        """(N, C, C) int64, in key order."""
        recs = self.records()
        if not recs:
            return np.zeros((0, self.classes.num_classes, self.classes.num_classes), np.int64)
        return np.stack([r["counts"] for r in recs])

    def result(self, split: Optional[str] = None, checkpoint: Optional[str] = None) -> dict:
        """The metrics object (DESIGN.md section 3 plus extras; see ``summary.metrics_json``)."""
        recs = self.records()
        per_image = self.per_image_counts()
        with_prob = [r for r in recs if "prob" in r]
        if with_prob and len(with_prob) != len(recs):
            raise ValueError(f"probabilities were given for {len(with_prob)} of {len(recs)} images; give them "
                             "for every image or for none")
        prob = M.merge_probability_counts([r["prob"] for r in recs]) if with_prob else None
        inst = None
        if self.instances:
            inst = InstanceCounts()
            for r in recs:
                inst = inst + InstanceCounts.from_list(r["inst"])
        out = metrics_json(self.classes, per_image.sum(0), per_image, prob, inst, split, checkpoint)
        if self.instances:
            per = [InstanceCounts.from_list(r["inst"]) for r in recs]
            out["instances"]["image_level"] = jsonable(image_level_instance_scores(per))
        out["duplicates_dropped"] = self._n_dropped
        return out

    def image_scores(self, class_name: str) -> list[ImageScore]:
        """Per-image Dice and IoU of one class over the images whose ground truth or prediction holds it."""
        c = self.classes.id_of(class_name)
        scores = []
        for r in self.records():
            m = r["counts"]
            tp, support, pred = int(m[c, c]), int(m[c].sum()), int(m[:, c].sum())
            if support + pred == 0:
                continue
            scores.append(ImageScore(r["key"], 2 * tp / (support + pred), tp / (support + pred - tp),
                                     support, pred, r["meta"]))
        return scores

    def rarest_class(self) -> Optional[str]:
        """The present class with the fewest ground-truth pixels (None if no class is present)."""
        counts = self.per_image_counts().sum(0)
        support = counts.sum(1)
        ids = [c for c in self.classes.trained_ids if support[c] > 0]
        return self.classes.names[min(ids, key=lambda c: (support[c], c))] if ids else None

    def best_worst(self, class_name: Optional[str] = None, n: int = 3) -> tuple[list[ImageScore], list[ImageScore]]:
        """The ``n`` best and ``n`` worst images by Dice of ``class_name`` (default: the rarest class).

        Only images whose ground truth holds the class are ranked, so "worst" shows missed regions; ties break
        by key. Best and worst never share an image.
        """
        class_name = class_name or self.rarest_class()
        if class_name is None:
            return [], []
        ranked = sorted((s for s in self.image_scores(class_name) if s.support_pixels > 0),
                        key=lambda s: (-s.dice, _sort_key(s.key)))
        best = ranked[:n]
        worst = [s for s in reversed(ranked[len(best):])][:n]
        return best, worst


def _world_size(accelerator=None) -> int:
    if accelerator is not None:
        return int(accelerator.num_processes)
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
