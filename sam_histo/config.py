"""Typed configuration: dataclasses with defaults, YAML that lists only differences, dotted overrides.

``load_config(path, overrides)`` is the single entry point. Unknown keys and wrong types fail with the
dotted key and the nearest valid key (nanoGPT's configurator does the same for its globals); cross-field
rules are checked once, after overrides, in ``Config.check``. Each callee receives its own sub-config
(``cfg.data``, ``cfg.model`` ...), never the whole namespace.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration problem; the message names the key (or file) and the fix."""


# --------------------------------------------------------------------------------------------- sections
@dataclass
class TissueConfig:
    """HSV tissue detection (FIELD_NOTES: saturation > 15, value < 240, close then open with 5x5)."""

    sat_min: int = 15
    val_max: int = 240
    kernel: int = 5


@dataclass
class DataConfig:
    dataset: Literal["bcss", "lgg", "vesicle"] = "bcss"
    root: str = ""
    # Trained class names in id order. For BCSS the ids start at 1 (id 0 is outside_roi, the ignore index);
    # for LGG and vesicles id 0 is background and is a real class.
    classes: list[str] = field(default_factory=list)
    # BCSS only: trained class -> list of BCSS code names (gtruth_codes.tsv) grouped into it.
    grouping: dict[str, list[str]] = field(default_factory=dict)
    tile_size: int = 1024
    tile_stride: int = 1024
    split: Literal["random", "institute", "z"] = "random"
    val_fraction: float = 0.15
    test_fraction: float = 0.0
    # BCSS institute split: TCGA site codes (e.g. "OL", "LL") for each held-out split.
    val_sites: list[str] = field(default_factory=list)
    test_sites: list[str] = field(default_factory=list)
    on_error: Literal["raise", "skip"] = "raise"
    tissue: TissueConfig = field(default_factory=TissueConfig)
    # Vesicle volumes.
    volume: str = "volume.h5"
    labels: str = "labels.h5"
    dataset_key: str = "main"
    label_key: str = "main"


@dataclass
class ClassWeightConfig:
    power: float = 1.0  # weight ~ (1 / frequency) ** power
    clip: list[float] = field(default_factory=lambda: [0.1, 20.0])  # before normalising to mean 1
    override: dict[str, float] = field(default_factory=dict)


@dataclass
class SamplingConfig:
    # none: every image once per epoch; auto: rates from the statistics so each class shows up in a
    # comparable share of samples; manual: the rates below (rarest class of an image decides its rate).
    oversample: Literal["none", "auto", "manual"] = "auto"
    rates: dict[str, float] = field(default_factory=dict)
    max_rate: float = 20.0
    iter_per_epoch: Optional[int] = None
    class_weights: ClassWeightConfig = field(default_factory=ClassWeightConfig)


@dataclass
class PromptConfig:
    n_pos: int = 1
    n_neg: int = 0
    p_box: float = 0.5  # share of objects prompted with a box (the rest with points)
    box_noise: float = 0.1  # std of box-corner noise as a fraction of the box side
    max_objects: int = 16  # per image and step
    min_area: int = 16  # components smaller than this get no prompt


@dataclass
class ModelConfig:
    # A packaged sam2 config name (sam2.1_hiera_t, sam2.1_hiera_s, sam2.1_hiera_b+, sam2.1_hiera_l; short
    # forms hiera_t ... and sam2_hiera_* for SAM 2.0), a named small config for tests (tiny), or a path to
    # a sam2 YAML.
    arch: str = "sam2.1_hiera_t"
    image_size: int = 1024  # any multiple of 32; feature sizes follow
    # A name from third_party/manifest.yaml (sam2.1_hiera_tiny, hiera_t, ...; fetched into cache_dir by
    # `sam-histo fetch-weights NAME`) or a path to a .pt ({"model": state_dict}) / .safetensors file.
    # None: random initialisation.
    checkpoint: Optional[str] = None
    strict: bool = True  # every key must match; false loads what fits (shapes must still agree)
    cache_dir: Optional[str] = None  # default $SAM_HISTO_CACHE or ~/.cache/sam_histo
    # Extra overrides of the sam2 YAML, Hydra spelling: "key=value" changes, "++key=value" adds.
    overrides: list[str] = field(default_factory=list)
    mode: Literal["semantic", "prompted"] = "semantic"
    multimask: bool = True  # prompted mode: 3 masks per prompt (the best one is trained) or 1


@dataclass
class StainConfig:
    method: Literal["none", "macenko", "reinhard"] = "none"
    reference: Optional[str] = None
    fallback: Literal["reinhard", "identity"] = "reinhard"


@dataclass
class AugmentConfig:
    flip: float = 0.5
    rot90: float = 0.5
    affine: float = 0.0
    elastic: float = 0.0
    elastic_alpha: float = 30.0
    elastic_sigma: float = 4.0
    hed: float = 0.0  # probability of HED jitter (H&E only)
    hed_alpha: float = 0.3
    hed_beta: float = 0.3
    brightness_contrast: float = 0.0
    blur: float = 0.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    noise: float = 0.0  # EM: Gaussian noise probability
    cutout: float = 0.0  # EM: cutout probability


