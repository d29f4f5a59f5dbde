"""Text classifier (ensemble, caches), crops and per-mask probabilities with hand-made encoders."""
import json

import numpy as np
import pytest
import torch

from clip_fakes import ColourClip, TableClip
from sam_histo.config import ClipConfig
from sam_histo.zeroshot.classify import (
    ClipHead, MaskClassifier, class_text_embeddings, clear_text_cache, text_classifier, zero_shot_head,
)
from sam_histo.zeroshot.mask_crops import mask_crops, square_boxes
from sam_histo.zeroshot.text_prompts import load_prompts

COLOUR_PROMPTS = {
    "templates": ["a photo of {}.", "{} stained tissue", "an image showing {} cells."],
    "classes": {"r": {"synonyms": ["red", "crimson"]}, "g": {"synonyms": ["green", "olive"]},
                "b": {"synonyms": ["blue", "navy"]}},
}


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_text_cache()
    yield
    clear_text_cache()


@pytest.fixture
def colour_prompts(tmp_path):
    p = tmp_path / "colours.json"
    p.write_text(json.dumps(COLOUR_PROMPTS))
    return load_prompts(p)


def colour_tile():
    """96x96 grey tile with a red, a green and a blue square (and their masks)."""
    image = np.full((96, 96, 3), 128, np.uint8)
    masks = np.zeros((3, 96, 96), bool)
    for k, (y, x, rgb) in enumerate([(5, 5, (220, 30, 30)), (50, 10, (30, 200, 40)), (30, 60, (20, 40, 210))]):
        image[y:y + 20, x:x + 20] = rgb
        masks[k, y:y + 20, x:x + 20] = True
    return image, masks


@pytest.mark.parametrize("blank", [False, True])
def test_masks_go_to_their_colour_class(colour_prompts, blank):
    model = ColourClip()
    cfg = ClipConfig(cache_dir="", blank_background=blank, batch_size=2)
    classifier = MaskClassifier(model, zero_shot_head(model, colour_prompts, ["r", "g", "b"], cfg), cfg)
    image, masks = colour_tile()
    probs = classifier.probabilities(image, masks)
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert probs.argmax(axis=1).tolist() == [0, 1, 2]
    # Class order follows the requested names, not the file.
    head = zero_shot_head(model, colour_prompts, ["b", "r"], cfg)
    assert MaskClassifier(model, head, cfg).probabilities(image, masks[[0, 2]]).argmax(axis=1).tolist() == [1, 0]


def test_batched_equals_one_mask_at_a_time(colour_prompts):
    model = ColourClip()
    cfg = ClipConfig(cache_dir="", batch_size=2, crop_margin=0.5)
    classifier = MaskClassifier(model, zero_shot_head(model, colour_prompts, ["r", "g", "b"], cfg), cfg)
    image, masks = colour_tile()
    together = classifier.probabilities(image, masks)
    alone = np.concatenate([classifier.probabilities(image, masks[k:k + 1]) for k in range(3)])
    assert np.abs(together - alone).max() < 1e-6
    assert classifier.probabilities(image, masks[:0]).shape == (0, 3)


def test_ensemble_equals_its_formula(colour_prompts):
    model = TableClip()
    weights = text_classifier(model, colour_prompts, ["g", "r"])
    for row, name in zip(weights.numpy(), ["g", "r"]):
        synonyms = COLOUR_PROMPTS["classes"][name]["synonyms"]
        vectors = [model.vector(t.format(s)) for s in synonyms for t in COLOUR_PROMPTS["templates"]]
        unit = [v / np.linalg.norm(v) for v in vectors]
        mean = np.mean(unit, axis=0)
        assert np.allclose(row, mean / np.linalg.norm(mean), atol=1e-5)
    # Not the plain mean of raw embeddings (their norms differ on purpose).
    raw = np.mean([model.vector(t) for t in colour_prompts.texts("g")], axis=0)
    assert not np.allclose(weights[0].numpy(), raw / np.linalg.norm(raw), atol=1e-3)


