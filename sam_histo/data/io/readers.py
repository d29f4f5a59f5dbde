"""File readers shared by the adapters and ``sam-histo score``: images of any common format, label maps.

``read_image(path) -> (rgb, meta)``: PNG, JPEG, BMP, TIFF (tifffile for .tif/.tiff, PIL otherwise),
8- or 16-bit, grey (promoted to RGB), RGB or RGBA (alpha dropped), as (H, W, 3) uint8. ``meta`` says what
the file held (``bits``, ``channels``, ``reader``) so callers can extend it (e.g. the resolution from TIFF
tags). ``image_shape(path)`` reads the header only. ``read_labels(path)`` returns a label map or volume
as an integer array (PNG, TIFF, HDF5, .npy).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sam_histo.data.types import DataError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".h5", ".hdf5", ".hdf", ".npy")
_TIFF = (".tif", ".tiff")


def _fail(path: Path, what: str, e: Exception) -> DataError:
    return DataError(f"{path}: cannot read the {what} ({e}); re-export it as PNG or TIFF or remove it")


def to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Scale an image array to uint8 by its type's range: 16-bit / 257, floats in [0, 1] * 255."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind in "iu":
        hi = int(arr.max(initial=0))
        if arr.min(initial=0) < 0 or hi > 65535:
            raise DataError(f"{path}: integer pixel values outside 0..65535; save it as 8- or 16-bit")
        if arr.dtype.itemsize == 1 or hi <= 255 and arr.dtype != np.uint16:
            return arr.astype(np.uint8)
        return (arr.astype(np.uint32) // 257).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: the image holds NaN or infinite values")
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    raise DataError(f"{path}: pixel type {arr.dtype} is not an image type")


def to_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4) or planar (3|4, H, W) -> (H, W, 3); alpha is dropped, grey repeated."""
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] > 4:
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"{path}: image shape {arr.shape} is not (H, W) grey or (H, W, 3|4) colour "
                        "(multi-page stacks are not images: save one page per file)")
    if arr.shape[2] in (1, 2):  # grey, grey + alpha
        arr = np.repeat(arr[..., :1], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def read_image(path: str | Path) -> tuple[np.ndarray, dict]:
    """RGB uint8 (H, W, 3) and what the file held: {"bits", "channels", "reader"}."""
    path = Path(path)
    if path.suffix.lower() in _TIFF:
        import tifffile

        try:
            raw = tifffile.imread(path)
        except Exception as e:  # tifffile raises many types on corrupt files
            raise _fail(path, "image", e) from None
        reader = "tifffile"
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                raw = np.asarray(im)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise _fail(path, "image", e) from None
        reader = "pillow"
    meta = {"bits": 8 * raw.dtype.itemsize if raw.dtype.kind in "iu" else raw.dtype.name,
            "channels": 1 if raw.ndim == 2 else int(raw.shape[-1] if raw.shape[-1] <= 4 else raw.shape[0]),
            "reader": reader}
    return to_rgb(to_uint8(raw, path), path), meta


def image_shape(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header only."""
    path = Path(path)
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shape = tf.series[0].shape if tf.series else tf.pages[0].shape
                axes = tf.series[0].axes if tf.series else ""
            if "Y" in axes and "X" in axes:
                return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
            return int(shape[0]), int(shape[1])
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return h, w
    except Exception as e:  # corrupt or unknown file
        raise _fail(path, "image", e) from None


def read_labels(path: str | Path, key: str = "main", grey_rgb: bool = True) -> np.ndarray:
    """A label map or volume as an integer array; DataError naming the file on anything else.

    PNG (single channel: L, P, I;16, I; with ``grey_rgb`` an RGB PNG whose three channels are equal is read
    as grey), TIFF (pages = a volume), HDF5 (dataset ``key``) or .npy. Booleans become 0/1."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".png", ".jpg", ".jpeg", ".bmp"):
            arr = _read_label_png(path, grey_rgb)
        elif suffix in _TIFF:
            import tifffile

            arr = tifffile.imread(path)
        elif suffix in (".h5", ".hdf5", ".hdf"):
            import h5py

            with h5py.File(path, "r") as f:
                if key not in f:
                    raise DataError(f"{path}: no dataset {key!r} (it has {sorted(f.keys())}); pass --key")
                arr = f[key][()]
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            raise DataError(f"{path}: unsupported file type; use one of {', '.join(LABEL_SUFFIXES)}")
    except DataError:
        raise
    except Exception as e:  # unreadable or corrupt file
        raise DataError(f"{path}: cannot read it as a label map ({e})") from None
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise DataError(f"{path}: holds {arr.dtype} values; label maps must hold integer ids")
    return arr


def _read_label_png(path: Path, grey_rgb: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if grey_rgb and im.mode in ("RGB", "RGBA"):
            arr = np.asarray(im)
            if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
                return np.ascontiguousarray(arr[..., 0])
        if im.mode in ("RGB", "RGBA", "LA", "CMYK"):
            raise DataError(f"{path}: a colour image (mode {im.mode}); save label maps as single-channel PNGs "
                            "of class values (mode L, P or I;16)")
        return np.array(im)
