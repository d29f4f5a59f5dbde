"""The Python API: train on your own Datasets, evaluate a model or a release on one.

    import sam_histo
    result = sam_histo.train("folder", train=my_train, val=my_val, classes=["background", "nucleus"],
                             overrides=["model.arch=tiny", "train.epochs=5"])
    metrics = sam_histo.evaluate(result["run_dir"], my_test)

Items are :class:`sam_histo.data.types.Sample` (image (H, W, 3) uint8, mask (H, W) class ids, optional
instances). ``train`` runs the same trainer as ``sam-histo train`` (training.loop.train) and ``evaluate``
the same validator as ``sam-histo validate`` (eval.validator.validate); only where the samples come from
differs.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence, Union

from sam_histo.config import Config, ConfigError, load_config
from sam_histo.data.types import ClassSpec

SPLITS = ("train", "val", "test")


def _config(cfg: Union[Config, str, Path, None], overrides: Sequence[str]) -> Config:
    if isinstance(cfg, Config):
        if overrides:
            from sam_histo.config import config_from_dict, to_dict
            from sam_histo.config.loader import _set_dotted, parse_override

            tree = to_dict(cfg)
            for text in overrides:
                _set_dotted(tree, *parse_override(text))
            return config_from_dict(tree)
        return cfg
    return load_config(cfg, list(overrides))


def _class_spec(classes, datasets, cfg: Config) -> ClassSpec:
    """``classes`` (a ClassSpec or names), else a dataset's ``.classes``, else ``cfg.data.classes``."""
    if classes is None:
        classes = next((d.classes for d in datasets if isinstance(getattr(d, "classes", None), ClassSpec)), None)
    if classes is None:
        classes = list(cfg.data.classes)
    if isinstance(classes, ClassSpec):
        return classes
    if len(classes) < 2:
        raise ConfigError("give the class names in id order: sam_histo.train(cfg, train=..., classes=[...]) "
                          "(or data.classes in the config)")
    return ClassSpec(tuple(classes))


def _with_classes(cfg: Config, spec: ClassSpec) -> Config:
    """The config recorded in the run folder: data.dataset=dataset with the classes of the given data."""
    ignore = spec.names[spec.ignore_index] if spec.ignore_index is not None else ""
    data = dataclasses.replace(cfg.data, dataset="dataset", classes=list(spec.names), ignore_class=ignore,
                               split="random")
    return dataclasses.replace(cfg, data=data)


def train(cfg: Union[Config, str, Path, None] = None, train=None, val=None, test=None, *,
          classes: Union[ClassSpec, Sequence[str], None] = None, overrides: Sequence[str] = (),
          accelerator=None) -> dict:
    """Train (or resume) as ``sam-histo train`` does; returns {"status", "run_dir", "best", "val", ...}.

    ``cfg``: a Config, a config name or YAML path (e.g. "folder"), or None for the defaults; ``overrides``
    dotted ``key=value`` strings applied on top. ``train`` / ``val`` / ``test``: map-style datasets of
    Sample (a torch Dataset, a list); without ``train`` the splits come from ``cfg.data`` as in the CLI.
    ``classes``: the class names in id order (or a ClassSpec with an ignore id); default the datasets'
    ``.classes`` or ``data.classes``."""
    from sam_histo.data.dataset import SampleDataset
    from sam_histo.training.loop import train as run_training

    cfg = _config(cfg, overrides)
    if train is None:
        if val is not None or test is not None:
            raise ConfigError("sam_histo.train: val/test datasets need a train dataset too")
        return run_training(cfg, accelerator)
    given = {"train": train, "val": val, "test": test}
    spec = _class_spec(classes, [d for d in given.values() if d is not None], cfg)
    cfg = _with_classes(cfg, spec)
    datasets = {k: None if d is None else SampleDataset.wrap(d, spec, k) for k, d in given.items()}
    return run_training(cfg, accelerator, datasets=datasets)


def _load(model_or_release, cfg: Optional[Config], classes):
    """(model, config, ClassSpec) from a Release, a release folder, a run folder / checkpoint, or a model."""
    import torch

    from sam_histo.release.bundle import Release, load_release

    if isinstance(model_or_release, (str, Path)):
        path = Path(model_or_release).expanduser()
        if (path / "SHA256SUMS").is_file():
            model_or_release = load_release(path)
        else:  # a run folder (its config.yaml) or a checkpoint with cfg given
            from sam_histo.data.dataset import class_spec
            from sam_histo.models.load import load_model

            if cfg is None:
                if not (path / "config.yaml").is_file():
                    raise ConfigError(f"{path}: not a release or a run folder; pass cfg= for a checkpoint")
                cfg = load_config(path / "config.yaml")
            spec = classes if isinstance(classes, ClassSpec) else class_spec(cfg.data)
            num = spec.num_classes if cfg.model.mode == "semantic" else None
            return load_model(cfg.model, num, path), cfg, spec
    if isinstance(model_or_release, Release):
        r = model_or_release
        return r.model, cfg or r.config, classes if isinstance(classes, ClassSpec) else r.classes
    if isinstance(model_or_release, torch.nn.Module):
        if cfg is None:
            raise ConfigError("sam_histo.evaluate(model, dataset, cfg=...): a bare model needs its config")
        return model_or_release, cfg, None
    raise TypeError(f"evaluate: expected a model, a Release or a path, got {type(model_or_release).__name__}")


def evaluate(model_or_release, dataset, cfg: Union[Config, str, Path, None] = None, *,
             classes: Union[ClassSpec, Sequence[str], None] = None, out_dir: Optional[str | Path] = None,
             split: str = "test", progress: bool = True) -> dict:
    """The metrics JSON (per class, macro, micro, confusion matrix) of a model on your ``dataset``, as
    ``sam-histo validate`` computes it; with ``out_dir`` also metrics.json, report.md and figures there.

    ``model_or_release``: a Release (``sam_histo.load_release``), a release folder, a run folder, or a
    model with ``cfg`` (a Config, config name or path). ``dataset``: a map-style dataset of Sample whose
    mask ids follow the model's classes; ``split`` only names it in the report."""
    from sam_histo.data.dataset import SampleDataset
    from sam_histo.eval.validator import validate

    if cfg is not None and not isinstance(cfg, Config):
        cfg = load_config(cfg)
    model, cfg, spec = _load(model_or_release, cfg, classes)
    spec = spec or _class_spec(classes, [dataset], cfg)
    adapter = SampleDataset.wrap(dataset, spec, split)
    source = str(model_or_release) if isinstance(model_or_release, (str, Path)) else type(model_or_release).__name__
    return validate(model, cfg, split, Path(out_dir) if out_dir else None, checkpoint=source, progress=progress,
                    adapter=adapter)
