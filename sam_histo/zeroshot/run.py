"""`sam-histo zeroshot`: SAM2 automatic masks -> CLIP class per mask -> class map -> per-class metrics.

    sam-histo zeroshot --config CFG --out DIR [--split val] [--checkpoint PATH] [--clip-head PATH] [k=v ...]

Per image of the split: SAM2's automatic mask generator (points per side, thresholds and crop layers from
``zeroshot.*``) proposes masks; CLIP classifies each mask's crop against the prompt ensemble (or a tuned head,
``clip.head`` / ``--clip-head``); overlaps are resolved into one class map (``zeroshot.overlap``) and scored
by the Evaluator, exactly as a fine-tuned model is. Beside the pixel metrics, "CLIP accuracy" scores CLIP
alone on the ground-truth masks of the same split (key ``clip_accuracy``), so a weak result can be traced to
the masks or to the classes. ``--out`` gets metrics.json, report.md (with a zero-shot section), the figures,
best/worst overlays, the predicted class maps (``predictions/*.png``, one uint8/uint16 id map per image, for
``sam-histo score``) and the resolved config.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from sam_histo.config import ConfigError
from sam_histo.config.argv import add_overrides_help, parse_with_overrides
from sam_histo.models.load import resolve_model_file

log = logging.getLogger(__name__)


class ZeroShotError(ConfigError):
    """The zero-shot run cannot give a meaningful result as configured (the message says which key to change)."""


# ------------------------------------------------------------------------------------------ models
def load_sam(model_cfg, checkpoint: str | Path | None = None):
    """A SamHisto for automatic masks: built from ``model_cfg`` (which may load ``model.checkpoint``, e.g. an
    official SAM2.1 .pt), then, with ``checkpoint``, the SAM2 part of a run checkpoint loaded into it.

    Run checkpoints hold the whole SamHisto (keys ``sam.*`` plus ``semantic_head.*``); only ``sam.*`` is needed
    here, so the class-token head is dropped and the load is strict on the rest (``model.strict``).
    """
    from sam_histo.models.sam import build_sam
    from sam_histo.models.weights import load_into, read_state_dict, unwrap_sam

    if checkpoint is None:
        return build_sam(model_cfg).eval()
    path = resolve_model_file(checkpoint)
    model = build_sam(dataclasses.replace(model_cfg, checkpoint=None))
    load_into(model.sam, unwrap_sam(read_state_dict(path)), strict=model_cfg.strict, source=f"--checkpoint {path}")
    return model.eval()


def sam_description(model_cfg, checkpoint: str | Path | None) -> str:
    if checkpoint is not None:
        return str(resolve_model_file(checkpoint))
    return str(model_cfg.checkpoint) if model_cfg.checkpoint else "random init (no model.checkpoint)"


def build_classifier(clip_cfg, spec, prompt_path: Path, device="cpu"):
    """The MaskClassifier of ``clip_cfg`` over the trained classes of ``spec``; ``clip_cfg.head`` (a saved
    ClipHead) replaces the zero-shot text classifier."""
    from sam_histo.zeroshot.classify import build_mask_classifier

    head = None
    if clip_cfg.head:
        head = Path(clip_cfg.head).expanduser()
        if not head.is_file():
            raise ConfigError(f"clip.head={clip_cfg.head}: no such file; a run trained with clip.train_head=true "
                              "writes RUN/clip_head.safetensors")
    try:
        return build_mask_classifier(clip_cfg, spec.trained_names, prompt_path, device, head_path=head)
    except ValueError as e:  # a head of other classes or another CLIP: a settings problem, said in one line
        if head is None:
            raise
        raise ConfigError(f"clip.head: {e}") from None  # the message starts with the file name


# ---------------------------------------------------------------------------------------- one image
def classify_image(generator, classifier, image: np.ndarray, column_ids, num_classes: int, fill_id: int,
                   zs_cfg) -> dict:
    """Automatic masks of one image, classified and merged into a class map.

    Returns {"label": int64 [H, W] ids, "probs": float32 [num_classes, H, W], "n_generated": masks from SAM2,
    "n_masks": masks kept (area >= zeroshot.min_mask_area), "n_painted": masks that won at least one pixel}.
    """
    from sam_histo.zeroshot.class_map import masks_from_records, pixel_probabilities, resolve_overlaps

    records = generator.generate(image)
    masks, scores = masks_from_records(records, image.shape[:2], zs_cfg.min_mask_area)
    probs = classifier.probabilities(image, masks) if len(masks) else np.zeros((0, len(column_ids)), np.float32)
    label, winner = resolve_overlaps(masks, scores, probs, column_ids, fill_id, zs_cfg.overlap,
                                     zs_cfg.min_class_prob)
    return {"label": label, "probs": pixel_probabilities(winner, probs, column_ids, num_classes, fill_id),
            "n_generated": len(records), "n_masks": len(masks), "n_painted": int(len(np.unique(winner[winner >= 0])))}


def no_masks_message(zs_cfg, n_images: int, n_generated: int, random_init: bool) -> str:
    why = ("every generated mask was smaller than zeroshot.min_mask_area="
           f"{zs_cfg.min_mask_area}: lower it" if n_generated else
           f"with zeroshot.pred_iou_thresh={zs_cfg.pred_iou_thresh} and zeroshot.stability_score_thresh="
           f"{zs_cfg.stability_score_thresh}")
    hint = ("random-init model: set zeroshot.pred_iou_thresh=0 zeroshot.stability_score_thresh=0 (a random "
            "SAM2 scores every mask low), or load weights with model.checkpoint=sam2.1_hiera_tiny "
            "(`sam-histo fetch-weights --list`) or --checkpoint RUN" if random_init else
            "lower zeroshot.pred_iou_thresh / zeroshot.stability_score_thresh or raise zeroshot.points_per_side")
    return f"SAM2's automatic mask generator gave no masks on {n_images} image(s) ({why}); {hint}"


def write_label_png(label: np.ndarray, path: Path) -> Path:
    """An id map as a single-channel PNG (uint8 below 256 ids, else uint16), written atomically."""
    from sam_histo.files import save_png

    dtype = np.uint8 if label.max(initial=0) < 256 else np.uint16
    return save_png(path, label.astype(dtype))


def read_label_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im).astype(np.int64)


def image_name(i: int, meta: dict) -> str:
    """A file-safe name for sample ``i``: its index, source stem and tile offset or slice."""
    stem = Path(str(meta.get("source", "image"))).stem
    where = "".join(f"_{k}{meta[k]}" for k in ("z", "y", "x") if isinstance(meta.get(k), int))
    name = f"{i:05d}_{stem}{where}"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


# ---------------------------------------------------------------------------------------- the split
def _run_split(dataset, generator, classifier, column_ids, fill_id, zs_cfg, pred_dir: Path, random_init: bool):
    """Classify every image; returns (Evaluator, per-image rows, {key: prediction file})."""
    from tqdm import tqdm

    from sam_histo.scoring.evaluator import Evaluator

    spec = dataset.classes
    ev = Evaluator(spec)
    rows, files = [], {}
    for i in tqdm(range(len(dataset)), desc=f"zero-shot ({getattr(dataset, 'split', 'split')})", unit="image"):
        sample = dataset[i]
        out = classify_image(generator, classifier, sample.image, column_ids, spec.num_classes, fill_id, zs_cfg)
        if i == 0 and out["n_masks"] == 0 and random_init and zs_cfg.pred_iou_thresh > 0:
            raise ZeroShotError(no_masks_message(zs_cfg, 1, out["n_generated"], True))
        ev.add(out["label"], sample.mask, out["probs"], meta=sample.meta, key=i)
        name = image_name(i, sample.meta)
        files[i] = write_label_png(out["label"], pred_dir / f"{name}.png")
        rows.append({"name": name, "source": sample.source, "generated": out["n_generated"],
                     "masks": out["n_masks"], "painted": out["n_painted"]})
    if not rows:
        raise ZeroShotError(f"split {getattr(dataset, 'split', '?')!r} has no images; choose another --split")
    if not any(r["masks"] for r in rows):
        raise ZeroShotError(no_masks_message(zs_cfg, len(rows), sum(r["generated"] for r in rows), random_init))
    return ev, rows, files


def _clip_accuracy(classifier, dataset, clip_cfg) -> dict:
    """evaluate_clip at alpha 0 (zero-shot) and at the head's own alpha; a reason instead when the split has no
    ground-truth masks of the head's classes."""
    from sam_histo.zeroshot.head import evaluate_clip
    from sam_histo.scoring.metrics_json import jsonable

    alphas = sorted({0.0, float(classifier.head.alpha)})
    try:
        out = evaluate_clip(classifier, dataset, dataset.classes, clip_cfg, alphas=alphas)
    except ValueError as e:
        return {"skipped": str(e)}
    out["split"] = getattr(dataset, "split", None)
    out["head_alpha"] = float(classifier.head.alpha)
    return jsonable(out)


