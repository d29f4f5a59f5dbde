"""The README.md model card of a release bundle, from the bundle's own JSON (pure: strings only).

Sections: what the model is, intended use (research, not diagnosis), training data and split, the per-class
table of the released checkpoint (split, averaging and checkpoint named, DESIGN.md section 4), limitations,
provenance, and how to load it (Python, `sam-histo predict`, sam2's own ``build_sam2``).
"""
from __future__ import annotations

import json


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def per_class_table(m: dict, split: str) -> list[str]:
    rows = [f"Split `{split}`, {m.get('n_images', '?')} images; dataset level (one confusion matrix over the "
            f"split), checkpoint `{m.get('checkpoint')}`.", "",
            "| class | support px | Dice | IoU | precision | recall |", "|---|---:|---:|---:|---:|---:|"]
    for name, v in m["per_class"].items():
        rows.append(f"| {name} | {v.get('support_pixels', 0):,} | {_f(v['dice'])} | {_f(v['iou'])} | "
                    f"{_f(v['precision'])} | {_f(v['recall'])} |")
    macro = m["macro"]
    over = ", ".join(m.get("macro_over", []))
    rows.append(f"| **macro** over the classes present ({over}) | | {_f(macro['dice'])} | {_f(macro['iou'])} | "
                f"{_f(macro['precision'])} | {_f(macro['recall'])} |")
    if m.get("absent_classes"):
        absent = ", ".join(m["absent_classes"])
        rows += ["", f"Absent from this split's ground truth (not in the macro mean): {absent}."]
    return rows


def _data_section(cfg: dict, metrics: dict) -> list[str]:
    d = cfg["data"]
    split = {"random": f"random by slide (seed {d['split_seed']}, val {d['val_fraction']}, test {d['test_fraction']})",
             "institute": f"by TCGA site (val {d['val_sites']}, test {d['test_sites']})",
             "z": f"contiguous z blocks (val {d['val_fraction']}, test {d['test_fraction']})"}[d["split"]]
    lines = [f"- Data set: `{d['dataset']}` at `{d['root']}` (tiles {d['tile_size']} px every {d['tile_stride']} px); "
             f"split {split}; tiles never cross splits within a slide.",
             f"- Stain normalisation: {cfg['stain']['method']}; augmentation and sampling: see `config.json`."]
    train = metrics.get("train_data")
    if train:
        share = ", ".join(f"{k} {_pct(v)}" for k, v in train["pixel_fraction"].items())
        lines.append(f"- Training split: {train['n_tiles']} tiles; pixel share {share}.")
    for s in ("val", "test"):
        if s in metrics:
            lines.append(f"- {s}: {metrics[s].get('n_images', '?')} images.")
    return lines


def _how_to_load(info: dict) -> list[str]:
    build = info["model"]["sam2_build"]
    lines = ["```python", "import sam_histo", "r = sam_histo.load_release(\"THIS_FOLDER\")   # verifies every sha256",
             "# r.model (SamHisto), r.classes, r.config, r.metrics, r.clip_head", "```", "",
             "```bash", "sam-histo predict --release THIS_FOLDER --input images/ --out predictions/ --probs", "```", ""]
    if build.get("config_file"):
        lines += ["With sam2 alone (`model.safetensors` holds the SAM2Base state dict in the official key layout):",
                  "", "```python", "import os, tempfile", "import torch", "from safetensors.torch import load_file",
                  "from sam2.build_sam import build_sam2",
                  f"overrides = {json.dumps(build['hydra_overrides_extra'])}",
                  "# sam2 reads .pt; write it outside this folder so that SHA256SUMS stays valid",
                  "pt = os.path.join(tempfile.gettempdir(), \"sam2_model.pt\")",
                  "torch.save({\"model\": load_file(\"model.safetensors\")}, pt)",
                  f"sam = build_sam2(\"{build['config_file']}\", pt, device=\"cpu\",",
                  "                 hydra_overrides_extra=overrides)", "```"]
    else:
        lines.append(f"sam2's `build_sam2` cannot build this architecture: {build.get('reason')}")
    return lines


