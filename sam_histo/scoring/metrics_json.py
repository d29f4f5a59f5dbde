"""``metrics_json``: the DESIGN.md section 3 metrics object, built from accumulated counts (pure).

Every evaluator (validate, score, zeroshot) writes this object. The contract keys are exactly those of
DESIGN.md section 3; everything else is an extra with its own name (listed in ``EXTRA_KEYS``). Undefined
values (NaN: e.g. recall of a class absent from the ground truth) are written as ``null``, never as NaN, so
the file is strict JSON.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from sam_histo.data.types import ClassSpec
from sam_histo.scoring import confusion as M
from sam_histo.scoring.instances import InstanceCounts, instance_scores

PER_CLASS_KEYS = ("dice", "iou", "precision", "recall", "f1", "support_pixels", "pred_pixels", "images_present")
EXTRA_KEYS = (
    "split", "checkpoint", "n_images", "n_pixels", "macro_over", "absent_classes", "absent_but_predicted",
    "images_predicted", "frequency_weighted", "image_level", "confusion_patterns", "averaging",
    "duplicates_dropped", "zeroshot", "clip_accuracy", "heatmap", "em",
)

AVERAGING = {
    "per_class": "dataset level: one confusion matrix summed over every image of the split; pixels whose ground "
    "truth is the ignore id are dropped from both sides; a pixel predicted as the ignore id is a miss of its "
    "true class",
    "absent_classes": "a class absent from the ground truth but predicted keeps its false positives: dice, iou "
    "and precision 0, recall null; absent and not predicted: all null",
    "macro": "unweighted mean over the classes present in the ground truth of the split (macro_over)",
    "micro": "TP, FP and FN pooled over all non-ignore classes; accuracy = correct / counted pixels",
    "frequency_weighted": "per-class value weighted by the class's share of counted ground-truth pixels",
    "image_level": "per class, the mean over images whose ground truth or prediction holds the class of that "
    "image's own score (images with neither are left out); macro = mean of those over macro_over",
    "f1": "pixel F1 equals Dice",
    "confusion_matrix": "rows = ground truth id, columns = predicted id, pixels; ids as in class_names (the "
    "ignore id's row is zero)",
    "probability": "the model's probability for a class on that class's true pixels; frac_above_t counts p > t",
}


def _num(x) -> Optional[float]:
    """float, or None for NaN/inf (strict JSON)."""
    x = float(x)
    return x if math.isfinite(x) else None


def jsonable(value):
    """Nested dicts/lists of numbers with NaN -> None and numpy scalars -> Python."""
    if isinstance(value, dict):
        return {key: jsonable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _num(value)
    return value


def _per_class(classes: ClassSpec, counts: np.ndarray, per_image: Optional[np.ndarray]) -> dict:
    scores = M.per_class_scores(counts, classes.ignore_index)
    k = M.class_counts(counts, classes.ignore_index)
    present = (per_image.sum(2) > 0).sum(0) if per_image is not None else np.full(classes.num_classes, -1)
    out = {}
    for c in classes.trained_ids:
        row = {key: _num(scores[key][c]) for key in ("dice", "iou", "precision", "recall", "f1")}
        row.update(support_pixels=int(k["support"][c]), pred_pixels=int(k["pred"][c]),
                   images_present=int(present[c]) if present[c] >= 0 else None)
        out[classes.names[c]] = row
    return out


def _image_level(classes: ClassSpec, per_image: np.ndarray, macro_ids: Sequence[int]) -> dict:
    s = M.image_level_scores(per_image, classes.ignore_index)
    per_class = {
        classes.names[c]: {"dice": _num(s["dice"][c]), "iou": _num(s["iou"][c]), "n_images": int(s["n_images"][c])}
        for c in classes.trained_ids
    }
    macro = {}
    for key in ("dice", "iou"):
        vals = s[key][list(macro_ids)]
        macro[key] = _num(vals.mean()) if len(vals) and not np.isnan(vals).any() else None
    return {"per_class": per_class, "macro": macro, "n_images": int(len(per_image))}


def _probability(classes: ClassSpec, prob_counts: np.ndarray) -> dict:
    s = M.probability_scores(prob_counts)
    keys = ["mean", "max"] + [f"frac_above_{t}" for t in M.PROB_THRESHOLDS]
    return {classes.names[c]: {key: _num(s[key][c]) for key in keys} for c in classes.trained_ids}


BACKGROUND = "background"


def foreground_macro(per_class: dict, present: list[str], classes: ClassSpec) -> Optional[dict]:
    """For class sets with a trained ``background`` class (LGG, vesicles): the macro over the foreground
    classes present, with background's own scores named beside it, so a headline is never carried by the
    easy majority class. None when there is no such class (BCSS: outside_roi is the ignore index)."""
    if BACKGROUND not in classes.trained_names:
        return None
    over = [n for n in present if n != BACKGROUND]
    macro = {}
    for key in ("dice", "iou", "precision", "recall"):
        vals = [per_class[n][key] for n in over if per_class[n][key] is not None]
        macro[key] = float(np.mean(vals)) if vals else None
    bg = per_class[BACKGROUND]
    return {"macro": macro, "over": over, "background": BACKGROUND,
            "background_scores": {k: bg[k] for k in ("dice", "iou", "precision", "recall")}}


def metrics_json(
    classes: ClassSpec,
    counts: np.ndarray,
    per_image: Optional[np.ndarray] = None,
    prob_counts: Optional[np.ndarray] = None,
    instances: Optional[InstanceCounts] = None,
    split: Optional[str] = None,
    checkpoint: Optional[str] = None,
) -> dict:
    """The metrics object of a split.

    counts: (C, C) int64 summed confusion matrix (rows = ground truth); per_image: (N, C, C) int64, one matrix
    per image (gives images_present, images_predicted, n_images and the image-level means; without it those
    are null); prob_counts: (C, 5) summed ``metrics.probability_counts`` or None; instances: summed
    ``InstanceCounts`` for instance tasks or None. ``split`` and ``checkpoint`` name where the numbers came
    from (every report names both).
    """
    counts = M._clean(counts, classes.ignore_index)
    if counts.shape != (classes.num_classes,) * 2:
        raise ValueError(f"counts has shape {counts.shape}, expected {(classes.num_classes,) * 2}")
    names = classes.names
    present = M.present_classes(counts, classes.ignore_index)
    macro_ids = [int(c) for c in np.flatnonzero(present)]
    k = M.class_counts(counts, classes.ignore_index)
    absent = [names[c] for c in classes.trained_ids if not present[c]]
    out = {
        "class_names": list(names),
        "ignore_index": classes.ignore_index,
        "per_class": _per_class(classes, counts, per_image),
        "macro": {key: _num(v) for key, v in M.macro_scores(counts, classes.ignore_index).items()},
        "micro": {key: _num(v) for key, v in M.micro_scores(counts, classes.ignore_index).items()},
        "confusion_matrix": counts.tolist(),
    }
    fg = foreground_macro(out["per_class"], [names[c] for c in macro_ids], classes)
    if fg is not None:
        out["foreground"] = fg
    if prob_counts is not None:
        out["probability"] = _probability(classes, prob_counts)
    if instances is not None:
        out["instances"] = jsonable(instance_scores(instances))
    out.update(
        split=split,
        checkpoint=checkpoint,
        n_images=int(len(per_image)) if per_image is not None else None,
        n_pixels=int(counts.sum()),
        macro_over=[names[c] for c in macro_ids],
        absent_classes=absent,
        absent_but_predicted={n: int(k["pred"][names.index(n)]) for n in absent if k["pred"][names.index(n)] > 0},
        images_predicted=(
            {names[c]: int(v) for c, v in enumerate((per_image.sum(1) > 0).sum(0)) if c != classes.ignore_index}
            if per_image is not None else None
        ),
        frequency_weighted={key: _num(v) for key, v in M.frequency_weighted_scores(counts, classes.ignore_index).items()},
        image_level=_image_level(classes, per_image, macro_ids) if per_image is not None else None,
        confusion_patterns=M.confusion_patterns(counts, names, classes.ignore_index),
        averaging=dict(AVERAGING),
    )
    return out
