"""A hostile release bundle: nothing it holds runs, and nothing is read or written outside it and --out.

Every attack comes with a consistent SHA256SUMS (the attacker rewrites it), so the hashes alone stop none of
them. Each test asserts the one-line refusal, that the payload's marker does not exist and that the
files under tmp_path outside the output folder are exactly those from before.
"""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import sam_histo
from sam_histo import cli
from sam_histo.release import bundle as B
from sam_histo.release.bundle import BundleError, write_sums


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    from sam_histo.release.build import make_release

    return make_release(tiny_run, tmp_path_factory.mktemp("tbundle") / "release")[0]


@pytest.fixture()
def hostile(bundle, tmp_path):
    """A copy of the bundle and a tile to predict on, inside tmp_path."""
    dest = tmp_path / "hostile"
    shutil.copytree(bundle, dest)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 70, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    return dest


def _edit_json(folder, name, edit):
    path = folder / name
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    write_sums(folder)  # the attacker makes the checksum list consistent again


def _files(root, skip=()):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if not any(p == s or s in p.parents for s in skip))


def _predict(capsys, folder, tmp_path, *extra):
    out = tmp_path / "out"
    rc = cli.main(["predict", "--release", str(folder), "--input", str(tmp_path / "t.png"), "--out", str(out),
                   *extra])
    err = capsys.readouterr().err.strip()
    return rc, err, out


def _assert_one_line_refusal(rc, err, *words):
    assert rc == 2 and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_a_target_payload_in_model_overrides_never_runs(hostile, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    payload = f"++model.pwn={{_target_: os.makedirs, _args_: ['{marker}']}}"
    _edit_json(hostile, "config.json", lambda d: d["config"]["model"]["overrides"].append(payload))
    before = _files(tmp_path)
    with pytest.raises(BundleError, match="config.json: model.overrides entry .* not a number at a plain key"):
        sam_histo.load_release(hostile)
    assert not marker.exists()
    rc, err, out = _predict(capsys, hostile, tmp_path)
    _assert_one_line_refusal(rc, err, "config.json", "refused")
    assert not marker.exists() and _files(tmp_path, [out]) == before


@pytest.mark.parametrize("override", ["++model.image_encoder.trunk._target_=builtins.print",
                                      "++model.image_size=${oc.env:HOME}", "model.image_encoder={_args_: [1]}"])
def test_override_strings_targets_and_interpolations_are_refused(hostile, override):
    _edit_json(hostile, "config.json", lambda d: d["config"]["model"]["overrides"].append(override))
    with pytest.raises(BundleError, match="not a number at a plain key"):
        sam_histo.load_release(hostile)


def test_an_architecture_yaml_or_an_unknown_model_field_is_refused(hostile, tmp_path):
    import importlib.util

    sam2_yaml = next(iter(importlib.util.find_spec("sam2").submodule_search_locations)) + \
        "/configs/sam2.1/sam2.1_hiera_t.yaml"
    _edit_json(hostile, "config.json", lambda d: d["config"]["model"].update(arch=sam2_yaml))
    with pytest.raises(BundleError, match="model.arch .* not one of the project's architectures"):
        sam_histo.load_release(hostile)
    _edit_json(hostile, "config.json", lambda d: d["config"]["model"].update(arch="tiny", _target_="os.system"))
    with pytest.raises(BundleError, match="config.model._target_ is not a field a bundle may set"):
        sam_histo.load_release(hostile)


@pytest.mark.parametrize("kind", ["absolute", "dotdot"])
def test_class_names_never_become_paths(hostile, tmp_path, capsys, kind):
    evil = str(tmp_path / "evil" / "CLS") if kind == "absolute" else "../../../evil"
    _edit_json(hostile, "classes.json", lambda d: d["names"].__setitem__(1, evil))
    before = _files(tmp_path)
    rc, err, out = _predict(capsys, hostile, tmp_path, "--probs")
    _assert_one_line_refusal(rc, err, "classes.json", "not a plain name")
    assert _files(tmp_path, [out]) == before and not (tmp_path / "evil").exists()
    assert not (tmp_path.parent / "evil.png").exists()


def test_output_names_are_ids_and_sanitised_names():
    from pathlib import Path

    from sam_histo.infer.predict_io import Outputs

    o = Outputs(Path("/o"), "k", ["bg", "a b/../c", ".x"], overlay=False, rle=False, probs=True, heatmap_class=".x")
    assert o.prob_png(1) == Path("/o/probs/k/1_a_b_.._c.png") and o.prob_png(2) == Path("/o/probs/k/2_x.png")
    assert o.score_npy == Path("/o/scores/k.2_x.npy")


def test_an_absolute_checksum_entry_is_refused_before_it_is_hashed(hostile, tmp_path, monkeypatch):
    outside = tmp_path / "secret.txt"
    outside.write_text("not in the bundle")
    sums = hostile / "SHA256SUMS"
    sums.write_text(sums.read_text() + f"{B.sha256_file(outside)}  {outside}\n")
    hashed = []
    real = B.sha256_file
    monkeypatch.setattr(B, "sha256_file", lambda p: hashed.append(str(p)) or real(p))
    with pytest.raises(BundleError, match="plain relative name inside the bundle"):
        sam_histo.load_release(hostile)
    assert str(outside) not in hashed


def test_a_symlinked_file_is_refused(hostile, tmp_path):
    outside = tmp_path / "classes_elsewhere.json"
    shutil.copy(hostile / "classes.json", outside)
    (hostile / "classes.json").unlink()
    os.symlink(outside, hostile / "classes.json")
    write_sums(hostile)
    with pytest.raises(BundleError, match="classes.json is a symbolic link"):
        sam_histo.load_release(hostile)


def test_a_symlinked_folder_is_refused(hostile, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "tile.png").write_bytes(b"x")
    os.symlink(outside, hostile / "stain_reference", target_is_directory=True)
    write_sums(hostile)
    assert "stain_reference/tile.png" not in (hostile / "SHA256SUMS").read_text()  # never walked into
    with pytest.raises(BundleError, match="stain_reference is a symbolic link"):
        sam_histo.load_release(hostile)


def test_publisher_paths_in_the_config_are_ignored(hostile, tmp_path):
    def edit(d):
        d["config"]["clip"].update(weights=str(tmp_path / "w.pt"), cache_dir=str(tmp_path / "cache"))
        d["config"]["data"]["root"] = str(tmp_path / "data")
    _edit_json(hostile, "config.json", edit)
    cfg = sam_histo.load_release(hostile).config
    assert cfg.clip.weights is None and str(tmp_path) not in json.dumps(
        {"c": cfg.clip.cache_dir, "r": cfg.data.root, "m": cfg.model.cache_dir, "s": cfg.stain.reference})
