"""`sam-histo bench learn [--data DIR] [--folds K] [--json]`: does training learn on real H&E nuclei?

The tiny model (``configs/nuclei.yaml``: ``model.arch=tiny``, random init, the folder adapter, binary
nucleus task) is trained by ``sam-histo train`` on the MoNuSeg tiles found by path (default
``../shared/data/monuseg`` beside the project or a folder above it, never copied into it), with K-fold cross-validation by
tile: each fold trains on the other folds' tiles and scores its own held-out tiles twice, at their native
resolution (40x, about 0.25 um/px) and at a simulated 20x (each tile and its mask downsampled 2x, area /
nearest), through the same resolution handling as ``validate`` and ``predict`` (``model.target_mpp``).
The baseline, in the same run on the same tiles at both magnifications, is what a pathologist's script
would do: the hematoxylin channel of skimage's colour deconvolution (``rgb2hed``), an Otsu threshold, and
removal of objects under ``--min-area`` square microns.

Scores: nucleus Dice per tile, averaged per fold (the fold mean) and over folds. ``ratio`` is our mean
Dice over the baseline's, both magnifications pooled (above 1: ours is better); ``ours_per_s`` and
``peer_per_s`` are held-out tiles scored per second. The tiles' training copies are symlinks in a
temporary folder; nothing is written into the data folder or the project.
"""
from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from sam_histo.bench import result

SHARED = Path("shared") / "data" / "monuseg"


def default_data() -> Path:
    """``../shared/data/monuseg`` beside the project (its checkout, or a worktree of it further down), else
    beside the working folder: the first of those that exists."""
    project = Path(__file__).resolve().parents[2]
    for base in (*project.parents, Path.cwd().parent):
        if (base / SHARED).is_dir():
            return base / SHARED
    return project.parent / SHARED


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


PAIRS = (("Test_Folder/img", "Test_Folder/labelcol"), ("img", "labelcol"), ("images", "masks"))
MAGS = {"40x": 1.0, "20x": 0.5}  # simulated magnification -> scale of the native tile


def add_arguments(parser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="MoNuSeg folder (Test_Folder/img + labelcol, img/ + labelcol/ or images/ + masks/)")
    parser.add_argument("--config", default="nuclei", help="the training recipe (default configs/nuclei.yaml)")
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds by tile")
    parser.add_argument("--max-folds", type=int, default=None, help="train and score only the first N folds")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default the recipe's)")
    parser.add_argument("--mpp", type=float, default=0.25,
                        help="um/px of tiles whose name and TIFF tags give none (MoNuSeg: 40x, 0.25)")
    parser.add_argument("--min-area", type=float, default=2.0, help="baseline: smallest nucleus in um^2")
    parser.add_argument("--seed", type=int, default=0, help="fold assignment and training seed")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per fold (1 is steadiest "
                        "on a shared CPU: 2 threads on 2 busy cores ran ~20x slower)")
    parser.add_argument("--jobs", type=int, default=min(2, _cores()),
                        help="folds trained at once, one process each (default: 2, or 1 on a one-core machine)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for training (repeatable)")