def render_card(info: dict, classes: dict, metrics: dict) -> str:
    """Markdown model card. info: config.json; classes: classes.json; metrics: metrics.json of the bundle."""
    cfg, model = info["config"], info["model"]
    base = info["base_checkpoint"]
    base_text = (f"`{base['name']}` (sha256 `{base['sha256']}`)" if base.get("sha256") else
                 f"`{base['name']}` ({base.get('reason')})" if base.get("name") else base.get("reason"))
    ignore = classes.get("ignore_index")
    lines = [f"# {info['name']}: SAM2 fine-tuned with sam_histo", "",
             f"SAM2 `{model['canonical_arch']}` at {model['image_size']} px"
             f"{_resolution(model.get('target_mpp'))}, {model['mode']} mode"
             f"{', class-token head' if info['files']['semantic_head'] else ''}"
             f"{', tuned CLIP head' if info['files']['clip_head'] else ''}; {model['parameters']:,} parameters. "
             f"Released checkpoint: {info['released_checkpoint']['label']}. Base checkpoint: {base_text}."
             + (f" LoRA adapters (rank {info['lora_merged']['rank']}, alpha {info['lora_merged']['alpha']:g}, on "
                f"{', '.join(info['lora_merged']['targets'])}) are merged into the weights."
                if info.get("lora_merged") else ""), "",
             "Classes (id: name): " + ", ".join(f"{i}: {n}" for i, n in zip(classes["ids"], classes["names"]))
             + (f"; id {ignore} ({classes['names'][ignore]}) is the ignore index, never predicted."
                if ignore is not None else "."),
             "", "## Intended use", "",
             "Research on tissue segmentation: comparing methods, pre-annotating regions for a pathologist to "
             "correct, and reproducing the table below. **Not for diagnosis** or any clinical decision; it has not "
             "been validated on patients, scanners or staining protocols beyond its training data.", "",
             "## Training data and split", "", *_data_section(cfg, metrics), "",
             "## Per-class results", ""]
    if not metrics.get("for_released_checkpoint", True):
        lines += [f"**Note:** {metrics.get('note')}", ""]
    for split in ("val", "test"):
        if split in metrics:
            lines += per_class_table(metrics[split], split) + [""]
    if not any(s in metrics for s in ("val", "test")):
        lines += ["No evaluation of this checkpoint is included.", ""]
    lines += ["## Limitations", "",
              "- Stain and scanner shift: colours, magnification and scanners other than the training data's lower "
              "the scores, often most for the rare classes; check them on your own labelled tiles first.",
              "- Small or synthetic data: the numbers above come from the splits named there; with few slides they "
              "have wide confidence intervals, and a model trained on synthetic tiles says nothing about real tissue.",
              "- Rare classes decide success: read the per-class rows, not the macro mean alone.",
              "", "## Provenance", "",
              f"- sam_histo {info['versions']['sam_histo']}, git commit {info['git'].get('commit') or 'unknown'}"
              f"{' (with uncommitted changes)' if info['git'].get('dirty') else ''}; sam2 {info['versions']['sam2']}, "
              f"open_clip {info['versions']['open_clip_torch']}, torch {info['versions']['torch']}.",
              f"- Prompt file: {info['prompts'].get('source') or info['prompts'].get('reason')}"
              + (f" (sha256 of its canonical JSON `{info['prompts']['sha256']}`)"
                 if info["prompts"].get("sha256") else ""),
              f"- Metrics source: {metrics.get('source', 'none')}.",
              "- Every file's sha256 is in `SHA256SUMS` (`sha256sum -c SHA256SUMS`).", "",
              "## How to load", "", *_how_to_load(info), ""]
    return "\n".join(lines)


def _resolution(target_mpp) -> str:
    if target_mpp is None:
        return " (images used at their own resolution)"
    return (f" working at {target_mpp} um/px (predict resamples each image of known resolution to it and the "
            "outputs back)")
