"""`sam-histo predict --release DIR --input PATH --out DIR`: label maps, probabilities, overlays, RLE, heatmaps.

    sam-histo predict --release DIR --input IMAGE_OR_FOLDER --out DIR [--probs] [--no-overlay] [--no-rle]
        [--heatmap-class NAME [--threshold T] [--no-zscore] [--min-size N] [--no-fill-holes]
         [--slide-pattern REGEX]] [clip.* / zeroshot.* overrides]

The release is verified (every sha256) and loaded. Semantic releases slide windows of the model's input
size over each image with overlap and blend them (``infer.image.semantic_probs``), so any image size
works and the label map has the input's size. Prompted releases without a class-token head classify
SAM2's automatic masks with CLIP (the bundle's tuned head, else the zero-shot classifier of its prompt
file), as ``sam-histo zeroshot`` does. Files per image: see :mod:`sam_histo.infer.predict_io`; images whose files
all exist are skipped, so an interrupted run continues where it stopped.

Heatmaps (``--heatmap-class``): the class's probability, z-scored per slide (one image = one slide unless
``--slide-pattern`` takes the slide id from the file name), thresholded, then cleaned (components smaller
than ``--min-size`` dropped, holes filled). The threshold is ``--threshold`` or, when the release's
validation chose one for this class (``sam-histo validate ... heatmap.class_name=X``), that value with the
settings it was chosen under. ``heatmap.json`` reports the threshold, its source and what each step did.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from sam_histo.config import ConfigError
from sam_histo.config.argv import add_overrides_help, parse_with_overrides
from sam_histo.infer.predict_io import MAX_PIXELS, Outputs, list_inputs, read_image, save_npy
from sam_histo.release.predict_maps import (PredictError, glass_id, heatmap_settings, run_heatmaps, tissue_png,
                                            use_tissue_mask)


# ------------------------------------------------------------------------------------ the predictor
def _semantic(release, overlap: float, batch_size: int):
    from sam_histo.infer.image import semantic_probs

    classes = release.classes

    def predict(image: np.ndarray):
        probs = semantic_probs(release.model, image, classes.num_classes, classes.ignore_index, overlap, batch_size,
                               tta=release.config.eval.tta, scales=release.config.eval.tta_scales)
        return probs.argmax(0).astype(np.int64), probs

    return predict


def _clip_classifier(release):
    """The bundle's CLIP head (else the zero-shot classifier of its prompt file) on the CLIP of its config."""
    from sam_histo.zeroshot.classify import build_mask_classifier

    cfg, files = release.config, release.info["files"]
    clip = cfg.clip
    if not files.get("clip_head") and not files.get("prompts"):
        raise PredictError(f"{release.path}: a prompted-mode release without a class-token head needs a CLIP "
                           "head or a prompt file to name its masks, and this bundle has neither; release a "
                           "semantic-mode run, or a run trained with clip.train_head=true")
    random_clip = (clip.arch == "tiny" and not clip.weights) or clip.weights == "random" or (
        clip.backend == "open_clip" and not clip.weights and not clip.arch.startswith(("hf-hub:", "local-dir:")))
    if random_clip:
        raise PredictError(f"{release.path}: the release names CLIP clip.arch={clip.arch} with "
                           f"clip.weights={clip.weights or 'null'} "
                           "(random weights, which cannot be rebuilt); pass the CLIP it was trained with, e.g. "
                           "clip.weights=/path/to/weights or clip.arch=local-dir:/folder")
    head = Path(clip.head) if files.get("clip_head") else None
    try:
        return build_mask_classifier(clip, release.classes.trained_names, release.prompts_path, head_path=head)
    except ValueError as e:  # the head belongs to another CLIP or other classes
        raise PredictError(f"clip head: {e}") from None


def _prompted(release):
    from sam_histo.zeroshot.class_map import generator_kwargs, unassigned_id
    from sam_histo.zeroshot.run import classify_image

    cfg, classes = release.config, release.classes
    classifier = _clip_classifier(release)
    generator = release.model.automatic_mask_generator(**generator_kwargs(cfg.zeroshot))
    column_ids = [classes.id_of(n) for n in classifier.class_names]
    fill = unassigned_id(classes, cfg.zeroshot.unassigned)

    def predict(image: np.ndarray):
        out = classify_image(generator, classifier, image, column_ids, classes.num_classes, fill, cfg.zeroshot)
        return out["label"], out["probs"]

    return predict


