"""Inputs and outputs of `sam-histo predict`: finding and reading images, and the files written per image.

Per input image ``KEY`` (its path relative to ``--input`` without the suffix, so sub-folders are kept)::

    labels/KEY.png          class ids, single channel (uint8; uint16 from 256 classes on)
    overlays/KEY.png        the label map over the image in the class colours        (--overlay, default on)
    rle/KEY.json            COCO-style result records, one per class present         (--rle, default on)
    probs/KEY/ID_CLASS.png  per-class probability, uint8 = round(255 * p)            (--probs)
    scores/KEY.ID_CLASS.npy float32 probability of the heatmap class                 (--heatmap-class)

``ID_CLASS`` is the class id and its name with anything but ``A-Za-z0-9_.+-`` replaced by ``_`` (e.g.
``1_tumor``): a class name from a bundle never becomes a path.
    heatmaps/KEY.png        the cleaned heatmap, 0 / 255                             (--heatmap-class)

Probability maps are 8-bit PNGs, one per class: every image viewer, ImageJ and QuPath open them, they are
about a quarter of float32 before compression, and 1/255 steps are far finer than any decision made on a
probability. The heatmap's z-scores and threshold need exact values, so the heatmap class's probabilities are
also kept as float32 ``.npy``; they let a resumed run redo the per-slide heatmap step without re-running the
model. Every file is written atomically, so an image whose files all exist is finished and is skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from sam_histo.data.types import DataError
from sam_histo.files import safe_file_part

SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
MAX_PIXELS = 200_000_000  # about 14 k x 14 k: the sliding-window accumulators take 4 * (C + 1) bytes a pixel


def list_inputs(path: str | Path, recursive: bool = False) -> list[tuple[Path, str]]:
    """(file, key) pairs, sorted: one image, or the images of a folder (``recursive``: of its sub-folders
    too). Keys are unique; two files that differ only by suffix (a.png, a.tif) are refused."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"{path}: not an image this command reads ({', '.join(SUFFIXES)})")
        return [(path, path.stem)]
    if not path.is_dir():
        raise DataError(f"--input {path} does not exist")
    files = sorted(p for p in (path.rglob("*") if recursive else path.iterdir())
                   if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"--input {path} holds no images ({', '.join(SUFFIXES)})"
                        + ("" if recursive else "; --recursive also searches its sub-folders"))
    seen: dict[str, Path] = {}
    out = []
    for f in files:
        key = f.relative_to(path).with_suffix("").as_posix()
        if key in seen:
            raise DataError(f"{seen[key]} and {f} would write the same outputs ({key}); rename one")
        seen[key] = f
        out.append((f, key))
    return out


def _to_rgb(a: np.ndarray, path: Path) -> np.ndarray:
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):  # planar TIFF (C, H, W)
        a = np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8:
        raise DataError(f"{path}: {a.dtype} pixels; predict reads 8-bit images (convert it to 8-bit RGB first)")
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return np.ascontiguousarray(a[..., :3])
    raise DataError(f"{path}: image of shape {a.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def image_hw(path: Path) -> tuple[int, int]:
    """(height, width) from the header alone (PIL's decompression-bomb check is ours here: ``check_pixels``)."""
    if _is_tiff(path):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
        except (ValueError, OSError, IndexError, tifffile.TiffFileError) as e:
            raise DataError(f"{path}: not a readable TIFF ({e})") from None
        planar = len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4)
        return (shape[1], shape[2]) if planar else (shape[0], shape[1])
    from PIL import Image, UnidentifiedImageError

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return h, w


