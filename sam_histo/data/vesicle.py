"""EM vesicles: one image volume and one instance-label volume of the same shape (Z, Y, X).

Layout (``data.root``)::

    volume.h5   (data.volume)  image volume, HDF5 dataset ``data.dataset_key`` (default ``main``, as
                               PyTorch Connectomics writes it), or a multi-page TIFF (.tif / .tiff)
    labels.h5   (data.labels)  instance labels, dataset ``data.label_key``: 0 background, each id one vesicle

Training sees 2-D z-slices: the grey slice replicated to RGB uint8 (Y, X, 3), ``instances`` (Y, X) int64 and
the class map ``instances > 0`` (0 background, 1 vesicle). ``volume()`` and ``label_volume()`` give the 3-D
arrays of the split for 3-D evaluation. With ``data.split=z`` the volume is cut along z into contiguous
blocks: train first, then ``val_fraction`` of the slices, then ``test_fraction`` (adjacent slices are
nearly identical, so a random split of slices would leak).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from sam_histo.data.base import Adapter, check_root, check_split
from sam_histo.data.types import ClassSpec, DataError, Sample

NAMES = ("background", "vesicle")


def read_volume(path: Path, key: str) -> np.ndarray:
    """A 3-D array from HDF5 (dataset ``key``) or a multi-page TIFF."""
    if not path.is_file():
        raise DataError(f"{path} not found: set data.volume / data.labels to files under data.root")
    suffix = path.suffix.lower()
    try:
        if suffix in (".h5", ".hdf5", ".hdf"):
            import h5py

            with h5py.File(path, "r") as f:
                if key not in f:
                    raise DataError(f"{path}: no dataset {key!r}; datasets here: {sorted(f.keys())} "
                                    "(set data.dataset_key / data.label_key)")
                arr = f[key][()]
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            raise DataError(f"{path}: unsupported volume format {suffix!r}; use HDF5 (.h5) or TIFF (.tif)")
    except DataError:
        raise
    except Exception as e:  # h5py and tifffile raise many types for damaged files
        raise DataError(f"{path}: cannot read the volume ({type(e).__name__}: {e})") from None
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a (Z, Y, X) volume, got shape {arr.shape}")
    return arr


def to_uint8(vol: np.ndarray) -> np.ndarray:
    """Grey volume -> uint8: kept as is when already uint8, else min-max scaled to 0..255."""
    if vol.dtype == np.uint8:
        return vol
    vol = vol.astype(np.float32)
    lo, hi = float(vol.min()), float(vol.max())
    return np.round((vol - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.uint8)


def z_blocks(depth: int, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    """split -> [z0, z1): train first, then val, then test; each non-empty fraction gets a slice."""
    n_val = max(int(round(val_fraction * depth)), 1 if val_fraction > 0 else 0)
    n_test = max(int(round(test_fraction * depth)), 1 if test_fraction > 0 else 0)
    n_train = depth - n_val - n_test
    if n_train < 1:
        raise DataError(f"a volume of {depth} slices leaves none for training with val_fraction "
                        f"{val_fraction} and test_fraction {test_fraction}")
    return {"train": (0, n_train), "val": (n_train, n_train + n_val),
            "test": (n_train + n_val, depth), "all": (0, depth)}


class Vesicle(Adapter):
    """Z-slices of one EM volume as Samples with instance maps; the 3-D arrays via volume()."""

    def __init__(self, cfg, split: str = "all"):
        check_split(split)
        self.cfg, self.split = cfg, split
        self.root = check_root(cfg.root, "vesicle", f"{cfg.volume} and {cfg.labels}")
        self.volume_path, self.labels_path = self.root / cfg.volume, self.root / cfg.labels
        image = read_volume(self.volume_path, cfg.dataset_key)
        labels = read_volume(self.labels_path, cfg.label_key)
        if image.shape != labels.shape:
            raise DataError(f"{self.volume_path} has shape {image.shape} but {self.labels_path} has "
                            f"{labels.shape}; the image and label volumes must match voxel for voxel")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{self.labels_path}: labels are {labels.dtype}; instance ids must be integers")
        if labels.min() < 0:
            raise DataError(f"{self.labels_path}: negative label ids; 0 is background, each id > 0 one vesicle")
        self.blocks = z_blocks(image.shape[0], cfg.val_fraction, cfg.test_fraction)
        self.z0, self.z1 = self.blocks[split]
        self._image, self._labels = to_uint8(image), labels
        self.classes = ClassSpec(NAMES)
        self._items = list(range(self.z0, self.z1))

    def volume(self) -> np.ndarray:
        """The split's image volume (Z', Y, X) uint8."""
        return self._image[self.z0:self.z1]

    def label_volume(self) -> np.ndarray:
        """The split's instance volume (Z', Y, X) int64, 0 = background."""
        return self._labels[self.z0:self.z1].astype(np.int64)

    def _split_of(self, z: int) -> str:
        return next(s for s in ("train", "val", "test") if self.blocks[s][0] <= z < self.blocks[s][1])

    def meta(self, i: int) -> dict:
        z = self._items[i]
        return {"source": str(self.volume_path), "labels": str(self.labels_path), "slide": self.volume_path.stem,
                "split": self._split_of(z), "z": z}

    def label(self, i: int) -> np.ndarray:
        return (self._labels[self._items[i]] > 0).astype(np.int64)

    def _load(self, i: int) -> Sample:
        z = self._items[i]
        grey = self._image[z]
        inst = self._labels[z].astype(np.int64)
        return Sample(image=np.repeat(grey[..., None], 3, axis=-1), mask=(inst > 0).astype(np.int64),
                      instances=inst, meta=self.meta(i))

    def class_counts(self, progress: bool = True) -> np.ndarray:
        fg = (self._labels[self.z0:self.z1] > 0).reshape(self.z1 - self.z0, -1).sum(1).astype(np.int64)
        plane = self._labels.shape[1] * self._labels.shape[2]
        return np.stack([plane - fg, fg], axis=1) if len(fg) else np.zeros((0, 2), np.int64)

    def fingerprint(self) -> str:
        parts = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (self.volume_path, self.labels_path)]
        parts.append(f"{self.z0}:{self.z1}")
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()
