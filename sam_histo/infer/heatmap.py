"""The heatmap pipeline shared by the validator and ``sam-histo predict``, driven by a ``HeatmapConfig``.

:func:`run_heatmap` takes the class-of-interest score maps (the caller picks the class channel, e.g.
``probs[class_id]`` from :func:`sam_histo.infer.sliding.sliding_window`), one slide id per map, and optional
labels, and applies the options of ``cfg`` (``heatmap`` section, see sam_histo.config.HeatmapConfig) in
order:

1. ``zscore``: :func:`~sam_histo.infer.postprocess.zscore_per_slide` (statistics over ``tissue`` when given);
2. ``threshold``: a number, or ``auto-iou`` / ``auto-f1`` chosen on the labels by
   :func:`~sam_histo.infer.postprocess.threshold_sweep` (``average``, ``candidates``); without labels an auto
   rule needs the value the validator chose, passed as ``threshold=``;
3. ``min_size`` / ``fill_holes``: :func:`~sam_histo.infer.postprocess.clean_mask` on each map.

``HeatmapResult.steps`` says what each step did: one row per step with the threshold, the share of positive
elements and, with labels, dataset-level IoU and F1, the mean IoU over slides, and ``iou_before`` (the row
before). With z-scoring on, the first row (``raw``) is the baseline it is compared with: the raw scores at the
best single global threshold for the rule's metric on the same labels (the strongest global threshold, so
the z-score effect is not flattered). The auto threshold is chosen before clean-up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Optional, Sequence

import numpy as np

from sam_histo.config import HeatmapConfig
from sam_histo.infer.postprocess import ThresholdSweep, clean_mask, iou_f1, threshold_sweep, zscore_per_slide


@dataclass
class HeatmapResult:
    masks: list[np.ndarray]  # bool, one per input map, after every enabled step
    scores: list[np.ndarray]  # float32 scores the threshold applies to (z-scores when zscore is on)
    threshold: float
    rule: str  # "fixed", "given" (passed by the caller), "auto-iou" or "auto-f1"
    sweep: Optional[ThresholdSweep] = None  # the auto rule's sweep on the final scores
    steps: list[dict] = field(default_factory=list)

    def report(self) -> dict:
        """JSON-ready summary: threshold, rule, the per-step effects and, for an auto rule, both optima."""
        out = {"threshold": self.threshold, "rule": self.rule, "steps": self.steps}
        if self.sweep is not None:
            out["threshold_choice"] = self.sweep.summary()
        return out


def _score(masks, targets, valid, slide_ids) -> dict:
    """Dataset-level IoU / F1 and the mean IoU over slides of bool ``masks``."""
    per: dict = {}
    for i, (m, t) in enumerate(zip(masks, targets)):
        if m.shape != t.shape:
            raise ValueError(f"map {i}: score shape {m.shape} differs from its target's {t.shape}")
        if valid is not None:
            keep = np.asarray(valid[i], bool)
            m, t = m[keep], t[keep]
        counts = np.array([np.sum(m & t), np.sum(m & ~t), np.sum(~m & t)], np.int64)
        per[slide_ids[i]] = per.get(slide_ids[i], 0) + counts
    iou, f1 = iou_f1(*sum(per.values()))
    mean_iou = np.mean([iou_f1(*c)[0] for c in per.values()])
    return {"iou": float(iou), "f1": float(f1), "mean_iou": float(mean_iou)}


def _row(step: str, threshold: float, masks, targets, valid, slide_ids, before: Optional[dict]) -> dict:
    n = sum(m.size for m in masks)
    row = {"step": step, "threshold": threshold, "positive_fraction": sum(int(m.sum()) for m in masks) / max(n, 1)}
    if targets is not None:
        row |= _score(masks, targets, valid, slide_ids)
        row["iou_before"] = None if before is None else before["iou"]
    return row


def _auto(scores, targets, valid, slide_ids, cfg: HeatmapConfig, metric: str) -> tuple[float, ThresholdSweep]:
    sweep = threshold_sweep(scores, targets, valid=valid, average=cfg.average, slide_ids=slide_ids,
                            n_candidates=cfg.candidates)
    return sweep.best(metric)[0], sweep


def run_heatmap(
    scores: Sequence[np.ndarray],
    cfg: HeatmapConfig,
    slide_ids: Optional[Sequence[Hashable]] = None,
    targets: Optional[Sequence[np.ndarray]] = None,
    *,
    valid: Optional[Sequence[np.ndarray]] = None,
    tissue: Optional[Sequence[np.ndarray]] = None,
    threshold: Optional[float] = None,
) -> HeatmapResult:
    """Score maps -> cleaned bool heatmaps and the effect of each step.

    scores: float maps of the class of interest (any shapes); slide_ids: one per map, None = each map its
    own slide; targets: bool maps of the class (the labelled validation set) or None; valid: bool maps of
    the elements that count in the metrics (e.g. label != ignore); tissue: bool maps for the z-score
    statistics; threshold: overrides ``cfg.threshold`` (predict passes the value the validator chose).
    """
    n = len(scores)
    slide_ids = list(range(n)) if slide_ids is None else list(slide_ids)
    if targets is not None:
        targets = [np.asarray(t, bool) for t in targets]
    auto = isinstance(cfg.threshold, str) and threshold is None
    if auto and targets is None:
        raise ValueError(
            f"heatmap.threshold={cfg.threshold} needs labelled maps to choose it; without labels pass the "
            "threshold the validator chose (its report's heatmap.threshold) or set a number"
        )
    metric = cfg.threshold.split("-", 1)[1] if isinstance(cfg.threshold, str) else "iou"
    steps: list[dict] = []
    maps = [np.asarray(s, np.float32) for s in scores]
    if cfg.zscore and targets is not None:
        raw_t, _ = _auto(maps, targets, valid, slide_ids, cfg, metric)
        steps.append(_row("raw", raw_t, [m >= raw_t for m in maps], targets, valid, slide_ids, None))
    if cfg.zscore:
        maps = zscore_per_slide(maps, slide_ids, tissue)
    sweep = None
    if threshold is not None:
        t, rule = float(threshold), "given"
    elif auto:
        t, sweep = _auto(maps, targets, valid, slide_ids, cfg, metric)
        rule = cfg.threshold
    else:
        t, rule = float(cfg.threshold), "fixed"
    masks = [m >= t for m in maps]
    steps.append(_row("zscore" if cfg.zscore else "threshold", t, masks, targets, valid, slide_ids,
                      steps[-1] if steps else None))
    if cfg.min_size > 1 or cfg.fill_holes:
        masks = [clean_mask(m, cfg.min_size, cfg.fill_holes, cfg.connectivity) for m in masks]
        steps.append(_row("clean", t, masks, targets, valid, slide_ids, steps[-1]))
    return HeatmapResult(masks, maps, t, rule, sweep, steps)


# ------------------------------------------------------------------------------------- validator use
class HeatmapCollector:
    """The validator's per-image maps of ``cfg.class_name``: its probability, its ground truth, the counted
    pixels (not the ignore id) and the slide. ``result`` runs :func:`run_heatmap` with those labels.

    Holds float32 + two bool maps per image (6 bytes a pixel): fine for validation splits of tens of tiles.
    """

    def __init__(self, cfg: HeatmapConfig, classes):
        if cfg.class_name not in classes.trained_names:
            from sam_histo.config import ConfigError

            raise ConfigError(f"heatmap.class_name={cfg.class_name!r} is not a trained class "
                              f"({', '.join(classes.trained_names)})")
        self.cfg, self.class_id, self.ignore = cfg, classes.id_of(cfg.class_name), classes.ignore_index
        self.items: list[dict] = []

    def add(self, key, probs: np.ndarray, gt: np.ndarray, slide) -> None:
        """probs (C, H, W) of one image, gt (H, W) int ids, slide: its slide id."""
        gt = np.asarray(gt)
        self.items.append({"key": key, "score": np.asarray(probs[self.class_id], np.float32),
                           "target": gt == self.class_id, "slide": str(slide),
                           "valid": None if self.ignore is None else gt != self.ignore})

    def result(self, split: str, accelerator=None) -> dict:
        """The ``heatmap`` block of the metrics JSON (gathers every process's images first)."""
        from dataclasses import asdict

        from sam_histo.scoring.evaluator import gather_records

        items = {repr(r["key"]): r for r in gather_records(self.items, accelerator)}
        items = [items[k] for k in sorted(items)]
        valid = None if self.ignore is None else [r["valid"] for r in items]
        res = run_heatmap([r["score"] for r in items], self.cfg, [r["slide"] for r in items],
                          [r["target"] for r in items], valid=valid)
        return {"class_name": self.cfg.class_name, "split": split, "settings": asdict(self.cfg),
                "n_images": len(items), "n_slides": len({r["slide"] for r in items}), **res.report()}


def _fmt(x) -> str:
    return "" if x is None else f"{x:.4g}"


def report_section(block: dict) -> str:
    """Markdown for report.md: the settings, the chosen threshold beside the other optimum, the step table."""
    s = block["settings"]
    units = "z-scores per slide" if s["zscore"] else "probabilities"
    lines = [f"## Heatmap: {block['class_name']} (split `{block['split']}`, {block['n_images']} images, "
             f"{block['n_slides']} slides)", "",
             f"Scores: the model's probability of `{block['class_name']}`"
             f"{', z-scored per slide' if s['zscore'] else ''}; "
             f"threshold {_fmt(block['threshold'])} in {units} (rule `{block['rule']}`); clean-up: components under "
             f"{s['min_size']} px dropped, holes {'filled' if s['fill_holes'] else 'kept'}.", ""]
    choice = block.get("threshold_choice")
    if choice:
        i, f = choice["iou_optimal"], choice["f1_optimal"]
        lines += [f"Threshold choice ({choice['average']} averaging): IoU-optimal {_fmt(i['threshold'])} (IoU "
                  f"{_fmt(i['iou'])}, F1 {_fmt(i['f1'])}); F1-optimal {_fmt(f['threshold'])} (IoU {_fmt(f['iou'])}, "
                  f"F1 {_fmt(f['f1'])})."
                  + (" At dataset level the two coincide (F1 = 2 IoU / (1 + IoU)); heatmap.average=slide scores the "
                     "mean over slides, where they differ." if choice["average"] == "dataset" else ""), ""]
    lines += ["Effect of each step (IoU and F1 dataset level over the split; mean IoU over slides):", "",
              "| step | threshold | positive | IoU | F1 | mean IoU over slides | IoU before |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in block["steps"]:
        lines.append(f"| {r['step']} | {_fmt(r['threshold'])} | {100 * r['positive_fraction']:.2f} % | "
                     f"{_fmt(r.get('iou'))} | {_fmt(r.get('f1'))} | {_fmt(r.get('mean_iou'))} | "
                     f"{_fmt(r.get('iou_before'))} |")
    if block["steps"] and block["steps"][0]["step"] == "raw":
        lines += ["", "`raw`: the probabilities at their own best global threshold, the baseline z-scoring must beat."]
    return "\n".join(lines)
