"""`sam-histo bench NAME [--json]`: our code against the peer library in the same run, quoted as a ratio.

Each benchmark lives in ``sam_histo/bench/<name>.py`` and exposes ``run(args) -> dict`` returning the
DESIGN.md section 3 object ``{"name", "ours_per_s", "peer", "peer_per_s", "ratio", "agreement",
"machine"}`` (``ratio`` above 1 means ours is faster) plus any extra keys it documents, and
``add_arguments(parser)`` for its own options, and optionally ``format_table(out) -> str`` for the text
printed without ``--json``. ``learn`` measures quality, not speed: its ``ratio`` is Dice over Dice.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
import time
from sam_histo.config.argv import first_paragraph

BENCHMARKS = {
    "stain": "Macenko normalisation: fit + transform of real H&E tiles, ours vs torchstain (numpy)",
    "model": "SAM2 training step per unfreeze stage and image size; frozen vs fully trainable encoder",
    "validator": "confusion-matrix update, ours vs scikit-learn, torchmetrics, the numpy bincount line and a copy",
    "train": "our training step vs a bare PyTorch loop around the same model and loss",
    "zeroshot": "batched, cached CLIP mask classification vs the straightforward per-mask and batched loops",
    "predict": "sam-histo predict seconds and peak RSS at 1k, 4k and 8k px tiles (tiny model, one process each)",
    "loader": "BCSS adapter (and training sample pipeline) samples/s over 1000-2000 px ROIs at 256 px tiles",
    "learn": "tiny model trained from random init on real MoNuSeg nuclei (k-fold CV, 40x and 20x) vs "
             "hematoxylin + Otsu",
}


def machine() -> str:
    """A one-line description of where a number was measured."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores", f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return "; ".join(parts)


def seconds_per_call(fn, min_time: float = 0.0) -> float:
    """Seconds per call of ``fn()``, calling it until at least ``min_time`` has passed (once at least)."""
    t0, calls = time.perf_counter(), 0
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / calls


def timeit(fn, *, repeat: int = 3, min_time: float = 0.0) -> float:
    """Best-of-``repeat`` wall time of ``fn()`` in seconds (after one warm-up call)."""
    fn()
    return min(seconds_per_call(fn, min_time) for _ in range(repeat))


def result(name: str, ours_per_s: float, peer: str, peer_per_s: float, agreement, **extra) -> dict:
    """The DESIGN.md section 3 object; ``ratio`` is ours over peer (above 1: ours is faster)."""
    out = {
        "name": name,
        "ours_per_s": ours_per_s,
        "peer": peer,
        "peer_per_s": peer_per_s,
        "ratio": ours_per_s / peer_per_s if peer_per_s else float("nan"),
        "agreement": agreement,
        "machine": machine(),
    }
    out.update(extra)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sam-histo bench", description=first_paragraph(__doc__))
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, text in BENCHMARKS.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        try:
            module = importlib.import_module(f"sam_histo.bench.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"sam_histo.bench.{name}":
                raise
            continue
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
    args = parser.parse_args(argv)
    try:
        module = importlib.import_module(f"sam_histo.bench.{args.name}")
    except ModuleNotFoundError:
        parser.error(f"benchmark {args.name!r} is not implemented yet")
    with contextlib.redirect_stdout(sys.stderr):  # what the benchmarked code prints must not mix with --json
        out = module.run(args)
    if args.json:
        print(json.dumps(out))
    elif hasattr(module, "format_table"):
        print(module.format_table(out))
    else:
        for key, value in out.items():
            print(f"{key:>14}: {value:.4g}" if isinstance(value, float) else f"{key:>14}: {value}")
    return 0