def _overlay_items(ev, dataset, files, n: int, class_name: Optional[str]):
    if n <= 0 or class_name is None:
        return [], []
    best, worst = ev.best_worst(class_name, n=n)

    def items(scores):
        return [(dataset[s.key].image, dataset[s.key].mask, read_label_png(files[s.key]), files[s.key].stem, s.dice)
                for s in scores]

    return items(best), items(worst)


def run_zeroshot(cfg, out_dir, sam_model=None, classifier=None, split: Optional[str] = None, *,
                 checkpoint: str | Path | None = None, dataset=None) -> dict:
    """Zero-shot evaluation of one split; writes the report into ``out_dir`` and returns the metrics object.

    cfg: the whole Config (data, model, clip, zeroshot and eval sections go to their callees). sam_model: any
    object with ``automatic_mask_generator(**kw)`` (default: ``load_sam(cfg.model, checkpoint)``); classifier:
    a MaskClassifier (default: CLIP of ``cfg.clip``, head ``cfg.clip.head`` if set); split: default
    ``cfg.eval.split``; dataset: a Sequence of Sample with ``.classes`` (default: ``build_dataset``).
    """
    from sam_histo.data.dataset import build_dataset
    from sam_histo.zeroshot.class_map import generator_kwargs, unassigned_id
    from sam_histo.scoring.report import write_report
    from sam_histo.zeroshot.text_prompts import load_prompts, prompt_file_for
    from sam_histo.zeroshot.report import append_section, zeroshot_info

    import torch

    split = split or cfg.eval.split
    dataset = build_dataset(cfg.data, split) if dataset is None else dataset
    spec = dataset.classes
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompts = load_prompts(prompt_file_for(cfg.clip.prompts, cfg.data.dataset))
    random_init = sam_model is None and checkpoint is None and not cfg.model.checkpoint
    torch.manual_seed(cfg.seed)  # random-init models (demo, tests) come out the same on every run
    if sam_model is None:
        sam_model, sam_text = load_sam(cfg.model, checkpoint).to(device), sam_description(cfg.model, checkpoint)
    else:
        sam_text = str(checkpoint) if checkpoint is not None else "model given by the caller"
    classifier = build_classifier(cfg.clip, spec, Path(prompts.path), device) if classifier is None else classifier
    gen_kw = generator_kwargs(cfg.zeroshot)
    generator = sam_model.automatic_mask_generator(**gen_kw)
    column_ids = [spec.id_of(n) for n in classifier.class_names]
    fill_id = unassigned_id(spec, cfg.zeroshot.unassigned)
    out = Path(out_dir)
    ev, rows, files = _run_split(dataset, generator, classifier, column_ids, fill_id, cfg.zeroshot,
                                 out / "predictions", random_init)
    info = zeroshot_info(cfg.clip, cfg.zeroshot, classifier, prompts, sam_model, sam_text, gen_kw,
                         spec.names[fill_id], rows)
    metrics = ev.result(split=split, checkpoint=f"zero-shot: SAM2 {info['sam']['arch']}, weights {sam_text}; CLIP "
                                                 f"{info['clip']['model']}, {info['clip']['head_kind']}")
    metrics["zeroshot"] = info
    metrics["clip_accuracy"] = _clip_accuracy(classifier, dataset, cfg.clip)
    overlay_class = cfg.eval.overlay_class or ev.rarest_class()
    best, worst = _overlay_items(ev, dataset, files, cfg.eval.overlays, overlay_class)
    written = write_report(metrics, out, spec, best, worst, overlay_class)
    append_section(written["report"], metrics)
    return metrics


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam-histo zeroshot", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="config file (or a name in configs/, e.g. demo)")
    p.add_argument("--out", required=True, type=Path, help="report folder (created)")
    p.add_argument("--split", default=None, choices=("train", "val", "test", "all"),
                   help="split to evaluate (default: eval.split of the config)")
    p.add_argument("--checkpoint", default=None,
                   help="SAM2 weights of a run: checkpoint folder (model.safetensors), run folder or file; "
                        "official SAM2.1 weights: model.checkpoint=NAME_OR_PATH")
    p.add_argument("--clip-head", default=None, help="a tuned CLIP head (RUN/clip_head.safetensors); = clip.head")
    p.add_argument("--train-head", action="store_true",
                   help="first tune the CLIP head on the train split's ground-truth masks (OUT/clip_head.safetensors), "
                        "then classify with it")
    return add_overrides_help(p, "zeroshot.points_per_side=16")


