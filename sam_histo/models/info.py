"""`sam-histo model info --config CFG [k=v ...] [--json]`: the Hiera stage table of the configured model and
the trainable parameters in each phase of ``train.phases``.

Builds the model without weights (``model.checkpoint`` is ignored: counts do not depend on it). The
class-token head is attached in semantic mode with one class per id: ``data.classes`` plus the ignore id
for BCSS (its id 0 is outside_roi); ``--num-classes`` overrides that.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from sam_histo.config import load_config
from sam_histo.config.argv import add_overrides_help, parse_with_overrides
from sam_histo.models import stages as st
from sam_histo.config.argv import first_paragraph

_GROUP_ORDER = ("neck", "decoder", "semantic_head", "prompt_encoder", "memory")


def _blocks(ends: list[int]) -> list[str]:
    starts = [0] + [e + 1 for e in ends[:-1]]
    return [f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts, ends)]


def _m(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10_000 else str(n)


def _default_classes(cfg) -> int | None:
    """The head size the trainer builds (training.build.build_model): the data's class spec, semantic only."""
    if cfg.model.mode != "semantic":
        return None
    from sam_histo.data.dataset import class_spec

    return class_spec(cfg.data).num_classes


def describe(cfg, num_classes: int | None = None) -> dict:
    """Stage table and per-phase trainable counts as a JSON-able dict."""
    from sam_histo.models.sam import build_sam  # the heavy import only when a model is built

    mcfg = dataclasses.replace(cfg.model, checkpoint=None)
    model = build_sam(mcfg, num_classes)
    ends = st.stage_ends(model)
    counts = st.trainable_counts(model)
    table = [{"group": f"stage {i}", "blocks": b, "params": counts[i][1]} for i, b in enumerate(_blocks(ends))]
    table += [{"group": g, "blocks": "", "params": counts[g][1]} for g in _GROUP_ORDER if g in counts]
    phases = []
    for i, phase in enumerate(cfg.train.phases):
        end = cfg.train.phases[i + 1].start_epoch - 1 if i + 1 < len(cfg.train.phases) else cfg.train.epochs - 1
        c = st.set_trainable(model, phase.stages, train_decoder=cfg.train.train_decoder,
                             train_prompt_encoder=cfg.train.train_prompt_encoder, mode=cfg.model.mode)
        phases.append({
            "phase": i, "epochs": f"{phase.start_epoch}-{end}", "stages": phase.stages, "lr": phase.lr,
            "trainable": sum(t for t, _ in c.values()),
            "by_group": {(f"stage {k}" if isinstance(k, int) else k): t for k, (t, _) in c.items() if t},
        })
    total = sum(p.numel() for p in model.parameters())
    return {"arch": model.arch, "image_size": model.image_size, "mode": cfg.model.mode, "num_classes": num_classes,
            "stage_ends": ends, "groups": table, "total": total, "phases": phases}


def format_info(info: dict) -> str:
    lines = [f"model {info['arch']}  image {info['image_size']} px  mode {info['mode']}"
             + (f"  classes {info['num_classes']}" if info["num_classes"] else ""),
             f"Hiera stage_ends {info['stage_ends']} (patch and position embeddings in stage 0)", "",
             f"{'group':<16}{'blocks':>8}{'params':>14}"]
    for row in info["groups"]:
        note = "  (always frozen)" if row["group"] == "memory" else ""
        lines.append(f"{row['group']:<16}{row['blocks']:>8}{_m(row['params']):>14}{note}")
    lines += [f"{'total':<16}{'':>8}{_m(info['total']):>14}", "",
              f"{'phase':<7}{'epochs':<10}{'stages':<14}{'lr':>9}{'trainable':>14}  groups"]
    for p in info["phases"]:
        groups = ", ".join(f"{k}" for k in p["by_group"])
        lines.append(f"{p['phase']:<7}{p['epochs']:<10}{str(p['stages']):<14}{p['lr']:>9.2g}"
                     f"{_m(p['trainable']):>14}  {groups}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if argv and argv[0] == "info":  # `sam-histo model info ...`
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="sam-histo model info", description=first_paragraph(__doc__))
    p.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("--num-classes", type=int, default=None, help="head size (default from data.classes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = parse_with_overrides(add_overrides_help(p, "model.arch=hiera_s"), argv)
    cfg = load_config(args.config, args.overrides)
    info = describe(cfg, args.num_classes if args.num_classes is not None else _default_classes(cfg))
    print(json.dumps(info) if args.json else format_info(info))
    return 0
