"""Your own data: a folder of images and label-map masks matched by stem (``data.dataset: folder``).

Layout (``data.root``)::

    images/a.tif   (or img/; data.image_dir)    any format read_image reads: 8/16-bit, grey, RGB, RGBA
    masks/a.png    (or labels/, labelcol/; data.mask_dir)   one value per pixel, same size as the image
    splits/train.txt val.txt test.txt           optional, for data.split=files: one stem per line

``a.tif`` pairs with ``a.png``: names match without their extension. Class ids follow ``data.classes``;
``data.mask_values`` maps class names to mask values (default: value i is class i). With no mapping, two
classes and masks holding exactly 0 and one other value v (a 0/255 binary mask), v is class 1, and the
statistics say so. ``data.ignore_value`` marks pixels that losses and metrics drop: it becomes the last
id, named ``ignore``. Images larger than ``data.tile_size`` are tiled like BCSS (tiles every
``tile_stride``, the last ending at the border); smaller ones are one sample each, unpadded. Splits:
``random`` by group (the stem, or ``data.group_regex``'s first group so tiles of one slide stay together),
or ``files``. The tile index (per-tile value histograms) is built from the masks once and cached.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from sam_histo.config.errors import ConfigError
from sam_histo.data.base import cache_root, check_root, check_split, log
from sam_histo.data.io.decoded import DecodedCache
from sam_histo.data.io.readers import IMAGE_SUFFIXES, LABEL_SUFFIXES, image_shape, read_labels
from sam_histo.data.splits import split_by_slide
from sam_histo.data.io.tiling import TiledAdapter, build_index, tile_histograms
from sam_histo.data.types import ClassSpec, DataError

IMAGE_DIRS = ("images", "img")
MASK_DIRS = ("masks", "labels", "labelcol")
IGNORE = "ignore"
MAX_VALUE = 65535
EXPECT = "images/ and masks/ (or labels/) with files matched by name without extension"


def class_names(cfg) -> tuple[str, ...]:
    if len(cfg.classes) < 2:
        raise ConfigError(f"data.classes={cfg.classes}: the folder adapter needs the class names in id order, "
                          "at least two (e.g. data.classes=[background,nucleus])")
    return (*cfg.classes, IGNORE) if cfg.ignore_value is not None else tuple(cfg.classes)


def value_table(cfg) -> dict[int, int]:
    """Mask value -> class id from data.mask_values (classes not named keep value = their id) and
    data.ignore_value (-> the ignore id); ConfigError on a value given twice."""
    names = list(cfg.classes)
    for name in cfg.mask_values:
        if name not in names:
            from sam_histo.config.errors import nearest

            raise ConfigError(f"data.mask_values names class {name!r} which is not in data.classes {names}"
                              + nearest(name, names))
    table: dict[int, int] = {}
    for cid, name in enumerate(names):
        given = cfg.mask_values.get(name, cid)
        for v in ([given] if isinstance(given, int) else given):
            if not 0 <= v <= MAX_VALUE:
                raise ConfigError(f"data.mask_values[{name!r}]: value {v} outside 0..{MAX_VALUE}")
            if v in table:
                raise ConfigError(f"data.mask_values: value {v} is given to both {names[table[v]]!r} and {name!r}; "
                                  "name each class's values in data.mask_values")
            table[v] = cid
    if cfg.ignore_value is not None:
        named = [v for given in cfg.mask_values.values() for v in _as_list(given)]
        if cfg.ignore_value in named:
            raise ConfigError(f"data.ignore_value={cfg.ignore_value} is also a value of "
                              f"{names[table[cfg.ignore_value]]!r} in data.mask_values; a value has one meaning")
        table[cfg.ignore_value] = len(names)  # takes the value from a class that only had it by default
    return table


def _as_list(v) -> list[int]:
    return [v] if isinstance(v, int) else list(v)


def binary_value(seen: set[int], n_classes: int, ignore_value=None):
    """The value v read as class 1 when two classes meet masks holding exactly 0 and v (v > 1), else None."""
    extra = sorted(set(seen) - {0} - ({ignore_value} if ignore_value is not None else set()))
    if n_classes == 2 and 0 in seen and len(extra) == 1 and extra[0] > 1:
        return extra[0]
    return None


def binary_rule(cfg, seen: set[int]) -> tuple[dict[int, int], str]:
    """The value table with the 0/v binary rule applied when it applies, and a note saying what was done."""
    table = value_table(cfg)
    v = None if cfg.mask_values else binary_value(seen, len(cfg.classes), cfg.ignore_value)
    if v is not None:
        table.pop(1, None)
        table[v] = 1
        return table, (f"binary masks: value 0 is {cfg.classes[0]!r} and value {v} is {cfg.classes[1]!r} "
                       "(no data.mask_values given; the masks hold exactly these two values)")
    shown = ", ".join(f"{v} -> {class_names(cfg)[c]}" for v, c in sorted(table.items()))
    return table, f"mask values: {shown}"


def group_of(stem: str, regex: str) -> str:
    if not regex:
        return stem
    m = re.search(regex, stem)
    if m is None:
        raise DataError(f"{stem}: data.group_regex {regex!r} does not match this file name; fix the regex "
                        "so that it finds the slide (group) in every stem")
    return m.group(1) if m.re.groups else m.group(0)


def _subdir(root: Path, given: str, names: tuple[str, ...], what: str, key: str) -> Path:
    if given:
        path = root / given
        if not path.is_dir():
            raise DataError(f"{key}={given!r}: {path} is not a folder")
        return path
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root}: no {what} folder ({' or '.join(n + '/' for n in names)}); the folder adapter "
                    f"reads {EXPECT}, or set {key}")


def pair_files(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by stem; DataError for a stem with two images or two masks, an image
    without a mask (names the file and the fix). Masks without an image are logged and left out."""
    images = sorted(p for p in images_dir.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not images:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}); the folder adapter reads {EXPECT}")
    masks: dict[str, Path] = {}
    for p in sorted(masks_dir.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in LABEL_SUFFIXES:
            if p.stem in masks:
                raise DataError(f"{masks_dir}: {masks[p.stem].name} and {p.name} are two masks for the image "
                                f"{p.stem!r}; keep one mask per image")
            masks[p.stem] = p
    seen: dict[str, Path] = {}
    for img in images:
        if img.stem in seen:
            raise DataError(f"{images_dir}: {seen[img.stem].name} and {img.name} share the name {img.stem!r}; "
                            "masks are matched by name without extension, so keep one image per name")
        seen[img.stem] = img
    lone = sorted(set(masks) - set(seen))
    if lone:
        log.warning("%s: %d mask(s) have no image and are left out: %s", masks_dir, len(lone), lone[:5])
    return [(img, masks.get(img.stem, masks_dir / f"{img.stem}.png")) for img in images]


def read_split_lists(root: Path, stems: list[str]) -> dict[str, str]:
    """stem -> split from splits/{train,val,test}.txt (stems or file names, # comments)."""
    folder = root / "splits"
    if not (folder / "train.txt").is_file():
        raise DataError(f"{folder / 'train.txt'} not found: data.split=files needs splits/train.txt (and "
                        "val.txt, test.txt) with one image name per line, or use data.split=random")
    known, out = set(stems), {}
    for split in ("train", "val", "test"):
        path = folder / f"{split}.txt"
        if not path.is_file():
            continue
        for k, line in enumerate(path.read_text().splitlines(), start=1):
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
            if stem not in known:
                raise DataError(f"{path} line {k}: {name!r} is not an image of the folder; list image names "
                                "(with or without extension)")
            if stem in out and out[stem] != split:
                raise DataError(f"{path} line {k}: {name!r} is already in splits/{out[stem]}.txt; an image "
                                "belongs to one split")
            out[stem] = split
    left = sorted(known - set(out))
    if left:
        log.warning("%s: %d image(s) are in no split list and are left out: %s", folder, len(left), left[:5])
    return out


class Folder(TiledAdapter):
    """Tiles (or whole images) of a folder as Samples: image uint8 (h, w, 3), mask int64 class ids."""

    @classmethod
    def class_spec(cls, cfg) -> ClassSpec:
        names = class_names(cfg)
        value_table(cfg)  # mapping errors come before any file is read
        return ClassSpec(names, ignore_index=len(cfg.classes) if cfg.ignore_value is not None else None)

    def __init__(self, cfg, split: str = "all"):
        check_split(split)
        self.cfg, self.split = cfg, split
        self.classes = self.class_spec(cfg)
        self.root = check_root(cfg.root, "folder", EXPECT)
        self.images_dir = _subdir(self.root, cfg.image_dir, IMAGE_DIRS, "images", "data.image_dir")
        self.masks_dir = _subdir(self.root, cfg.mask_dir, MASK_DIRS, "masks", "data.mask_dir")
        self.tile, self.stride = cfg.tile_size, cfg.tile_stride
        cache = cache_root(self.root, cfg.cache_dir)
        self.decoded = DecodedCache(cache, cfg.decode_cache, cfg.decode_cache_mb)
        self._fill = None
        self._ignore = cfg.ignore_value
        cache_file = cache / f"folder_index_{self.tile}_{self.stride}.json" if cache else None
        files = build_index(pair_files(self.images_dir, self.masks_dir), cache_file,
                            [self.masks_dir.name, cfg.ignore_value], "folder index", cfg.on_error,
                            self._index_file)
        seen = {v for f in files for v in f["values"]}
        table, self.note = binary_rule(cfg, seen)
        log.info("%s: %s", self.root, self.note)
        self.lut = self._lut(table, files)
        self._items = []
        for f, where in zip(files, self._splits(files)):
            f["split"] = where
            if split == where or split == "all" and where != "none":
                self._items += [(f, y, x, np.asarray(h, np.int64), where) for y, x, h in f["tiles"]]

    def _splits(self, files: list[dict]) -> list[str]:
        stems = [Path(f["name"]).stem for f in files]
        cfg = self.cfg
        if cfg.split == "files":
            lists = read_split_lists(self.root, stems)
            return [lists.get(s, "none") for s in stems]
        groups = [group_of(s, cfg.group_regex) for s in stems]
        by_group = split_by_slide(groups, "random", cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        return [by_group[g] for g in groups]

    def _lut(self, table: dict[int, int], files: list[dict]) -> np.ndarray:
        lut = np.full(MAX_VALUE + 1, -1, np.int64)
        for v, c in table.items():
            lut[v] = c
        for f in files:
            bad = [v for v in f["values"] if lut[v] < 0]
            if bad:
                mask = self.masks_dir / f["mask"]
                raise DataError(f"{mask}: mask value(s) {bad} are not in the mapping ({self.note}); add them to "
                                "data.mask_values (class: [values]) or set data.ignore_value")
        return lut

    def _index_file(self, img: Path, mask: Path) -> dict:
        if not mask.is_file():
            raise DataError(f"{img}: no mask in {self.masks_dir} with the name {img.stem!r} (any of "
                            f"{', '.join(LABEL_SUFFIXES)}); add it or remove the image")
        h, w = image_shape(img)
        raw = self._read_codes(mask)
        if raw.shape != (h, w):
            shape = "x".join(map(str, raw.shape[::-1]))
            raise DataError(f"{img}: image is {w}x{h} but its mask {mask} is {shape}; re-export the pair at the "
                            "same resolution")
        values, codes = np.unique(raw, return_inverse=True)
        codes = codes.reshape(raw.shape)
        ignore = np.flatnonzero(values == self._ignore)

        def keep(hist):  # a tile of only ignored pixels teaches nothing
            return hist.sum() > hist[ignore].sum()

        tiles = tile_histograms(codes, self.tile, self.stride, len(values), keep)
        return {"mask": mask.name, "shape": [h, w], "values": values.tolist(), "tiles": tiles}

    def _paths(self, rec: dict) -> tuple[Path, Path]:
        return self.images_dir / rec["name"], self.masks_dir / rec["mask"]

    def _read_codes(self, path: Path) -> np.ndarray:
        arr = read_labels(path)
        if arr.ndim != 2:
            raise DataError(f"{path}: mask has shape {arr.shape}; expected (H, W) values (one page, one channel)")
        if int(arr.min(initial=0)) < 0 or int(arr.max(initial=0)) > MAX_VALUE:
            raise DataError(f"{path}: mask values outside 0..{MAX_VALUE}")
        return arr if arr.dtype in (np.uint8, np.uint16) else arr.astype(np.uint16)

    def _ids(self, codes: np.ndarray) -> np.ndarray:
        return self.lut[codes]

    def meta(self, i: int) -> dict:
        f, y, x, _, where = self._items[i]
        image, mask = self._paths(f)
        stem = Path(f["name"]).stem
        return {"source": str(image), "mask": str(mask), "slide": group_of(stem, self.cfg.group_regex),
                "split": where, "y": y, "x": x, "tile": self.tile}

    def class_counts(self, progress: bool = True) -> np.ndarray:
        """From the cached per-tile value histograms: no pixel is decoded."""
        out = np.zeros((len(self), self.classes.num_classes), np.int64)
        for i, (f, _, _, hist, _) in enumerate(self._items):
            np.add.at(out[i], self.lut[np.asarray(f["values"], np.int64)], hist)
        return out

    def fingerprint(self) -> str:
        parts = [f"{f['name']}:{f['stamp']}:{y}:{x}" for f, y, x, _, _ in self._items]
        parts += [f"lut:{sorted((int(v), int(c)) for v, c in enumerate(self.lut) if c >= 0)}",
                  f"tile:{self.tile}:{self.stride}"]
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()
