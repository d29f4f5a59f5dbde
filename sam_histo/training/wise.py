"""Weight-space ensembling of the start and the best weights (WiSE-FT, Wortsman et al. 2022).

``mix_state(start, best, a)`` is ``(1 - a) * start + a * best`` for every floating tensor both have;
a = 0 returns the start tensors and a = 1 the best ones bit for bit (no arithmetic), other tensors
(integer buffers, keys only one side has) come from best. LoRA factors: the start's ``lora_B`` is zero and
the base weights are frozen, so mixing ``lora_B`` and keeping the best ``lora_A`` gives exactly
``W0 + a * B A``, the mix of the merged weights.

``apply_wise(run)`` validates each ``train.wise_alphas`` mix on val after training and keeps the best as
``checkpoints/best`` (``wise_alpha`` in its state.json); the start's val metrics are reused for a = 0.
"""
from __future__ import annotations

from typing import Optional

from sam_histo.training import checkpoint as ck
from sam_histo.training.baseline import START, read_json, val_metrics


def mix_state(start: dict, best: dict, alpha: float) -> dict:
    """The WiSE-FT mix of two state dicts (see the module docstring)."""
    alpha = float(alpha)
    out = {}
    for key, b in best.items():
        s = start.get(key)
        if alpha == 1.0 or s is None or not b.is_floating_point() or s.shape != b.shape or ".lora_A." in key:
            out[key] = b.clone()
        elif alpha == 0.0:
            out[key] = s.clone()
        else:
            out[key] = ((1.0 - alpha) * s.double() + alpha * b.double()).to(b.dtype)
    return out


def apply_wise(run) -> Optional[dict]:
    """Validate each alpha, keep the best mix as checkpoints/best; returns {"rows", "chosen"} or None."""
    from safetensors.torch import load_file

    from sam_histo.eval.validator import selection_scores

    cfg, acc, root = run.cfg, run.accelerator, run.run_dir / ck.CKPT_DIR
    alphas = [float(a) for a in cfg.train.wise_alphas]
    acc.wait_for_everyone()
    if not alphas or not (root / START / "model.safetensors").is_file() or not (root / "best" / "state.json").is_file():
        return None
    best_state = ck.read_state(root / "best")
    if best_state.get("epoch") == START or best_state.get("metric") is None:
        return None  # nothing to mix: best is the start, or there is no validation to choose by
    start_sd, best_sd = load_file(str(root / START / "model.safetensors")), load_file(str(root / "best" / "model.safetensors"))
    start_val = read_json(run.run_dir / "eval" / START / "metrics.json")
    metric = cfg.train.early_stop.metric
    rows = []
    for alpha in alphas:
        if alpha == 0.0 and start_val is not None:
            rows.append((alpha, start_val))
            continue
        run.model.load_state_dict(mix_state(start_sd, best_sd, alpha), strict=True)
        m = val_metrics(run, f"WiSE-FT alpha {alpha:g}")
        rows.append((alpha, m))
        acc.print(f"WiSE-FT alpha {alpha:g}: val macro {metric} {_fmt(selection_scores(m).get(metric))}")
    scores = [selection_scores(m).get(metric) for _, m in rows]
    chosen = rows[max(range(len(rows)), key=lambda i: float("-inf") if scores[i] is None else scores[i])][0]
    state = {**best_state, "wise_alpha": chosen, "wise_of_epoch": best_state.get("epoch"),
             "value": scores[alphas.index(chosen)]}
    if chosen == 0.0:
        state["epoch"] = START
        run.state.best_epoch = START
    ck.save_best(acc, run.run_dir, mix_state(start_sd, best_sd, chosen), state)
    run.state.best = state["value"]
    acc.wait_for_everyone()
    run.jsonl.write({"event": "wise", "alphas": alphas, "scores": scores, "chosen": chosen, "metric": metric})
    return {"rows": rows, "chosen": chosen}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"