# ------------------------------------------------------------------------------------------- data
def find_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) files matched by stem in the first layout of ``PAIRS`` that ``root`` has."""
    from sam_histo.data.base import list_images
    from sam_histo.data.types import DataError

    root = Path(root).expanduser()
    for img_dir, mask_dir in PAIRS:
        images, masks = root / img_dir, root / mask_dir
        if images.is_dir() and masks.is_dir():
            by_stem = {p.stem: p for p in list_images(masks)}
            pairs = [(p, by_stem[p.stem]) for p in list_images(images) if p.stem in by_stem]
            if pairs:
                return pairs
    raise DataError(f"{root}: no image/mask pairs; expected one of "
                    + ", ".join(f"{a}/ + {b}/" for a, b in PAIRS) + " (--data DIR)")


def load_tiles(pairs, default_mpp: Optional[float]) -> list:
    """Samples of (image, binary nucleus mask): mask value 0 = background (id 0), anything else = nucleus
    (id 1); mpp from the file (name, TIFF tags), else ``default_mpp``."""
    from sam_histo.data.base import read_codes, read_rgb
    from sam_histo.data.io.resolution import resolve_mpp
    from sam_histo.data.types import DataError, Sample

    tiles = []
    for image_path, mask_path in pairs:
        image, codes = read_rgb(image_path), read_codes(mask_path)
        if codes.shape != image.shape[:2]:
            raise DataError(f"{mask_path}: mask is {codes.shape[::-1]} but the image is {image.shape[1::-1]}")
        mpp, source = resolve_mpp(image_path, default_mpp)
        tiles.append(Sample(image, (codes > 0).astype(np.int64), None,
                            {"source": str(image_path), "mask": str(mask_path), "mpp": mpp, "mpp_source": source}))
    return tiles


def at_magnification(sample, scale: float):
    """The tile and its mask scaled by ``scale`` (0.5: 40x -> 20x), mpp divided by it."""
    from sam_histo.data.io.resolution import resample_image, resample_labels, scaled_size
    from sam_histo.data.types import Sample

    if scale == 1.0:
        return sample
    size = scaled_size(*sample.mask.shape, scale)
    mpp = None if sample.mpp is None else sample.mpp / scale
    return Sample(resample_image(sample.image, scale), resample_labels(sample.mask, size=size), None,
                  {**sample.meta, "mpp": mpp})


def folds_by_tile(n: int, k: int, seed: int = 0) -> list[list[int]]:
    """K disjoint held-out sets covering 0..n-1 (a seeded permutation dealt round-robin)."""
    if not 2 <= k <= n:
        raise ValueError(f"--folds {k} must be between 2 and the number of tiles ({n})")
    order = np.random.default_rng(seed).permutation(n)
    return [sorted(int(i) for i in order[f::k]) for f in range(k)]


# --------------------------------------------------------------------------------------- baseline
def otsu_nuclei(image: np.ndarray, mpp: Optional[float], min_area_um2: float = 2.0) -> np.ndarray:
    """Nucleus mask (H, W) bool: hematoxylin (skimage rgb2hed) above its Otsu threshold, objects smaller
    than ``min_area_um2`` removed (in pixels at ``mpp``; 0.25 um/px when unknown)."""
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects

    hema = rgb2hed(image)[..., 0]
    mask = hema > threshold_otsu(hema)
    pixels = int(round(min_area_um2 / (mpp or 0.25) ** 2))
    return remove_small_objects(mask, max_size=pixels) if pixels > 1 else mask


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


# ---------------------------------------------------------------------------------------- training
def _link_fold(pairs, indices, folder: Path) -> Path:
    """data.root of one fold: images/ and masks/ of symlinks to the training tiles (nothing copied)."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for i in indices:
        image, mask = pairs[i]
        (folder / "images" / image.name).symlink_to(image.resolve())
        (folder / "masks" / mask.name).symlink_to(mask.resolve())
    return folder


def train_fold(args, pairs, train_idx, work: Path, fold: int):
    """Train the recipe on the fold's training tiles with `sam-histo train`; (model, config, seconds)."""
    from sam_histo.config import load_config
    from sam_histo.models.load import load_model
    from sam_histo.training.loop import train

    root = _link_fold(pairs, train_idx, work / f"data_{fold}")
    overrides = [f"data.root={root}", f"data.cache_dir={work / f'cache_{fold}'}", f"output_dir={work}",
                 f"name=fold_{fold}", "data.val_fraction=0", "data.test_fraction=0", f"data.mpp={args.mpp}",
                 f"seed={args.seed + fold}", "train.log_with=[]", *args.set]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    cfg = load_config(args.config, overrides)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # also in the fold processes, whose stdout is the real one
        out = train(cfg)
    seconds = time.perf_counter() - t0
    if out.get("status") != "finished":
        raise RuntimeError(f"fold {fold}: training ended with status {out.get('status')}")
    model = load_model(cfg.model, 2, cfg.run_dir).eval()
    return model, cfg, seconds


def score_tiles(model, cfg, tiles, min_area: float) -> tuple[list[dict], dict]:
    """Per held-out tile and magnification: our Dice and the baseline's; and the seconds each side took."""
    from sam_histo.infer.image import class_map, region_pixels, semantic_probs

    rows, spent, ev = [], {"ours": 0.0, "peer": 0.0}, cfg.eval
    for tile in tiles:
        for mag, scale in MAGS.items():
            t = at_magnification(tile, scale)
            t0 = time.perf_counter()
            probs = semantic_probs(model, t.image, 2, None, ev.window_overlap, ev.batch_size, mpp=t.mpp,
                                   target_mpp=cfg.model.target_mpp, tta=ev.tta, scales=ev.tta_scales)
            label = class_map(probs, region_pixels(ev.min_region_um2, t.mpp, cfg.model.target_mpp))
            t1 = time.perf_counter()
            base = otsu_nuclei(t.image, t.mpp, min_area)
            t2 = time.perf_counter()
            spent["ours"] += t1 - t0
            spent["peer"] += t2 - t1
            rows.append({"tile": Path(tile.source).stem, "mag": mag, "ours": dice(label == 1, t.mask),
                         "baseline": dice(base, t.mask)})
    return rows, spent


# --------------------------------------------------------------------------------------- summaries
def summarise(per_fold: list[list[dict]]) -> dict:
    """{mag: {"ours": [fold means], "baseline": [...], "ours_mean", "baseline_mean", "margin_min"}}."""
    out = {}
    for mag in MAGS:
        ours = [float(np.mean([r["ours"] for r in rows if r["mag"] == mag])) for rows in per_fold]
        base = [float(np.mean([r["baseline"] for r in rows if r["mag"] == mag])) for rows in per_fold]
        out[mag] = {"ours": ours, "baseline": base, "ours_mean": float(np.mean(ours)),
                    "baseline_mean": float(np.mean(base)),
                    "margin_min": float(min(o - b for o, b in zip(ours, base)))}
    return out


