"""`sam-histo synth {bcss,lgg,vesicle} --out DIR`: synthetic data in the real on-disk layouts.

Every adapter is exercised through its real file format. H&E tiles are rendered physically (see
``render.py``); class shares follow FIELD_NOTES (BCSS blood_vessel about 2 % of pixels, LGG IT about 6 %),
file names are TCGA-like and span several slides and TCGA sites so both the random and the institute
split work. Output is a pure function of (n, seed, size).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sam_histo.data.synth import render
from sam_histo.data.synth.render import Style
from sam_histo.config.argv import first_paragraph

SITES = ("A1", "A2", "AR", "BH", "E2", "OL")  # TCGA tissue source site codes
# BCSS code -> look (codes from meta/gtruth_codes.tsv: 1 tumor, 2 stroma, 3 lymphocytic_infiltrate,
# 4 necrosis_or_debris, 9 fat). Nuclei: tumour large and crowded, lymphocytes small dark and dense,
# stroma sparse and elongated along the fibres, necrosis a dust of nuclear fragments.
BCSS_STYLES = {
    1: Style(h=0.22, e=0.22, nuclei=1 / 230, radius=(5.5, 8.5), aspect=1.3, dark=0.8),
    2: Style(h=0.04, e=0.5, fibres=4.0, nuclei=1 / 1600, radius=(3.0, 4.5), aspect=3.5, dark=0.65),
    3: Style(h=0.14, e=0.16, nuclei=1 / 45, radius=(2.6, 3.6), dark=1.1),
    4: Style(h=0.16, e=0.38, texture=0.5, nuclei=1 / 70, radius=(1.0, 2.2), dark=0.75),
    9: Style(h=0.0, e=0.0, fat=True),
}
BCSS_PRIOR = {1: 0.30, 2: 0.26, 3: 0.09, 4: 0.09, 9: 0.26}
LGG_STYLES = {
    0: Style(h=0.01, e=0.015, texture=0.3),  # glass
    1: Style(h=0.1, e=0.28, nuclei=1 / 110, radius=(3.5, 5.5), aspect=1.2, dark=0.9),  # CT: cellular
    2: Style(h=0.08, e=0.3, nuclei=1 / 320, radius=(3.0, 4.5), dark=0.85),  # LE: leading edge
    3: Style(h=0.06, e=0.3, nuclei=1 / 900, radius=(2.5, 4.0), aspect=2.2, dark=0.8),  # IT: infiltrating
}
LGG_PRIOR = {0: 0.456, 3: 0.057, 2: 0.116, 1: 0.371}  # FIELD_NOTES pixel shares; order = drawing order
LGG_TOKENS = ("background", "CT", "LE", "IT")


def _save_png(path: Path, arr: np.ndarray) -> None:
    from sam_histo.files import save_png

    save_png(path, arr, compress_level=1)


def _stain_strength(rng) -> tuple[float, float]:
    """Slide-level staining variation (protocols and scanners differ between institutes)."""
    return float(rng.lognormal(0, 0.15)), float(rng.lognormal(0, 0.15))


def render_bcss_tile(rng, size: int, outside: bool, strength) -> tuple[np.ndarray, np.ndarray]:
    """One BCSS-like ROI: RGB uint8 (size, size, 3) and codes uint8 (size, size)."""
    prior = np.array(list(BCSS_PRIOR.values()))
    shares = rng.dirichlet(prior * 12)
    codes = render.partition(rng, (size, size), dict(zip(BCSS_PRIOR, shares)), sigma=size / 10)
    h_od = np.zeros((size, size), np.float32)
    e_od = np.zeros((size, size), np.float32)
    angle = rng.uniform(0, np.pi)
    for code, style in BCSS_STYLES.items():
        render.paint_class(rng, h_od, e_od, codes == code, style, angle)
    # Vessels cover about 2 % of the pixels (FIELD_NOTES: blood_vessel 1.7 %), absent from some tiles.
    vessel, lumen = render.vessel_rings(rng, (size, size), rng.poisson(5.0 * (size / 512) ** 2))
    render.paint_vessels(rng, h_od, e_od, vessel, lumen)
    codes[vessel] = 18
    if outside:  # an unannotated corner: tissue is there, the annotation is not (code 0)
        yy, xx = np.mgrid[0:size, 0:size]
        wave = 0.03 * size * np.sin(np.linspace(0, 3 * np.pi, size))
        codes[(yy < 0.58 * size + wave[xx]) & (xx < 0.58 * size + wave[yy])] = 0
    return render.he_to_rgb(rng, h_od, e_od, strength), codes.astype(np.uint8)


def write_bcss(out, n: int = 6, seed: int = 0, size: int = 512) -> Path:
    """``n`` ROIs in the BCSS layout (images/, masks/, gtruth_codes.tsv) over several slides and sites.

    Every third ROI (the first included) has an unannotated corner of more than half its side, so a
    tiling at half the ROI size has a tile entirely outside the ROI.
    """
    from sam_histo.data.bcss import write_code_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_code_table(out)
    rng = np.random.default_rng(seed)
    n_slides = max(3, math.ceil(n / 2))
    slides = [f"TCGA-{SITES[s % len(SITES)]}-{'ABCDEFGH'[s % 8]}{s:03d}-DX1" for s in range(n_slides)]
    strengths = [_stain_strength(rng) for _ in slides]
    for i in tqdm(range(n), desc="synth bcss", leave=False):
        s = i % n_slides
        name = f"{slides[s]}_xmin{1000 + 4096 * i}_ymin{2000 + 1024 * s}_MPP-0.2500.png"
        tile_rng = np.random.default_rng([seed, i])
        rgb, codes = render_bcss_tile(tile_rng, size, outside=i % 3 == 0, strength=strengths[s])
        _save_png(out / "images" / name, rgb)
        _save_png(out / "masks" / name, codes)
    return out


def _paint(rng, labels: np.ndarray, styles: dict, strength, cut: bool = False) -> np.ndarray:
    """Render a label map; with ``cut`` nothing of a tissue class reaches past its region (a section's
    edge cuts the nuclei it crosses), so a crop's glass margin stays clean."""
    h_od = np.zeros(labels.shape, np.float32)
    e_od = np.zeros(labels.shape, np.float32)
    angle = rng.uniform(0, np.pi)
    for code, style in styles.items():
        render.paint_class(rng, h_od, e_od, labels == code, style, angle)
    if cut:
        glass = labels == 0
        h_od[glass] = np.minimum(h_od[glass], 2 * LGG_STYLES[0].h)
        e_od[glass] = np.minimum(e_od[glass], 2 * LGG_STYLES[0].e)
    return render.he_to_rgb(rng, h_od, e_od, strength)


