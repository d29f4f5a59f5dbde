"""The decoding sweep: every setting of the ``em.sweep`` grid decoded from cached candidates, linked in 3-D
and scored against the labels; the setting with the lowest adapted Rand error wins (pure numpy).

The network runs once (the candidates keep their logits down to the loosest threshold of the grid); each
setting then costs only decoding and the overlap linker. The sweep always links by overlap: the video
linker would run the network again for every setting. Ties on the error go to the higher matched F1, then
to the earlier setting of the grid.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sam_histo.em.decode import Candidates, DecodeParams, decode, mask_stats
from sam_histo.em.link import link_overlap
from sam_histo.scoring.instances import instance_metrics

SWEPT = ("mask_threshold", "iou_thresh", "stability_thresh", "min_size")
METRICS = ("adapted_rand_error", "precision", "recall", "f1_at_0.5", "n_gt", "n_pred")


@dataclass
class SweepResult:
    """rows: one dict per setting (the SWEPT keys, then the METRICS), in grid order; best: index into rows."""

    rows: list[dict]
    best: int
    split: Optional[str] = None
    checkpoint: Optional[str] = None

    @property
    def best_setting(self) -> dict:
        return {k: self.rows[self.best][k] for k in SWEPT}


def grid(sweep_cfg) -> list[dict]:
    """Every combination of the ``em.sweep`` lists (EmSweepConfig), in nested-loop order."""
    values = [list(getattr(sweep_cfg, k)) for k in SWEPT]
    return [dict(zip(SWEPT, combo)) for combo in itertools.product(*values)]


def decode_volume(cands: list[Candidates], params: DecodeParams, stats=None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-slice instance maps (Z, H, W) int32 and each slice's scores; ``stats[z]`` as in ``decode``."""
    maps, scores = [], []
    for z, c in enumerate(cands):
        labels, s = decode(c, params, None if stats is None else stats[z])
        maps.append(labels)
        scores.append(s)
    return np.stack(maps), scores


def _key(row: dict, order: int) -> tuple:
    are, f1 = row["adapted_rand_error"], row["f1_at_0.5"]
    return (are if are is not None and math.isfinite(are) else math.inf,
            -(f1 if f1 is not None and math.isfinite(f1) else -1.0), order)


def run_sweep(cands: list[Candidates], gt: np.ndarray, em, progress: bool = True) -> SweepResult:
    """Score every setting of ``em.sweep`` (other decoding keys and the link keys from ``em``).

    cands: one Candidates per slice of the volume; gt: (Z, H, W) instance labels of the same slices.
    """
    from tqdm import tqdm

    gt = np.asarray(gt)
    if gt.shape[0] != len(cands):
        raise ValueError(f"{len(cands)} slices of candidates for a label volume of {gt.shape[0]} slices")
    settings = grid(em.sweep)
    stats = {t: [mask_stats(c, t, em.stability_offset) for c in cands] for t in em.sweep.mask_threshold}
    rows = []
    for setting in tqdm(settings, desc="decoding sweep", disable=not progress, leave=False):
        params = DecodeParams.from_config(em, **setting)
        slices, _ = decode_volume(cands, params, stats[setting["mask_threshold"]])
        pred = link_overlap(slices, em.link_overlap, em.link_gap, em.min_voxels)
        m = instance_metrics(gt, pred)
        rows.append({**setting, **{k: m[k] for k in METRICS}})
    best = min(range(len(rows)), key=lambda i: _key(rows[i], i))
    return SweepResult(rows, best)


def _fmt(x) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.4f}" if abs(x) < 10 else f"{x:g}"
    return str(x)


def sweep_markdown(result: SweepResult) -> str:
    """The table, best (lowest adapted Rand error) first, the winner in bold."""
    where = f"split `{result.split or 'unnamed'}`, checkpoint `{result.checkpoint or 'not given'}`"
    lines = [f"# Decoding sweep ({where})", "",
             f"{len(result.rows)} settings, linked in 3-D by overlap, scored on the whole volume of the split "
             "(pooled over the volume, not per slice). Rand precision falls with merges, recall with splits.",
             "", "| " + " | ".join(SWEPT + METRICS) + " |", "|" + "---:|" * (len(SWEPT) + len(METRICS))]
    order = sorted(range(len(result.rows)), key=lambda i: _key(result.rows[i], i))
    for i in order:
        cells = [_fmt(result.rows[i][k]) for k in SWEPT + METRICS]
        if i == result.best:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    best = ", ".join(f"em.{k}={v}" for k, v in result.best_setting.items())
    return "\n".join(lines + ["", f"Best: {best}", ""])


def write_sweep(result: SweepResult, out_dir) -> dict[str, Path]:
    """sweep.json ({"split", "checkpoint", "best", "rows"}; NaN -> null) and sweep.md in ``out_dir``."""
    from sam_histo.scoring.metrics_json import jsonable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"split": result.split, "checkpoint": result.checkpoint, "swept": list(SWEPT),
               "best": jsonable(result.rows[result.best]), "rows": jsonable(result.rows)}
    paths = {"json": out / "sweep.json", "markdown": out / "sweep.md"}
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(sweep_markdown(result))
    return paths
