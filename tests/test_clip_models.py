"""Both CLIP backends with tiny random-init models; weights, tokenizer and network failure messages."""
import json

import numpy as np
import pytest
import torch

from sam_histo.zeroshot.classify import clear_text_cache, text_classifier
from sam_histo.zeroshot.text_prompts import load_prompts, prompt_file_for
from sam_histo.models.clip import (
    ClipWeightsError, build_clip, build_hf_clip, build_open_clip, check_tokenizer, offline_clip_tokenizer,
)
from sam_histo.config import ClipConfig


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_text_cache()
    yield
    clear_text_cache()


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return {"open_clip": build_clip(ClipConfig(backend="open_clip", arch="tiny")),
            "transformers": build_clip(ClipConfig(backend="transformers", arch="tiny"))}


@pytest.mark.parametrize("backend", ["open_clip", "transformers"])
def test_backends_give_unit_embeddings_and_same_classifier_shape(tiny_models, backend):
    model = tiny_models[backend]
    prompts = load_prompts(prompt_file_for("", "bcss"))
    weights = text_classifier(model, prompts, prompts.class_names)
    assert weights.shape == (6, 32) and model.embed_dim == 32 and model.image_size == 64
    assert torch.allclose(weights.norm(dim=-1), torch.ones(6), atol=1e-5)
    images = np.random.default_rng(0).integers(0, 256, (3, 50, 90, 3), dtype=np.uint8)
    emb = model.encode_image(images)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert model.name.startswith(f"{backend}:tiny:")


def test_preprocess_resizes_and_normalises(tiny_models):
    model = tiny_models["open_clip"]
    flat = np.full((40, 100, 3), (10, 128, 250), np.uint8)
    pixels = model.preprocess(flat)
    assert pixels.shape == (1, 3, 64, 64)
    expected = (torch.tensor([10, 128, 250]) / 255.0 - torch.tensor(model.mean)) / torch.tensor(model.std)
    assert torch.allclose(pixels[0].mean(dim=(1, 2)), expected, atol=1e-4)
    assert torch.allclose(model.encode_image(pixels), model.encode_image(flat))
    with pytest.raises(TypeError, match="expects uint8"):
        model.preprocess(np.zeros((8, 8, 3), np.float32))


def test_offline_tokenizer_matches_open_clip_bpe():
    from open_clip.tokenizer import SimpleTokenizer

    texts = ["An H&E image of Tumour-infiltrating lymphocytes.", "necrosis_or_debris", "3 vesicles, 40x!"]
    ours = offline_clip_tokenizer()(texts, padding="max_length", max_length=77)["input_ids"]
    ref = SimpleTokenizer()(texts, context_length=77).tolist()
    for a, b in zip(ours, ref):
        n = a.index(49407) + 1  # padding differs (HF pads with end-of-text, open_clip with 0); tokens must not
        assert a[:n] == b[:n]


def test_placeholder_tokenizer_fails_loudly(tmp_path):
    class Placeholder:  # what CLIPTokenizer.from_pretrained(hub_id) returns offline: 2 tokens
        def __len__(self):
            return 2

    with pytest.raises(ClipWeightsError, match=r"tokenizer from org/model has 2 tokens, not CLIP's 49408"):
        check_tokenizer(Placeholder(), "org/model")
    # The same trap through a model folder whose tokenizer files hold a 2-token vocabulary.
    from transformers import CLIPConfig, CLIPModel

    from sam_histo.models.clip import TINY_HF_CLIP

    CLIPModel(CLIPConfig(**TINY_HF_CLIP)).save_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ClipWeightsError, match=rf"tokenizer from {tmp_path} has 2 tokens"):
        build_hf_clip(str(tmp_path), None)


def test_hf_folder_without_tokenizer_uses_bundled_vocabulary(tmp_path, tiny_models):
    original = tiny_models["transformers"]
    original.module.save_pretrained(tmp_path)
    loaded = build_hf_clip(str(tmp_path), None)
    assert loaded.name.split(":")[-1] == original.name.split(":")[-1]  # same weights fingerprint
    texts = ["an H&E image of stroma.", "a blood vessel"]
    assert torch.allclose(loaded.encode_text(texts), original.encode_text(texts), atol=1e-6)
    random = build_hf_clip(str(tmp_path), "random")
    assert random.name != loaded.name


def test_open_clip_local_weights_file_round_trip(tmp_path, tiny_models):
    original = tiny_models["open_clip"]
    path = tmp_path / "w.pt"
    torch.save(original.module.state_dict(), path)
    loaded = build_open_clip("tiny", str(path))
    assert loaded.name == original.name
    assert torch.allclose(loaded.encode_text(["tumor"]), original.encode_text(["tumor"]), atol=1e-6)
    torch.manual_seed(1)
    assert build_open_clip("tiny", None).name != original.name  # other random weights, other cache key
    state = original.module.state_dict()
    state.pop("logit_scale")
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ClipWeightsError, match=r"bad.pt: does not fit this architecture.*logit_scale"):
        build_open_clip("tiny", str(tmp_path / "bad.pt"))
    with pytest.raises(ClipWeightsError, match=r"clip.weights='.*missing.pt': no such file"):
        build_open_clip("tiny", str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("backend, arch, url", [
    ("open_clip", "hf-hub:nobody-here/QuiltNet-offline", "https://huggingface.co/nobody-here/QuiltNet-offline"),
    ("transformers", "nobody-here/plip-offline", "https://huggingface.co/nobody-here/plip-offline"),
])
def test_hub_ids_fail_offline_with_instructions(backend, arch, url):
    with pytest.raises(ClipWeightsError) as err:
        build_clip(ClipConfig(backend=backend, arch=arch))
    text = str(err.value)
    assert f"for {arch} (" in text and f"needs the network from {url}" in text
    assert "local-dir:" in text and "third_party/manifest.yaml" in text
    assert "QuiltNet" in text and "vinid/plip" in text  # where the histopathology weights come from


def test_bad_arch_names():
    with pytest.raises(ClipWeightsError, match=r"clip.arch='ViT-X-99' is not an open_clip architecture"):
        build_open_clip("ViT-X-99", None)
    with pytest.raises(ClipWeightsError, match=r"no such folder, and not a hub id"):
        build_hf_clip("./no/such/folder", None)
    with pytest.raises(ClipWeightsError, match=r"transformers backend reads weights from the folder"):
        build_hf_clip("org/name", "/some/file.bin")
