"""Typed configuration: dataclasses with defaults, YAML that lists only differences, dotted overrides.

``load_config(path, overrides)`` is the single entry point (``loader.py``); the sections live in
``schema.py`` and the cross-field rules in ``rules.py``. Each callee receives its own sub-config
(``cfg.data``, ``cfg.model`` ...), never the whole namespace.
"""
from sam_histo.config.errors import ConfigError, nearest
from sam_histo.config.loader import (
    PROJECT_ROOT,
    config_from_dict,
    load_config,
    parse_override,
    resolve_config_path,
    save_config,
    to_dict,
)
from sam_histo.config.schema import (
    AugmentConfig,
    ClassWeightConfig,
    ClipConfig,
    Config,
    DataConfig,
    EarlyStopConfig,
    EmConfig,
    EmSweepConfig,
    EvalConfig,
    HeatmapConfig,
    LoraConfig,
    LossConfig,
    ModelConfig,
    PhaseConfig,
    PromptConfig,
    SamplingConfig,
    StainConfig,
    TissueConfig,
    TrainConfig,
    ZeroShotConfig,
)

__all__ = [
    "PROJECT_ROOT", "nearest", "AugmentConfig", "ClassWeightConfig", "ClipConfig", "Config", "ConfigError", "DataConfig",
    "EarlyStopConfig", "EmConfig", "EmSweepConfig", "EvalConfig", "HeatmapConfig", "LoraConfig", "LossConfig", "ModelConfig", "PhaseConfig", "PromptConfig",
    "SamplingConfig", "StainConfig", "TissueConfig", "TrainConfig", "ZeroShotConfig", "config_from_dict", "load_config",
    "parse_override", "resolve_config_path", "save_config", "to_dict",
]
