"""The prompt-protocol table: one checkpoint scored under each prompt protocol, in one run.

`sam-histo validate --protocols centroid,points5,box,box+neg,box+neg+tta` (or ``eval.protocols``). Every
protocol prompts the same objects of the same eval-transformed tiles (data/protocols.py: a pure function
of ``eval.prompt_seed`` and the sample index), decodes them with the SAM2 prompted path, pastes the class
map as prompted validation does and scores it per class. ``+tta`` averages the logits of the flips and
rot90 of image and prompts (infer/tta.py). Rows = protocols; columns = per-class Dice, macro Dice, macro IoU.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from sam_histo.config.rules import parse_protocols
from sam_histo.data.prompts import prompt_rng
from sam_histo.data.protocols import object_prompts, protocol_prompts
from sam_histo.infer.image import paste_masks
from sam_histo.infer.tta import TTA_VIEWS, view_logits
from sam_histo.scoring.evaluator import Evaluator


def protocol_preds(model, image, op, protocols: list[tuple[str, bool]]) -> dict:
    """{(base, tta): (N, H, W) logits} for one image; the plain and the TTA runs share the identity view."""
    bases = sorted({b for b, _ in protocols})
    sets = {b: protocol_prompts(op, b) for b in bases}
    plain = view_logits(model, image, sets, views=("identity",))
    out = {(b, False): plain[b] for b in bases}
    tta_bases = sorted({b for b, t in protocols if t})
    if tta_bases:
        rest = view_logits(model, image, {b: sets[b] for b in tta_bases}, views=TTA_VIEWS[1:])
        n = len(TTA_VIEWS)
        for b in tta_bases:
            out[(b, True)] = (plain[b] + rest[b] * (n - 1)) / n
    return out


def run_protocols(predictor, names: list[str], progress: bool = True) -> dict:
    """{protocol name: metrics JSON} over the predictor's split (SplitPredictor: adapter, eval transform,
    validation prompt config, unassigned id)."""
    protocols = parse_protocols(names, key="--protocols")
    model, adapter, setup = predictor.model, predictor.adapter, predictor.setup
    evs = {p: Evaluator(adapter.classes) for p in protocols}
    was_training = model.training
    model.eval()
    try:
        for i in tqdm(range(len(adapter)), desc=f"protocols {adapter.split}", unit="tile", disable=not progress,
                      leave=False):
            sample = predictor.load(i)
            op = object_prompts(sample.mask, adapter.classes, setup.prompts, prompt_rng(setup.eval.prompt_seed, i),
                                instances=sample.instances)
            for p, logits in protocol_preds(model, sample.image, op, protocols).items():
                if p in evs:
                    pred = paste_masks(logits, op.class_ids, predictor.unassigned)
                    evs[p].add(pred, sample.mask, meta={**sample.meta, "index": i}, key=i)
    finally:
        model.train(was_training)
    return {name: evs[p].result(split=adapter.split) for name, p in zip(names, protocols)}


def protocol_table(results: dict, split: str, checkpoint: str) -> tuple[str, dict]:
    """(markdown, JSON) of the table: rows = protocols, columns = per-class Dice, macro Dice, macro IoU."""
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    names = list(next(iter(results.values()))["per_class"]) if results else []
    rows = {p: {"per_class_dice": {n: m["per_class"][n]["dice"] for n in names}, "macro_dice": m["macro"]["dice"],
                "macro_iou": m["macro"]["iou"], "macro_over": m.get("macro_over")} for p, m in results.items()}
    lines = [f"# Prompt protocols on split `{split}`", "", f"Checkpoint: {checkpoint}. Same objects and prompts "
             "for every protocol; Dice per class over the split (one confusion matrix), macro over the classes "
             "present.", "", "| protocol | " + " | ".join(names) + " | macro Dice | macro IoU |",
             "|---|" + "---:|" * (len(names) + 2)]
    for p, r in rows.items():
        cells = [fmt(r["per_class_dice"][n]) for n in names]
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {fmt(r['macro_dice'])} | {fmt(r['macro_iou'])} |")
    return "\n".join(lines) + "\n", {"split": split, "checkpoint": checkpoint, "classes": names, "protocols": rows}


def write_protocol_table(results: dict, out_dir: Optional[Path], split: str, checkpoint: str) -> str:
    """Write protocols.md and protocols.json into ``out_dir`` (when given); returns the markdown."""
    text, table = protocol_table(results, split, checkpoint)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "protocols.md").write_text(text)
        (out_dir / "protocols.json").write_text(json.dumps(table, indent=1) + "\n")
    return text
