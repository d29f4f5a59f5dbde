"""CLIP head training for a run (train_clip_head), tuned heads in the zero-shot command."""
import json

import numpy as np
import pytest
import torch

from clip_fakes import ColourClip
from sam_histo.config import ClipConfig, Config, ConfigError
from sam_histo.data.types import ClassSpec
from sam_histo.zeroshot.classify import ClipHead, MaskClassifier, clear_text_cache, zero_shot_head
from sam_histo.zeroshot.head import mask_dataset, train_head
from sam_histo.zeroshot.train_head import HEAD_FILE, METRICS_FILE, train_clip_head
from sam_histo.zeroshot.text_prompts import PROMPTS_DIR, load_prompts
from test_clip_head import SPEC, SWAPPED, blob_samples



class Split(list):
    def __init__(self, samples, split):
        super().__init__(samples)
        self.classes, self.split = SPEC, split


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_text_cache()
    yield
    clear_text_cache()


def test_train_clip_head_learns_saves_and_loads_back(tmp_path):
    (tmp_path / "swapped.json").write_text(json.dumps(SWAPPED))
    cfg = Config()
    cfg.clip = ClipConfig(cache_dir="", head_epochs=60, head_lr=0.05, head_alpha=0.5, min_mask_area=20,
                          blank_background=True, crop_min_side=8)
    model = ColourClip()
    clf = MaskClassifier(model, zero_shot_head(model, load_prompts(tmp_path / "swapped.json"), ["a", "b", "c"],
                                               cfg.clip), cfg.clip)
    train, val = Split(blob_samples(8, seed=1), "train"), Split(blob_samples(6, seed=2), "val")
    out = train_clip_head(cfg, tmp_path / "run", train, val, classifier=clf)
    assert json.loads((tmp_path / "run" / METRICS_FILE).read_text()) == out
    assert set(out["val"]["alpha"]) == set(out["train"]["alpha"]) == {"0", "0.5", "1"}
    assert out["val"]["alpha"]["0"]["balanced_accuracy"] < 0.2  # the swapped prompts mislead zero-shot
    assert out["val"]["alpha"]["1"]["balanced_accuracy"] > 0.9  # the head learned the colours
    emb, labels = mask_dataset(clf, train, SPEC, cfg.clip)
    assert out["train"]["masks_per_class"] == dict(zip("abc", np.bincount(labels.numpy(), minlength=3).tolist()))
    # The saved head equals a head trained here with the same data and seed, and classifies alike.
    loaded = ClipHead.load(tmp_path / "run" / HEAD_FILE, expect_model=model.name)
    reference = train_head(clf.head, emb, labels, cfg.clip, seed=cfg.seed)
    assert loaded.alpha == 0.5 and loaded.class_names == ["a", "b", "c"]
    for a in (0.0, 0.5, 1.0):
        torch.testing.assert_close(loaded.probabilities(emb, alpha=a), reference.probabilities(emb, alpha=a))
    sample = val[0]
    masks = np.stack([sample.mask == c for c in (1, 2, 3) if (sample.mask == c).any()])
    np.testing.assert_allclose(MaskClassifier(model, loaded, cfg.clip).probabilities(sample.image, masks),
                               MaskClassifier(model, reference, cfg.clip).probabilities(sample.image, masks))
    assert train_clip_head(cfg, tmp_path / "run2", train, classifier=clf)["val"] is None


def test_saved_head_replaces_the_text_classifier_and_bad_heads_fail(tmp_path):
    from sam_histo.zeroshot.run import build_classifier
    from sam_histo.models.clip import build_clip

    clip_cfg = ClipConfig(arch="tiny", cache_dir="")
    spec = ClassSpec(("background", "CT", "LE", "IT"))
    prompts = load_prompts(PROMPTS_DIR / "lgg.json")
    torch.manual_seed(0)
    head = zero_shot_head(build_clip(clip_cfg), prompts, spec.trained_names, clip_cfg)
    head.ft_weight.data += 0.1
    head.alpha = 0.3
    head.save(tmp_path / "head.safetensors")
    torch.manual_seed(0)  # the same random CLIP again, so the head's model name matches
    clip_cfg.head = str(tmp_path / "head.safetensors")
    clf = build_classifier(clip_cfg, spec, prompts.path)
    assert clf.head.alpha == 0.3 and torch.equal(clf.head.ft_weight, head.ft_weight)
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="head classes"):
        build_classifier(clip_cfg, ClassSpec(("background", "vesicle")), prompts.path)
    with pytest.raises(ConfigError, match="trained on CLIP"):  # another random CLIP: other embeddings
        build_classifier(clip_cfg, spec, prompts.path)
    clip_cfg.head = str(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="clip.train_head=true"):
        build_classifier(clip_cfg, spec, prompts.path)


def test_zeroshot_cli_trains_and_uses_a_head(bcss_root, tmp_path):
    from sam_histo.cli import main

    out = tmp_path / "zs"
    assert main(["zeroshot", "--config", "demo", "--out", str(out), "--train-head", f"data.root={bcss_root}",
                 "clip.cache_dir=", "clip.head_epochs=3", "eval.overlays=0"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["zeroshot"]["clip"]["head"] == str(out / HEAD_FILE)
    assert m["zeroshot"]["clip"]["head_kind"] == "tuned head, alpha 0.5"
    assert set(m["clip_accuracy"]["alpha"]) == {"0", "0.5"}
    trained = json.loads((out / METRICS_FILE).read_text())
    assert trained["train"]["split"] == "train" and trained["model"] == m["zeroshot"]["clip"]["model"]
