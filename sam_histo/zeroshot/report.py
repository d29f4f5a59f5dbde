"""The zero-shot part of a report: what produced the numbers (``zeroshot`` key of metrics.json) and the
report.md section with the setup, the masks per image and the CLIP accuracy table. Pure: no torch, no models.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


def _masks_per_image(rows: Sequence[dict]) -> dict:
    kept = np.array([r["masks"] for r in rows], np.int64)
    generated = np.array([r["generated"] for r in rows], np.int64)
    return {"mean": float(kept.mean()), "median": float(np.median(kept)), "min": int(kept.min()),
            "max": int(kept.max()), "total": int(kept.sum()), "generated_mean": float(generated.mean()),
            "painted_mean": float(np.mean([r["painted"] for r in rows])),
            "images_without_masks": int((kept == 0).sum())}


def zeroshot_info(clip_cfg, zs_cfg, classifier, prompts, sam_model, sam_text: str, generator_kwargs: dict,
                  unassigned: str, rows: Sequence[dict]) -> dict:
    """The ``zeroshot`` object of metrics.json: prompts and their hash, CLIP and its head, SAM2 and its weights,
    the generator and class-map settings, and masks per image (summary and one row per image)."""
    head = classifier.head
    if head.prompts_sha256 and head.prompts_sha256 != prompts.sha256:
        log.warning("the CLIP head was built from prompts %s..., the prompt file %s hashes to %s...; the head's "
                    "text weights are the ones used", head.prompts_sha256[:12], prompts.path, prompts.sha256[:12])
    tuned = bool(clip_cfg.head) or head.alpha > 0
    return {
        "prompts_sha256": head.prompts_sha256 or None,  # the prompts the classifier's text weights came from
        "prompt_file": prompts.path,
        "prompt_set": prompts.name,
        "prompt_file_sha256": prompts.sha256,
        "clip": {
            "model": classifier.model.name, "backend": clip_cfg.backend, "arch": clip_cfg.arch,
            "weights": clip_cfg.weights, "head": clip_cfg.head or None, "head_alpha": float(head.alpha),
            "head_kind": f"tuned head, alpha {head.alpha:g}" if tuned else "zero-shot text classifier",
            "logit_scale": float(head.logit_scale), "crop_margin": clip_cfg.crop_margin,
            "crop_min_side": clip_cfg.crop_min_side, "blank_background": clip_cfg.blank_background,
        },
        "sam": {"arch": str(getattr(sam_model, "arch", "") or "unknown"),
                "image_size": getattr(sam_model, "image_size", None), "checkpoint": sam_text},
        "generator": {k: v for k, v in generator_kwargs.items() if k != "output_mode"},
        "min_mask_area": zs_cfg.min_mask_area,
        "overlap": zs_cfg.overlap,
        "min_class_prob": zs_cfg.min_class_prob,
        "unassigned": unassigned,
        "masks_per_image": _masks_per_image(rows),
        "images": list(rows),
    }


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def setup_lines(m: dict) -> list[str]:
    z = m["zeroshot"]
    c, s, mp = z["clip"], z["sam"], z["masks_per_image"]
    gen = ", ".join(f"{k}={v}" for k, v in z["generator"].items())
    head = (f"tuned head `{c['head']}` at alpha {c['head_alpha']:g}" if c["head"] else c["head_kind"])
    rule = {"score": "the mask with the highest mask score x class confidence wins",
            "area": "the smallest covering mask wins"}.get(z["overlap"], z["overlap"])
    return [
        f"## Zero-shot setup (split `{m.get('split')}`)", "",
        f"- **Prompts:** `{z['prompt_file']}` (set `{z['prompt_set']}`), sha256 of the prompts used "
        f"`{z['prompts_sha256'] or 'none (hand-made head)'}`"
        + ("" if z["prompts_sha256"] == z["prompt_file_sha256"] else
           f"; the file now hashes to `{z['prompt_file_sha256']}`"),
        f"- **CLIP:** `{c['model']}` (backend {c['backend']}, arch `{c['arch']}`, weights "
        f"{c['weights'] or 'none given'}); classifier: {head}; logit scale "
        f"{c['logit_scale']:.1f}; crops: margin {c['crop_margin']}, at least {c['crop_min_side']} px, background "
        f"{'blanked' if c['blank_background'] else 'kept'}",
        f"- **SAM2:** arch `{s['arch']}`, image size {s['image_size']}, weights: {s['checkpoint']}",
        f"- **Automatic masks:** {gen}; "
        + (f"masks under {z['min_mask_area']} px dropped" if z["min_mask_area"] else "no area filter"),
        f"- **Class map:** each mask takes its most probable class; overlaps by `{z['overlap']}` ({rule}); "
        + (f"masks whose top probability is below {z['min_class_prob']} are left out; " if z["min_class_prob"] else "")
        + f"uncovered pixels get `{z['unassigned']}`",
        f"- **Masks per image:** mean {mp['mean']:.1f}, median {mp['median']:g}, min {mp['min']}, max "
        f"{mp['max']} ({mp['total']} in all; {mp['generated_mean']:.1f} generated per image before the area "
        f"filter; {mp['painted_mean']:.1f} per image visible in the class map); images without masks: "
        f"{mp['images_without_masks']} of {len(z['images'])}",
        "",
    ]


def clip_accuracy_lines(m: dict) -> list[str]:
    acc = m["clip_accuracy"]
    title = f"## CLIP accuracy on ground-truth masks (split `{m.get('split')}`)"
    if "alpha" not in acc:
        return [title, "", f"Not computed: {acc.get('skipped', 'no result')}", ""]
    alphas = list(acc["alpha"])
    cols = [f"alpha {a}" + (" (zero-shot)" if float(a) == 0 else "") for a in alphas]
    first = acc["alpha"][alphas[0]]
    lines = [title, "",
             f"CLIP alone, on the ground-truth masks (instances and connected components of each class, at least "
             f"the clip.min_mask_area) of {acc['n_images']} images: {first['n_masks']} masks. Accuracy counts "
             "masks; balanced accuracy is the mean recall over the classes that have masks. Alpha mixes the "
             "zero-shot and tuned head weights, (1 - alpha) zero-shot + alpha tuned.", "",
             "| | masks | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols),
             f"| accuracy | {first['n_masks']} | " + " | ".join(_f(acc['alpha'][a]['accuracy']) for a in alphas) + " |",
             "| balanced accuracy | | " + " | ".join(_f(acc["alpha"][a]["balanced_accuracy"]) for a in alphas) + " |"]
    for name, support in first["support"].items():
        lines.append(f"| recall: {name} | {support} | "
                     + " | ".join(_f(acc["alpha"][a]["per_class_recall"][name]) for a in alphas) + " |")
    return lines + [""]


def append_section(report_path: Path, metrics: dict) -> Path:
    """Add the zero-shot setup and the CLIP accuracy table to report.md (rewritten atomically)."""
    from sam_histo.files import atomic_path

    text = Path(report_path).read_text()
    section = "\n".join(setup_lines(metrics) + clip_accuracy_lines(metrics))
    with atomic_path(report_path) as tmp:
        tmp.write_text(text.rstrip("\n") + "\n\n" + section + "\n")
    return Path(report_path)
