"""Ground-truth masks, head fine-tuning with WiSE-FT mixing, and CLIP accuracy."""
import json

import numpy as np
import pytest
import torch

from clip_fakes import ColourClip
from sam_histo.config import ClipConfig
from sam_histo.data.types import ClassSpec, Sample
from sam_histo.zeroshot.classify import MaskClassifier, clear_text_cache, zero_shot_head
from sam_histo.zeroshot.head import clip_accuracy, evaluate_clip, fit_head, gt_masks, train_head
from sam_histo.zeroshot.text_prompts import load_prompts

SPEC = ClassSpec(("outside", "a", "b", "c"), ignore_index=0)
COLOURS = {1: (210, 40, 40), 2: (40, 190, 50), 3: (40, 50, 200)}  # a red, b green, c blue
# Misleading prompts: a is described as blue, b as red, c as green, so zero-shot gets them wrong.
SWAPPED = {"templates": ["a photo of {}.", "{} cells"],
           "classes": {"a": {"synonyms": ["blue", "navy"]}, "b": {"synonyms": ["red", "crimson"]},
                       "c": {"synonyms": ["green", "olive"]}}}


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_text_cache()
    yield
    clear_text_cache()


def blob_samples(n, seed):
    """Tiles with 3-5 coloured squares of random class on an ignored (id 0) grey background."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = np.full((64, 64, 3), 128, np.uint8)
        mask = np.zeros((64, 64), np.int64)
        for k in range(rng.integers(3, 6)):
            cls = int(rng.integers(1, 4))
            y, x = rng.integers(0, 52, 2)
            colour = np.clip(np.array(COLOURS[cls]) + rng.normal(0, 15, 3), 0, 255)
            image[y:y + 10, x:x + 10] = colour.astype(np.uint8)
            mask[y:y + 10, x:x + 10] = cls
        out.append(Sample(image, mask, meta={"source": f"blob{seed}_{i}"}))
    return out


def test_gt_masks_components_instances_and_ignore():
    cls = np.zeros((20, 20), np.int64)
    cls[1:5, 1:5] = 1      # component of a (16 px)
    cls[10:14, 1:5] = 1    # another component of a
    cls[1:5, 10:16] = 2    # b (24 px)
    cls[18, 18] = 3        # c, 1 px: below min_area
    cls[15:20, 8:12] = 0   # ignored
    masks, ids = gt_masks(Sample(np.zeros((20, 20, 3), np.uint8), cls), SPEC, min_area=4, max_masks=10)
    assert ids.tolist() == [2, 1, 1]  # largest first
    assert [int(m.sum()) for m in masks] == [24, 16, 16]
    assert not masks[:, cls == 0].any()
    assert len(gt_masks(Sample(np.zeros((20, 20, 3), np.uint8), cls), SPEC, 4, max_masks=2)[0]) == 2
    # With instances: each instance is one mask labelled by its majority class; the rest as components.
    spec = ClassSpec(("background", "vesicle"))
    cls = np.zeros((12, 12), np.int64)
    inst = np.zeros((12, 12), np.int64)
    inst[1:4, 1:4] = 7
    inst[1:4, 5:8] = 9
    cls[inst > 0] = 1
    cls[1, 1] = 0  # one stray background pixel inside instance 7 does not change its class
    masks, ids = gt_masks(Sample(np.zeros((12, 12, 3), np.uint8), cls, instances=inst), spec, min_area=1)
    assert sorted(ids.tolist()) == [0, 1, 1]
    assert sorted(int(m.sum()) for m in masks[ids == 1]) == [9, 9]
    background = masks[ids == 0][0]
    assert background.sum() == 144 - 18 and not background[inst > 0].any()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_clip_accuracy_matches_sklearn():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, recall_score

    rng = np.random.default_rng(3)
    for _ in range(5):
        y_true = rng.integers(0, 4, 200)
        y_true[y_true == 3] = 2  # class 3 absent from the truth
        y_pred = rng.integers(0, 4, 200)
        got = clip_accuracy(y_true, y_pred, ["w", "x", "y", "z"])
        assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
        assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
        recall = recall_score(y_true, y_pred, labels=[0, 1, 2], average=None)
        assert [got["per_class_recall"][n] for n in "wxy"] == pytest.approx(recall.tolist())
        assert got["per_class_recall"]["z"] is None and got["support"]["z"] == 0
        assert got["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=[0, 1, 2, 3]).tolist()


def test_tuned_head_beats_zero_shot_on_separable_masks(tmp_path):
    (tmp_path / "swapped.json").write_text(json.dumps(SWAPPED))
    model = ColourClip()
    # Blanked background and small crops: each crop shows its own square only (neighbours would blur classes).
    cfg = ClipConfig(cache_dir="", head_epochs=60, head_lr=0.05, head_alpha=1.0, min_mask_area=20,
                     blank_background=True, crop_min_side=8)
    head = zero_shot_head(model, load_prompts(tmp_path / "swapped.json"), ["a", "b", "c"], cfg)
    zs = MaskClassifier(model, head, cfg)
    tuned = MaskClassifier(model, fit_head(zs, blob_samples(8, seed=1), SPEC, cfg), cfg)
    test = blob_samples(6, seed=2)
    zero_shot = evaluate_clip(zs, test, SPEC, cfg)["alpha"]["0"]
    result = evaluate_clip(tuned, test, SPEC, cfg, alphas=[0.0, 0.5, 1.0])
    assert zero_shot["balanced_accuracy"] < 0.2
    assert result["alpha"]["1"]["balanced_accuracy"] > 0.9
    assert result["alpha"]["0"] == zero_shot  # alpha 0 is exactly the zero-shot head
    assert result["n_images"] == 6 and result["model"] == model.name
    assert set(result["alpha"]["1"]["per_class_recall"]) == {"a", "b", "c"}


def test_train_head_mixes_and_leaves_zero_shot_untouched():
    g = torch.Generator().manual_seed(0)
    zs = torch.nn.functional.normalize(torch.randn(2, 4, generator=g), dim=-1)
    from sam_histo.zeroshot.classify import ClipHead

    head = ClipHead(zs, ["p", "q"], 10.0)
    emb = torch.randn(40, 4, generator=g)
    labels = (emb[:, 0] > 0).long()
    tuned = train_head(head, emb, labels, ClipConfig(head_epochs=5, head_alpha=0.25, head_batch_size=16))
    assert tuned.alpha == 0.25 and torch.equal(tuned.zs_weight, zs) and torch.equal(head.ft_weight, zs)
    w, b = tuned.weights()
    assert torch.allclose(w, 0.75 * zs + 0.25 * tuned.ft_weight) and torch.allclose(b, 0.25 * tuned.ft_bias)
    assert not torch.allclose(tuned.ft_weight, zs)
