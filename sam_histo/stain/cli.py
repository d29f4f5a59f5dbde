"""`sam-histo stain normalize --reference REF --input DIR --out DIR [--method macenko|reinhard]`.

Normalises every image directly in ``--input`` to the reference's stain appearance and writes
``<stem>.png`` (lossless) into ``--out``. Resumable: outputs that already exist are skipped, and each
file is written to a temporary name and renamed, so an interrupted run never leaves a half-written
image under a final name; ``stain_normalize.json`` records the settings, and resuming with other
settings is refused. The fallback count (tiles with too little stain) is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sam_histo.config import StainConfig
from sam_histo.files import write_json
from sam_histo.stain.base import FallbackCounter, StainError, list_images, load_references, read_rgb
from sam_histo.stain.normalize import make_normalizer

MANIFEST = "stain_normalize.json"  # the settings the outputs in --out were made with


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-histo stain", description="Stain normalisation of H&E tiles.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("normalize", help="normalise a folder of tiles to a reference",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    defaults = StainConfig()
    p.add_argument("--reference", required=True, help="reference RGB tile, or a folder of tiles (pooled)")
    p.add_argument("--input", required=True, help="folder of RGB tiles (.png .tif .jpg ...)")
    p.add_argument("--out", required=True, help="output folder (created); existing outputs are skipped")
    p.add_argument("--method", choices=["macenko", "reinhard"], default="macenko")
    p.add_argument("--fallback", choices=["reinhard", "identity"], default=defaults.fallback,
                   help="for tiles with too little stain (Macenko only)")
    p.add_argument("--io", type=float, default=defaults.io, help="Macenko background intensity")
    p.add_argument("--alpha", type=float, default=defaults.alpha, help="Macenko angular percentile")
    p.add_argument("--beta", type=float, default=defaults.beta, help="Macenko OD threshold")
    return parser


def _write_png(img, path: Path) -> None:
    """Write atomically (sam_histo.files.save_png)."""
    from sam_histo.files import save_png

    save_png(path, img)


def _check_manifest(out_dir: Path, settings: dict) -> None:
    """Outputs are only resumable under the same settings: keep them in a manifest and compare."""
    path = out_dir / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            diff = "; ".join(f"{k}={old.get(k)!r} there, {settings.get(k)!r} now" for k in changed)
            raise StainError(f"--out {out_dir} holds outputs made with other settings ({diff}); "
                             "choose a new --out folder")
        return
    write_json(path, settings, indent=1)


def normalize_folder(cfg: StainConfig, method: str, input_dir: Path, out_dir: Path) -> dict:
    """Normalise every image of ``input_dir`` into ``out_dir``; returns counts for the summary."""
    from tqdm import tqdm

    if not input_dir.is_dir():
        raise StainError(f"--input {input_dir}: not a folder")
    if out_dir.resolve() == input_dir.resolve():
        raise StainError(f"--out {out_dir} is the input folder: choose another folder so inputs survive")
    files = list_images(input_dir)
    if not files:
        raise StainError(f"--input {input_dir}: no images (.png .tif .tiff .jpg .jpeg .bmp)")
    counter = FallbackCounter()
    normalizer = make_normalizer(cfg, method, counter=counter).fit(load_references(cfg.reference))
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"method": method, "reference": str(Path(cfg.reference).resolve())}
    if method == "macenko":
        settings.update(fallback=cfg.fallback, io=cfg.io, alpha=cfg.alpha, beta=cfg.beta)
    _check_manifest(out_dir, settings)
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        raise StainError(f"--input {input_dir}: two files share a name stem (outputs would collide as .png)")
    done, failed = 0, []
    todo = [f for f in files if not (out_dir / f"{f.stem}.png").exists()]
    for f in tqdm(todo, desc="stain normalize", unit="tile", disable=None):
        try:
            img = read_rgb(f)
        except StainError as e:
            failed.append(str(e))
            continue
        _write_png(normalizer.transform(img), out_dir / f"{f.stem}.png")
        done += 1
    return {"written": done, "skipped": len(files) - len(todo), "failed": failed, **counter.snapshot()}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = StainConfig(method=args.method, reference=args.reference, fallback=args.fallback, io=args.io,
                      alpha=args.alpha, beta=args.beta)
    summary = normalize_folder(cfg, args.method, Path(args.input), Path(args.out))
    print(f"written {summary['written']}, skipped {summary['skipped']} (already done), "
          f"failed {len(summary['failed'])}; fallbacks {summary['fallbacks']} of {summary['calls']} tiles")
    for reason, n in sorted(summary["reasons"].items()):
        print(f"  fallback: {reason}: {n}")
    for msg in summary["failed"]:
        print(f"  unreadable: {msg}", file=sys.stderr)
    return 1 if summary["failed"] else 0
