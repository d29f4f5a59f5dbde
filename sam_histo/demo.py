"""`sam-histo demo [--out DIR]`: the whole job on synthetic data (configs/demo.yaml).

Writes synthetic BCSS-layout data under ``DIR/data``, prints the class statistics of the training
split, trains the small random-init SAM2 through two unfreeze phases, validates per class (with a tumour
heatmap threshold), and leaves the run folder ``DIR`` with the final report (``eval/val/report.md``,
``metrics.json``, a confusion matrix and overlays). It then releases the best checkpoint to
``DIR/release`` and predicts a held-out synthetic ROI into ``DIR/predictions``. Runs in well under a
minute on 2 CPU cores.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from sam_histo.config.argv import first_paragraph


def main(argv: list[str] | None = None) -> int:
    from sam_histo.config import load_config
    from sam_histo.config.argv import add_overrides_help, parse_with_overrides
    from sam_histo.data.dataset import build_dataset
    from sam_histo.data.sampling import compute_stats, format_table, report
    from sam_histo.data.synth.layouts import write_bcss
    from sam_histo.training.loop import train

    ap = argparse.ArgumentParser(prog="sam-histo demo", description=first_paragraph(__doc__))
    ap.add_argument("--out", default="demo_run", help="run folder (created); data goes to OUT/data")
    ap.add_argument("--n", type=int, default=8, help="synthetic ROIs to write")
    ap.add_argument("--seed", type=int, default=0)
    args = parse_with_overrides(add_overrides_help(ap, "train.epochs=4 (of configs/demo.yaml)"), argv)
    out = Path(args.out)
    data = out / "data"
    # The validator also chooses a tumour heatmap threshold, which predict reuses at the end.
    cfg = load_config("demo", [f"data.root={data}", f"output_dir={out.parent}", f"name={out.name}",
                               f"seed={args.seed}", "heatmap.class_name=tumor", "heatmap.min_size=16",
                               *args.overrides])
    if not (data / "images").is_dir():
        print(f"[demo] writing {args.n} synthetic BCSS ROIs to {data}")
        write_bcss(data, args.n, args.seed)
    stats = compute_stats(build_dataset(cfg.data, "train"), out / "class_stats.json")
    print(format_table(report(stats, cfg.sampling), "[demo] class statistics of the train split"))
    result = train(cfg)
    report_path = out / "eval" / "val" / "report.md"
    best = "n/a" if result["best"] is None else f"{result['best']:.3f}"
    print(f"[demo] {result['status']}: best val macro Dice {best} at epoch {result['best_epoch']} "
          "(random-init tiny model on synthetic tiles: the numbers show the pipeline, not SAM2)")
    print(f"[demo] run folder {out}: config.yaml, metrics.jsonl, checkpoints/, eval/val/ "
          f"(report.md, metrics.json, confusion_matrix.png, overlays)\n[demo] report: {report_path}")
    release_and_predict(out, args.seed)
    return 0


def release_and_predict(out: Path, seed: int) -> None:
    """Release the run's best checkpoint and predict one held-out synthetic ROI (a seed the training data
    never used), larger than the model input, with probabilities and the tumour heatmap."""
    from sam_histo.data.synth.layouts import write_bcss
    from sam_histo.release.predict import main as predict
    from sam_histo.release.build import make_release

    bundle, digest, outcome = make_release(out, out / "release", force=True)
    print(f"[demo] release {bundle} ({outcome}; sha256 of SHA256SUMS {digest}): model.safetensors, "
          "semantic_head.safetensors, config.json, classes.json, prompts.json, metrics.json, README.md")
    heldout = out / "heldout"
    if not (heldout / "images").is_dir():
        write_bcss(heldout, 1, seed + 1000)
    pred = out / "predictions"
    predict(["--release", str(bundle), "--input", str(heldout / "images"), "--out", str(pred), "--probs",
             "--heatmap-class", "tumor"])
    print(f"[demo] held-out tile {heldout / 'images'} -> {pred}: labels/, overlays/, probs/, rle/, heatmaps/, "
          "heatmap.json")
