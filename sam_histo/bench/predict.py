"""`sam-histo bench predict`: seconds and peak memory of `sam-histo predict` as the image grows.

A release of the tiny semantic model (random init, trained for two steps on synthetic BCSS, windows of
``--image-size`` pixels) is built in a temporary folder; then for each of ``--sizes`` (default 1024, 4096,
8192 px square synthetic H&E tiles) one fresh process runs ``sam-histo predict`` with its default outputs
(labels, overlay, RLE). Each process imports the package first, then times ``sam-histo predict`` itself
(release loading included, interpreter start and imports not); its peak RSS comes from ``os.wait4`` (that
child's own maximum). A process predicting one window-sized image gives the fixed cost (imports, model)
that ``rss_above_baseline_mb`` and ``s_above_baseline`` subtract. ``--release DIR`` times an existing
semantic release instead of building one.

No library does this job, so the comparison is with ourselves: ``ours_per_s`` is the throughput (Mpix/s,
fixed cost subtracted) at the largest size, ``peer_per_s`` the same at the smallest, and ``ratio`` about 1
means cost linear in pixels. Memory: ``per_size[...]["bytes_per_pixel_above_baseline"]`` constant means
memory grows with the image (the label and probability maps), flat ``rss_above_baseline_mb`` would mean
bounded. ``agreement`` says whether every run wrote a label map of its input's size.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from sam_histo.bench import result

TRAIN_OVERRIDES = [
    "data.tile_size=128", "data.tile_stride=128", "data.val_fraction=0.34", "data.test_fraction=0.34",
    "sampling.iter_per_epoch=4", "train.epochs=1", "train.batch_size=2", "train.num_workers=0",
    "train.log_with=[]", "train.checkpoint_every_steps=0", "eval.overlays=0",
    "train.phases=[{start_epoch: 0, stages: all, lr: 1.0e-3}]",
]


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="1024,4096,8192",
                        help="square tile sides in pixels (default 1024,4096,8192)")
    parser.add_argument("--image-size", type=int, default=128, help="the model's input (window) size (default 128)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads of each predict process (default 1)")
    parser.add_argument("--release", default=None, help="time this release instead of building a tiny one")


def build_release(root: Path, image_size: int) -> Path:
    """A tiny semantic release under ``root`` (synthetic data, two training steps); returns its folder."""
    import torch

    from sam_histo.config import load_config
    from sam_histo.data.synth.layouts import write_bcss
    from sam_histo.release.build import make_release
    from sam_histo.training.loop import train

    data = write_bcss(root / "data", n=6, seed=0, size=128)
    cfg = load_config("demo", [f"data.root={data}", f"output_dir={root}", "name=run",
                               f"model.image_size={image_size}", *TRAIN_OVERRIDES])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = train(cfg)["status"]  # its lines go to stderr (bench.main redirects stdout while running)
    finally:
        torch.set_num_threads(threads)
    if status != "finished":
        raise RuntimeError(f"bench predict: training the tiny model ended with status {status!r}")
    return make_release(root / "run", root / "release")[0]


def synthetic_tile(path: Path, size: int, seed: int = 0) -> Path:
    """An H&E-like PNG of ``size`` x ``size``: one rendered 256 px BCSS ROI repeated (cheap at 8 k)."""

    from sam_histo.data.synth.layouts import _stain_strength, render_bcss_tile

    rng = np.random.default_rng(seed)
    rgb, _ = render_bcss_tile(rng, min(size, 256), False, _stain_strength(rng))
    reps = -(-size // rgb.shape[0])
    from sam_histo.files import save_png

    save_png(path, np.ascontiguousarray(np.tile(rgb, (reps, reps, 1))[:size, :size]), compress_level=1)
    return path


# The child: import first (not timed), then time the CLI's predict; prints the seconds on its last line.
_CHILD = """
import sys, time
import torch, sam_histo.cli, sam_histo.release.bundle
t0 = time.perf_counter()
code = sam_histo.cli.main(["predict", *sys.argv[1:]])
print(f"seconds {time.perf_counter() - t0:.6f}")
sys.exit(code)
"""


def run_child(cmd: list[str], env: dict) -> tuple[str, int]:
    """(stdout, peak RSS in bytes) of one process; a failure raises with the end of its stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        if proc.returncode:
            tail = err.read().decode(errors="replace").strip()[-500:]
            raise RuntimeError(f"bench predict: {' '.join(cmd[:3])} ... failed ({proc.returncode}): {tail}")
    return text, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def _predict(release: Path, tile: Path, out: Path, env: dict) -> tuple[float, int, bool]:
    from PIL import Image

    cmd = [sys.executable, "-c", _CHILD, "--release", str(release), "--input", str(tile), "--out", str(out)]
    text, rss = run_child(cmd, env)
    seconds = float(text.strip().splitlines()[-1].split()[-1])
    with Image.open(out / "labels" / f"{tile.stem}.png") as im, Image.open(tile) as src:
        same_size = im.size == src.size
    return seconds, rss, same_size


def run(args) -> dict:
    sizes = [int(v) for v in str(args.sizes).split(",") if v.strip()]
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory(prefix="sam_histo_bench_predict_") as tmp:
        tmp = Path(tmp)
        release = Path(args.release) if args.release else build_release(tmp / "build", args.image_size)
        base_s, base_rss, ok = _predict(release, synthetic_tile(tmp / "base.png", args.image_size),
                                        tmp / "out_base", env)
        table, all_ok = {}, ok
        for size in sizes:
            tile = synthetic_tile(tmp / f"tile_{size}.png", size)
            seconds, rss, ok = _predict(release, tile, tmp / f"out_{size}", env)
            all_ok &= ok
            mpix = size * size / 1e6
            table[str(size)] = {
                "seconds": seconds, "s_above_baseline": seconds - base_s,
                "mpix_per_s": mpix / max(seconds - base_s, 1e-9), "peak_rss_mb": rss / 2**20,
                "rss_above_baseline_mb": (rss - base_rss) / 2**20,
                "bytes_per_pixel_above_baseline": (rss - base_rss) / (size * size),
            }
            tile.unlink()
    first, last = table[str(sizes[0])], table[str(sizes[-1])]
    return result(
        "predict", last["mpix_per_s"], f"the same predict at {sizes[0]} px (Mpix/s)", first["mpix_per_s"],
        "every label map has its input's size" if all_ok else "a label map differs from its input's size",
        unit="Mpix (million pixels) per second, the fixed cost of a one-window image subtracted",
        per_size=table, baseline={"image": args.image_size, "seconds": base_s, "peak_rss_mb": base_rss / 2**20},
        rss_growth_largest_over_smallest=last["peak_rss_mb"] / first["peak_rss_mb"],
        model=f"tiny SAM2 semantic release, {args.image_size} px windows, {args.threads} thread(s)",
        outputs="labels, overlay, RLE (predict's defaults)",
    )
