"""`sam-histo score`: per-class metrics of saved label maps from any model against ground truth.

    sam-histo score --pred DIR --gt DIR --classes a,b,c [--ignore-index K] [--instances] --out DIR
                    [--split NAME] [--key main] [--images DIR] [--checkpoint TEXT] [--overlays N]
    sam-histo score --pred DIR --gt BCSS/masks --codes BCSS/gtruth_codes.tsv --grouping bcss --out DIR

With --codes the ground truth holds raw BCSS region codes: --grouping (``bcss``, the training default, or a
YAML file of class -> code names) turns them into class ids (0 = outside_roi, the ignore id; codes in
--ignore-codes, default exclude and undetermined, are ignored too), and --classes defaults to outside_roi
followed by the grouping's classes.

Files are matched by name without extension (``x.png`` in --gt with ``x.png`` or ``x.tif`` in --pred):
single-channel PNG label maps, TIFF (pages = a volume) or HDF5 volumes (dataset --key), or .npy. Every
ground-truth file needs a prediction and every prediction a ground truth; shapes must agree; ids must be in
the class list, except that with two classes a ground truth holding exactly 0 and one other value (0/255
binary masks) reads that value as class 1, as ``data.dataset=folder`` does. With --instances both sides are instance maps (0 = background, each other id one object):
the semantic metrics are those of foreground versus background (two classes) and the instance metrics use
the ids. Writes metrics.json, report.md and figures to --out.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np

from sam_histo.data.io.readers import LABEL_SUFFIXES as SUFFIXES, read_labels
from sam_histo.data.types import ClassSpec, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam-histo score", description=__doc__.split("\n\n")[0])
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps or volumes")
    p.add_argument("--gt", required=True, type=Path, help="folder of ground-truth label maps or volumes")
    p.add_argument("--classes", default=None, help="class names in id order from 0, comma-separated "
                   "(with --codes: outside_roi and the grouping's classes)")
    p.add_argument("--ignore-index", type=int, default=None, help="id dropped from both sides (not a class)")
    p.add_argument("--instances", action="store_true", help="maps are instance labels: add instance metrics")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--split", default=None, help="split name written into the report (e.g. test)")
    p.add_argument("--checkpoint", default=None, help="what produced the predictions (named in the report)")
    p.add_argument("--key", default="main", help="HDF5 dataset key (default: main)")
    p.add_argument("--images", type=Path, default=None, help="optional folder of RGB images for overlays")
    p.add_argument("--overlays", type=int, default=3, help="best and worst images to draw (default 3 each)")
    b = p.add_argument_group("BCSS ground truth with raw region codes")
    b.add_argument("--codes", type=Path, default=None, help="gtruth_codes.tsv of the BCSS release (label, GT_code)")
    b.add_argument("--grouping", default="bcss",
                   help="'bcss' (the default grouping of training) or a YAML file {class: [code names]}")
    b.add_argument("--ignore-codes", default="exclude,undetermined",
                   help="code names scored as nothing, like outside_roi (default exclude,undetermined)")
    return p


def bcss_gt_lut(codes: Path, grouping: str, ignore_codes: str, classes: Optional[str]):
    """(names, lut): the class names (outside_roi first) and the (256,) code -> class id table of --codes."""
    import yaml

    from sam_histo.data.bcss import DEFAULT_CLASSES, OUTSIDE, code_lut, read_code_table

    table = read_code_table(codes)
    if grouping == "bcss":
        groups = {}
    else:
        path = Path(grouping)
        if not path.is_file():
            raise DataError(f"--grouping {grouping!r}: give 'bcss' or a YAML file of class -> code names")
        groups = yaml.safe_load(path.read_text()) or {}
        if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
            raise DataError(f"--grouping {path}: expected a mapping of class name -> list of BCSS code names")
    names = [n.strip() for n in classes.split(",") if n.strip()] if classes else None
    if names and names[0] != OUTSIDE:
        raise DataError(f"--classes with --codes: id 0 must be {OUTSIDE} (the ignore id), got {names[0]!r}")
    trained = names[1:] if names else (list(groups) if groups else DEFAULT_CLASSES)
    ignored = tuple(c.strip() for c in ignore_codes.split(",") if c.strip())
    return (OUTSIDE, *trained), code_lut(table, trained, groups, ignored)


def load_labels(path: Path, key: str = "main") -> np.ndarray:
    """A label map or volume as an integer array (data.readers.read_labels; colour PNGs are refused)."""
    return read_labels(path, key, grey_rgb=False)


def _index(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"--{what} {folder}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in SUFFIXES or not path.is_file():
            continue
        if path.stem in found:
            raise DataError(f"--{what}: {found[path.stem].name} and {path.name} share the name {path.stem!r}; "
                            "keep one file per image")
        found[path.stem] = path
    if not found:
        raise DataError(f"--{what} {folder}: no label files ({', '.join(SUFFIXES)})")
    return found


def match_files(pred_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path]]:
    """(name, prediction, ground truth) for every ground-truth file; DataError on missing or extra files."""
    gt, pred = _index(gt_dir, "gt"), _index(pred_dir, "pred")
    for missing, here, there, what in ((sorted(set(gt) - set(pred)), gt, pred_dir, "no prediction in"),
                                       (sorted(set(pred) - set(gt)), pred, gt_dir, "no ground truth in")):
        if missing:
            names = ", ".join(here[n].name for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(f"{len(missing)} file(s) have {what} {there}: {names} (files are matched by name "
                            "without extension)")
    return [(name, pred[name], gt[name]) for name in sorted(gt)]


def _check_ids(arr: np.ndarray, path: Path, classes: ClassSpec) -> None:
    lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
    if lo < 0 or hi >= classes.num_classes:
        bad = lo if lo < 0 else hi
        raise DataError(f"{path}: label value {bad} is not a class id; --classes names {classes.num_classes} "
                        f"classes, ids 0..{classes.num_classes - 1} ({', '.join(classes.names)})")


def binary_gt_value(pairs, key: str, classes: ClassSpec, instances: bool):
    """The value v of 0/v binary ground truth (e.g. 0/255 nucleus masks) scored as class 1 with two
    classes, as the folder adapter reads it; None when the ground truth holds anything else."""
    from sam_histo.data.folder import binary_value

    if instances or classes.num_classes != 2:
        return None
    seen: set[int] = set()
    for _, _, gp in pairs:
        seen |= set(np.unique(load_labels(gp, key)).tolist())
        if len(seen) > 2:
            return None
    return binary_value(seen, 2)


def _load_pair(name: str, pp: Path, gp: Path, key: str, classes: ClassSpec, instances: bool, lut=None,
               binary=None):
    gt, pred = load_labels(gp, key), load_labels(pp, key)
    if lut is not None:  # raw BCSS codes -> class ids
        unknown = sorted({int(c) for c in np.unique(gt) if not 0 <= c < len(lut) or lut[c] < 0})
        if unknown:
            raise DataError(f"{gp}: codes {unknown} are not in --codes; is this a BCSS mask?")
        gt = lut[gt]
    if binary is not None:
        gt = (gt == binary).astype(np.uint8)
    if gt.shape != pred.shape:
        raise DataError(f"{pp}: shape {pred.shape} differs from the ground truth {gp} shape {gt.shape}")
    if instances:
        return gt, pred
    _check_ids(gt, gp, classes)
    _check_ids(pred, pp, classes)
    return gt, pred


def _load_image(images: Optional[Path], name: str) -> Optional[np.ndarray]:
    if images is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        path = images / f"{name}{suffix}"
        if path.exists():
            from PIL import Image

            with Image.open(path) as im:
                return np.array(im.convert("RGB"))
    return None


def main(argv: Optional[list[str]] = None) -> int:
    from tqdm import tqdm

    from sam_histo.scoring.evaluator import Evaluator
    from sam_histo.scoring.report import write_report

    parser = build_parser()
    args = parser.parse_args(argv)
    lut = None
    if args.codes is not None:
        if args.instances:
            parser.error("--codes maps BCSS region codes: it does not go with --instances")
        names, lut = bcss_gt_lut(args.codes, args.grouping, args.ignore_codes, args.classes)
        args.ignore_index = 0
    elif args.classes is None:
        parser.error("give --classes (class names in id order), or --codes for raw BCSS masks")
    else:
        names = tuple(n.strip() for n in args.classes.split(",") if n.strip())
    if len(set(names)) != len(names) or len(names) < 2:
        parser.error(f"--classes {','.join(names)!r}: give at least two distinct names in id order")
    if args.instances and (len(names) != 2 or args.ignore_index is not None):
        parser.error("--instances scores foreground versus background: give two classes (e.g. "
                     "background,vesicle) and no --ignore-index")
    if args.ignore_index is not None and not 0 <= args.ignore_index < len(names):
        parser.error(f"--ignore-index {args.ignore_index} is not an id of --classes (0..{len(names) - 1})")
    classes = ClassSpec(names, args.ignore_index)
    pairs = match_files(args.pred, args.gt)
    binary = binary_gt_value(pairs, args.key, classes, args.instances) if lut is None else None
    if binary is not None:
        print(f"binary ground truth: value 0 is {names[0]!r} and value {binary} is {names[1]!r}")
    ev = Evaluator(classes, instances=args.instances)
    for name, pp, gp in tqdm(pairs, desc="scoring", unit="file"):
        gt, pred = _load_pair(name, pp, gp, args.key, classes, args.instances, lut, binary)
        if args.instances:
            ev.add(pred > 0, gt > 0, key=name, meta={"source": str(gp)}, gt_instances=gt, pred_instances=pred)
        else:
            ev.add(pred, gt, key=name, meta={"source": str(gp)})
    checkpoint = args.checkpoint or f"predictions in {args.pred}"
    metrics = ev.result(split=args.split, checkpoint=checkpoint)
    overlay_class = ev.rarest_class()
    best, worst = ev.best_worst(overlay_class, n=args.overlays)
    files = {name: (pp, gp) for name, pp, gp in pairs}

    def items(scores):
        out = []
        for s in scores:
            gt, pred = _load_pair(s.key, *files[s.key], args.key, classes, args.instances, lut, binary)
            if args.instances:
                gt, pred = (gt > 0).astype(np.uint8), (pred > 0).astype(np.uint8)
            out.append((_load_image(args.images, s.key), gt, pred, s.key, s.dice))
        return out

    written = write_report(metrics, args.out, classes, items(best), items(worst), overlay_class)
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    print(f"{len(pairs)} files, split {args.split or 'unnamed'}: macro Dice {fmt(metrics['macro']['dice'])}, "
          f"IoU {fmt(metrics['macro']['iou'])} over {', '.join(metrics['macro_over'])}; report {written['report']}")
    return 0
