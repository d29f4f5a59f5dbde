"""One entry point for every data set: ``class_spec(cfg.data)`` and ``build_dataset(cfg.data, split)``.

The adapter of each ``data.dataset`` comes from the registry in ``config/datasets.py``.
"""
from __future__ import annotations

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
