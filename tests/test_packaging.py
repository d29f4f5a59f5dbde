"""Configs, prompt files and the weights manifest ship inside the wheel and are found from any folder."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sam_histo.config import ConfigError, PROJECT_ROOT, load_config, resolve_config_path

DATA_FILES = sorted([*(f"configs/{p.name}" for p in (PROJECT_ROOT / "configs").glob("*.yaml")),
                     *(f"prompts/{p.name}" for p in (PROJECT_ROOT / "prompts").glob("*.json")),
                     "third_party/manifest.yaml"])


def test_a_bare_name_is_a_project_config_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # `sam-histo demo` run from a folder holding demo/ (issue 17)
    assert resolve_config_path("demo") == PROJECT_ROOT / "configs" / "demo.yaml"
    assert resolve_config_path("configs/bcss.yaml") == PROJECT_ROOT / "configs" / "bcss.yaml"
    assert load_config("folder").data.dataset == "folder"
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    assert load_config("mine.yaml").name == "mine"  # a file given as a path wins
    (tmp_path / "cfgdir").mkdir()
    with pytest.raises(ConfigError, match=r"'cfgdir' is a folder, not a YAML file; give a YAML file or one of"):
        load_config("cfgdir")
    with pytest.raises(ConfigError, match=r"'nope' not found; .*'bcss'"):
        load_config("nope")


def _source_copy(dest: Path) -> Path:
    """What an sdist holds, copied, so the build writes nothing into the checkout (setuptools builds in-tree)."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "resources")
    for name in ("sam_histo", "configs", "prompts", "third_party"):
        shutil.copytree(PROJECT_ROOT / name, dest / name, ignore=skip)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, dest / name)
    return dest


def test_the_wheel_carries_the_data_files_and_reads_them_outside_the_checkout(tmp_path):
    src = _source_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("sam_histo-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(tmp_path / "site")
    packaged = sorted(n.removeprefix("sam_histo/resources/") for n in names if n.startswith("sam_histo/resources/"))
    assert packaged == DATA_FILES
    assert not any(n.startswith(("configs/", "prompts/", "tests/")) for n in names)  # one place: the package
    probe = ("import sam_histo.config as c, sam_histo.models.fetch as f, sam_histo.zeroshot.text_prompts as t;"
             "print(c.resolve_config_path('bcss'), f.MANIFEST, t.PROMPTS_DIR, sep='\\n');"
             "print(c.load_config('bcss').name, len(f.load_manifest()) > 0)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split("\n")
    res = tmp_path / "site" / "sam_histo" / "resources"
    assert [Path(p) for p in out[:3]] == [res / "configs" / "bcss.yaml", res / "third_party" / "manifest.yaml",
                                          res / "prompts"]
    assert out[3] == "bcss True"
