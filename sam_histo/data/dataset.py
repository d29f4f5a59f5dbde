"""One entry point for every data set: ``class_spec(cfg.data)`` and ``build_dataset(cfg.data, split)``."""
from __future__ import annotations

from sam_histo.data.base import Adapter, check_split
from sam_histo.data.types import ClassSpec

_FIXED = {"lgg": ("background", "CT", "LE", "IT"), "vesicle": ("background", "vesicle")}


def class_spec(cfg) -> ClassSpec:
    """Class ids of ``cfg`` (a DataConfig) without reading any data.

    BCSS: ("outside_roi", *data.classes) with ignore_index 0; LGG: background, CT, LE, IT; vesicle:
    background, vesicle (no ignore id). For LGG and vesicle, data.classes may be empty or the fixed list.
    """
    from sam_histo.config import ConfigError

    if cfg.dataset == "bcss":
        from sam_histo.data.bcss import class_names

        return ClassSpec(class_names(cfg.classes), ignore_index=0)
    names = _FIXED[cfg.dataset]
    if cfg.classes and tuple(cfg.classes) != names:
        raise ConfigError(f"data.classes={cfg.classes} does not match the {cfg.dataset} label codes "
                          f"{list(names)}; leave data.classes empty for {cfg.dataset}")
    return ClassSpec(names)


def build_dataset(cfg, split: str = "all") -> Adapter:
    """The adapter of ``cfg.dataset`` for ``split`` in train / val / test / all.

    The result is a Sequence of Sample with ``.classes`` (equal to ``class_spec(cfg)``), ``.split``,
    ``meta(i)``, ``label(i)``, ``class_counts()`` and ``fingerprint()``; the vesicle adapter adds
    ``volume()`` and ``label_volume()``.
    """
    check_split(split)
    class_spec(cfg)  # the class list check comes before any file is read
    if cfg.dataset == "bcss":
        from sam_histo.data.bcss import BCSS

        return BCSS(cfg, split)
    if cfg.dataset == "lgg":
        from sam_histo.data.lgg import LGG

        return LGG(cfg, split)
    from sam_histo.data.vesicle import Vesicle

    return Vesicle(cfg, split)