def make_predictor(release, overlap: Optional[float] = None, batch_size: Optional[int] = None):
    """``predict(uint8 (H, W, 3), mpp=None) -> (label int64 (H, W), probs float32 (C, H, W))`` for a loaded
    release: the release's stain normalisation first, then the model at its ``model.target_mpp``
    (``at_target_mpp``); outputs are on the input's grid. Semantic releases with ``eval.min_region_um2``
    then absorb the label map's small regions, sized at the image's mpp (else the release's)."""
    cfg = release.config
    semantic = release.model.semantic_head is not None
    predict = at_target_mpp(_native_predictor(release, overlap, batch_size), cfg.model.target_mpp,
                            label_from_probs=semantic)
    if not (semantic and cfg.eval.min_region_um2):
        return predict

    def cleaned(image: np.ndarray, mpp: Optional[float] = None):
        from sam_histo.infer.image import class_map, region_pixels

        _, probs = predict(image, mpp)
        return class_map(probs, region_pixels(cfg.eval.min_region_um2, mpp, cfg.model.target_mpp, cfg.data.mpp)), probs

    return cleaned


def at_target_mpp(core, target_mpp: Optional[float], label_from_probs: bool = True):
    """Wraps ``core(image) -> (label, probs)``: the image is resampled from its ``mpp`` to ``target_mpp``,
    predicted, and the probabilities resized back (bilinear) to the input's (H, W); the label is their argmax
    (``label_from_probs``) or the core's label resized with nearest neighbour. Unknown mpp or no target:
    ``core`` as is."""
    from sam_histo.data.io.resolution import resample_image, resample_labels, scale_factor, to_size

    def predict(image: np.ndarray, mpp: Optional[float] = None):
        factor = scale_factor(mpp, target_mpp)
        if factor == 1.0:
            return core(image)
        label, probs = core(resample_image(image, factor))
        probs = to_size(probs, image.shape[:2])
        label = probs.argmax(0).astype(np.int64) if label_from_probs else resample_labels(label, size=image.shape[:2])
        return label, probs

    return predict


def _native_predictor(release, overlap: Optional[float], batch_size: Optional[int]):
    cfg = release.config
    if release.model.semantic_head is not None:
        core = _semantic(release, cfg.eval.window_overlap if overlap is None else overlap,
                         cfg.eval.batch_size if batch_size is None else batch_size)
    else:
        core = _prompted(release)
    if cfg.stain.method == "none":
        return core
    from sam_histo.augment import build_eval_transform
    from sam_histo.config.datasets import modality

    transform = build_eval_transform(cfg.stain, cfg.model.image_size, modality(cfg.data.dataset))
    return lambda image: core(transform(image=image)["image"])


# -------------------------------------------------------------------------------------- one image
def write_outputs(o: Outputs, image: np.ndarray, label: np.ndarray, probs: np.ndarray, classes,
                  prob_ids: list[int], file_name: str, image_id: int = 0) -> None:
    """Every file of one image; the label map last (its presence marks the image done). ``image_id``: the
    image's index among the sorted inputs, an integer as COCO's result format wants."""
    from sam_histo.infer.overlay import overlay_with_legend, save_png
    from sam_histo.infer.rle import encode_label_map, write_records

    if o.probs:
        for c in prob_ids:
            save_png(o.prob_png(c), np.rint(np.clip(probs[c], 0, 1) * 255).astype(np.uint8))
    if o.heatmap_class:
        save_npy(o.score_npy, probs[classes.id_of(o.heatmap_class)].astype(np.float32))
    if o.overlay:
        save_png(o.overlay_png, overlay_with_legend(image, label, classes.names, classes.colors(),
                                                    ignore_index=classes.ignore_index))
    if o.rle:
        present = [int(c) for c in np.unique(label) if c != classes.ignore_index]
        scores = {c: float(probs[c][label == c].mean()) for c in present}  # mean probability of its pixels
        write_records(o.rle_json, encode_label_map(label, classes.names, classes.ignore_index, scores=scores,
                                                   image_id=image_id, file_name=file_name))
    save_png(o.label, label)


