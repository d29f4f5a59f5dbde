"""`sam-histo release` and `sam_histo.load_release`: the bundle's files, its hashes, and what loads from it."""
import dataclasses
import hashlib
import json
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import torch

import sam_histo
from sam_histo.release.bundle import BundleError, bundle_digest, write_sums
from sam_histo.config import load_config
from sam_histo.release.build import ReleaseError, main, make_release

FILES = ["model.safetensors", "semantic_head.safetensors", "config.json", "classes.json", "prompts.json",
         "metrics.json", "README.md", "SHA256SUMS"]


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "release"
    assert main(["--run", str(tiny_run), "--out", str(out)]) == 0
    return out


@pytest.fixture()
def copy_of(bundle, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(bundle, dest)
    return dest


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image(h=90, w=100, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_bundle_files_hashes_and_provenance(bundle, tiny_run):
    from sam_histo.data.dataset import class_spec
    from sam_histo.zeroshot.text_prompts import PROMPTS_DIR, load_prompts

    assert sorted(p.name for p in bundle.iterdir()) == sorted(FILES)
    lines = (bundle / "SHA256SUMS").read_text().splitlines()
    assert lines == [f"{_sha(bundle / n)}  {n}" for n in sorted(FILES) if n != "SHA256SUMS"]
    info = json.loads((bundle / "config.json").read_text())
    cfg = load_config(tiny_run / "config.yaml")
    assert info["config"]["model"] == json.loads(json.dumps(dataclasses.asdict(cfg.model)))
    assert info["versions"]["torch"] == torch.__version__ and info["versions"]["sam_histo"] == sam_histo.__version__
    assert info["base_checkpoint"] == {"name": None, "sha256": None,
                                       "reason": "random initialisation (model.checkpoint was null)"}
    head = subprocess.run(["git", "-C", str(sam_histo.config.PROJECT_ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    assert info["git"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert info["released_checkpoint"]["sha256"] == _sha(tiny_run / "checkpoints/best/model.safetensors")
    assert json.loads((bundle / "classes.json").read_text()) == class_spec(cfg.data).to_json()
    assert info["prompts"]["sha256"] == load_prompts(PROMPTS_DIR / "bcss.json").sha256
    assert (bundle / "prompts.json").read_bytes() == (PROMPTS_DIR / "bcss.json").read_bytes()
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["for_released_checkpoint"] is True
    for split in ("val", "test"):
        assert metrics[split] == json.loads((tiny_run / "eval" / split / "metrics.json").read_text())
    card = (bundle / "README.md").read_text()
    assert "Not for diagnosis" in card and "Stain and scanner shift" in card and "build_sam2(" in card
    for name, v in metrics["val"]["per_class"].items():
        dice = "n/a" if v["dice"] is None else f"{v['dice']:.3f}"
        assert f"| {name} | {v['support_pixels']:,} | {dice} |" in card


def test_weights_file_is_the_official_sam2_layout_and_loads_with_build_sam2(bundle, tmp_path):
    """model.safetensors has exactly the keys and shapes of the SAM2Base that sam2's own build_sam2 builds,
    and the .pt the model card's one-liner makes from it goes through build_sam2(config, ckpt_path), whose
    strict loader raises on any missing or unexpected key; the result computes what the bundle's model does."""
    from safetensors.torch import load_file
    from sam2.build_sam import build_sam2

    build = json.loads((bundle / "config.json").read_text())["model"]["sam2_build"]
    state = load_file(str(bundle / "model.safetensors"))
    assert not any(k.startswith(("sam.", "semantic_head.")) for k in state)
    bare = build_sam2(build["config_file"], None, device="cpu", hydra_overrides_extra=build["hydra_overrides_extra"])
    assert {k: tuple(v.shape) for k, v in bare.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    torch.save({"model": state}, tmp_path / "sam2_model.pt")
    sam = build_sam2(build["config_file"], str(tmp_path / "sam2_model.pt"), device="cpu",
                     hydra_overrides_extra=build["hydra_overrides_extra"])
    release = sam_histo.load_release(bundle)
    pixels = release.model.preprocess(_image(64, 64))
    with torch.no_grad():
        ours = release.model.sam.forward_image(pixels)["vision_features"]
        theirs = sam.forward_image(pixels)["vision_features"]
    torch.testing.assert_close(theirs, ours, rtol=0, atol=0)


def test_load_release_predicts_exactly_as_the_run_checkpoint(bundle, tiny_run):
    from sam_histo.infer.image import semantic_probs
    from sam_histo.models.load import load_model

    release = sam_histo.load_release(bundle)
    cfg = load_config(tiny_run / "config.yaml")
    run_model = load_model(cfg.model, 7, tiny_run).eval()
    image = _image(150, 110)  # larger than the 64 px input: sliding windows
    ours = semantic_probs(release.model, image, 7, 0)
    theirs = semantic_probs(run_model, image, 7, 0)
    np.testing.assert_array_equal(ours, theirs)
    assert release.classes.names[0] == "outside_roi" and release.classes.ignore_index == 0
    assert release.config.model == cfg.model.__class__(**{**cfg.model.__dict__, "checkpoint": None})
    assert release.metrics["val"]["split"] == "val" and release.clip_head is None
    assert release.digest == hashlib.sha256((bundle / "SHA256SUMS").read_bytes()).hexdigest()


def test_load_release_unpickles_nothing(bundle, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("load_release must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert sam_histo.load_release(bundle).model.semantic_head is not None


@pytest.mark.parametrize("name", FILES)
def test_one_flipped_byte_in_any_file_is_refused(copy_of, name):
    path = copy_of / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=name):
        sam_histo.load_release(copy_of)


@pytest.mark.parametrize("name", FILES)
def test_a_missing_file_is_refused(copy_of, name):
    (copy_of / name).unlink()
    with pytest.raises(BundleError, match=f"{name}.*(missing|incomplete)"):
        sam_histo.load_release(copy_of)


@pytest.mark.parametrize("name", ["semantic_head.safetensors", "prompts.json", "README.md"])
def test_a_file_removed_with_its_checksum_line_is_refused(copy_of, name):
    (copy_of / name).unlink()
    sums = copy_of / "SHA256SUMS"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if not line.endswith(name)))
    with pytest.raises(BundleError, match=f"{name}: required file is not listed in SHA256SUMS"):
        sam_histo.load_release(copy_of)


def test_an_unlisted_file_and_a_foreign_digest_are_refused(copy_of, bundle):
    (copy_of / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="notes.txt is not listed in SHA256SUMS"):
        sam_histo.load_release(copy_of)
    (copy_of / "notes.txt").unlink()
    card = copy_of / "README.md"
    card.write_text(card.read_text() + "\nedited\n")
    write_sums(copy_of)  # consistent again, but no longer the published bundle
    assert sam_histo.load_release(copy_of).model is not None
    with pytest.raises(BundleError, match="SHA256SUMS: sha256 .* is not the expected"):
        sam_histo.load_release(copy_of, expected_digest=bundle_digest(bundle))


def test_release_is_reproducible_and_never_overwrites_a_different_bundle(tiny_run, bundle, tmp_path, capsys):
    out = tmp_path / "again"
    assert make_release(tiny_run, out)[1:] == (bundle_digest(bundle), "new")
    assert make_release(tiny_run, out)[2] == "identical"
    card = out / "README.md"
    card.write_text("someone else's bundle\n")
    write_sums(out)
    with pytest.raises(ReleaseError, match="already holds a different bundle.*--force"):
        make_release(tiny_run, out)
    assert card.read_text() == "someone else's bundle\n"
    assert make_release(tiny_run, out, force=True)[2] == "replaced"
    assert bundle_digest(out) == bundle_digest(bundle)
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("x")
    with pytest.raises(ReleaseError, match="already holds other files"):
        make_release(tiny_run, other)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_release_of_another_checkpoint_recomputes_its_metrics(tiny_run, tmp_path):
    """Weights that differ from checkpoints/best are scored by the validator (data still there) or, when it
    may not run, carry the best checkpoint's numbers with a note saying so."""
    from safetensors.torch import load_file, save_file

    from sam_histo.eval.validator import validate
    from sam_histo.models.load import load_model

    state = load_file(str(tiny_run / "checkpoints/best/model.safetensors"))
    state["semantic_head.class_bias"] = state["semantic_head.class_bias"] + torch.arange(7.0)
    save_file(state, str(tmp_path / "other.safetensors"))
    out, _, _ = make_release(tiny_run, tmp_path / "rel", checkpoint=str(tmp_path / "other.safetensors"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["for_released_checkpoint"] is True and metrics["source"].startswith("recomputed")
    cfg = load_config(tiny_run / "config.yaml")
    expected = validate(load_model(cfg.model, 7, tmp_path / "other.safetensors"), cfg, "val", progress=False)
    assert metrics["val"]["per_class"] == json.loads(json.dumps(expected["per_class"]))
    run_val = json.loads((tiny_run / "eval/val/metrics.json").read_text())
    assert metrics["val"]["confusion_matrix"] != run_val["confusion_matrix"]
    out, _, _ = make_release(tiny_run, tmp_path / "rel2", checkpoint=str(tmp_path / "other.safetensors"),
                             recompute=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["for_released_checkpoint"] is False and metrics["val"] == run_val
    assert "not of the released" in metrics["note"] and metrics["note"] in (out / "README.md").read_text()


def test_release_errors_name_the_problem(tmp_path, tiny_run):
    with pytest.raises(ReleaseError, match="is not a run folder: .*config.yaml is missing"):
        make_release(tmp_path, tmp_path / "out")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("best"))
    with pytest.raises(ReleaseError, match="checkpoints/best/model.safetensors is missing.*--checkpoint last"):
        make_release(run, tmp_path / "out")
    assert make_release(run, tmp_path / "out", checkpoint="last")[2] == "new"


def test_base_checkpoint_is_named_with_its_sha256_or_the_reason_it_is_missing(tmp_path, monkeypatch):
    from sam_histo.config import ModelConfig
    from sam_histo.models.fetch import find, load_manifest
    from sam_histo.release.build import base_checkpoint_info

    weights = tmp_path / "base.pt"
    torch.save({"model": {"w": torch.arange(5.0)}}, weights)
    info = base_checkpoint_info(ModelConfig(checkpoint=str(weights)))
    assert info["sha256"] == _sha(weights) and info["file"] == str(weights) and info["sha256_published"] is None
    monkeypatch.setenv("SAM_HISTO_CACHE", str(tmp_path / "empty_cache"))
    info = base_checkpoint_info(ModelConfig(checkpoint="sam2.1_hiera_tiny"))
    assert info["sha256"] is None and "not on this machine" in info["reason"]
    assert info["sha256_published"] == find("sam2.1_hiera_tiny", load_manifest())[1]["sha256"]


def test_a_release_is_a_starting_point_for_fine_tuning(bundle, copy_of):
    """model.checkpoint=RELEASE_DIR: SAM2 weights and the class-token head load when the classes match (so the
    new model predicts exactly as the release); other classes keep SAM2 and re-initialise the head, saying so;
    a changed bundle is refused."""
    from sam_histo.config import ConfigError
    from sam_histo.data.dataset import class_spec
    from sam_histo.infer.image import semantic_probs
    from sam_histo.training.build import build_model

    release = sam_histo.load_release(bundle)
    cfg = release.config
    cfg.model.checkpoint = str(bundle)
    model = build_model(cfg, class_spec(cfg.data)).eval()
    assert "SAM2 weights" in model.start_note and "class-token head (7 classes)" in model.start_note
    image = _image(70, 80)
    np.testing.assert_array_equal(semantic_probs(model, image, 7, 0), semantic_probs(release.model, image, 7, 0))

    other = load_config(None, ["data.classes=[tumor, stroma, other]", "model.arch=tiny", "model.image_size=64",
                               f"model.checkpoint={bundle / 'model.safetensors'}"])
    fresh = build_model(other, class_spec(other.data))
    assert "differ from data.classes" in fresh.start_note and "re-initialised" in fresh.start_note
    sam_theirs, sam_ours = release.model.sam.state_dict(), fresh.sam.state_dict()
    assert all(torch.equal(sam_theirs[k], sam_ours[k]) for k in sam_theirs)
    from sam_histo.models.sam import build_sam  # a release folder as model.checkpoint anywhere: its SAM2 weights

    plain = build_sam(other.model.__class__(arch="tiny", image_size=64, checkpoint=str(bundle))).sam.state_dict()
    assert all(torch.equal(sam_theirs[k], plain[k]) for k in sam_theirs)

    head = copy_of / "semantic_head.safetensors"
    head.write_bytes(head.read_bytes()[:-1] + b"\0")
    cfg.model.checkpoint = str(copy_of)
    with pytest.raises(ConfigError, match=r"semantic_head.safetensors does not match its sha256 in SHA256SUMS"):
        build_model(cfg, class_spec(cfg.data))


def test_model_card_sam2_snippet_run_inside_the_bundle_leaves_it_valid(copy_of, tmp_path, monkeypatch):
    """The card's "with sam2 alone" block, run as written from inside the bundle, builds the model and writes
    its .pt outside, so load_release still accepts the folder."""
    import re

    monkeypatch.chdir(copy_of)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    card = (copy_of / "README.md").read_text()
    block = [b for b in re.findall(r"```python\n(.*?)```", card, re.S) if "build_sam2" in b][0]
    scope = {}
    exec(block, scope)
    assert scope["sam"] is not None and (tmp_path / "sam2_model.pt").is_file()
    assert sorted(p.name for p in copy_of.iterdir()) == sorted(FILES)
    sam_histo.load_release(copy_of)