def format_table(out: dict) -> str:
    """The per-fold table in Markdown (what `bench learn` prints without --json)."""
    s = out["dice"]
    folds = len(s["40x"]["ours"])
    head = "| fold | " + " | ".join(f"ours {m} | Otsu {m}" for m in MAGS) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(MAGS))]
    for f in range(folds):
        lines.append(f"| {f} | " + " | ".join(f"{s[m]['ours'][f]:.3f} | {s[m]['baseline'][f]:.3f}" for m in MAGS)
                     + " |")
    lines.append("| mean | " + " | ".join(f"{s[m]['ours_mean']:.3f} | {s[m]['baseline_mean']:.3f}" for m in MAGS)
                 + " |")
    margins = ", ".join(f"{m} {s[m]['margin_min']:+.3f}" for m in MAGS)
    return "\n".join(lines + [
        "", f"ratio (ours / Otsu, mean Dice, both magnifications): {out['ratio']:.3f}; smallest fold margin: "
            f"{margins}; goal >= +0.03 at both: {'met' if out['goal_met'] else 'NOT met'}",
        f"{out['tiles']} tiles, {folds} of {out['folds']} folds ({out['jobs']} at a time), {out['wall_s']:.0f} s wall "
        f"({out['train_s']:.0f} s training, {out['cpu_s']:.0f} s CPU); {out['machine']}"])


def _fold(args, pairs, tiles, held: list[int], work: Path, fold: int):
    """Train one fold and score its held-out tiles: (rows, training seconds, scoring seconds, target mpp)."""
    import torch

    torch.set_num_threads(args.threads)
    model, cfg, seconds = train_fold(args, pairs, [i for i in range(len(tiles)) if i not in held], work, fold)
    rows, took = score_tiles(model, cfg, [tiles[i] for i in held], args.min_area)
    return rows, seconds, took, cfg.model.target_mpp


def _run_folds(args, pairs, tiles, folds, work: Path) -> dict:
    """{fold: _fold(...)}, ``--jobs`` folds at a time in their own processes (one in this process)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    def report(f, res):
        fold_means = summarise([res[0]])
        print(f"fold {f}: " + ", ".join(f"{m} ours {v['ours_mean']:.3f} Otsu {v['baseline_mean']:.3f}"
                                      for m, v in fold_means.items()) + f" ({res[1]:.0f} s training)",
              file=sys.stderr, flush=True)

    done = {}
    if args.jobs <= 1 or len(folds) == 1:
        for f, held in enumerate(folds):
            done[f] = _fold(args, pairs, tiles, held, work, f)
            report(f, done[f])
        return done
    with ProcessPoolExecutor(min(args.jobs, len(folds)), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_fold, args, pairs, tiles, held, work, f): f for f, held in enumerate(folds)}
        for future in as_completed(futures):
            f = futures[future]
            done[f] = future.result()
            report(f, done[f])
    return done


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    args.data = args.data or default_data()
    pairs = find_pairs(args.data)
    tiles = load_tiles(pairs, args.mpp)
    folds = folds_by_tile(len(tiles), args.folds, args.seed)[: args.max_folds or args.folds]
    work = Path(tempfile.mkdtemp(prefix="bench_learn_"))
    try:
        done = _run_folds(args, pairs, tiles, folds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_fold = [done[f][0] for f in range(len(folds))]
    rows_all = [{**r, "fold": f} for f, rows in enumerate(per_fold) for r in rows]
    spent = {k: sum(done[f][2][k] for f in done) for k in ("ours", "peer")}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    dice_summary = summarise(per_fold)
    ours = np.mean([r["ours"] for r in rows_all])
    base = np.mean([r["baseline"] for r in rows_all])
    n_scored = len(rows_all)
    out = result("learn", n_scored / max(spent["ours"], 1e-9), "hematoxylin (skimage rgb2hed) + Otsu + "
                 f"small-object removal (< {args.min_area} um^2)", n_scored / max(spent["peer"], 1e-9),
                 "same held-out tiles, same magnifications, same run", data=str(args.data), tiles=len(tiles),
                 folds=args.folds, config=args.config, target_mpp=done[0][3], dice=dice_summary,
                 per_tile=rows_all, train_s=sum(done[f][1] for f in done), wall_s=time.perf_counter() - t0,
                 cpu_s=time.process_time() - c0 + children.ru_utime + children.ru_stime, jobs=args.jobs,
                 goal_met=all(dice_summary[m]["margin_min"] >= 0.03 for m in MAGS))
    out["ratio"] = float(ours / base) if base else float("nan")
    out["ours_dice"], out["baseline_dice"] = float(ours), float(base)
    return out
