"""`sam-histo em`: 3-D vesicle instances from a prompted SAM2 checkpoint.

    sam-histo em predict --config configs/vesicle.yaml --checkpoint PATH --out DIR [--split val] [k=v ...]
    sam-histo em predict --config configs/vesicle.yaml --checkpoint PATH --out DIR --volume stack.tif
    sam-histo em sweep   --config configs/vesicle.yaml --checkpoint PATH --out DIR [--split val] [k=v ...]

predict: the split's volume (``data.*``, default split ``eval.split``) -> DIR/instances/labels.h5 (dataset
``main``, (Z, Y, X) uint32 instance ids; its own folder, so ``sam-histo score --instances --pred DIR/instances``
reads it) plus metrics.json and report.md in DIR against the split's labels; with --volume, any HDF5
(dataset --key) or TIFF stack, labels only. sweep: the ``em.sweep`` grid on the split -> DIR/sweep.json
and DIR/sweep.md, and the best setting printed as overrides. --checkpoint: a .pt / .safetensors file or a
checkpoint folder holding model.safetensors (default: ``model.checkpoint`` of the config).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from sam_histo.config.argv import add_overrides_help, parse_with_overrides


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam-histo em", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    for name, text in (("predict", "predict a volume's instances (and score them)"),
                       ("sweep", "decoding threshold sweep on a split")):
        s = sub.add_parser(name, help=text, description=f"sam-histo em {name}: {text}.")
        s.add_argument("--config", required=True, help="YAML config (e.g. configs/vesicle.yaml)")
        s.add_argument("--checkpoint", default=None, help="weights file or checkpoint folder")
        s.add_argument("--out", required=True, type=Path, help="output folder")
        s.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                       help="split of data.root to use (default eval.split)")
        if name == "predict":
            s.add_argument("--volume", type=Path, default=None, help="a (Z, Y, X) HDF5 or TIFF stack to predict")
            s.add_argument("--key", default="main", help="HDF5 dataset of --volume (default main)")
        add_overrides_help(s, "em.min_size=15")
    return p


def _load(args):
    from sam_histo.config import load_config
    from sam_histo.models.load import resolve_model_file
    from sam_histo.models.sam import build_sam

    cfg = load_config(args.config, args.overrides)
    if args.checkpoint:
        cfg.model = dataclasses.replace(cfg.model, checkpoint=str(resolve_model_file(args.checkpoint)))
    return cfg, build_sam(cfg.model)


def _adapter(cfg, split: str):
    from sam_histo.config.datasets import dataset_kind
    from sam_histo.data.dataset import build_dataset
    from sam_histo.data.types import DataError

    if not dataset_kind(cfg.data.dataset).volume:
        raise DataError(f"sam-histo em works on vesicle volumes; data.dataset is {cfg.data.dataset!r} "
                        "(use --config configs/vesicle.yaml)")
    adapter = build_dataset(cfg.data, split)
    if not len(adapter):
        raise DataError(f"split {split} has no slices (data.val_fraction={cfg.data.val_fraction}, "
                        f"data.test_fraction={cfg.data.test_fraction}): give --split all or a fraction above 0")
    return adapter


def write_labels(labels: np.ndarray, path: Path) -> Path:
    """An instance volume as HDF5 dataset ``main`` (uint32), written atomically."""
    import h5py

    from sam_histo.files import atomic_path

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("main", data=labels.astype(np.uint32), compression="gzip", compression_opts=1)
    return path


def _predict(args, cfg, model) -> int:
    import time

    from sam_histo.em.volume import CLASSES, evaluate_prediction, predict_volume
    from sam_histo.scoring.report import write_report

    checkpoint = cfg.model.checkpoint or "random initialisation"
    if args.volume is not None:
        from sam_histo.data.vesicle import read_volume, to_uint8

        labels = predict_volume(model, to_uint8(read_volume(args.volume, args.key)), cfg.em, model_cfg=cfg.model)
        path = write_labels(labels, args.out / "instances" / "labels.h5")
        print(f"{int(labels.max())} vesicles in {args.volume}; labels {path}")
        return 0
    adapter = _adapter(cfg, args.split or cfg.eval.split)
    start = time.perf_counter()
    labels = predict_volume(model, adapter.volume(), cfg.em, model_cfg=cfg.model)
    metrics = evaluate_prediction(labels, adapter, cfg.em, checkpoint=checkpoint, seconds=time.perf_counter() - start)
    path = write_labels(labels, args.out / "instances" / "labels.h5")
    write_report(metrics, args.out, CLASSES)
    inst = metrics["instances"]
    f = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731  (undefined without predicted vesicles)
    print(f"split {adapter.split}: adapted Rand error {f(inst['adapted_rand_error'])} (precision "
          f"{f(inst['precision'])}, recall {f(inst['recall'])}), F1@0.5 {f(inst['f1_at_0.5'])}, "
          f"{inst['n_pred']} predicted / {inst['n_gt']} true vesicles; labels {path}, report {args.out / 'report.md'}")
    return 0


def _sweep(args, cfg, model) -> int:
    from sam_histo.em.sweep import write_sweep
    from sam_histo.em.volume import sweep_volume

    adapter = _adapter(cfg, args.split or cfg.eval.split)
    result = sweep_volume(model, adapter, cfg.em, checkpoint=cfg.model.checkpoint or "random initialisation")
    paths = write_sweep(result, args.out)
    best = result.rows[result.best]
    overrides = " ".join(f"em.{k}={v}" for k, v in result.best_setting.items())
    print(f"{len(result.rows)} settings on split {adapter.split}; best adapted Rand error "
          f"{best['adapted_rand_error']:.4f} (F1@0.5 {best['f1_at_0.5']:.4f}) with {overrides}; "
          f"table {paths['markdown']}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_with_overrides(_parser(), argv)
    cfg, model = _load(args)
    return _predict(args, cfg, model) if args.action == "predict" else _sweep(args, cfg, model)
