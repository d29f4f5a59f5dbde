"""Loading: YAML that lists only differences, dotted ``key=value`` overrides, typed building.

Unknown keys and wrong types fail with the dotted key and the nearest valid key (nanoGPT's configurator
does the same for its globals).
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sam_histo.config.errors import ConfigError, nearest
from sam_histo.config.resources import PROJECT_ROOT, resource_dir
from sam_histo.config.rules import check_rules
from sam_histo.config.schema import Config

_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
__all__ = ["PROJECT_ROOT", "config_from_dict", "load_config", "parse_override", "resolve_config_path",
           "save_config", "to_dict"]


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:  # name the allowed values, not "Literal"
        return " | ".join(repr(a) for a in typing.get_args(tp))
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
        if isinstance(value, bool) and value not in args:
            # YAML 1.1 reads no / off / yes / on as booleans: give a word option its word back
            words = ("true", "yes", "on") if value else ("false", "no", "off")
            value = next((a for a in args if isinstance(a, str) and a.lower() in words), value)
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}" + nearest(str(value), map(str, args)))
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
        if isinstance(value, str) and _SCI.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 3e-4 without a dot as a string
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
            raise ConfigError(f"unknown config key {dotted!r}" + nearest(str(key), names))
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
    """A config file: ``path`` when it is a file, else a name in the project's configs (packaged with the
    wheel, or the checkout's ``configs/``): ``bcss``, ``bcss.yaml`` and ``configs/bcss.yaml`` all name
    configs/bcss.yaml from any working directory. A folder is never read as a config."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    folder = resource_dir("configs")
    name = Path(*p.parts[1:]) if len(p.parts) > 1 and p.parts[0] == "configs" else p
    if not p.is_absolute():
        for candidate in (folder / name, folder / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    known = sorted(c.stem for c in folder.glob("*.yaml"))
    what = "is a folder, not a YAML file" if p.is_dir() else "not found"
    raise ConfigError(f"config file {str(path)!r} {what}; give a YAML file or one of the project's configs "
                      f"{known} (in {folder})")


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
    return config_from_dict(tree, f" (in {path})" if path else "")


def config_from_dict(tree: dict, where: str = "") -> Config:
    """A Config from a nested mapping (e.g. ``to_dict`` of one, read back from JSON), with the same type and
    cross-field checks as :func:`load_config`; ``where`` is appended to error messages."""
    try:
        cfg = _build(Config, tree)
    except ConfigError as e:
        raise ConfigError(f"{e}{where}") from None
    check_rules(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (every field, defaults included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path

