"""One entry point for every data set: ``class_spec(cfg.data)`` and ``build_dataset(cfg.data, split)``.

The adapter of each ``data.dataset`` comes from the registry in ``config/datasets.py``; ``SampleDataset``
wraps a user's own Dataset of Sample (``data.dataset: dataset``, the Python API).
"""
from __future__ import annotations

import numpy as np

from sam_histo.config.datasets import dataset_kind
from sam_histo.data.base import Adapter, check_split
from sam_histo.data.types import ClassSpec


def class_spec(cfg) -> ClassSpec:
    """Class ids of ``cfg`` (a DataConfig) without reading any data.

    BCSS: ("outside_roi", *data.classes) with ignore_index 0; LGG: background, CT, LE, IT; vesicle:
    background, vesicle (no ignore id). For kinds with fixed classes, data.classes may be empty or the
    fixed list. Adapters without fixed classes define ``class_spec(cfg)`` as a classmethod.
    """
    from sam_histo.config import ConfigError

    kind = dataset_kind(cfg.dataset)
    if kind.fixed_classes is None:
        return kind.adapter_class().class_spec(cfg)
    names = kind.fixed_classes
    if cfg.classes and tuple(cfg.classes) != names:
        raise ConfigError(f"data.classes={cfg.classes} does not match the {cfg.dataset} label codes "
                          f"{list(names)}; leave data.classes empty for {cfg.dataset}")
    return ClassSpec(names)


def build_dataset(cfg, split: str = "all") -> Adapter:
    """The adapter of ``cfg.dataset`` for ``split`` in train / val / test / all.

    The result is a Sequence of Sample with ``.classes`` (equal to ``class_spec(cfg)``), ``.split``,
    ``meta(i)``, ``label(i)``, ``class_counts()`` and ``fingerprint()``; volume kinds (vesicle) add
    ``volume()`` and ``label_volume()``.
    """
    check_split(split)
    class_spec(cfg)  # the class list check comes before any file is read
    return dataset_kind(cfg.dataset).adapter_class()(cfg, split)


class SampleDataset(Adapter):
    """Your own map-style dataset (``len`` and ``[i]`` -> Sample, e.g. a torch Dataset) as an adapter.

    ``SampleDataset.wrap(dataset, classes, split)``; every item is checked when read: image (H, W, 3)
    uint8, mask (H, W) integer class ids of ``classes``, optional instances (H, W). The class counts
    (for weights and oversampling) and the fingerprint come from one pass over the masks.
    """

    @classmethod
    def class_spec(cls, cfg) -> ClassSpec:
        from sam_histo.config import ConfigError

        if len(cfg.classes) < 2:
            raise ConfigError(f"data.classes={cfg.classes}: give your dataset's class names in id order "
                              "(at least two), e.g. sam_histo.train(cfg, train=ds, classes=['background', 'cell'])")
        if cfg.ignore_class and cfg.ignore_class not in cfg.classes:
            raise ConfigError(f"data.ignore_class={cfg.ignore_class!r} is not in data.classes {cfg.classes}")
        ignore = cfg.classes.index(cfg.ignore_class) if cfg.ignore_class else None
        return ClassSpec(tuple(cfg.classes), ignore_index=ignore)

    def __init__(self, cfg, split: str = "all"):
        from sam_histo.data.types import DataError

        raise DataError("data.dataset=dataset is your own Dataset object: pass it to sam_histo.train(cfg, train=..., "
                        "val=...) or sam_histo.evaluate(model, dataset); a config alone cannot rebuild it")

    @classmethod
    def wrap(cls, dataset, classes: ClassSpec, split: str) -> "SampleDataset":
        self = cls.__new__(cls)
        self.dataset, self.classes, self.split = dataset, classes, split
        self._items = range(len(dataset))
        self._counts = self._fp = None
        return self

    def _load(self, i: int):
        from sam_histo.data.types import DataError, Sample

        s = self.dataset[i]
        where = f"{self.split} dataset item {i}"
        if not isinstance(s, Sample):
            raise DataError(f"{where}: got {type(s).__name__}; items must be sam_histo.data.types.Sample "
                            "(image (H, W, 3) uint8, mask (H, W) class ids)")
        image, mask = np.asarray(s.image), np.asarray(s.mask)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"{where}: image {image.dtype} {image.shape}; expected (H, W, 3) uint8 RGB")
        if mask.shape != image.shape[:2] or mask.dtype.kind not in "iu":
            raise DataError(f"{where}: mask {mask.dtype} {mask.shape}; expected integer class ids of shape "
                            f"{image.shape[:2]}")
        bad = sorted(set(np.unique(mask).tolist()) - set(range(self.classes.num_classes)))
        if bad:
            raise DataError(f"{where}: mask values {bad[:5]} are not class ids of {list(self.classes.names)} "
                            f"(0..{self.classes.num_classes - 1})")
        inst = None if s.instances is None else np.asarray(s.instances, np.int64)
        return Sample(image=image, mask=mask.astype(np.int64), instances=inst,
                      meta={"source": f"{self.split}[{i}]", "slide": f"{self.split}[{i}]", **(s.meta or {}),
                            "split": self.split})

    def meta(self, i: int) -> dict:
        return self[i].meta

    def _scan(self, progress: bool) -> None:
        import hashlib

        from tqdm import tqdm

        h = hashlib.sha1(repr((self.classes.names, len(self))).encode())
        counts = np.zeros((len(self), self.classes.num_classes), np.int64)
        for i in tqdm(range(len(self)), desc=f"class counts ({self.split})", disable=not progress, leave=False):
            mask = self[i].mask
            counts[i] = np.bincount(mask.ravel(), minlength=self.classes.num_classes)
            h.update(np.ascontiguousarray(mask).tobytes())
        self._counts, self._fp = counts, h.hexdigest()

    def class_counts(self, progress: bool = True) -> np.ndarray:
        if self._counts is None:
            self._scan(progress)
        return self._counts

    def fingerprint(self) -> str:
        if self._fp is None:
            self._scan(False)
        return self._fp
