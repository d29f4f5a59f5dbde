"""BCSS (Amgad et al., Bioinformatics 2019) in its released layout, tiled lazily.

Layout (``data.root``)::

    images/TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500.png   RGB region of interest
    masks/TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500.png    uint8 codes, same name and size
    gtruth_codes.tsv                                               columns label, GT_code (21 codes + 0)

Code 0 (outside_roi) is "don't care" and must get zero weight; it is NOT an "other" class (BCSS README,
github.com/PathologyDataScience/BCSS). Class ids: 0 = outside_roi (the ignore index), then
``data.classes`` in order from 1. ``data.grouping`` maps each class to BCSS code names; the class named
``other`` takes every code not grouped elsewhere except ``data.ignore_codes`` (default ``exclude``, code 7:
regions the annotators excluded from scoring, and ``undetermined``, code 15: tissue they could not call);
those and codes left without a class become outside_roi, the ignore id.

Each ROI is cut into ``tile_size`` tiles every ``tile_stride`` pixels (the last row and column end at the
border; ROIs smaller than a tile are padded with white and outside_roi). Tiles with no in-ROI pixel are
dropped. The tile index and per-tile code histograms come from one pass over the masks (never the RGB
images), cached under ``data.cache_dir`` and reused while the masks are unchanged, so statistics are free.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from sam_histo.data.base import cache_root, check_decodes, check_root, check_split, list_images, log, read_codes
from sam_histo.data.io.decoded import DecodedCache
from sam_histo.data.io.readers import image_shape
from sam_histo.data.splits import split_by_slide
from sam_histo.data.io.tiling import TiledAdapter, build_index, tile_histograms, tile_origins  # noqa: F401
from sam_histo.data.types import ClassSpec, DataError

CODES_FILE = "gtruth_codes.tsv"
# The 21 BCSS region codes plus 0, as in meta/gtruth_codes.tsv of github.com/PathologyDataScience/BCSS.
BCSS_CODES = {
    "outside_roi": 0, "tumor": 1, "stroma": 2, "lymphocytic_infiltrate": 3, "necrosis_or_debris": 4,
    "glandular_secretions": 5, "blood": 6, "exclude": 7, "metaplasia_NOS": 8, "fat": 9, "plasma_cells": 10,
    "other_immune_infiltrate": 11, "mucoid_material": 12, "normal_acinus_or_duct": 13, "lymphatics": 14,
    "undetermined": 15, "nerve": 16, "skin_adnexa": 17, "blood_vessel": 18, "angioinvasion": 19, "dcis": 20,
    "other": 21,
}
DEFAULT_CLASSES = ["tumor", "stroma", "lymphocytic_infiltrate", "necrosis_or_debris", "blood_vessel", "other"]
# Default grouping of the 21 BCSS codes (meta/gtruth_codes.tsv of the BCSS repository). Tumour-like codes
# (angioinvasion, DCIS) join tumor and immune-cell codes join lymphocytic_infiltrate, as in the
# "super-classes" of Amgad et al. 2019; "other" takes the rest (fat, blood, glands, mucin, nerve, ...).
DEFAULT_GROUPING = {
    "tumor": ["tumor", "angioinvasion", "dcis"],
    "stroma": ["stroma"],
    "lymphocytic_infiltrate": ["lymphocytic_infiltrate", "plasma_cells", "other_immune_infiltrate"],
    "necrosis_or_debris": ["necrosis_or_debris"],
    "blood_vessel": ["blood_vessel"],
}
OUTSIDE = "outside_roi"
# Codes that are no tissue class: never swept into "other", ignored like outside_roi unless data.grouping
# names them (then drop them from data.ignore_codes).
IGNORED_CODES = ("exclude", "undetermined")
_SLIDE = re.compile(r"^(.+?)_xmin")


def slide_of(name: str) -> str:
    """The TCGA slide id of a BCSS file name: the part before ``_xmin`` (the whole stem otherwise)."""
    stem = Path(name).stem
    m = _SLIDE.match(stem)
    return m.group(1) if m else stem


def write_code_table(root: Path, table: dict[str, int] = BCSS_CODES) -> Path:
    path = Path(root) / CODES_FILE
    path.write_text("label\tGT_code\n" + "".join(f"{k}\t{v}\n" for k, v in table.items()))
    return path


def read_code_table(root: Path) -> dict[str, int]:
    """``gtruth_codes.tsv`` (in folder ``root``, or the file itself) -> {label: code}; outside_roi must be 0."""
    root = Path(root)
    path = root if root.is_file() else root / CODES_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: copy meta/gtruth_codes.tsv of the BCSS release into data.root")
    lines = [ln.rstrip("\n").split("\t") for ln in path.read_text().splitlines() if ln.strip()]
    if not lines or [c.strip() for c in lines[0][:2]] != ["label", "GT_code"]:
        raise DataError(f"{path}: expected a header 'label<TAB>GT_code'")
    table = {}
    for k, row in enumerate(lines[1:], start=2):
        try:
            table[row[0].strip()] = int(row[1])
        except (IndexError, ValueError):
            raise DataError(f"{path} line {k}: expected 'name<TAB>integer code', got {row}") from None
    if table.get(OUTSIDE) != 0:
        raise DataError(f"{path}: {OUTSIDE} must have code 0 (the BCSS 'don't care' code)")
    return table


def class_names(classes: list[str]) -> tuple[str, ...]:
    return (OUTSIDE, *(classes or DEFAULT_CLASSES))


def code_lut(table: dict[str, int], classes: list[str], grouping: dict[str, list[str]],
             ignore_codes=IGNORED_CODES) -> np.ndarray:
    """(256,) int64: BCSS code -> class id; 0 for outside_roi, ``ignore_codes`` and ungrouped codes, -1 for
    codes absent from the table."""
    classes = list(classes or DEFAULT_CLASSES)
    grouping = grouping or {c: DEFAULT_GROUPING[c] for c in classes if c in DEFAULT_GROUPING}
    for cls in grouping:
        if cls not in classes:
            raise DataError(f"data.grouping names class {cls!r} which is not in data.classes {classes}")
    lut = np.full(256, -1, np.int64)
    lut[list(table.values())] = 0
    owner: dict[str, str] = {}
    for cid, cls in enumerate(classes, start=1):
        codes = grouping.get(cls) or ([cls] if cls in table and cls != "other" else [])
        for code in codes:
            if code not in table:
                import difflib

                near = difflib.get_close_matches(code, list(table), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise DataError(f"data.grouping[{cls!r}] names code {code!r} absent from {CODES_FILE}{hint}")
            if code == OUTSIDE:
                raise DataError(f"data.grouping[{cls!r}]: {OUTSIDE} (code 0) is ignored and cannot be a class")
            if code in ignore_codes:
                raise DataError(f"data.grouping[{cls!r}] names {code!r}, which data.ignore_codes ignores: "
                                f"drop it from one of them (data.ignore_codes={list(ignore_codes)})")
            if code in owner and owner[code] != cls:
                raise DataError(f"BCSS code {code!r} is grouped into both {owner[code]!r} and {cls!r}")
            owner[code] = cls
            lut[table[code]] = cid
    if "other" in classes:
        for code, value in table.items():
            if code != OUTSIDE and code not in owner and code not in ignore_codes:
                lut[value] = classes.index("other") + 1
                owner[code] = "other"
    for cid, cls in enumerate(classes, start=1):
        if not (lut == cid).any():
            raise DataError(f"class {cls!r} in data.classes gets no BCSS code: map codes to it in "
                            f"data.grouping (codes: {sorted(table, key=table.get)})")
    unmapped = [c for c in table if c != OUTSIDE and c not in owner and c not in ignore_codes]
    if unmapped:
        log.info("BCSS codes %s belong to no class and are treated as outside_roi (ignored)", unmapped)
    return lut


class BCSS(TiledAdapter):
    """Tiles of BCSS ROIs as Samples: image (T, T, 3) uint8, mask (T, T) int64 ids, 0 = outside_roi."""

    @classmethod
    def class_spec(cls, cfg) -> ClassSpec:
        """("outside_roi", *data.classes) with ignore_index 0, from the config alone."""
        return ClassSpec(class_names(cfg.classes), ignore_index=0)

    def __init__(self, cfg, split: str = "all"):
        check_split(split)
        self.cfg, self.split = cfg, split
        self.root = check_root(cfg.root, "BCSS", "images/, masks/ and gtruth_codes.tsv")
        self.table = read_code_table(self.root)
        self.lut = code_lut(self.table, cfg.classes, cfg.grouping, cfg.ignore_codes)
        self.classes = self.class_spec(cfg)
        self.tile, self.stride = cfg.tile_size, cfg.tile_stride
        self._table_key = sorted(self.table.items(), key=lambda kv: kv[1])
        self._table_key = [list(kv) for kv in self._table_key]
        cache = cache_root(self.root, cfg.cache_dir)
        self.decoded = DecodedCache(cache, cfg.decode_cache, cfg.decode_cache_mb)
        self._fill = (255, 0)  # ROIs smaller than a tile: white, outside_roi
        files = self._index(cache)
        slides = split_by_slide([slide_of(f["name"]) for f in files], cfg.split, cfg.val_fraction,
                                cfg.test_fraction, cfg.split_seed, cfg.val_sites, cfg.test_sites)
        self._items = []  # (file record, y, x, code histogram)
        for f in files:
            where = slides[slide_of(f["name"])]
            if split in ("all", where):
                self._items += [(f, y, x, np.asarray(h, np.int64), where) for y, x, h in f["tiles"]]

    # ------------------------------------------------------------------------------------ index
    def _index(self, cache_dir) -> list[dict]:
        images_dir, masks_dir = self.root / "images", self.root / "masks"
        if not images_dir.is_dir() or not list_images(images_dir):
            raise DataError(f"{images_dir}: no images found; BCSS needs images/*.png and masks/*.png "
                            f"(same names) and {CODES_FILE} under data.root")
        cache_file = cache_dir / f"bcss_index_{self.tile}_{self.stride}.json" if cache_dir else None
        pairs = [(img, masks_dir / img.name) for img in list_images(images_dir)]
        return build_index(pairs, cache_file, self._table_key, "BCSS index", self.cfg.on_error, self._index_file)

    def _index_file(self, img: Path, mask: Path) -> dict:
        if not mask.is_file():
            raise DataError(f"{img}: no mask {mask}; every BCSS image needs masks/<same name>")
        h, w = image_shape(img)
        check_decodes(img)  # once per file version: the index caches the record only when it decoded
        codes = read_codes(mask)
        if codes.shape != (h, w):
            raise DataError(f"{img}: image is {w}x{h} but its mask {mask} is {codes.shape[1]}x{codes.shape[0]}; "
                            "re-export the pair at the same resolution")
        seen = np.flatnonzero(np.bincount(codes.ravel(), minlength=256))
        unknown = [int(c) for c in seen if self.lut[c] < 0]
        if unknown:
            raise DataError(f"{mask}: codes {unknown} are absent from {CODES_FILE} "
                            f"(known: {sorted(self.table.values())})")
        n = max(self.table.values()) + 1
        tiles = tile_histograms(codes, self.tile, self.stride, n, lambda hist: hist[1:].any())  # an in-ROI pixel
        return {"shape": [h, w], "tiles": tiles, "decoded": True}  # cached only after check_decodes passed

    # ------------------------------------------------------------------------------------ access
    def _paths(self, rec: dict) -> tuple[Path, Path]:
        return self.root / "images" / rec["name"], self.root / "masks" / rec["name"]

    def _read_codes(self, path: Path) -> np.ndarray:
        return read_codes(path)

    def _ids(self, codes: np.ndarray) -> np.ndarray:
        return self.lut[codes]

    def meta(self, i: int) -> dict:
        f, y, x, _, where = self._items[i]
        return {"source": str(self.root / "images" / f["name"]), "mask": str(self.root / "masks" / f["name"]),
                "slide": slide_of(f["name"]), "split": where, "y": y, "x": x, "tile": self.tile}

    def class_counts(self, progress: bool = True) -> np.ndarray:
        """From the cached per-tile code histograms: no pixel is decoded."""
        out = np.zeros((len(self), self.classes.num_classes), np.int64)
        for i, (_, _, _, hist, _) in enumerate(self._items):
            np.add.at(out[i], self.lut[: len(hist)].clip(min=0), hist)
        return out

    def fingerprint(self) -> str:
        parts = [f"{f['name']}:{f['stamp']}:{y}:{x}" for f, y, x, _, _ in self._items]
        parts += [f"lut:{self.lut.tolist()}", f"tile:{self.tile}:{self.stride}"]
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()
