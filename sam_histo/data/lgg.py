"""LGG (low-grade glioma H&E, 4 classes): full images with masks plus cropped regions without masks.

Layout (``data.root``)::

    images/<name>.png                                  RGB full image (any size)
    masks/<name>.png                                   uint8, same name and size: 0 BG, 1 CT, 2 LE, 3 IT
    crops/<slide>_<n>_<CT|LE|IT><k>_preprocessed.png   RGB crop of one region; no mask

A crop may also sit in ``images/``: a file named like a crop with no mask is taken as one. Every other
image without a mask is an error. A crop's mask is tissue-aware: ``stain.tissue.tissue_mask`` with
``data.tissue`` marks tissue, which gets the class of the crop's name token; the white margin stays 0
(background). The generated masks are written once to ``<cache>/lgg_crop_masks/`` beside a
``manifest.json`` holding the tissue thresholds and each source's SHA-1; they are recomputed when either
changes. The slide of a file is its first ``_``-separated token (``231920_04_LE1_preprocessed`` -> 231920);
splits are by slide.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sam_histo.data.base import (Adapter, DecodeCache, Problems, cache_root, check_root, check_split, guard,
                                 image_size, list_images, log, read_codes, read_rgb)
from sam_histo.data.splits import split_by_slide
from sam_histo.data.types import ClassSpec, DataError, Sample
from sam_histo.files import save_png, write_json

NAMES = ("background", "CT", "LE", "IT")
CROP = re.compile(r"^(?P<slide>[^_]+)_(?P<n>\d+)_(?P<cls>CT|LE|IT)(?P<k>\d+)_preprocessed$")


def slide_of(name: str) -> str:
    return Path(name).stem.split("_")[0]


def crop_class(name: str) -> int | None:
    """Class id of a crop file name (``..._LE1_preprocessed.png`` -> 2), None if it is not a crop name."""
    m = CROP.match(Path(name).stem)
    return NAMES.index(m.group("cls")) if m else None


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


class LGG(Adapter):
    """Whole LGG images as Samples: image (H, W, 3) uint8, mask (H, W) int64 in 0..3 (no ignore id)."""

    def __init__(self, cfg, split: str = "all"):
        check_split(split)
        self.cfg, self.split = cfg, split
        self.root = check_root(cfg.root, "LGG", "images/, masks/ and crops/")
        self.classes = ClassSpec(NAMES)
        records = self._index()
        slides = split_by_slide([r["slide"] for r in records], cfg.split, cfg.val_fraction,
                                cfg.test_fraction, cfg.split_seed)
        self._items = []
        for r in records:
            r["split"] = slides[r["slide"]]
            if split in ("all", r["split"]):
                self._items.append(r)

    def _index(self) -> list[dict]:
        images = list_images(self.root / "images") if (self.root / "images").is_dir() else []
        crops = list_images(self.root / "crops") if (self.root / "crops").is_dir() else []
        if not images and not crops:
            raise DataError(f"{self.root}: no LGG images; expected images/*.png with masks/*.png and/or "
                            "crops/<slide>_<n>_<CT|LE|IT><k>_preprocessed.png")
        problems = Problems(self.cfg.on_error, "LGG index")
        records, crop_paths = [], list(crops)
        decoded = DecodeCache(cache_root(self.root, self.cfg.cache_dir), "lgg_decoded.json")
        for img in tqdm(images, desc="LGG index", leave=False):
            mask = self.root / "masks" / img.name
            if not mask.is_file() and crop_class(img.name) is not None:
                crop_paths.append(img)
                continue
            rec = guard(problems, img, self._full_record, img, mask, decoded)
            if rec is not None:
                records.append(rec)
        decoded.save()
        records += self._crop_records(crop_paths, problems)
        problems.finish()
        if not records:
            raise DataError(f"{self.root}: every LGG image was skipped; see the warnings above")
        return records

    def _full_record(self, img: Path, mask: Path, decoded: DecodeCache) -> dict:
        if not mask.is_file():
            raise DataError(f"{img}: no mask {mask}; full LGG images need masks/<same name> "
                            "(only crops named <slide>_<n>_<CT|LE|IT><k>_preprocessed.png may lack one)")
        h, w = image_size(img)
        decoded.check(img)
        codes = read_codes(mask)
        if codes.shape != (h, w):
            raise DataError(f"{img}: image is {w}x{h} but its mask {mask} is {codes.shape[1]}x{codes.shape[0]}; "
                            "re-export the pair at the same resolution")
        counts = np.bincount(codes.ravel(), minlength=256)
        bad = [int(c) for c in np.flatnonzero(counts[len(NAMES):]) + len(NAMES)]
        if bad:
            raise DataError(f"{mask}: codes {bad} are absent from the LGG code table "
                            "(0 background, 1 CT, 2 LE, 3 IT)")
        return {"image": img, "mask": mask, "slide": slide_of(img.name), "crop": False,
                "counts": counts[: len(NAMES)].astype(np.int64)}

    # ----------------------------------------------------------------------- tissue-aware crop masks
    def _crop_records(self, paths: list[Path], problems: Problems) -> list[dict]:
        if not paths:
            return []
        cache = cache_root(self.root, self.cfg.cache_dir)
        if cache is None:
            raise DataError("LGG crops need a writable cache for their generated masks: set data.cache_dir")
        folder = cache / "lgg_crop_masks"
        folder.mkdir(exist_ok=True)
        manifest_path = folder / "manifest.json"
        tissue = dataclasses.asdict(self.cfg.tissue)
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("tissue") != tissue:
            manifest = {"tissue": tissue, "files": {}}  # thresholds changed: every crop mask is stale
        records, made = [], 0
        for img in tqdm(paths, desc="LGG crop masks", leave=False):
            rec = guard(problems, img, self._crop_record, img, folder, manifest)
            if rec is not None:
                records.append(rec)
                made += rec.pop("made")
        if made:
            write_json(manifest_path, manifest, indent=1, sort_keys=True)  # several processes may index at once
            log.info("generated %d tissue-aware LGG crop masks in %s", made, folder)
        return records

    def _crop_record(self, img: Path, folder: Path, manifest: dict) -> dict:
        from sam_histo.stain.tissue import tissue_mask

        cls = crop_class(img.name)
        if cls is None:
            raise DataError(f"{img}: crops must be named <slide>_<n>_<CT|LE|IT><k>_preprocessed.png")
        out = folder / f"{img.stem}.png"
        key = f"{img.parent.name}/{img.name}"
        digest = _sha1(img)
        made = 0
        if manifest["files"].get(key) != digest or not out.is_file():
            mask = tissue_mask(read_rgb(img), self.cfg.tissue).astype(np.uint8) * cls
            _write_png(out, mask)
            manifest["files"][key] = digest
            made = 1
        codes = read_codes(out)
        counts = np.bincount(codes.ravel(), minlength=len(NAMES))[: len(NAMES)].astype(np.int64)
        if counts[cls] == 0:
            raise DataError(f"{img}: its tissue mask is empty (no pixel passes data.tissue thresholds), so the "
                            f"{NAMES[cls]} crop would train as all background; check the crop, lower "
                            "data.tissue.sat_min / raise data.tissue.val_max, or set data.on_error=skip")
        return {"image": img, "mask": out, "slide": slide_of(img.name), "crop": True, "counts": counts,
                "made": made}

    # ----------------------------------------------------------------------------------- access
    def meta(self, i: int) -> dict:
        r = self._items[i]
        return {"source": str(r["image"]), "mask": str(r["mask"]), "slide": r["slide"], "split": r["split"],
                "crop": r["crop"], "y": 0, "x": 0}

    def label(self, i: int) -> np.ndarray:
        return read_codes(self._items[i]["mask"]).astype(np.int64)

    def _load(self, i: int) -> Sample:
        r = self._items[i]
        image, mask = read_rgb(r["image"]), self.label(i)
        if image.shape[:2] != mask.shape:  # a crop replaced after its mask was cached, same name and hash
            raise DataError(f"{r['image']}: image and mask {r['mask']} differ in size; delete the cache")
        return Sample(image=image, mask=mask, meta=self.meta(i))

    def class_counts(self, progress: bool = True) -> np.ndarray:
        """From the index pass (masks were read once there)."""
        return np.stack([r["counts"] for r in self._items]) if self._items else np.zeros((0, 4), np.int64)

    def fingerprint(self) -> str:
        parts = [f"{r['image']}:{r['image'].stat().st_mtime_ns}:{r['counts'].tolist()}" for r in self._items]
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def _write_png(path: Path, arr: np.ndarray) -> None:
    save_png(path, arr)
