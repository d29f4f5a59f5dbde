"""Stage map, trainable flags, layer ids and no-decay detection, checked against independent oracles."""
import numpy as np
import pytest
import torch
import yaml

from sam_histo.config import ModelConfig
from sam_histo.data.types import Prompts
from sam_histo.models import archs, stages
from sam_histo.models.sam import build_sam


def _expected_stage_of_block(arch: str) -> list[int]:
    """From the YAML's `stages` list (blocks per stage), not from the model's stage_ends."""
    tree = yaml.safe_load((archs.sam2_package_dir() / archs.PACKAGED[arch]).read_text())
    per_stage = tree["model"]["image_encoder"]["trunk"].get("stages", [2, 3, 16, 3])  # Hiera's default (b+)
    return [s for s, n in enumerate(per_stage) for _ in range(n)]


@pytest.mark.parametrize("arch", ["sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"])
def test_every_parameter_in_exactly_one_group(arch):
    model = build_sam(ModelConfig(arch=arch, image_size=256))
    groups = stages.group_map(model)
    params = dict(model.named_parameters())
    assert groups.keys() == params.keys()
    counts = stages.trainable_counts(model)
    assert sum(total for _, total in counts.values()) == sum(p.numel() for p in model.parameters())
    block_stage = _expected_stage_of_block(arch)
    for name, group in groups.items():
        if ".trunk.blocks." in name:
            assert group == block_stage[int(name.split(".trunk.blocks.")[1].split(".")[0])], name
        elif ".trunk." in name:
            assert group == 0, name  # patch_embed, pos_embed, pos_embed_window
        elif name.startswith("sam.image_encoder.neck."):
            assert group == "neck"
    assert set(groups.values()) == {0, 1, 2, 3, "neck", "decoder", "prompt_encoder", "memory"}


def test_tiny_map_and_an_unknown_parameter():
    model = build_sam(ModelConfig(arch="tiny", image_size=64), num_classes=2)
    assert stages.stage_ends(model) == [0, 2, 4, 5]
    groups = stages.group_map(model)
    assert {g for n, g in groups.items() if n.startswith("semantic_head.")} == {"semantic_head"}
    model.stray = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="stray.weight"):
        stages.group_map(model)


def test_set_trainable_is_idempotent_and_follows_the_rules():
    model = build_sam(ModelConfig(arch="tiny", image_size=64), num_classes=2)
    first = stages.set_trainable(model, [1, 3], mode="prompted")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert stages.set_trainable(model, [3, 1, 1], mode="prompted") == first
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    groups = stages.group_map(model)
    for name, on in flags.items():
        g = groups[name]
        expected = g in (1, 3, "neck", "decoder", "prompt_encoder")
        assert on == expected, name
    counts = stages.set_trainable(model, "none", train_prompt_encoder=False)
    assert counts["neck"][0] == counts[0][0] == counts["prompt_encoder"][0] == 0 and counts["decoder"][0] > 0
    counts = stages.set_trainable(model, "all", mode="semantic")
    assert counts["prompt_encoder"][0] == 0 and counts["semantic_head"][0] == counts["semantic_head"][1]
    assert 0 < counts["decoder"][0] < counts["decoder"][1] and counts["memory"][0] == 0
    with pytest.raises(ValueError, match=r"stages \[4\] do not exist: this model has stages 0..3"):
        stages.set_trainable(model, [4])


def test_set_trainable_stages_leaves_heads_alone():
    model = build_sam(ModelConfig(arch="tiny", image_size=64))
    stages.set_trainable(model, "all", train_decoder=False)
    counts = stages.set_trainable_stages(model, [2])
    assert counts[2][0] == counts[2][1] and counts[1][0] == 0 and counts["decoder"][0] == 0
    assert counts["prompt_encoder"][0] == counts["prompt_encoder"][1]


def _one_prompt():
    return Prompts(points=np.array([[[20.0, 30.0]]], np.float32), point_labels=np.ones((1, 1), np.int32),
                   boxes=None, has_box=np.zeros(1, bool), class_ids=np.ones(1, np.int64), targets=None)


@pytest.mark.parametrize("mode", ["prompted", "semantic"])
def test_gradients_reach_exactly_the_trainable_parameters(mode):
    model = build_sam(ModelConfig(arch="tiny", image_size=64), num_classes=3).train()
    stages.set_trainable(model, [1, 3], mode=mode)
    pixels = model.preprocess(np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8))
    if mode == "prompted":
        out = model(pixels, [_one_prompt()], multimask=True)
        loss = out.logits.mean() + out.iou_pred.mean() + out.object_score.mean()
    else:
        loss = model(pixels).logsumexp(1).mean()
    loss.backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
    # Every trainable parameter is used (DDP would otherwise need find_unused_parameters); the prompt
    # encoder's box, negative-point and mask-input parts see no point-only prompt, so they are exempt.
    unused_ok = ("point_embeddings.0.", "point_embeddings.2.", "point_embeddings.3.", "mask_downscaling.")
    for name, p in model.named_parameters():
        if p.requires_grad and not any(s in name for s in unused_ok):
            assert p.grad is not None, name
    trained_stages = {stages.group_map(model)[n] for n, p in model.named_parameters() if p.grad is not None}
    assert {g for g in trained_stages if isinstance(g, int)} == {1, 3}


def test_layer_ids_match_hieras_own_rule():
    model = build_sam(ModelConfig(arch="sam2.1_hiera_t", image_size=256))
    trunk = model.sam.image_encoder.trunk
    n = stages.num_layers(model)
    assert n == trunk.get_num_layers() == 12
    ids = stages.layer_ids(model)
    for name, _ in trunk.named_parameters():
        assert ids[f"sam.image_encoder.trunk.{name}"] == trunk.get_layer_id(name), name
    assert ids["sam.sam_mask_decoder.iou_token.weight"] == n + 1
    assert ids["sam.image_encoder.neck.convs.0.conv.weight"] == n + 1


def test_no_weight_decay_selection():
    model = build_sam(ModelConfig(arch="tiny", image_size=64), num_classes=2)
    params = dict(model.named_parameters())
    no_decay = {n for n, p in params.items() if stages.no_weight_decay(n, p)}
    assert all(n in no_decay for n, p in params.items() if p.ndim <= 1)
    for name in ("sam.image_encoder.trunk.pos_embed", "sam.sam_mask_decoder.mask_tokens.weight",
                 "sam.sam_prompt_encoder.point_embeddings.0.weight", "semantic_head.class_tokens",
                 "sam.no_mem_embed"):
        assert name in no_decay, name
    for name in ("sam.image_encoder.trunk.patch_embed.proj.weight", "sam.image_encoder.trunk.blocks.0.attn.qkv.weight",
                 "semantic_head.hypers.0.layers.0.weight", "sam.sam_mask_decoder.output_upscaling.0.weight"):
        assert name not in no_decay, name
