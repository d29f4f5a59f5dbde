"""Text prompt files (``prompts/*.json``): class -> synonyms x templates, validated and hashed.

File shape (data, not code)::

    {"name": "bcss", "modality": "H&E", "description": "...",
     "templates": ["an H&E image of {}.", ...],              # shared by every class
     "classes": {"tumor": {"synonyms": ["tumor", "invasive breast carcinoma", ...],
                           "templates": [...]},               # optional: replaces the shared list
                 ...}}

Every template holds exactly one ``{}`` (filled with a synonym). The file's hash is the sha256 of its
canonical JSON (sorted keys, no whitespace, UTF-8), so reformatting the file keeps the hash while any change
of wording changes it; every report carries it. Pure module: json and hashlib only.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sam_histo.config import ConfigError
from sam_histo.config.resources import resource_dir

PROMPTS_DIR = resource_dir("prompts")
_TOP_KEYS = ("name", "modality", "description", "templates", "classes")
_CLASS_KEYS = ("synonyms", "templates")


class PromptFileError(ConfigError):
    """A prompt file is malformed; the message names the file, the key and the fix (a ConfigError, so the
    CLI prints it as one line)."""


@dataclass(frozen=True)
class PromptSet:
    """A validated prompt file. ``classes`` maps class name -> (synonyms, templates), in file order."""

    path: str
    name: str
    sha256: str
    classes: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def texts(self, class_name: str) -> list[str]:
        """Every synonym in every template of one class (synonym-major order)."""
        synonyms, templates = self.classes[class_name]
        return [t.format(s) for s in synonyms for t in templates]

    def check_classes(self, names: Sequence[str]) -> None:
        """Raise PromptFileError unless every class in ``names`` has prompts in this file."""
        missing = [n for n in names if n not in self.classes]
        if missing:
            hints = "".join(nearest(n, self.classes) for n in missing)
            raise PromptFileError(
                f"{self.path}: no prompts for class(es) {missing}{hints}; the file has {self.class_names}. "
                "Add them under 'classes' or point clip.prompts at a file for these classes."
            )


def canonical_sha256(tree) -> str:
    """sha256 hex digest of ``tree`` as canonical JSON (sorted keys, compact separators, UTF-8)."""
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_file_for(prompts: str, dataset: str) -> Path:
    """The prompt file to use: ``prompts`` (clip.prompts) if given, else ``prompts/<dataset>.json``."""
    if prompts:
        return Path(prompts).expanduser()
    return PROMPTS_DIR / f"{dataset}.json"


def load_prompts(path: str | Path) -> PromptSet:
    """Read, validate and hash a prompt file; any problem raises PromptFileError naming file and key."""
    path = Path(path)
    if not path.is_file():
        shipped = sorted(p.name for p in PROMPTS_DIR.glob("*.json"))
        raise PromptFileError(f"prompt file {str(path)!r} not found; the project ships {shipped} in {PROMPTS_DIR} "
                              "(set clip.prompts to a path)")
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PromptFileError(f"{path}: not valid JSON ({e})") from None
    return PromptSet(str(path), *_validate(tree, str(path)))


def _validate(tree, where: str) -> tuple[str, str, dict]:
    if not isinstance(tree, dict):
        raise PromptFileError(f"{where}: the top level must be an object with 'templates' and 'classes'")
    for key in tree:
        if key not in _TOP_KEYS:
            raise PromptFileError(f"{where}: unknown key {key!r}{nearest(key, _TOP_KEYS)}; allowed: {list(_TOP_KEYS)}")
    shared = tree.get("templates")
    if shared is not None:
        shared = _strings(shared, f"{where}: templates", template=True)
    classes = tree.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise PromptFileError(f"{where}: 'classes' must be a non-empty object of class name -> {{synonyms, templates}}")
    out = {}
    for name, entry in classes.items():
        key = f"{where}: classes.{name}"
        if not isinstance(entry, dict):
            raise PromptFileError(f"{key} must be an object with 'synonyms' (and optionally 'templates')")
        for k in entry:
            if k not in _CLASS_KEYS:
                raise PromptFileError(f"{key}: unknown key {k!r}{nearest(k, _CLASS_KEYS)}; "
                                      f"allowed: {list(_CLASS_KEYS)}")
        if "synonyms" not in entry:
            raise PromptFileError(f"{key}: missing 'synonyms' (a non-empty list of names or descriptions)")
        synonyms = _strings(entry["synonyms"], f"{key}.synonyms", template=False)
        if "templates" in entry:
            templates = _strings(entry["templates"], f"{key}.templates", template=True)
        elif shared is not None:
            templates = shared
        else:
            raise PromptFileError(f"{key}: no templates; give a top-level 'templates' list or one for this class")
        out[str(name)] = (synonyms, templates)
    return str(tree.get("name", Path(where).stem)), canonical_sha256(tree), out


def _strings(value, key: str, *, template: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise PromptFileError(f"{key} must be a non-empty list of strings, got {value!r}")
    for i, text in enumerate(value):
        if not isinstance(text, str) or not text.strip():
            raise PromptFileError(f"{key}[{i}] must be a non-empty string, got {text!r}")
        if template:
            # str.format would treat any other brace as a field, so exactly one "{}" and no other braces.
            if text.count("{}") != 1 or text.replace("{}", "").count("{") or text.replace("{}", "").count("}"):
                raise PromptFileError(f"{key}[{i}] = {text!r} must contain exactly one '{{}}' (the synonym) "
                                      "and no other braces")
    if len(set(value)) != len(value):
        dup = sorted({t for t in value if value.count(t) > 1})
        raise PromptFileError(f"{key} repeats {dup}; duplicates would weight the ensemble unevenly")
    return tuple(value)


def nearest(key: str, options) -> str:
    close = difflib.get_close_matches(str(key), list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
