"""Per-class validation of a model over a split, and `sam-histo validate`.

Semantic mode scores the dense class map (sliding windows of the model input over each tile); prompted
mode scores the class map pasted together from each object's prompted mask, with prompts that are a
pure function of (eval.prompt_seed, sample index), so every epoch and every process sees the same ones.
Under several processes each takes every world-th sample (no padding) and the per-image records are
gathered, so the numbers equal one process's exactly (``Evaluator.reduce``).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from sam_histo.config import Config, EvalConfig, PromptConfig, StainConfig, load_config
from sam_histo.config.argv import add_overrides_help, parse_with_overrides
from sam_histo.config.datasets import dataset_kind, modality
from sam_histo.data.prompts import make_prompts, prompt_rng
from sam_histo.data.types import ClassSpec
from sam_histo.errors import MissingSplitError
from sam_histo.zeroshot.class_map import unassigned_id
from sam_histo.scoring.evaluator import Evaluator
from sam_histo.infer.image import class_map, prompted_class_map, region_pixels, semantic_probs
from sam_histo.config.argv import first_paragraph


@dataclasses.dataclass(frozen=True)
class EvalSetup:
    """The parts of a Config that validation reads (each callee gets its own sub-configs)."""

    mode: str  # model.mode
    image_size: int  # model.image_size
    modality: str  # of data.dataset
    eval: EvalConfig
    prompts: PromptConfig  # validation's: every object up to eval.max_objects, no background clicks
    stain: StainConfig
    unassigned: str  # zeroshot.unassigned
    target_mpp: Optional[float] = None  # model.target_mpp: semantic mode predicts at it, scores on the tile grid

    @classmethod
    def of(cls, cfg: Config) -> "EvalSetup":
        prompts = dataclasses.replace(cfg.prompts, max_objects=cfg.eval.max_objects, n_background=0)
        return cls(cfg.model.mode, cfg.model.image_size, modality(cfg.data.dataset), cfg.eval, prompts, cfg.stain,
                   cfg.zeroshot.unassigned, cfg.model.target_mpp)


class SplitPredictor:
    """Predictions of one model for the samples of one adapter, in the configured mode.

    ``__call__(index) -> (sample, pred, probs)``: the eval-transformed sample (stain normalisation only),
    its predicted class map (H, W) int64 and, in semantic mode, probabilities (C, H, W) (else None).
    Semantic mode with model.target_mpp predicts at that resolution and scores on the tile's own grid.
    """

    def __init__(self, model, adapter, setup: EvalSetup):
        from sam_histo.augment import build_eval_transform

        self.model, self.adapter, self.setup = model, adapter, setup
        self.classes: ClassSpec = adapter.classes
        self.transform = build_eval_transform(setup.stain, setup.image_size, setup.modality)
        self.unassigned = unassigned_id(self.classes, setup.unassigned)

    def load(self, index: int):
        """Sample ``index`` after the eval transform (stain normalisation only)."""
        sample = self.adapter[index]
        extra = {"instances": sample.instances} if sample.instances is not None else {}
        out = self.transform(image=sample.image, mask=sample.mask, **extra)
        sample.image, sample.mask = out["image"], out["mask"]
        return sample

    def __call__(self, index: int):
        sample, ev = self.load(index), self.setup.eval
        if self.setup.mode == "semantic":
            probs = semantic_probs(self.model, sample.image, self.classes.num_classes, self.classes.ignore_index,
                                   ev.window_overlap, ev.batch_size, mpp=sample.mpp,
                                   target_mpp=self.setup.target_mpp, tta=ev.tta, scales=ev.tta_scales)
            pixels = region_pixels(ev.min_region_um2, sample.mpp, self.setup.target_mpp)
            return sample, class_map(probs, pixels), probs
        prompts = make_prompts(sample.mask, self.classes, self.setup.prompts, prompt_rng(ev.prompt_seed, index),
                               instances=sample.instances)
        return sample, prompted_class_map(self.model, sample.image, prompts, self.unassigned), None


def evaluate(predictor: SplitPredictor, accelerator=None, progress: bool = True, heatmap=None) -> Evaluator:
    """Run the predictor over its adapter (this process's share) and return the reduced Evaluator; a
    ``heatmap`` (infer.heatmap.HeatmapCollector) also gets every image's probabilities."""
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    model, adapter = predictor.model, predictor.adapter
    ev = Evaluator(adapter.classes)
    was_training = model.training
    model.eval()
    try:
        indices = range(rank, len(adapter), world)
        for i in tqdm(indices, desc=f"validate {adapter.split}", unit="tile", disable=not progress, leave=False):
            sample, pred, probs = predictor(i)
            ev.add(pred, sample.mask, probs=probs, meta={**sample.meta, "index": i}, key=i)
            if heatmap is not None:
                heatmap.add(i, probs, sample.mask, sample.meta.get("slide", sample.source))
    finally:
        model.train(was_training)
    return ev.reduce(accelerator)


def overlay_items(predictor: SplitPredictor, scores) -> list[tuple]:
    """(image, gt, pred, name, dice) for report overlays, recomputed for the few images named."""
    items = []
    for s in scores:
        sample, pred, _ = predictor(int(s.key))
        items.append((sample.image, sample.mask, pred, f"{Path(sample.source).stem}_{s.key}", s.dice))
    return items


def validate(model, cfg: Config, split: str, out_dir: Optional[Path] = None, checkpoint: Optional[str] = None,
             accelerator=None, progress: bool = True, adapter=None) -> dict:
    """Metrics JSON of ``model`` on ``split``; with ``out_dir`` (main process) also the full report.
    ``adapter``: the split's adapter when the caller already has it (the trainer validates every epoch)."""
    from sam_histo.data.dataset import build_dataset

    adapter = adapter if adapter is not None else build_dataset(cfg.data, split)
    if len(adapter) == 0:
        raise MissingSplitError(f"split {split!r} of {cfg.data.root} is empty: nothing to validate (see "
                                "data.val_fraction / data.test_fraction)")
    collector = heatmap_collector(cfg.heatmap, cfg.model.mode, adapter.classes)
    predictor = SplitPredictor(model, adapter, EvalSetup.of(cfg))
    ev = evaluate(predictor, accelerator, progress, collector)
    metrics = ev.result(split=split, checkpoint=checkpoint)
    metrics["mode"] = cfg.model.mode
    if collector is not None:
        metrics["heatmap"] = collector.result(split, accelerator)
    if out_dir is not None and (accelerator is None or accelerator.is_main_process):
        write_split_report(predictor, ev, metrics, out_dir, cfg.eval)
    return metrics


def write_split_report(predictor: SplitPredictor, ev: Evaluator, metrics: dict, out_dir: Path, eval_cfg) -> None:
    """report.md, metrics.json, plots and the best / worst overlays of one validated split."""
    from sam_histo.scoring.report import write_report

    overlay_class = eval_cfg.overlay_class or ev.rarest_class()
    best, worst = ev.best_worst(overlay_class, n=eval_cfg.overlays) if eval_cfg.overlays else ([], [])
    model, was_training = predictor.model, predictor.model.training
    model.eval()
    try:
        files = write_report(metrics, out_dir, predictor.classes, overlay_items(predictor, best),
                             overlay_items(predictor, worst), overlay_class)
    finally:
        model.train(was_training)
    if "heatmap" in metrics:
        from sam_histo.infer.heatmap import report_section

        files["report"].write_text(files["report"].read_text().rstrip("\n") + "\n\n"
                                   + report_section(metrics["heatmap"]) + "\n")


def heatmap_collector(heatmap_cfg, mode: str, classes: ClassSpec):
    """A HeatmapCollector when ``heatmap.class_name`` is set (semantic mode only: it needs probabilities)."""
    if not heatmap_cfg.class_name:
        return None
    if mode != "semantic":
        from sam_histo.config import ConfigError

        raise ConfigError("heatmap.class_name needs class probabilities, which only model.mode=semantic gives; "
                          "prompted validation scores class maps")
    from sam_histo.infer.heatmap import HeatmapCollector

    return HeatmapCollector(heatmap_cfg, classes)


def validate_volume(model, cfg: Config, split: str, out_dir: Optional[Path] = None,
                    checkpoint: Optional[str] = None, progress: bool = True) -> dict:
    """3-D instance metrics of a vesicle split (``eval.instances``): the split's volume decoded into
    instances (``cfg.em``) and scored with adapted Rand error, Rand precision / recall and matched F1."""
    from sam_histo.data.dataset import build_dataset
    from sam_histo.em.volume import evaluate_volume
    from sam_histo.scoring.report import write_report

    adapter = build_dataset(cfg.data, split)
    if len(adapter) == 0:
        raise MissingSplitError(f"split {split!r} of {cfg.data.root} is empty: nothing to validate (see "
                                "data.val_fraction / data.test_fraction)")
    metrics = evaluate_volume(model, adapter, cfg.em, model_cfg=cfg.model, checkpoint=checkpoint, progress=progress)
    if out_dir is not None:
        write_report(metrics, out_dir, adapter.classes)
    return metrics


def validate_split(model, cfg: Config, split: str, out_dir: Optional[Path] = None,
                   checkpoint: Optional[str] = None, accelerator=None, progress: bool = True, adapter=None) -> dict:
    """The final evaluation of a split: ``validate`` (2-D, per class), or for vesicle volumes with
    ``eval.instances`` the 3-D instance evaluation, run on the main process and shared with the others."""
    if not (dataset_kind(cfg.data.dataset).volume and cfg.eval.instances):
        return validate(model, cfg, split, out_dir, checkpoint, accelerator, progress, adapter)
    if accelerator is None or accelerator.num_processes == 1:
        return validate_volume(model, cfg, split, out_dir, checkpoint, progress)
    from accelerate.utils import broadcast_object_list

    box, error = [None], None
    if accelerator.is_main_process:
        try:
            box = [validate_volume(model, cfg, split, out_dir, checkpoint, progress)]
        except Exception as e:  # told to the other processes, which would otherwise wait forever
            error, box = e, [(type(e) is MissingSplitError, str(e))]
    box = broadcast_object_list(box)
    if error is not None:
        raise error
    if isinstance(box[0], tuple):
        missing, text = box[0]
        raise MissingSplitError(text) if missing else RuntimeError(f"main process failed validating {split}: {text}")
    return box[0]


def evaluate_splits(model, cfg: Config, splits, *, out_dirs=None, checkpoint: Optional[str] = None,
                    accelerator=None, progress: bool = True, required: bool = False,
                    adapters: Optional[dict] = None) -> tuple[dict, list]:
    """The one "evaluate these splits" helper (the trainer's final report, a release's metrics, `validate`):
    ``({split: metrics JSON}, [splits without samples])``; ``out_dirs[split]`` also gets the report. An
    empty split (:class:`MissingSplitError`) is skipped unless ``required``; every other error propagates,
    so a bug or a bad tile fails the command instead of reading as "no such split". ``adapters[split]``: a
    split's adapter when the caller has it (the Python API's datasets)."""
    results, missing = {}, []
    for split in splits:
        try:
            results[split] = validate_split(model, cfg, split, (out_dirs or {}).get(split), checkpoint,
                                            accelerator, progress, (adapters or {}).get(split))
        except MissingSplitError:
            if required:
                raise
            missing.append(split)
    return results, missing


def selection_scores(metrics: dict) -> dict:
    """The macro scores that choose the best checkpoint: the headline's (foreground when there is a
    background class)."""
    fg = metrics.get("foreground")
    return fg["macro"] if fg else metrics["macro"]


def epoch_metrics(model, cfg: Config, adapter, checkpoint: str, accelerator=None, progress: bool = True,
                  out_dir: Optional[Path] = None) -> dict:
    """What the trainer validates each epoch (and at the start): the protocol of the final report
    (``validate_split``), so the checkpoint chosen is the best by the numbers reported for it; 2-D splits
    reuse the trainer's adapter; ``out_dir`` also gets the report."""
    if dataset_kind(cfg.data.dataset).volume and cfg.eval.instances:
        return validate_split(model, cfg, "val", out_dir, checkpoint=checkpoint, accelerator=accelerator,
                              progress=progress)
    return validate(model, cfg, "val", out_dir, checkpoint=checkpoint, accelerator=accelerator, progress=progress,
                    adapter=adapter)


def headline(metrics: dict) -> str:
    """One line: macro Dice / IoU over the classes present, and each class's Dice."""
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    per = ", ".join(f"{k} {fmt(v['dice'])}" for k, v in metrics["per_class"].items())
    fg = metrics.get("foreground")
    if fg:  # never a headline carried by background
        line = (f"{metrics.get('split') or 'split'}: macro Dice {fmt(fg['macro']['dice'])} IoU "
                f"{fmt(fg['macro']['iou'])} (over {len(fg['over'])} foreground classes present; {fg['background']} "
                f"Dice {fmt(fg['background_scores']['dice'])} apart) | {per}")
    else:
        line = (f"{metrics.get('split') or 'split'}: macro Dice {fmt(metrics['macro']['dice'])} IoU "
                f"{fmt(metrics['macro']['iou'])} (over {len(metrics.get('macro_over', []))} classes present) | {per}")
    inst = metrics.get("instances")
    if inst:
        line += (f" | instances: adapted Rand error {fmt(inst['adapted_rand_error'])} (precision "
                 f"{fmt(inst['precision'])}, recall {fmt(inst['recall'])}), F1@0.5 {fmt(inst['f1_at_0.5'])}, "
                 f"{inst['n_pred']} predicted / {inst['n_gt']} true")
    return line


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="sam-histo validate", description=first_paragraph(__doc__))
    parser.add_argument("--config", required=True, help="the run's config (e.g. RUN/config.yaml)")
    parser.add_argument("--checkpoint", required=True,
                        help="weights file, checkpoint folder, run folder (uses checkpoints/best), or 'base' "
                             "for the configured model.checkpoint (zero-shot)")
    parser.add_argument("--out", required=True, type=Path, help="folder for metrics.json, report.md, plots")
    parser.add_argument("--split", default=None, help="train, val or test (default eval.split)")
    parser.add_argument("--protocols", default=None,
                        help="comma-separated prompt protocols to tabulate instead of the usual validation: "
                             "centroid, points5, box, box+neg, each optionally +tta (default eval.protocols)")
    args = parse_with_overrides(add_overrides_help(parser, "heatmap.class_name=tumor"), argv)
    cfg = load_config(args.config, args.overrides)
    split = args.split or cfg.eval.split
    from sam_histo.data.dataset import class_spec
    from sam_histo.models.load import load_model, resolve_model_file

    protocols = [p for p in args.protocols.split(",") if p.strip()] if args.protocols else list(cfg.eval.protocols)
    if protocols:
        from sam_histo.config.rules import parse_protocols

        parse_protocols(protocols, key="--protocols")  # a bad name fails before the model is built
    classes = class_spec(cfg.data)
    base = args.checkpoint == "base"
    weights = None if base else resolve_model_file(args.checkpoint)
    model = load_model(cfg.model, classes.num_classes if cfg.model.mode == "semantic" else None, weights)
    label = f"base model.checkpoint={cfg.model.checkpoint} (zero-shot)" if base else str(weights)
    if protocols:
        return _protocols(model, cfg, split, protocols, args.out, label)
    metrics = evaluate_splits(model, cfg, [split], out_dirs={split: args.out}, checkpoint=label,
                              required=True)[0][split]
    print(headline(metrics))
    if "heatmap" in metrics:
        h = metrics["heatmap"]
        last = h["steps"][-1]
        print(f"heatmap {h['class_name']}: threshold {h['threshold']:.4g} ({h['rule']}), IoU {last['iou']:.3f} "
              f"after {last['step']} (predict --heatmap-class {h['class_name']} --threshold {h['threshold']:.6g})")
    print(f"report: {args.out / 'report.md'}")
    return 0


def _protocols(model, cfg: Config, split: str, protocols: list[str], out: Path, label: str) -> int:
    from sam_histo.data.dataset import build_dataset
    from sam_histo.data.types import DataError
    from sam_histo.eval.protocols import run_protocols, write_protocol_table

    adapter = build_dataset(cfg.data, split)
    if len(adapter) == 0:
        raise DataError(f"split {split!r} of {cfg.data.root} is empty: nothing to score; choose --split")
    results = run_protocols(SplitPredictor(model, adapter, EvalSetup.of(cfg)), protocols)
    print(write_protocol_table(results, out, split, label), end="")
    print(f"table: {out / 'protocols.md'} and {out / 'protocols.json'}")
    return 0
