"""What a release bundle may say: everything in it is data, never code and never an unchecked path.

A bundle comes from someone else. Its ``config.json`` is read through a narrow gate before anything is
built from it:

* ``model``: ``arch`` must be one of the project's own architecture names (``archs.known_names()``, short
  forms included), never a YAML path; ``overrides`` may only set numbers, booleans or lists of them at plain
  keys (no ``_target_``, ``_args_`` or any other key starting with ``_``, no strings at all), so Hydra's
  ``instantiate`` never sees a target or an interpolation the bundle wrote; ``target_mpp`` is null or a
  number. Any other model key is refused.
  ``checkpoint`` and ``cache_dir`` are cleared (the weights are the bundle's own file).
* paths of the publisher's machine (``data.root``, ``data.cache_dir``, ``clip.head``, ``clip.prompts``,
  ``clip.cache_dir``, a CLIP given as a file or local folder) are dropped; the loader points the ones it
  needs into the bundle (``stain.reference`` always, or none), and a CLIP from a file must be given on the
  command line.
* file names (SHA256SUMS lines, ``files`` of config.json) are plain relative names of safe characters,
  without ``.``/``..`` parts; class names match :data:`CLASS_NAME`.
"""
from __future__ import annotations

import re

from sam_histo.config import ConfigError

# A class name is also a file-name part of predict's outputs: letters, digits and a few separators.
CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")
_NAME_PART = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")
_OVERRIDE_KEY = re.compile(r"^model(\.[A-Za-z][A-Za-z0-9_]*)+$")
MODEL_KEYS = {"arch", "image_size", "mode", "multimask", "strict", "overrides", "checkpoint", "cache_dir",
              "lora", "target_mpp"}
MAX_IMAGE_SIZE = 4096


class BundleError(ValueError):
    """A release folder that is not a complete, unchanged bundle of plain data; the message names the file
    (and the entry). Re-exported by :mod:`sam_histo.release.bundle`."""


def plain_name(name: str) -> bool:
    """True for ``a/b.c``-style names: relative, POSIX, no empty, ``.`` or ``..`` part, safe characters."""
    parts = name.split("/")
    return bool(name) and len(name) <= 255 and all(_NAME_PART.match(p) and p not in (".", "..") for p in parts)


def check_class_names(names, where: str) -> None:
    for n in names:
        if not isinstance(n, str) or not CLASS_NAME.match(n):
            raise BundleError(f"{where}: class name {str(n)[:80]!r} is not a plain name (letters, digits, "
                                 "' _.+-', at most 64): refused")


def _numeric(value) -> bool:
    if isinstance(value, (bool, int, float)):
        return True
    return isinstance(value, list) and all(_numeric(v) for v in value)


def check_override(text, where: str) -> None:
    from sam_histo.models.archs import parse_override

    if not isinstance(text, str):
        raise BundleError(f"{where}: model.overrides entry {text!r} is not a string: refused")
    try:
        _, key, value = parse_override(text)
    except ConfigError as e:
        raise BundleError(f"{where}: {e}") from None
    if not _OVERRIDE_KEY.match(key) or not _numeric(value):
        raise BundleError(f"{where}: model.overrides entry {text[:80]!r} is not a number at a plain key; a "
                             "bundle may only resize the architecture (numbers, booleans, lists of them): refused")


def check_model(model: dict, where: str) -> dict:
    """The bundle's model section, checked (see the module docstring); returns a copy without paths."""
    from sam_histo.models.archs import canonical_name, known_names

    if not isinstance(model, dict):
        raise BundleError(f"{where}: config.model is not a mapping: refused")
    unknown = sorted(set(model) - MODEL_KEYS)
    if unknown:
        raise BundleError(f"{where}: config.model.{unknown[0]} is not a field a bundle may set: refused")
    arch = model.get("arch")
    if not isinstance(arch, str) or canonical_name(arch) is None:
        raise BundleError(f"{where}: model.arch {str(arch)[:80]!r} is not one of the project's architectures "
                             f"({', '.join(known_names())}); a bundle cannot name a YAML file: refused")
    size = model.get("image_size", 1024)
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= MAX_IMAGE_SIZE or size % 32:
        raise BundleError(f"{where}: model.image_size {size!r} is not a multiple of 32 in [32, "
                             f"{MAX_IMAGE_SIZE}]: refused")
    mpp = model.get("target_mpp")
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not 0 < mpp <= 50):
        raise BundleError(f"{where}: model.target_mpp {str(mpp)[:40]!r} is not null or microns per pixel in "
                          "(0, 50]: refused")
    overrides = model.get("overrides", [])
    if not isinstance(overrides, list):
        raise BundleError(f"{where}: model.overrides is not a list: refused")
    for text in overrides:
        check_override(text, where)
    lora = model.get("lora")
    if lora is not None and (not isinstance(lora, dict) or lora.get("rank") not in (0, None)):
        raise BundleError(f"{where}: config.model.lora {str(lora)[:80]} asks for adapters, but a bundle holds "
                             "merged plain weights (release merges LoRA): refused")
    return {k: v for k, v in {**model, "checkpoint": None, "cache_dir": None}.items() if k != "lora"}


def _looks_like_path(value) -> bool:
    return isinstance(value, str) and ("/" in value or "\\" in value or value.startswith(("~", "."))
                                       or value.lower().endswith((".pt", ".pth", ".bin", ".safetensors")))


def strip_paths(tree: dict) -> dict:
    """The config tree without the publisher's paths (copied; sections that are not mappings are left to the
    schema check, which refuses them)."""
    tree = dict(tree)
    for section, keys in (("data", {"root": "", "cache_dir": ""}), ("clip", {"head": "", "prompts": ""})):
        if isinstance(tree.get(section), dict):
            tree[section] = {**tree[section], **keys}
    clip = tree.get("clip")
    if isinstance(clip, dict):
        clip = {k: v for k, v in clip.items() if k != "cache_dir"}
        if _looks_like_path(clip.get("weights")):
            clip["weights"] = None
        arch = clip.get("arch")
        if isinstance(arch, str) and (arch.startswith("local-dir:") or arch.startswith(("/", "~", "."))):
            clip.pop("arch")
        tree["clip"] = clip
    return tree


def check_files(files, where: str) -> None:
    """``files`` of config.json: every named file (or folder) a plain relative name."""
    if not isinstance(files, dict):
        raise BundleError(f"{where}: 'files' is not a mapping: refused")
    for key, value in files.items():
        for name in value if isinstance(value, list) else [value]:
            if name is not None and name is not False and not (isinstance(name, str) and plain_name(name)):
                raise BundleError(f"{where}: files.{key} {str(name)[:80]!r} is not a plain relative name "
                                     "inside the bundle: refused")
