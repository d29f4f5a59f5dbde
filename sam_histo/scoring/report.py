"""Write a split's report: metrics.json, report.md, confusion and per-class figures, best/worst overlays.

``write_report(metrics, out_dir, classes, best=..., worst=..., overlay_class=...)`` is the one entry point;
``metrics`` is the object from ``Evaluator.result`` / ``summary.metrics_json``. Every table in report.md
names its split, its averaging and the checkpoint the numbers came from (DESIGN.md section 4).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from sam_histo.data.types import ClassSpec
from sam_histo.scoring import plots


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def write_json(metrics: dict, path: Path) -> Path:
    """Strict JSON (no NaN: undefined values are null)."""
    path.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return path


def _header(m: dict) -> list[str]:
    ignore = m["ignore_index"]
    ign = (f"id {ignore} ({m['class_names'][ignore]}): its pixels are dropped from both sides"
           if ignore is not None else "none")
    return [
        f"# Segmentation report — split `{m.get('split') or 'unnamed'}`",
        "",
        f"- **Split:** {m.get('split') or 'unnamed'}",
        f"- **Checkpoint / predictions:** {m.get('checkpoint') or 'not given'}",
        f"- **Images:** {m.get('n_images')}; counted pixels: {m['n_pixels']:,}",
        f"- **Ignore index:** {ign}",
        "",
    ]


def _per_class_table(m: dict) -> list[str]:
    total = max(m["n_pixels"], 1)
    lines = [
        f"## Per class (dataset level: one confusion matrix over split `{m.get('split') or 'unnamed'}`)",
        "",
        "| class | support px | share | images present | predicted px | Dice | IoU | precision | recall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in m["per_class"].items():
        lines.append(
            f"| {name} | {r['support_pixels']:,} | {_pct(r['support_pixels'] / total)} | "
            f"{r['images_present'] if r['images_present'] is not None else 'n/a'} | {r['pred_pixels']:,} | "
            f"{_f(r['dice'])} | {_f(r['iou'])} | {_f(r['precision'])} | {_f(r['recall'])} |"
        )
    lines.append("")
    if m["absent_classes"]:
        fp = m.get("absent_but_predicted") or {}
        notes = [f"{n} (predicted on {fp[n]:,} px: all false positives, Dice 0)" if n in fp else
                 f"{n} (not predicted either)" for n in m["absent_classes"]]
        lines += [f"Absent from the ground truth of this split, so left out of the macro average: "
                  f"{'; '.join(notes)}. Recall is undefined (n/a) for an absent class.", ""]
    return lines


def _averages_table(m: dict) -> list[str]:
    over = ", ".join(m["macro_over"]) or "no class"
    lines = [
        f"## Averages (split `{m.get('split') or 'unnamed'}`, checkpoint `{m.get('checkpoint') or 'not given'}`)",
        "",
        "| averaging | Dice | IoU | precision | recall | accuracy |",
        "|---|---:|---:|---:|---:|---:|",
        f"| **macro** over the {len(m['macro_over'])} classes present in the ground truth ({over}) | "
        f"{_f(m['macro']['dice'])} | {_f(m['macro']['iou'])} | {_f(m['macro']['precision'])} | "
        f"{_f(m['macro']['recall'])} | |",
    ]
    fg = m.get("foreground")
    if fg:  # the headline: macro over the foreground classes, background apart
        f_, b = fg["macro"], fg["background_scores"]
        lines += [f"| **macro over foreground** ({', '.join(fg['over']) or 'no class'}; the headline) | "
                  f"{_f(f_['dice'])} | {_f(f_['iou'])} | {_f(f_['precision'])} | {_f(f_['recall'])} | |",
                  f"| {fg['background']} alone | {_f(b['dice'])} | {_f(b['iou'])} | {_f(b['precision'])} | "
                  f"{_f(b['recall'])} | |"]
    lines += [
        f"| micro (TP, FP, FN pooled over classes) | {_f(m['micro']['dice'])} | {_f(m['micro']['iou'])} | | | "
        f"{_f(m['micro']['accuracy'])} |",
        f"| frequency-weighted (by class pixel share) | {_f(m['frequency_weighted']['dice'])} | "
        f"{_f(m['frequency_weighted']['iou'])} | | | |",
    ]
    if m.get("image_level"):
        il = m["image_level"]
        lines.append(f"| image-level mean (per class over the images where the ground truth or the prediction holds it, a false alarm scoring 0; then macro over {over}) | "
                     f"{_f(il['macro']['dice'])} | {_f(il['macro']['iou'])} | | | |")
    lines += ["", "Per-class numbers and macro are dataset level; image-level means are given beside them, "
              "never instead. Pixel F1 equals Dice.", ""]
    return lines


def _patterns(m: dict) -> list[str]:
    if not m["confusion_patterns"]:
        return []
    return ["## Where each class's pixels went", ""] + [f"- {s}" for s in m["confusion_patterns"]] + [""]


def _probability_table(m: dict) -> list[str]:
    if not m.get("probability"):
        return []
    lines = [f"## Probability on each class's true pixels (split `{m.get('split') or 'unnamed'}`)", "",
             "| class | mean | max | share > 0.3 | share > 0.5 |", "|---|---:|---:|---:|---:|"]
    for name, r in m["probability"].items():
        lines.append(f"| {name} | {_f(r['mean'])} | {_f(r['max'])} | {_pct(r['frac_above_0.3'])} | "
                     f"{_pct(r['frac_above_0.5'])} |")
    return lines + [""]


def _instance_table(m: dict) -> list[str]:
    i = m.get("instances")
    if not i:
        return []
    rows = [("all images pooled", i, f"{i['n_gt']} | {i['n_pred']}")]
    if i.get("image_level"):
        rows.append((f"mean over {i['image_level']['n_images']} images", i["image_level"], " | "))
    return [
        f"## Instances (split `{m.get('split') or 'unnamed'}`)", "",
        "| averaging | adapted Rand error | Rand precision (merges lower it) | Rand recall (splits lower it) | "
        "F1 at IoU 0.5 | mean seg. accuracy IoU 0.5-0.95 | GT objects | predicted objects |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ] + [
        f"| {name} | {_f(r['adapted_rand_error'])} | {_f(r['precision'])} | {_f(r['recall'])} | "
        f"{_f(r['f1_at_0.5'])} | {_f(r['mean_seg_accuracy'])} | {counts} |"
        for name, r, counts in rows
    ] + [
        "",
        "Rand precision/recall follow the SNEMI3D definition; scikit-image's adapted_rand_error returns them "
        "swapped (its precision falls with splits). Matching counts pairs with IoU strictly above the threshold.",
        "",
    ]


def report_markdown(m: dict, figures: dict[str, str], overlays: Optional[dict] = None) -> str:
    """The report.md text; figures maps a caption to a file name next to it."""
    lines = _header(m) + _per_class_table(m) + _averages_table(m) + _patterns(m)
    lines += _probability_table(m) + _instance_table(m)
    if figures:
        lines += ["## Figures", ""] + [f"![{cap}]({name})" for cap, name in figures.items()] + [""]
    if overlays and overlays.get("files"):
        lines += [f"## Best and worst images for `{overlays['class']}` (rarest class unless chosen), "
                  f"ranked by that class's Dice", ""]
        lines += [f"- {tag}: ![{name}]({file})" for tag, name, file in overlays["files"]] + [""]
    return "\n".join(lines)


def write_report(
    metrics: dict,
    out_dir: str | Path,
    classes: ClassSpec,
    best: Sequence[tuple] = (),
    worst: Sequence[tuple] = (),
    overlay_class: Optional[str] = None,
) -> dict[str, Path]:
    """Write every file of a report into ``out_dir``; returns {"metrics", "report", "confusion", ...: path}.

    best, worst: overlay items (image or None, gt, pred, name, dice) for ``overlay_class``, usually the
    images ``Evaluator.best_worst`` names, reloaded by the caller.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": write_json(metrics, out / "metrics.json")}
    files["confusion"] = plots.plot_confusion(metrics, out / "confusion_matrix.png")
    files["per_class"] = plots.plot_per_class(metrics, classes, out / "per_class.png")
    overlay_info = None
    if overlay_class and (best or worst):
        listed = []
        for tag, items in (("best", best), ("worst", worst)):
            for item, path in zip(items, plots.write_overlays(out, items, classes, overlay_class, tag)):
                listed.append((f"{tag}, Dice {item[4]:.3f}", item[3], path.name))
                files[path.stem] = path
        overlay_info = {"class": overlay_class, "files": listed}
    figures = {"confusion matrix, row-normalised, with pixel counts": files["confusion"].name,
               "per-class scores": files["per_class"].name}
    files["report"] = out / "report.md"
    files["report"].write_text(report_markdown(metrics, figures, overlay_info))
    return files
