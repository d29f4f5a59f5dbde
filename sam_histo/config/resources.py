"""Where the project's data files are: configs/*.yaml, prompts/*.json, third_party/manifest.yaml.

One copy lives in the repository's top-level folders (the editable source of truth). A wheel carries a
copy made at build time (setup.py's build_py) under ``sam_histo/resources/``; an installed package reads
that one through importlib.resources, a source checkout or editable install reads the top-level folders.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
FOLDERS = ("configs", "prompts", "third_party")


def resource_dir(name: str) -> Path:
    """The folder ``name`` (one of FOLDERS): packaged with the wheel, else the checkout's top-level one."""
    if name not in FOLDERS:
        raise ValueError(f"{name!r} is not one of the project's data folders {FOLDERS}")
    packaged = resources.files("sam_histo") / "resources" / name
    if packaged.is_dir():
        return Path(str(packaged))
    return PROJECT_ROOT / name