@dataclass
class PhaseConfig:
    """One unfreeze phase: from ``start_epoch`` on, these Hiera stages train at this lr."""

    start_epoch: int = 0
    stages: Union[Literal["all", "none"], list[int]] = "none"
    lr: float = 1e-4
    warmup_steps: int = 0
    min_lr: float = 1e-6


@dataclass
class LossConfig:
    # Prompted mode (SAM2's recipe): weights of focal, dice, IoU-prediction MSE and object-score losses.
    weights: dict[str, float] = field(
        default_factory=lambda: {"mask": 20.0, "dice": 1.0, "iou": 1.0, "class": 1.0}
    )
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # Semantic mode.
    semantic: Literal["ce", "focal"] = "ce"
    semantic_dice: float = 1.0


@dataclass
class EarlyStopConfig:
    metric: Literal["dice", "iou", "recall", "f1"] = "dice"  # macro per-class, never binary tissue
    patience: int = 10
    min_delta: float = 0.001


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 4
    grad_accum: int = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    num_workers: int = 2
    weight_decay: float = 0.02
    grad_clip: float = 1.0
    layer_decay: float = 0.9
    train_decoder: bool = True
    train_prompt_encoder: bool = True
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    val_every: int = 1
    checkpoint_every_steps: int = 500
    resume: str = "auto"  # auto | never | path to a checkpoint folder
    max_nonfinite: int = 10
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class EvalConfig:
    split: Literal["train", "val", "test"] = "val"
    window_overlap: float = 0.25
    batch_size: int = 4
    prompt_seed: int = 1234


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stain: StainConfig = field(default_factory=StainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def check(self) -> "Config":
        """Cross-field rules; each failure names the keys involved."""
        _check_rules(self)
        return self


# ------------------------------------------------------------------------------------------- rules
def _check_rules(cfg: Config) -> None:
    if cfg.model.image_size % 32:
        raise ConfigError(
            f"model.image_size={cfg.model.image_size} must be a multiple of 32 (Hiera downsamples by 32)"
        )
    if cfg.data.tile_stride <= 0 or cfg.data.tile_stride > cfg.data.tile_size:
        raise ConfigError(
            f"data.tile_stride={cfg.data.tile_stride} must be in 1..data.tile_size={cfg.data.tile_size}"
        )
    if not 0 <= cfg.data.val_fraction + cfg.data.test_fraction < 1:
        raise ConfigError("data.val_fraction + data.test_fraction must be in [0, 1)")
    phases = cfg.train.phases
    if not phases:
        raise ConfigError("train.phases is empty: give at least one phase with start_epoch 0")
    starts = [p.start_epoch for p in phases]
    if starts[0] != 0 or starts != sorted(set(starts)):
        raise ConfigError(
            f"train.phases start_epoch values {starts} must start at 0 and strictly increase"
        )
    for i, p in enumerate(phases):
        if p.lr <= 0 or p.min_lr < 0 or p.min_lr > p.lr:
            raise ConfigError(f"train.phases[{i}]: need 0 <= min_lr <= lr and lr > 0")
    classes = set(cfg.data.classes)
    if len(classes) != len(cfg.data.classes):
        raise ConfigError(f"data.classes has duplicates: {cfg.data.classes}")
    for name in (*cfg.sampling.rates, *cfg.sampling.class_weights.override):
        if classes and name not in classes:
            raise ConfigError(
                f"sampling names class {name!r} which is not in data.classes {sorted(classes)}"
                + _nearest(name, classes)
            )
    if cfg.sampling.oversample == "manual" and not cfg.sampling.rates:
        raise ConfigError("sampling.oversample=manual needs sampling.rates (class -> rate)")
    lo, hi = cfg.sampling.class_weights.clip
    if not 0 < lo <= hi:
        raise ConfigError("sampling.class_weights.clip must be [low, high] with 0 < low <= high")
    if cfg.stain.method != "none" and not cfg.stain.reference:
        raise ConfigError(f"stain.method={cfg.stain.method} needs stain.reference (an RGB tile)")
    if cfg.data.dataset == "vesicle" and (cfg.augment.hed > 0 or cfg.stain.method != "none"):
        raise ConfigError("vesicle (EM) data takes no stain operations: set augment.hed=0, stain.method=none")


# ----------------------------------------------------------------------------------- typed building
def _nearest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and build nested dataclasses; raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        errors = []
        for option in args:
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} matches none of {[_type_name(a) for a in args]}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}" + _nearest(str(value), map(str, args)))
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp}")  # a programming error in this module


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r}" + _nearest(str(key), names))
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse {raw!r} as YAML ({e})") from None
    return key, value


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, else relative to the project's ``configs/`` folder."""
    p = Path(path)
    if p.exists():
        return p
    for candidate in (PROJECT_ROOT / "configs" / p, PROJECT_ROOT / "configs" / f"{p}.yaml"):
        if candidate.exists():
            return candidate
    raise ConfigError(f"config file {str(path)!r} not found (looked here and in {PROJECT_ROOT / 'configs'})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML at ``path`` <- dotted ``key=value`` overrides; then type and cross-field checks."""
    tree: dict = {}
    if path is not None:
        p = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        tree = loaded or {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    try:
        cfg = _build(Config, tree)
    except ConfigError as e:
        where = f" (in {path})" if path else ""
        raise ConfigError(f"{e}{where}") from None
    return cfg.check()


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (every field, defaults included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