def _train_head(cfg, out: Path):
    """`--train-head`: tune the head on the train split, point ``cfg.clip.head`` at it, return its classifier."""
    from sam_histo.data.dataset import build_dataset, class_spec
    from sam_histo.zeroshot.classify import ClipHead, MaskClassifier
    from sam_histo.zeroshot.train_head import HEAD_FILE, train_clip_head
    from sam_histo.zeroshot.text_prompts import prompt_file_for

    import torch

    cfg.clip.head = ""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    classifier = build_classifier(cfg.clip, class_spec(cfg.data), prompt_file_for(cfg.clip.prompts, cfg.data.dataset),
                                  device)
    train_clip_head(cfg, out, build_dataset(cfg.data, "train"), classifier=classifier)
    cfg.clip.head = str(out / HEAD_FILE)
    return MaskClassifier(classifier.model, ClipHead.load(cfg.clip.head, expect_model=classifier.model.name), cfg.clip)


def main(argv: Optional[list[str]] = None) -> int:
    from sam_histo.config import load_config, save_config

    args = parse_with_overrides(build_parser(), argv)
    cfg = load_config(args.config, args.overrides)
    if args.clip_head:
        cfg.clip.head = args.clip_head
    if args.train_head and args.clip_head:
        raise ConfigError("--train-head trains a new head: leave out --clip-head")
    classifier = _train_head(cfg, args.out) if args.train_head else None
    save_config(cfg, args.out / "config.yaml")
    m = run_zeroshot(cfg, args.out, classifier=classifier, split=args.split, checkpoint=args.checkpoint)
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    acc = m["clip_accuracy"].get("alpha", {})
    clip_line = ", ".join(f"alpha {a}: {fmt(r['accuracy'])} (balanced {fmt(r['balanced_accuracy'])})"
                          for a, r in acc.items()) or m["clip_accuracy"].get("skipped", "n/a")
    print(f"zero-shot, split {m['split']}, {m['n_images']} images, {m['zeroshot']['masks_per_image']['mean']:.1f} "
          f"masks/image: macro Dice {fmt(m['macro']['dice'])}, IoU {fmt(m['macro']['iou'])} over "
          f"{', '.join(m['macro_over'])}; CLIP accuracy on ground-truth masks: {clip_line}; "
          f"report {args.out / 'report.md'}")
    return 0