def predict_one_streamed(release, f: Path, o: Outputs, prob_ids: list[int], args, masking,
                         image_id: int) -> Optional[bool]:
    """Semantic releases without stain normalisation: the streamed path (release.stream), memory bounded by
    the window batch; None when the image needs the whole-image path (the size is checked from the header),
    else whether it was a grey image left unmasked."""
    from sam_histo.infer.predict_io import check_pixels
    from sam_histo.release.stream import can_stream, predict_streamed

    h, w = check_pixels(f, args.max_pixels)
    if not can_stream(release, h, w):
        return None
    cfg = release.config
    return predict_streamed(release, f, o, prob_ids, cfg.eval.window_overlap if args.overlap is None else args.overlap,
                            cfg.eval.batch_size if args.batch_size is None else args.batch_size, args.max_pixels,
                            masking, image_id)


def input_resolutions(inputs, default_mpp: Optional[float], target_mpp: Optional[float]) -> dict:
    """{key: {"mpp", "source"}} of every input (file name, TIFF tags, else --mpp); warns about the unknown
    ones when the release works at a target resolution (they are predicted at their own scale)."""
    from sam_histo.data.io.resolution import resolve_mpp

    out = {}
    for f, key in inputs:
        mpp, source = resolve_mpp(f, default_mpp)
        out[key] = {"mpp": mpp, "source": "--mpp" if source == "data.mpp" else source}
    unknown = [k for k, v in out.items() if v["mpp"] is None]
    if unknown and target_mpp is not None:
        print(f"predict: {len(unknown)} image(s) of unknown resolution (e.g. {unknown[0]}) are predicted at "
              f"their own scale, not at the release's {target_mpp} um/px; give --mpp")
    return out


def predict_images(release, todo, image_ids: dict, resolution: dict, args) -> int:
    """Predict and write every (file, Outputs) of ``todo``; returns how many grey images were not masked."""
    from sam_histo.data.io.resolution import scale_factor
    from sam_histo.infer.overlay import save_png
    from sam_histo.release.stream import Masking
    from sam_histo.stain.tissue import tissue_mask

    classes = release.classes
    prob_ids = classes.trained_ids
    tissue_on = use_tissue_mask(release, args.tissue_mask)
    glass = glass_id(classes) if tissue_on else None
    target_mpp = release.config.model.target_mpp
    predictor, unmasked = None, 0
    for f, o in tqdm(todo, desc="predict", unit="image"):
        # streaming works on the input's grid: images that need resampling take the whole-image path
        if scale_factor(resolution[o.key]["mpp"], target_mpp) == 1.0:
            masking = Masking(release.config.data.tissue, glass, tissue_png(args.out, o.key)) if tissue_on else None
            grey = predict_one_streamed(release, f, o, prob_ids, args, masking, image_ids[o.key])
            if grey is not None:
                unmasked += int(grey)  # True only when masking was asked for
                continue
        predictor = predictor or make_predictor(release, args.overlap, args.batch_size)
        image = read_image(f, args.max_pixels)
        label, probs = predictor(image, resolution[o.key]["mpp"])
        grey = tissue_on and not (image.max(-1) != image.min(-1)).any()  # HSV finds no stain in grey
        unmasked += int(grey)
        if tissue_on and not grey:
            tissue = tissue_mask(image, release.config.data.tissue)
            label = np.where(tissue, label, glass)
            save_png(tissue_png(args.out, o.key), tissue.astype(np.uint8) * 255)
        write_outputs(o, image, label, probs, classes, prob_ids, f.name, image_ids[o.key])
    return unmasked


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam-histo predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--release", required=True, type=Path, help="a bundle written by `sam-histo release`")
    p.add_argument("--input", required=True, type=Path, help="an image (PNG, TIFF, JPEG) or a folder of them")
    p.add_argument("--out", required=True, type=Path, help="output folder (created; finished images are skipped)")
    p.add_argument("--recursive", action="store_true", help="also read the images in sub-folders of --input")
    p.add_argument("--probs", action="store_true", help="write per-class probability maps (8-bit PNG per class)")
    p.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=True, help="label overlays")
    p.add_argument("--rle", action=argparse.BooleanOptionalAction, default=True, help="COCO-style RLE JSON")
    p.add_argument("--overlap", type=float, default=None, help="window overlap in [0, 1) (default eval.window_overlap)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per model call (default eval.batch_size)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="semantic: average each window's flips (4x the time; default the release's eval.tta)")
    p.add_argument("--mpp", type=float, default=None,
                   help="microns per pixel of inputs whose name (MPP-0.25) and TIFF tags say none")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images (memory)")
    p.add_argument("--expected-digest", default=None, help="sha256 of the bundle's SHA256SUMS, as published")
    p.add_argument("--tissue-mask", action=argparse.BooleanOptionalAction, default=None,
                   help="label glass (HSV: saturation <= data.tissue.sat_min or value >= data.tissue.val_max) "
                        "as background, else the ignore id, and leave it out of heatmaps; default on for H&E")
    h = p.add_argument_group("heatmap of one class")
    h.add_argument("--heatmap-class", default=None, help="class name; writes heatmaps/ and heatmap.json")
    h.add_argument("--threshold", type=float, default=None,
                   help="in z units with z-scoring, else a probability (default: the release validation's)")
    h.add_argument("--zscore", action=argparse.BooleanOptionalAction, default=None, help="per-slide z-scores")
    h.add_argument("--min-size", type=int, default=None, help="drop components with fewer pixels")
    h.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None, help="fill enclosed holes")
    h.add_argument("--slide-pattern", default=None,
                   help=r"regex on the file name giving its slide id (e.g. '^[^_]+' for BCSS); default one "
                        "slide per image")
    return add_overrides_help(p, "clip.weights=PATH; predict takes clip.* and zeroshot.* only")