def render_lgg_crop(rng, shape, cls: int, strength) -> tuple[np.ndarray, np.ndarray]:
    """A crop of one region: tissue of class ``cls`` covering 60-75 % inside a white glass margin.
    Returns RGB uint8 and the true tissue map bool (what the tissue-aware mask should recover)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    edge = np.maximum(np.abs(yy - h / 2) / (h / 2), np.abs(xx - w / 2) / (w / 2))
    score = render.smooth_noise(rng, shape, min(h, w) / 10) - 3.0 * edge ** 2
    score[edge > 0.88] = -np.inf  # a glass margin on every side
    cover = rng.uniform(0.6, 0.72)  # FIELD_NOTES: 60-75 % of a crop is tissue
    tissue = score > np.quantile(score, 1 - cover)
    styles = {0: LGG_STYLES[0], cls: LGG_STYLES[cls]}
    return _paint(rng, np.where(tissue, cls, 0), styles, strength, cut=True), tissue


def write_lgg(out, n: int = 6, seed: int = 0, size: int = 256) -> Path:
    """``n`` LGG images: ceil(n/2) full images with masks (images/, masks/) and the rest crops
    (crops/<slide>_<n>_<CT|LE|IT><k>_preprocessed.png, no mask), over several slides."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    n_full = math.ceil(n / 2)
    n_slides = max(3, math.ceil(n / 2))
    slides = [f"{231900 + 7 * s}" for s in range(n_slides)]
    strengths = [_stain_strength(rng) for _ in slides]
    crop_cycle = (1, 2, 3, 1, 2, 1, 2, 1, 2)  # CT, LE common, IT rare (FIELD_NOTES: 32 / 24 / 7 crops)
    for i in tqdm(range(n), desc="synth lgg", leave=False):
        s = i % n_slides
        r = np.random.default_rng([seed, i])
        if i < n_full:
            shares = r.dirichlet(np.array(list(LGG_PRIOR.values())) * 100)
            labels = render.partition(r, (size, size), dict(zip(LGG_PRIOR, shares)), sigma=size / 8)
            _save_png(out / "images" / f"{slides[s]}_{i:02d}.png", _paint(r, labels, LGG_STYLES, strengths[s]))
            _save_png(out / "masks" / f"{slides[s]}_{i:02d}.png", labels.astype(np.uint8))
        else:
            k = i - n_full
            cls = crop_cycle[k % len(crop_cycle)]
            shape = tuple(int(v) for v in r.integers(size // 2, size + 1, 2))
            rgb, _ = render_lgg_crop(r, shape, cls, strengths[s])
            _save_png(out / "crops" / f"{slides[s]}_{i:02d}_{LGG_TOKENS[cls]}{k + 1}_preprocessed.png", rgb)
    return out


def write_vesicle(out, n: int = 24, seed: int = 0, size: int = 128, depth: int = 24, fmt: str = "h5") -> Path:
    """One EM volume (depth, size, size) with ``n`` vesicles of 200-1500 voxels, and its instance labels:
    ``volume.h5`` / ``labels.h5`` (dataset ``main``) or ``volume.tif`` / ``labels.tif``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vol, labels = render.em_volume(np.random.default_rng(seed), (depth, size, size), n)
    if fmt == "h5":
        import h5py

        for name, arr in (("volume.h5", vol), ("labels.h5", labels)):
            with h5py.File(out / name, "w") as f:
                f.create_dataset("main", data=arr, compression="gzip", compression_opts=1)
    elif fmt == "tif":
        import tifffile

        tifffile.imwrite(out / "volume.tif", vol)
        tifffile.imwrite(out / "labels.tif", labels)
    else:
        raise ValueError(f"fmt must be h5 or tif, not {fmt!r}")
    return out


DEFAULTS = {"bcss": (6, 512), "lgg": (6, 256), "vesicle": (24, 128)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sam-histo synth", description=first_paragraph(__doc__))
    ap.add_argument("kind", choices=sorted(DEFAULTS))
    ap.add_argument("--out", required=True, help="folder to write (created)")
    ap.add_argument("--n", type=int, help="ROIs (bcss), images (lgg) or vesicles (vesicle); default 6/6/24")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, help="tile / image side in pixels; default 512/256/128")
    ap.add_argument("--depth", type=int, default=24, help="vesicle: slices in the volume")
    ap.add_argument("--format", choices=("h5", "tif"), default="h5", help="vesicle: volume file format")
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else DEFAULTS[args.kind][0]
    size = args.size or DEFAULTS[args.kind][1]
    if n < 1 or size < 32:
        ap.error("--n must be >= 1 and --size >= 32")
    if args.kind == "bcss":
        out = write_bcss(args.out, n, args.seed, size)
    elif args.kind == "lgg":
        out = write_lgg(args.out, n, args.seed, size)
    else:
        out = write_vesicle(args.out, n, args.seed, size, args.depth, args.format)
    print(f"wrote synthetic {args.kind} data to {out} (n={n}, size={size}, seed={args.seed})")
    return 0
