"""`sam-histo bench validator`: confusion-matrix update, ours against scikit-learn and torchmetrics.

All contenders count the same (size x size) ground-truth and prediction maps with ``num_classes`` ids, one of
which is the ignore index (its ground-truth pixels dropped from both sides), and must produce identical counts.
Figures are million pixels per second, best of ``--repeat`` timed runs after a warm-up. ``ratio`` is ours
over torchmetrics with ``validate_args=False`` (its fastest setting); the ratio over scikit-learn and over
torchmetrics' default setting are extra keys. Goals: >= 50x scikit-learn, >= 1.0x torchmetrics without
validation. Ours validates its input (ids in range) on every call; torchmetrics without validation does not.
"""
from __future__ import annotations

import numpy as np
import torch

from sam_histo.bench import result, timeit
from sam_histo.eval.metrics import ConfusionMatrix


def add_arguments(parser) -> None:
    parser.add_argument("--size", type=int, default=1024, help="map side in pixels (default 1024)")
    parser.add_argument("--classes", type=int, default=6, help="number of ids, ignore id included (default 6)")
    parser.add_argument("--ignore-index", type=int, default=0, help="ignored ground-truth id (default 0)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per contender (best is kept)")


def _maps(size: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocky ground truth (regions like a tissue map) and a prediction that is right on ~70 % of pixels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_classes, (size // 16 + 1, size // 16 + 1), generator=g)
    target = coarse.repeat_interleave(16, 0).repeat_interleave(16, 1)[:size, :size].contiguous()
    noise = torch.randint(0, num_classes, (size, size), generator=g)
    pred = torch.where(torch.rand(size, size, generator=g) < 0.3, noise, target)
    return pred, target


def run(args) -> dict:
    from sklearn.metrics import confusion_matrix as sk_confusion
    from torchmetrics.classification import MulticlassConfusionMatrix

    C, K, n = args.classes, args.ignore_index, args.size * args.size
    pred, target = _maps(args.size, C)
    pred8, target8 = pred.to(torch.uint8), target.to(torch.uint8)
    pred_np, target_np = pred.numpy(), target.numpy()
    out = {}

    def ours(p, t):
        cm = ConfusionMatrix(C, K)
        cm.update(p, t)
        out["ours"] = cm.counts

    def sklearn():
        keep = target_np != K  # scikit-learn has no ignore index: drop those pixels first
        out["sklearn"] = sk_confusion(target_np[keep], pred_np[keep], labels=list(range(C)))

    def tm(validate: bool, p=pred, t=target):
        metric = MulticlassConfusionMatrix(C, ignore_index=K, validate_args=validate)
        metric.update(p, t)
        out["tm"] = metric.compute().numpy()

    def bare():
        torch.bincount((target * C + pred).reshape(-1), minlength=C * C)

    reps = dict(repeat=args.repeat, min_time=0.05)
    secs = {
        "ours (int64 maps)": timeit(lambda: ours(pred, target), **reps),
        "scikit-learn confusion_matrix": timeit(sklearn, repeat=max(2, args.repeat // 3)),
        "torchmetrics default": timeit(lambda: tm(True), **reps),
        "torchmetrics validate_args=False": timeit(lambda: tm(False), **reps),
        "bare torch.bincount, no ignore, no checks": timeit(bare, **reps),
        "ours (uint8 maps)": timeit(lambda: ours(pred8, target8), **reps),
        "torchmetrics validate_args=False (uint8 maps)": timeit(lambda: tm(False, pred8, target8), **reps),
    }
    mpix = {name: n / s / 1e6 for name, s in secs.items()}
    results = {}
    for name, fn in (("ours", lambda: ours(pred, target)), ("sklearn", sklearn), ("tm", lambda: tm(False)),
                     ("tm_default", lambda: tm(True))):
        fn()
        results[name] = np.asarray(out["tm" if name == "tm_default" else name], np.int64)
    ours(pred8, target8)
    results["ours_uint8"] = out["ours"]
    ref = results["sklearn"]
    diffs = {name: int(np.abs(v - ref).max()) for name, v in results.items()}
    agreement = "counts identical" if not any(diffs.values()) else f"counts differ from scikit-learn: {diffs}"
    peer = mpix["torchmetrics validate_args=False"]
    ours_mpix = mpix["ours (int64 maps)"]
    ratio_sk = ours_mpix / mpix["scikit-learn confusion_matrix"]
    return result(
        "validator", ours_mpix, "torchmetrics MulticlassConfusionMatrix(validate_args=False)", peer, agreement,
        unit="Mpix (million pixels) per second",
        maps=f"{args.size}x{args.size} int64, {C} ids, ignore index {K}",
        mpix_per_s={k: round(v, 1) for k, v in mpix.items()},
        ratio_vs_sklearn=ratio_sk,
        ratio_vs_torchmetrics_default=ours_mpix / mpix["torchmetrics default"],
        goals_met={">=50x scikit-learn": ratio_sk >= 50, ">=1.0x torchmetrics validate_args=False": ours_mpix >= peer},
    )