def _apply_overrides(release, overrides: list[str]) -> None:
    from sam_histo.config import config_from_dict, parse_override, to_dict

    tree = to_dict(release.config)
    for text in overrides:
        key, value = parse_override(text)
        if key.split(".")[0] not in ("clip", "zeroshot"):
            raise ConfigError(f"override {key}: predict takes only clip.* and zeroshot.* (the rest is the release's)")
        node = tree
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    release.config = config_from_dict(tree, " (predict overrides)")


def main(argv: Optional[list[str]] = None) -> int:
    from sam_histo.release.bundle import BundleError, load_release
    from sam_histo.files import write_json

    args = parse_with_overrides(build_parser(), argv)
    inputs = list_inputs(args.input, args.recursive)
    try:
        release = load_release(args.release, args.expected_digest)
    except BundleError as e:
        raise PredictError(str(e)) from None
    if args.overrides:
        _apply_overrides(release, args.overrides)
    if args.tta is not None:
        release.config.eval.tta = args.tta
    classes = release.classes
    if args.heatmap_class is not None and args.heatmap_class not in classes.trained_names:
        raise PredictError(f"--heatmap-class {args.heatmap_class!r} is not a class of this release "
                           f"({', '.join(classes.trained_names)})")
    if args.heatmap_class is not None:
        heatmap_settings(release, args.heatmap_class, args)  # fail on a missing threshold before the long loop
    prob_ids = classes.trained_ids
    outputs = [Outputs(args.out, key, classes.names, overlay=args.overlay, rle=args.rle, probs=args.probs,
                       heatmap_class=args.heatmap_class) for _, key in inputs]
    todo = [(f, o) for (f, _), o in zip(inputs, outputs) if not o.done(prob_ids)]
    resolution = input_resolutions(inputs, args.mpp, release.config.model.target_mpp)
    unmasked = predict_images(release, todo, {key: i for i, (_, key) in enumerate(inputs)}, resolution, args)
    print(f"predict: {len(todo)} image(s) predicted, {len(inputs) - len(todo)} already done; outputs in {args.out}")
    if unmasked:
        print(f"predict: {unmasked} grey image(s) not tissue-masked (the HSV detector needs colour)")
    if args.heatmap_class:
        rep = run_heatmaps(outputs, release, args.heatmap_class, args, args.out, [f for f, _ in inputs])
        last = rep["steps"][-1]
        print(f"heatmap {args.heatmap_class}: threshold {rep['threshold']:.4g} ({rep['units']}; from "
              f"{rep['threshold_source']}), {100 * last['positive_fraction']:.2f} % positive after "
              f"{last['step']}; {args.out / 'heatmaps'}, {args.out / 'heatmap.json'}")
    write_json(args.out / "predict.json", {"release": str(release.path), "digest": release.digest,
                                           "inputs": len(inputs), "target_mpp": release.config.model.target_mpp,
                                           "resolution": resolution}, indent=1)
    return 0
