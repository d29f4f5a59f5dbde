"""Glass and heatmaps of `sam-histo predict`: the tissue mask at predict time (HSV tissue detector, glass
gets the background or ignore id) and the per-class heatmaps (z-scored per slide, thresholded, cleaned,
drawn over the tile); see :mod:`sam_histo.release.predict`."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional

import numpy as np

from sam_histo.config import ConfigError, HeatmapConfig
from sam_histo.data.types import DataError
from sam_histo.infer.predict_io import Outputs, read_image


class PredictError(ConfigError):
    """The release cannot predict as asked; the message says what is missing and how to supply it."""


def use_tissue_mask(release, flag: Optional[bool]) -> bool:
    """``--tissue-mask``: on by default for H&E releases, refused for EM (no glass to find there)."""
    from sam_histo.config.datasets import modality

    he = modality(release.config.data.dataset) == "he"
    if flag and not he:
        raise PredictError("--tissue-mask finds glass on H&E tiles; this release is for "
                           f"{release.config.data.dataset} data: leave it out")
    return he if flag is None else bool(flag)


def glass_id(classes) -> int:
    """The id glass gets: ``background`` when it is a class, else the ignore id (BCSS: outside_roi)."""
    if "background" in classes.names:
        return classes.names.index("background")
    if classes.ignore_index is None:
        raise PredictError("--tissue-mask: this release has neither a background class nor an ignore id to give "
                           "glass; use --no-tissue-mask")
    return classes.ignore_index


def tissue_png(out: Path, key: str) -> Path:
    return out / "tissue" / f"{key}.png"


def _read_tissue(path: Path, shape) -> np.ndarray:
    """The tissue mask predict wrote for an image; all tissue without one (--no-tissue-mask, EM)."""
    if not path.is_file():
        return np.ones(shape, bool)
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im) > 0


def heatmap_settings(release, class_name: str, args) -> tuple[HeatmapConfig, float, str]:
    """(HeatmapConfig, threshold, where the threshold came from). Options given on the command line win;
    otherwise the settings the release's validation chose the threshold under, else the defaults."""
    chosen = (release.metrics.get("val") or {}).get("heatmap") or {}
    from_val = chosen.get("class_name") == class_name
    base = HeatmapConfig(**chosen["settings"]) if from_val else HeatmapConfig(class_name=class_name)
    changes = {k: v for k, v in (("zscore", args.zscore), ("min_size", args.min_size),
                                 ("fill_holes", args.fill_holes)) if v is not None}
    hcfg = dataclasses.replace(base, class_name=class_name, **changes)
    if args.threshold is not None:
        if not hcfg.zscore and not 0.0 <= args.threshold <= 1.0:
            raise PredictError(f"--threshold {args.threshold} without z-scoring is a probability: give one in [0, 1]")
        return dataclasses.replace(hcfg, threshold=float(args.threshold)), float(args.threshold), "--threshold"
    if from_val and not changes:
        return (dataclasses.replace(hcfg, threshold=float(chosen["threshold"])), float(chosen["threshold"]),
                f"the release's validation ({chosen.get('rule')} on split {chosen.get('split')}, metrics.json "
                "val.heatmap)")
    raise PredictError(f"--heatmap-class {class_name}: give --threshold T; an IoU-optimal one needs labels: run "
                       f"`sam-histo validate ... heatmap.class_name={class_name}` and pass its heatmap.threshold"
                       + (" (the release's own was chosen under other settings)" if from_val else ""))


def slide_id(key: str, pattern: Optional[str]) -> str:
    """The slide an image belongs to: the first group (else the whole match) of ``pattern`` in its name."""
    if not pattern:
        return key
    m = re.search(pattern, Path(key).name)
    if m is None:
        raise DataError(f"--slide-pattern {pattern!r} does not match {Path(key).name!r}")
    return m.group(1) if m.groups() else m.group(0)


def draw_heatmap(path: Path, image_file: Path, score, mask, tissue, class_name, units, threshold, args) -> None:
    """heatmap_views/KEY.png: the heatmap over its tile with a colour bar (skipped when already drawn)."""
    from sam_histo.scoring.plots import plot_heatmap

    if path.is_file() or image_file is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_heatmap(path, read_image(image_file, args.max_pixels), score, mask, tissue, class_name, units, threshold)


def run_heatmaps(outputs: list[Outputs], release, class_name: str, args, out: Path, files=None) -> dict:
    from sam_histo.files import write_json
    from sam_histo.infer.heatmap import run_heatmap
    from sam_histo.infer.overlay import save_png

    hcfg, threshold, source = heatmap_settings(release, class_name, args)
    scores = [np.load(o.score_npy, allow_pickle=False) for o in outputs]
    slides = [slide_id(o.key, args.slide_pattern) for o in outputs]
    tissue = [_read_tissue(tissue_png(out, o.key), s.shape) for o, s in zip(outputs, scores)]
    res = run_heatmap(scores, hcfg, slides, threshold=threshold, tissue=tissue)  # glass out of the z-scores
    res.masks = [m & t for m, t in zip(res.masks, tissue)]  # and out of the heatmap
    units = "z-score per slide" if hcfg.zscore else f"P({class_name})"
    for o, mask, s, t, f in zip(outputs, res.masks, res.scores, tissue, files or [None] * len(outputs)):
        save_png(o.heatmap_png, mask.astype(np.uint8) * 255)
        draw_heatmap(out / "heatmap_views" / f"{o.key}.png", f, s, mask, t, class_name, units, threshold, args)
    report = {"class_name": class_name, "threshold": threshold, "threshold_source": source,
              "units": "z-scores per slide" if hcfg.zscore else "probability", "settings": dataclasses.asdict(hcfg),
              "steps": res.steps, "slides": {s: slides.count(s) for s in dict.fromkeys(slides)},
              "images": {o.key: {"slide": s, "positive_fraction": float(m.mean())}
                         for o, s, m in zip(outputs, slides, res.masks)}}
    write_json(out / "heatmap.json", report, indent=1)
    return report
