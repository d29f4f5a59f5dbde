"""The starting weights as the baseline every fine-tuned epoch must beat.

Before the first optimizer step ``validate_start`` saves the weights the run starts from
(``checkpoints/start``) and, with ``train.validate_start``, validates them with the very call every later
validation makes (same adapter, prompts, protocol), recorded as epoch "start" in metrics.jsonl, the
trackers and ``eval/start/``. The start is the first best: an epoch becomes ``checkpoints/best`` only by
beating it. ``compare_with_start`` opens the final reports with the verdict and a per-class start / best
table (the test split's start is validated there, at the end).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from sam_histo.training import checkpoint as ck

START = "start"
START_LABEL = "start (the weights before the first step)"


def val_metrics(run, label: str, out_dir: Optional[Path] = None) -> Optional[dict]:
    """Validation of the current weights on val, with the trainer's one protocol (``epoch_metrics``); None
    without a val split."""
    from sam_histo.errors import MissingSplitError
    from sam_histo.eval.validator import epoch_metrics

    acc = run.accelerator
    try:
        if run.val_data is None:  # index the split once, not every epoch
            run.val_data = run.split_data("val")
        return epoch_metrics(run.model, run.cfg, run.val_data, label, acc, acc.is_local_main_process, out_dir=out_dir)
    except MissingSplitError as e:  # no validation split; all else fails
        acc.print(f"no validation ({e}); checkpoints/best follows the last epoch")
        return None


def record_validation(run, epoch, metrics: dict, improved: bool) -> None:
    """One "val" line in metrics.jsonl and the trackers' scalars (epoch may be "start")."""
    from sam_histo.eval.validator import selection_scores

    cfg, acc, state = run.cfg, run.accelerator, run.state
    per_class = {k: {"dice": v["dice"], "recall": v["recall"]} for k, v in metrics["per_class"].items()}
    run.jsonl.write({"event": "val", "epoch": epoch, "step": state.step, "macro": metrics["macro"],
                     "selection": selection_scores(metrics), "micro": metrics["micro"], "per_class": per_class,
                     "best": state.best, "improved": improved})
    if cfg.train.log_with:
        scalars = {f"val/macro_{k}": v for k, v in metrics["macro"].items() if v is not None}
        scalars.update({f"val/dice/{k}": v["dice"] for k, v in per_class.items() if v["dice"] is not None})
        acc.log(scalars, step=state.step)


def validate_start(run) -> Optional[dict]:
    """Save and (``train.validate_start``) validate the starting weights; a fresh run only."""
    from sam_histo.eval.validator import headline, selection_scores

    cfg, acc, state = run.cfg, run.accelerator, run.state
    if state.step > 0 or state.epoch > 0:
        return None
    ck.save_best(acc, run.run_dir, run.model, {"epoch": START, "step": 0}, name=START)
    if not cfg.train.validate_start:
        return None
    metrics = val_metrics(run, START_LABEL, out_dir=run.run_dir / "eval" / START)
    if metrics is None:
        return None
    es = cfg.train.early_stop
    score = selection_scores(metrics)[es.metric]
    state.best = score
    state.best_epoch, state.bad_validations = START, 0
    ck.save_best(acc, run.run_dir, run.model, {"epoch": START, "step": 0, "metric": es.metric, "value": score})
    acc.print(f"start {headline(metrics)}  (the baseline every epoch must beat)")
    record_validation(run, START, metrics, improved=True)
    return metrics


def best_tuned_epoch(run_dir: Path, metric: str) -> Optional[tuple]:
    """(epoch, val macro ``metric``, its metrics.jsonl record) of the best fine-tuned (non-start) validation."""
    path = Path(run_dir) / "metrics.jsonl"
    best = None
    for line in path.read_text().splitlines() if path.is_file() else []:
        rec = json.loads(line)
        if rec.get("event") != "val" or rec.get("epoch") == START:
            continue
        score = (rec.get("selection") or rec.get("macro") or {}).get(metric)
        if score is not None and (best is None or score > best[1]):
            best = (rec["epoch"], score, rec)
    return best


def read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def compare_with_start(run, finals: dict, wise: Optional[dict]) -> Optional[dict]:
    """Open each final report (eval/<split>/report.md) with the verdict and the start / best table.

    finals: split -> metrics of checkpoints/best. The start's val metrics come from eval/start/; its test
    metrics are validated here with the start weights (the model is left with the best weights).
    Returns {"verdict", "start": {split: macro}} or None when the start was not validated."""
    from sam_histo.eval.validator import selection_scores, validate
    from sam_histo.scoring.compare import prepend, start_vs_best, verdict, wise_table

    cfg, acc, root = run.cfg, run.accelerator, run.run_dir
    start_val = read_json(root / "eval" / START / "metrics.json")
    start_dir, best_dir = root / ck.CKPT_DIR / START, root / ck.CKPT_DIR / "best"
    if start_val is None or "val" not in finals or not (start_dir / "model.safetensors").exists():
        return None
    starts = {"val": start_val}
    if "test" in finals:
        ck.load_model_weights(run.model, start_dir)
        starts["test"] = validate(run.model, cfg, "test", checkpoint=START_LABEL, accelerator=acc,
                                  progress=acc.is_local_main_process, adapter=run.split_data("test"))
        ck.load_model_weights(run.model, best_dir)
    metric = cfg.train.early_stop.metric
    alpha = (wise or {}).get("chosen")
    tuned = best_tuned_epoch(root, metric)
    line = verdict(selection_scores(start_val).get(metric), selection_scores(finals["val"]).get(metric),
                   run.state.best_epoch, tuned, metric, alpha)
    if acc.is_main_process:
        for split, best in finals.items():
            report = root / "eval" / split / "report.md"
            if report.is_file() and split in starts:
                val = split == "val"
                shown = (tuned[0], tuned[2]) if val and tuned and run.state.best_epoch == START else None
                extra = wise_table(wise["rows"], alpha, metric) if val and wise and wise.get("rows") else []
                prepend(report, [line, "", *start_vs_best(starts[split], best, split, shown), *extra])
    acc.print(line.replace("**", ""))
    return {"verdict": line.replace("**", ""), "start": {s: selection_scores(m) for s, m in starts.items()}}