def check_pixels(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(h, w), or a DataError before anything is decoded when the header claims more than ``max_pixels``."""
    h, w = image_hw(path)
    if h * w > max_pixels:
        raise DataError(f"{path}: {w} x {h} pixels is more than --max-pixels={max_pixels}; cut the slide into "
                        "tiles (they can share a slide id with --slide-pattern) or raise --max-pixels")
    return h, w


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """uint8 RGB (H, W, 3) of a PNG, JPEG or TIFF (first page / series); grey is repeated, alpha dropped.
    The size is checked from the header first (``check_pixels``)."""
    check_pixels(path, max_pixels)
    if _is_tiff(path):
        import tifffile

        try:
            a = tifffile.imread(path)
        except (ValueError, OSError, tifffile.TiffFileError) as e:
            raise DataError(f"{path}: not a readable TIFF ({e})") from None
    else:
        from PIL import Image, UnidentifiedImageError

        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size was checked above
        try:
            with Image.open(path) as im:
                a = np.asarray(im.convert("RGB") if im.mode in ("P", "CMYK", "YCbCr", "LA") else im)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: not a readable image ({e})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    rgb = _to_rgb(np.asarray(a), path)
    if not rgb.flags.writeable:  # PIL hands out read-only buffers; torch.from_numpy warns on those
        rgb = rgb.copy()
    return rgb


class ImageRows:
    """Rows of an image, read a band at a time: ``rows(y0, y1) -> uint8 (y1 - y0, W, 3)``. TIFFs are read
    by region through zarr (only the strips / tiles of the band are decoded); other formats are decoded
    once and sliced. ``with ImageRows(path, max_pixels) as src: src.h, src.w, src.rows(...)``."""

    def __init__(self, path: Path, max_pixels: int = MAX_PIXELS):
        self.path = path
        self.h, self.w = check_pixels(path, max_pixels)
        self._store = self._z = self._full = None
        if _is_tiff(path):
            import tifffile
            import zarr

            try:
                self._store = tifffile.imread(path, aszarr=True)
                z = zarr.open(self._store, mode="r")
            except (ValueError, OSError, KeyError, tifffile.TiffFileError) as e:
                raise DataError(f"{path}: not a readable TIFF ({e})") from None
            self._z = z if hasattr(z, "shape") else z[next(iter(z.array_keys()))]  # a pyramid: level 0
            self._planar = self._z.ndim == 3 and self._z.shape[0] in (3, 4) and self._z.shape[-1] not in (3, 4)
        else:
            self._full = read_image(path, max_pixels)

    def rows(self, y0: int, y1: int) -> np.ndarray:
        if self._full is not None:
            return self._full[y0:y1]
        band = self._z[:, y0:y1] if self._planar else self._z[y0:y1]
        return _to_rgb(np.asarray(band), self.path)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> "ImageRows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Outputs:
    """Paths of the files of one image; which ones are asked for follows the command's options."""

    def __init__(self, out: Path, key: str, class_names, *, overlay: bool, rle: bool, probs: bool,
                 heatmap_class: Optional[str]):
        self.out, self.key, self.names = out, key, list(class_names)
        self.overlay, self.rle, self.probs, self.heatmap_class = overlay, rle, probs, heatmap_class

    @property
    def label(self) -> Path:
        return self.out / "labels" / f"{self.key}.png"

    @property
    def overlay_png(self) -> Path:
        return self.out / "overlays" / f"{self.key}.png"

    @property
    def rle_json(self) -> Path:
        return self.out / "rle" / f"{self.key}.json"

    def class_part(self, class_id: int) -> str:
        """``ID_NAME``: the id keeps names apart, the sanitised name keeps files readable."""
        return f"{class_id}_{safe_file_part(self.names[class_id])}"

    def prob_png(self, class_id: int) -> Path:
        return self.out / "probs" / self.key / f"{self.class_part(class_id)}.png"

    @property
    def score_npy(self) -> Path:
        return self.out / "scores" / f"{self.key}.{self.class_part(self.names.index(self.heatmap_class))}.npy"

    @property
    def heatmap_png(self) -> Path:
        return self.out / "heatmaps" / f"{self.key}.png"

    def wanted(self, prob_ids) -> list[Path]:
        """Every per-image file this run writes (heatmap PNGs come later, over all images of a slide)."""
        paths = [self.label]
        paths += [self.overlay_png] if self.overlay else []
        paths += [self.rle_json] if self.rle else []
        paths += [self.prob_png(c) for c in prob_ids] if self.probs else []
        paths += [self.score_npy] if self.heatmap_class else []
        return paths

    def done(self, prob_ids) -> bool:
        return all(p.is_file() for p in self.wanted(prob_ids))


def save_npy(path: Path, array: np.ndarray) -> Path:
    from sam_histo.files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    return path
