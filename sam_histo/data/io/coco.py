"""COCO instance annotations (``data.dataset: coco``): a COCO JSON plus its image folder.

Layout (``data.root``)::

    annotations.json   (data.annotations)   images, annotations (polygons or RLE), categories
    images/            (or img/; data.image_dir)   the files the JSON's ``file_name`` names, inside this folder

Classes: ``data.classes`` in id order; id 0 is every pixel no annotation covers (name it e.g.
``background``) and the other names are COCO category names (default: background, then every category in
id order). Categories not named are left out (their pixels stay class 0), as the log says. Each sample is
one whole image: the class map (larger objects painted first, so a small one on top stays visible) and the
instance map (1..K in that order; crowd regions get their class but no instance). Masks are decoded with
pycocotools (polygons, uncompressed and compressed RLE). Splits as the folder adapter: random by group
(stem or ``data.group_regex``) or ``files`` (``splits/*.txt``).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from sam_histo.config.errors import ConfigError, nearest
from sam_histo.data.base import Adapter, check_root, check_split, log
from sam_histo.data.folder import IMAGE_DIRS, _subdir, group_of, read_split_lists
from sam_histo.data.io.readers import read_image
from sam_histo.data.io.tiling import stamp
from sam_histo.data.splits import split_by_slide
from sam_histo.data.types import ClassSpec, DataError, Sample


def read_coco(path: Path) -> dict:
    """The JSON with its references checked: {"images": {id: record}, "anns": {image id: [ann]},
    "categories": {id: name}}; DataError naming the file and the entry otherwise."""
    try:
        tree = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: set data.annotations to the COCO instances JSON") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(tree, dict) or not all(isinstance(tree.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{path}: a COCO file needs the lists 'images' and 'categories' (and 'annotations')")
    try:
        cats = {int(c["id"]): str(c["name"]) for c in tree["categories"]}
        images = {int(im["id"]): {"file_name": str(im["file_name"]), "height": int(im["height"]),
                                  "width": int(im["width"])} for im in tree["images"]}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: every category needs id and name, every image id, file_name, height and "
                        f"width ({type(e).__name__}: {e})") from None
    anns: dict[int, list] = {i: [] for i in images}
    for k, a in enumerate(tree.get("annotations", [])):
        where = f"{path}: annotation {a.get('id', k) if isinstance(a, dict) else k}"
        if not isinstance(a, dict) or a.get("image_id") not in images or a.get("category_id") not in cats:
            raise DataError(f"{where} names an image_id or category_id that the file does not define")
        if "segmentation" not in a:
            raise DataError(f"{where} has no segmentation (polygons or RLE)")
        anns[a["image_id"]].append(a)
    return {"images": images, "anns": anns, "categories": cats}


def decode(segmentation, h: int, w: int, where: str) -> np.ndarray:
    """(h, w) bool mask of one COCO segmentation: polygons, uncompressed RLE or compressed RLE."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, h, w)
        else:
            rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
        with warnings.catch_warnings():  # numpy 2 __array__(copy=...) notice from pycocotools; result correct
            warnings.simplefilter("ignore", DeprecationWarning)
            out = mask_utils.decode(rle)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise DataError(f"{where}: cannot decode its segmentation ({type(e).__name__}: {e})") from None
    if out.shape != (h, w):
        raise DataError(f"{where}: its RLE is {out.shape[1]}x{out.shape[0]}, the image {w}x{h}")
    return out.astype(bool)


