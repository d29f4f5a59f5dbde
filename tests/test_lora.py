"""LoRA adapters (model.lora): only the adapters train, merging gives the adapted outputs, and the merged
release loads in stock sam2 build_sam2."""
import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sam_histo.config import ConfigError, LoraConfig, ModelConfig, load_config
from sam_histo.data.types import Prompts
from sam_histo.models.lora import merge_lora
from sam_histo.models.sam import build_sam
from sam_histo.models.stages import set_trainable
from sam_histo.training import loop
from tiles import quadrants, write_blocks

SIZE = 64


def tiny(targets=("encoder_attn", "encoder_mlp", "decoder"), num_classes=None):
    return build_sam(ModelConfig(arch="tiny", image_size=SIZE, lora=LoraConfig(rank=4, targets=list(targets))),
                     num_classes)


def prompts():
    return Prompts(points=np.array([[[20, 30]], [[40, 12]]], np.float32), point_labels=np.ones((2, 1), np.int32),
                   boxes=np.array([[4, 4, 40, 50], [0, 0, 10, 10]], np.float32), has_box=np.array([True, False]),
                   class_ids=np.array([1, 2]), targets=np.zeros((2, SIZE, SIZE), bool))


def test_adapters_sit_on_the_named_linears_and_only_they_train_in_a_lora_phase():
    model = tiny()
    names = [n for n, _ in model.named_parameters()]
    adapters = [n for n in names if ".lora_" in n]
    assert any(".attn.qkv.lora_A." in n for n in adapters) and any(".attn.proj.lora_B." in n for n in adapters)
    assert any(".mlp.layers.0.lora_A." in n for n in adapters)
    assert any("sam_mask_decoder.transformer.layers.0.self_attn.q_proj.lora_A." in n for n in adapters)
    assert not any(n.startswith("semantic_head.") for n in adapters)
    set_trainable(model, "lora", train_decoder=False, train_prompt_encoder=False, mode="prompted")
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == sorted(adapters)
    set_trainable(model, "all", train_decoder=True, mode="prompted")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(adapters) <= trainable and not any(".base_layer." in n for n in trainable)


def test_merged_weights_give_the_adapted_outputs():
    torch.manual_seed(3)
    model = tiny(num_classes=4).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)  # a trained adapter: B is no longer zero
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    merged = merge_lora(copy.deepcopy(model))
    assert not any(".lora_" in k or ".base_layer." in k for k in merged.state_dict())
    plain = build_sam(ModelConfig(arch="tiny", image_size=SIZE), 4).eval()
    assert merged.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        outs = []
        for m in (model, merged):
            feats = m.encode(m.preprocess(image[None]))
            outs.append((m.forward_prompted(feats, [prompts()], orig_hw=(SIZE, SIZE)).logits, m.forward_semantic(feats)))
    base = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in base.named_parameters():
            if ".lora_B." in n:
                p.zero_()
        feats = base.encode(base.preprocess(image[None]))
        unadapted = base.forward_prompted(feats, [prompts()], orig_hw=(SIZE, SIZE)).logits
    assert (unadapted - outs[0][0]).abs().max() > 1e-3  # the adapters change the output: the check below bites
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=0, atol=1e-5)


def test_lora_run_trains_only_adapters_and_its_release_loads_in_stock_sam2(tmp_path):
    from sam2.build_sam import build_sam2

    from sam_histo.models.load import load_model
    from sam_histo.release.build import make_release

    data = write_blocks(tmp_path / "data", [quadrants(SIZE)] * 4)
    cfg = load_config(None, [
        f"data.root={data}", "model.arch=tiny", f"model.image_size={SIZE}", f"data.tile_size={SIZE}",
        f"data.tile_stride={SIZE}", "data.val_fraction=0.25", "data.test_fraction=0", "sampling.iter_per_epoch=3",
        "train.batch_size=1", "train.epochs=1", "train.phases=[{start_epoch: 0, stages: lora, lr: 1.0e-2}]",
        "train.train_decoder=false", "train.train_prompt_encoder=false", "model.lora.rank=4",
        "model.lora.targets=[encoder_attn, encoder_mlp]", "train.log_with=[]", "train.num_workers=0",
        "train.checkpoint_every_steps=0", "eval.overlays=0", "train.wise_alphas=[]", "train.validate_start=false", f"output_dir={tmp_path}",
        "name=lora"])
    assert loop.train(cfg)["status"] == "finished"
    run = tmp_path / "lora"
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "val"] == [0]  # validate_start=false: no start epoch
    assert not (run / "eval" / "start").exists()
    start = load_file(str(run / "checkpoints" / "start" / "model.safetensors"))
    last = load_file(str(next((run / "checkpoints").glob("step_*")) / "model.safetensors"))
    changed = {k for k in start if not torch.equal(start[k], last[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert all(k in changed for k in start if ".lora_B." in k)  # every B moved off zero
    bundle, _, _ = make_release(run, tmp_path / "release", checkpoint="last")
    info = json.loads((bundle / "config.json").read_text())
    assert info["lora_merged"]["rank"] == 4 and "LoRA adapters (rank 4" in (bundle / "README.md").read_text()
    state = load_file(str(bundle / "model.safetensors"))
    build = info["model"]["sam2_build"]
    torch.save({"model": state}, tmp_path / "sam2_model.pt")
    stock = build_sam2(build["config_file"], str(tmp_path / "sam2_model.pt"), device="cpu",
                       hydra_overrides_extra=build["hydra_overrides_extra"])
    adapted = load_model(cfg.model, 7, run, which="last").eval()
    pixels = adapted.preprocess(np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    with torch.no_grad():
        ours = adapted.sam.forward_image(pixels)["vision_features"]
        theirs = stock.forward_image(pixels)["vision_features"]
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_lora_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.lora.targets: 'encoder_atn'.*did you mean 'encoder_attn'"):
        load_config(None, ["model.lora.rank=4", "model.lora.targets=[encoder_atn]"])
    with pytest.raises(ConfigError, match=r"model.lora.targets: 'decoder' adapts the prompted mask decoder, which "
                                          r"semantic mode never runs .*drop 'decoder', or set model.mode=prompted"):
        load_config(None, ["model.lora.rank=4", "model.lora.targets=[encoder_attn, decoder]"])
    assert load_config(None, ["model.lora.rank=4", "model.lora.targets=[decoder]", "model.mode=prompted"])
    with pytest.raises(ConfigError, match="stages 'lora' trains LoRA adapters, but model.lora.rank is 0"):
        load_config(None, ["train.phases=[{start_epoch: 0, stages: lora}]"])


def test_a_bundle_config_asking_for_adapters_is_refused():
    from sam_histo.release.trust import BundleError, check_model

    model = {"arch": "tiny", "image_size": 64, "lora": {"rank": 0, "targets": ["encoder_attn"]}}
    assert "lora" not in check_model(model, "b/config.json")  # a merged bundle: the default (no adapters)
    with pytest.raises(BundleError, match="config.model.lora .* asks for adapters.*merged plain weights"):
        check_model({**model, "lora": {"rank": 4}}, "b/config.json")
