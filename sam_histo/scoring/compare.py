"""Markdown that compares a fine-tuned model with the weights it started from.

``verdict`` is the line a final report opens with (did fine-tuning beat the start on val?),
``start_vs_best`` the per-class table start / best / difference of one split, and ``wise_table`` the
validation of each WiSE-FT mixing weight. Inputs are metrics JSON of ``Evaluator.result``.
"""
from __future__ import annotations

from typing import Optional, Sequence


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _name(metric: str) -> str:
    return {"dice": "Dice", "iou": "IoU"}.get(metric, metric)


def _sel(m: dict) -> dict:
    """The macro scores that choose checkpoints: over the foreground classes when there is a background."""
    fg = m.get("foreground")
    return fg["macro"] if fg else m["macro"]


def _diff(a, b) -> str:
    return "n/a" if a is None or b is None else f"{b - a:+.3f}"


def verdict(start: Optional[float], best: Optional[float], best_epoch, tuned: Optional[tuple],
            metric: str = "dice", alpha: Optional[float] = None) -> str:
    """One sentence. start/best: the val macro ``metric`` of the start and of checkpoints/best;
    best_epoch: "start" or an epoch; tuned: (epoch, score) of the best fine-tuned epoch or None."""
    tuned_text = f"best epoch {tuned[0]}: {_f(tuned[1])}" if tuned else "no fine-tuned epoch was validated"
    if best_epoch == "start":
        return (f"**fine-tuning did not beat the starting weights on val (start {_f(start)}, {tuned_text}); "
                f"checkpoints/best is the start.** (val macro {_name(metric)})")
    mix = f", WiSE-FT alpha {alpha:g}" if alpha is not None and alpha != 1.0 else ""
    return (f"fine-tuning beat the starting weights on val (start {_f(start)}, {tuned_text}; checkpoints/best "
            f"{_f(best)}{mix}; val macro {_name(metric)}).")


def start_vs_best(start: dict, best: dict, split: str, tuned: Optional[tuple] = None) -> list[str]:
    """Per-class Dice (and the macro averages) of the start and of the best weights on one split.
    tuned: (epoch, val record of metrics.jsonl) of the best fine-tuned epoch, shown when best is the start."""
    extra = f" epoch {tuned[0]} (not kept) |" if tuned else ""
    lines = [f"## Start vs best on {split} (same prompts and protocol)", "",
             f"| class | start Dice | best Dice | difference |{extra}", "|---|---:|---:|---:|" + ("---:|" if tuned else "")]
    for name, row in best["per_class"].items():
        a = (start["per_class"].get(name) or {}).get("dice")
        b = row.get("dice")
        t = f" {_f((tuned[1]['per_class'].get(name) or {}).get('dice'))} |" if tuned else ""
        lines.append(f"| {name} | {_f(a)} | {_f(b)} | {_diff(a, b)} |{t}")
    fg = " (foreground)" if best.get("foreground") else ""
    for key in ("dice", "iou"):
        a, b = _sel(start).get(key), _sel(best).get(key)
        t = f" {_f((tuned[1].get('selection') or tuned[1]['macro']).get(key))} |" if tuned else ""
        lines.append(f"| **macro {_name(key)}{fg}** | {_f(a)} | {_f(b)} | {_diff(a, b)} |{t}")
    return lines + [""]


def wise_table(rows: Sequence[tuple[float, dict]], chosen: Optional[float], metric: str = "dice") -> list[str]:
    """rows: (alpha, val metrics) in order; chosen: the alpha kept as checkpoints/best."""
    if not rows:
        return []
    names = list(rows[0][1]["per_class"])
    lines = ["## WiSE-FT: (1 - alpha) * start + alpha * best, on val", "",
             "| alpha | macro Dice | macro IoU | " + " | ".join(names) + " |",
             "|---:|---:|---:|" + "---:|" * len(names)]
    for alpha, m in rows:
        mark = " (kept)" if chosen is not None and alpha == chosen else ""
        cells = [_f((m["per_class"].get(n) or {}).get("dice")) for n in names]
        lines.append(f"| {alpha:g}{mark} | {_f(_sel(m).get('dice'))} | {_f(_sel(m).get('iou'))} | "
                     + " | ".join(cells) + " |")
    fg = " over the foreground classes" if rows[0][1].get("foreground") else ""
    return lines + ["", f"The kept alpha has the highest val macro {_name(metric)}{fg} (ties: the first listed).", ""]


def prepend(report_path, lines: list[str]) -> None:
    """Put ``lines`` before the text of an existing report.md."""
    text = report_path.read_text()
    report_path.write_text("\n".join(lines).rstrip("\n") + "\n\n" + text)