def paint(anns: list, h: int, w: int, cat_to_class: dict[int, int], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(class map, instance map) (h, w) int64: larger objects first; crowds get no instance id."""
    masks = [(decode(a["segmentation"], h, w, f"{where} annotation {a.get('id')}"), a) for a in anns
             if a["category_id"] in cat_to_class]
    masks.sort(key=lambda ma: -int(ma[0].sum()))
    classes, instances = np.zeros((h, w), np.int64), np.zeros((h, w), np.int64)
    k = 0
    for m, a in masks:
        classes[m] = cat_to_class[a["category_id"]]
        if not a.get("iscrowd", 0):
            k += 1
            instances[m] = k
        else:
            instances[m] = 0
    return classes, instances


class Coco(Adapter):
    """Whole images of a COCO file as Samples: image (H, W, 3) uint8, class map, instance map."""

    @classmethod
    def class_spec(cls, cfg) -> ClassSpec:
        if cfg.classes and len(cfg.classes) < 2:
            raise ConfigError(f"data.classes={cfg.classes}: give the class of unannotated pixels first, then "
                              "COCO category names (e.g. [background, nucleus])")
        if not cfg.classes:  # the names come from the JSON: read it (small) to know them
            root = check_root(cfg.root, "COCO", "an annotations JSON and images/")
            cats = read_coco(_annotations(root, cfg))["categories"]
            return ClassSpec(("background", *(cats[i] for i in sorted(cats))))
        return ClassSpec(tuple(cfg.classes))

    def __init__(self, cfg, split: str = "all"):
        check_split(split)
        self.cfg, self.split = cfg, split
        self.root = check_root(cfg.root, "COCO", "an annotations JSON and images/")
        self.json_path = _annotations(self.root, cfg)
        self.coco = read_coco(self.json_path)
        self.classes = self.class_spec(cfg)
        self.images_dir = _subdir(self.root, cfg.image_dir, IMAGE_DIRS, "images", "data.image_dir")
        self.cat_to_class = self._category_map()
        ids = sorted(self.coco["images"])
        stems = [Path(self.coco["images"][i]["file_name"]).stem for i in ids]
        if cfg.split == "files":
            lists = read_split_lists(self.root, stems)
            where = [lists.get(s, "none") for s in stems]
        else:
            groups = [group_of(s, cfg.group_regex) for s in stems]
            by = split_by_slide(groups, "random", cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
            where = [by[g] for g in groups]
        self._items = [(i, w) for i, w in zip(ids, where) if w == split or split == "all" and w != "none"]

    def _category_map(self) -> dict[int, int]:
        by_name = {name: cid for cid, name in self.coco["categories"].items()}
        names = self.classes.names
        for name in names[1:]:
            if name not in by_name:
                raise ConfigError(f"data.classes names {name!r}, which is no category of {self.json_path} "
                                  f"({sorted(by_name)})" + nearest(name, by_name))
        left = sorted(n for n in by_name if n not in names[1:])
        if left:
            log.info("%s: categories %s are not in data.classes; their pixels are class %r", self.json_path,
                     left, names[0])
        return {by_name[n]: k for k, n in enumerate(names) if k and n in by_name}

    def _path(self, rec: dict) -> Path:
        name = Path(rec["file_name"])
        path = (self.images_dir / name).resolve()
        if name.is_absolute() or ".." in name.parts or not path.is_relative_to(self.images_dir.resolve()):
            raise DataError(f"{self.json_path}: file_name {rec['file_name']!r} leaves the image folder; COCO "
                            "file names are relative to it")
        return path

    def _maps(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image_id, _ = self._items[i]
        rec = self.coco["images"][image_id]
        return paint(self.coco["anns"][image_id], rec["height"], rec["width"], self.cat_to_class,
                     f"{self.json_path} image {image_id}")

    def meta(self, i: int) -> dict:
        image_id, where = self._items[i]
        rec = self.coco["images"][image_id]
        stem = Path(rec["file_name"]).stem
        return {"source": str(self._path(rec)), "image_id": image_id, "slide": group_of(stem, self.cfg.group_regex),
                "split": where}

    def label(self, i: int) -> np.ndarray:
        return self._maps(i)[0]

    def _load(self, i: int) -> Sample:
        image_id, _ = self._items[i]
        rec = self.coco["images"][image_id]
        path = self._path(rec)
        if not path.is_file():
            raise DataError(f"{path}: not found; {self.json_path} names it (image {image_id}); put it in "
                            f"{self.images_dir} or fix file_name")
        rgb, _ = read_image(path)
        if rgb.shape[:2] != (rec["height"], rec["width"]):
            raise DataError(f"{path}: the image is {rgb.shape[1]}x{rgb.shape[0]} but {self.json_path} says "
                            f"{rec['width']}x{rec['height']}")
        classes, instances = self._maps(i)
        return Sample(image=rgb, mask=classes, instances=instances, meta=self.meta(i))

    def fingerprint(self) -> str:
        parts = [str(stamp(self.json_path)), repr(self.classes.names), repr([i for i, _ in self._items])]
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def _annotations(root: Path, cfg) -> Path:
    path = Path(cfg.annotations).expanduser()
    return path if path.is_absolute() else root / path