def test_text_cache_memory_then_disk(colour_prompts, tmp_path):
    model = ColourClip()
    first = text_classifier(model, colour_prompts, ["r", "g", "b"], tmp_path / "cache")
    n_texts = sum(len(colour_prompts.texts(c)) for c in "rgb")
    assert model.texts_seen == n_texts
    calls = model.text_calls
    again = text_classifier(model, colour_prompts, ["b"], tmp_path / "cache")  # memory hit
    assert model.text_calls == calls and torch.equal(again[0], first[2])
    clear_text_cache()
    from_disk = text_classifier(model, colour_prompts, ["r", "g", "b"], tmp_path / "cache")  # disk hit
    assert model.text_calls == calls and torch.equal(from_disk, first)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary file left behind
    # Another model (name) or other prompt wording is another key.
    other = ColourClip(name="colour-clip-2")
    text_classifier(other, colour_prompts, ["r"], tmp_path / "cache")
    assert other.text_calls > 0
    changed = dict(COLOUR_PROMPTS, templates=["{} again."])
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    text_classifier(model, load_prompts(tmp_path / "changed.json"), ["r"], tmp_path / "cache")
    assert model.text_calls > calls


def test_corrupt_cache_file_is_recomputed(colour_prompts, tmp_path):
    model = ColourClip()
    text_classifier(model, colour_prompts, ["r"], tmp_path / "cache")
    (path,) = (tmp_path / "cache").iterdir()
    path.write_bytes(b"not safetensors")
    clear_text_cache()
    calls = model.text_calls
    table = class_text_embeddings(model, colour_prompts, tmp_path / "cache")
    assert model.text_calls > calls and set(table) == {"r", "g", "b"}


def test_head_probabilities_follow_formula_and_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    zs = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    ft, bias = torch.randn(3, 8, generator=g), torch.randn(3, generator=g)
    head = ClipHead(zs, ["a", "b", "c"], 20.0, "model-x", "abc", alpha=0.3, ft_weight=ft, ft_bias=bias)
    emb = torch.randn(5, 8, generator=g)
    unit = emb / emb.norm(dim=-1, keepdim=True)
    w = 0.7 * zs + 0.3 * ft
    expected = torch.softmax(20.0 * unit @ w.T + 0.3 * bias, dim=-1)
    assert torch.allclose(head.probabilities(emb), expected, atol=1e-5)
    assert torch.allclose(head.probabilities(emb, alpha=0.0), torch.softmax(20.0 * unit @ zs.T, dim=-1), atol=1e-5)
    loaded = ClipHead.load(head.save(tmp_path / "head.safetensors"), expect_model="model-x")
    assert loaded.class_names == ["a", "b", "c"] and loaded.alpha == pytest.approx(0.3)
    assert torch.allclose(loaded.probabilities(emb), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"head.safetensors: head was trained on CLIP 'model-x', not 'model-y'"):
        ClipHead.load(tmp_path / "head.safetensors", expect_model="model-y")


def test_square_boxes_and_padded_crops():
    boxes = square_boxes(np.array([[10, 20, 30, 30]]), margin=0.5, min_side=8)
    assert boxes.tolist() == [[0, 5, 40, 45]]  # side 20 * 2 = 40 around the centre (20, 25)
    assert square_boxes(np.array([[4, 4, 6, 6]]), 0.0, 16).tolist() == [[-3, -3, 13, 13]]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[0:4, 0:4] = True
    crop = mask_crops(image, [mask], 8, margin=0.5, min_side=1, fill=(1, 2, 3))[0]  # box (-2, -2, 6, 6)
    assert np.array_equal(crop[2:, 2:], image[0:6, 0:6])
    assert (crop[:2] == (1, 2, 3)).all() and (crop[:, :2] == (1, 2, 3)).all()
    blank = mask_crops(image, [mask], 8, margin=0.5, min_side=1, blank_background=True, fill=(1, 2, 3))[0]
    assert np.array_equal(blank[2:6, 2:6], image[0:4, 0:4]) and (blank[6:] == (1, 2, 3)).all()
    flat = mask_crops(np.full((50, 70, 3), 77, np.uint8), [np.ones((50, 70), bool)], 16, margin=0.1)
    assert flat.shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="mask 1 is empty"):
        mask_crops(image, [mask, np.zeros_like(mask)], 8)
    with pytest.raises(ValueError, match=r"masks have shape \(10, 10\) but the image is \(20, 20\)"):
        mask_crops(image, [np.ones((10, 10), bool)], 8)
