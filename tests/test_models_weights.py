"""Weights: bit-exact round trips, the official format, readable mismatch errors, refusal of pickled code."""
import numpy as np
import pytest
import torch

from sam_histo.config import ModelConfig
from sam_histo.models.sam import build_sam
from sam_histo.models.weights import (
    MissingWeightsError, WeightsError, describe_arch, load_into, read_state_dict, save_state_dict,
)


def _tiny(seed, classes=None, **kw):
    torch.manual_seed(seed)
    return build_sam(ModelConfig(arch="tiny", image_size=64, **kw), classes)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_is_bit_exact(tmp_path, suffix):
    source, other = _tiny(1, classes=3), _tiny(2, classes=3)
    assert not _same(source.state_dict(), other.state_dict())
    path = save_state_dict(source, tmp_path / f"w{suffix}")
    load_into(other, read_state_dict(path))
    assert _same(source.state_dict(), other.state_dict())
    pixels = source.preprocess(np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        assert torch.equal(source.eval()(pixels), other.eval()(pixels))


def test_official_format_loads_through_the_config_and_seeds_the_head(tmp_path):
    official = _tiny(3).sam
    path = tmp_path / "sam2.1_tiny_test.pt"
    torch.save({"model": official.state_dict()}, path)  # what sam2's checkpoints hold
    model = build_sam(ModelConfig(arch="tiny", image_size=64, checkpoint=str(path)), num_classes=2)
    assert _same(model.sam.state_dict(), official.state_dict())
    head_w = model.semantic_head.transformer.layers[0].self_attn.q_proj.weight
    assert torch.equal(head_w, official.sam_mask_decoder.transformer.layers[0].self_attn.q_proj.weight)


def test_fine_tuned_checkpoint_needs_the_same_head(tmp_path):
    tuned = _tiny(4, classes=3)
    path = save_state_dict(tuned, tmp_path / "tuned.safetensors")
    again = build_sam(ModelConfig(arch="tiny", image_size=64, checkpoint=str(path)), num_classes=3)
    assert _same(again.state_dict(), tuned.state_dict())
    with pytest.raises(WeightsError, match=r"unexpected: semantic_head\.") as err:
        build_sam(ModelConfig(arch="tiny", image_size=64, checkpoint=str(path)))
    assert "class-token head (3 classes)" in str(err.value)


def test_mismatch_names_keys_and_the_architecture_they_look_like():
    big = build_sam(ModelConfig(arch="sam2.1_hiera_b+", image_size=256)).sam.state_dict()
    small = build_sam(ModelConfig(arch="sam2.1_hiera_t", image_size=256)).sam
    with pytest.raises(WeightsError) as err:
        load_into(small, big, source="checkpoint b.pt")
    text = str(err.value)
    assert "look like sam2.1_hiera_b+ (D=256)" in text and "the model is sam2.1_hiera_t (D=256)" in text
    own = small.state_dict()
    unexpected = [k for k in big if k not in own]
    missing = [k for k in own if k not in big]
    assert f"{len(unexpected)} unexpected: {unexpected[0]}" in text and f"{len(missing)} missing: {missing[0]}" in text
    assert any(".blocks.12." in k for k in unexpected)  # b+ has 24 blocks, t has 12
    assert "shape mismatch: image_encoder.trunk.pos_embed: checkpoint (1, 112, 14, 14) vs model (1, 96, 7, 7)" in text


def test_non_strict_loads_what_fits_and_reports_the_rest():
    model = _tiny(5)
    state = {k: v for k, v in _tiny(6).sam.state_dict().items() if not k.startswith("memory_encoder.")}
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="missing: memory_encoder"):
        load_into(model.sam, state)
    missing, unexpected = load_into(model.sam, state, strict=False)
    assert all(k.startswith("memory_encoder.") for k in missing) and unexpected == ["extra.weight"]
    assert torch.equal(model.sam.sam_mask_decoder.iou_token.weight, state["sam_mask_decoder.iou_token.weight"])


class Payload:
    """Anything whose unpickling needs this module's code."""

    def __init__(self):
        self.note = "not a tensor"


def test_file_needing_arbitrary_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(WeightsError, match="refused to load: the file needs arbitrary unpickling"):
        read_state_dict(path)


def test_missing_file_says_where_and_how(tmp_path):
    with pytest.raises(MissingWeightsError, match="fetch-weights"):
        read_state_dict(tmp_path / "nope.pt")
    with pytest.raises(MissingWeightsError, match="nope.safetensors"):
        build_sam(ModelConfig(arch="tiny", image_size=64, checkpoint=str(tmp_path / "nope.safetensors")))


def test_not_a_state_dict_and_bad_suffix(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsError, match="expected a state dict"):
        read_state_dict(path)
    with pytest.raises(WeightsError, match=".pt or .safetensors"):
        save_state_dict({"w": torch.zeros(1)}, tmp_path / "w.bin")


def test_describe_arch_for_each_packaged_size():
    for arch, name in (("sam2.1_hiera_s", "sam2.1_hiera_s"), ("sam2_hiera_t", "sam2_hiera_t")):
        assert describe_arch(build_sam(ModelConfig(arch=arch, image_size=256)).sam.state_dict()).startswith(name)
    assert describe_arch({"x.weight": torch.zeros(1)}).startswith("not a SAM2 model")
