"""`sam-histo` (also `python -m sam_histo`): each subcommand is a thin shim over a ``main(argv)``.

Modules are imported only when their subcommand runs, so `sam-histo --help` and light commands stay
fast and do not import torch-heavy code they do not need.
"""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Each module exposes main(argv: list[str]) -> int | None.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sam_histo.demo", "the whole job on synthetic data with small random-init models"),
    "synth": ("sam_histo.data.synth.layouts", "write synthetic data in the real on-disk layouts"),
    "stats": ("sam_histo.data.sampling", "class frequencies, class weights and oversampling rates"),
    "train": ("sam_histo.training.loop", "fine-tune SAM2 (same as accelerate launch sam_histo/train.py)"),
    "validate": ("sam_histo.eval.validator", "per-class metrics of a checkpoint on a split"),
    "score": ("sam_histo.eval.score", "score saved label maps or volumes against ground truth"),
    "zeroshot": ("sam_histo.zeroshot.run", "SAM2 automatic masks + CLIP prompts, scored per class"),
    "release": ("sam_histo.release.build", "bundle a run's checkpoint for others to load and verify"),
    "predict": ("sam_histo.release.predict", "label maps, probabilities, overlays and RLE from a release"),
    "bench": ("sam_histo.bench", "timings against the peer library, with the ratio"),
    "model": ("sam_histo.models.info", "model information (stage table, trainable parameters)"),
    "stain": ("sam_histo.stain.cli", "stain normalisation of a folder of tiles"),
    "fetch-weights": ("sam_histo.models.fetch", "download and verify an upstream checkpoint"),
    "em": ("sam_histo.em.cli", "EM vesicles: 3-D instance prediction and the decoding threshold sweep"),
}


THREADS_ENV = "SAM_HISTO_THREADS"


def default_threads() -> int:
    """Half the CPU cores this process may use (at least 1, at most 8). torch's own default, every core,
    makes each small op wait for a scheduler slice on a busy machine (DESIGN.md section 5: the demo took
    6-9 min instead of 35 s on 2 loaded cores); the other half is left to data loading and other jobs."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores // 2))


def apply_threads(argv: list[str]) -> tuple[list[str], int]:
    """Take ``--threads N`` (anywhere on the line) off ``argv`` and set torch's intra-op threads: N, else
    $SAM_HISTO_THREADS, else $OMP_NUM_THREADS, else :func:`default_threads`. Returns (argv, threads)."""
    import os

    rest, chosen = [], None
    it = iter(argv)
    for word in it:
        if word == "--threads":
            chosen = next(it, "")
        elif word.startswith("--threads="):
            chosen = word.split("=", 1)[1]
        else:
            rest.append(word)
    chosen = chosen or os.environ.get(THREADS_ENV) or os.environ.get("OMP_NUM_THREADS") or default_threads()
    try:
        n = int(chosen)
        if n < 1:
            raise ValueError
    except ValueError:
        raise SystemExit(f"sam-histo: --threads / {THREADS_ENV} must be a positive integer, got {chosen!r}") from None
    os.environ["OMP_NUM_THREADS"] = str(n)  # read by torch at import, and by data-loader workers
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return rest, n


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: sam-histo COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`sam-histo COMMAND --help` for the options of one command.",
              f"--threads N (anywhere; or ${THREADS_ENV}, else $OMP_NUM_THREADS): torch intra-op threads, default "
              f"half the cores, 1-8 (here {default_threads()})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    argv, _ = apply_threads(argv)
    if not argv:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if not sys.stderr.isatty():
        # progress bars into a log file (SLURM, nohup): one update every 30 s instead of every 0.1 s
        # (tqdm reads TQDM_* environment variables as its defaults)
        import os

        os.environ.setdefault("TQDM_MININTERVAL", "30")
    if name in ("-V", "--version"):
        from sam_histo import __version__

        print(__version__)
        return 0
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"sam-histo: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return _run(module.main, rest, name)


def _run(fn, rest: list[str], name: str) -> int:
    from sam_histo.errors import ConfigError, DataError, RunError

    try:
        rc = fn(rest)
    except (ConfigError, DataError, FileNotFoundError, RunError) as e:
        print(f"sam-histo {name}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
