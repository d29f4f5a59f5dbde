"""`sam-histo model info` and `sam-histo bench model` through their CLI entry points (tiny model)."""
import json

from sam_histo import cli
from sam_histo.config import ModelConfig
from sam_histo.models.sam import build_sam


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_model_info_stage_table_and_phases(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model: {arch: tiny, image_size: 64, mode: prompted}\n"
        "train:\n  epochs: 12\n  train_prompt_encoder: false\n"
        "  phases: [{start_epoch: 0, stages: none}, {start_epoch: 4, stages: [2, 3]}, {start_epoch: 8, stages: all}]\n"
    )
    assert cli.main(["model", "info", "--config", str(cfg), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # Oracle: sums over the modules themselves.
    sam = build_sam(ModelConfig(arch="tiny", image_size=64)).sam
    trunk, blocks = sam.image_encoder.trunk, sam.image_encoder.trunk.blocks
    stem = _numel(trunk.patch_embed) + trunk.pos_embed.numel() + trunk.pos_embed_window.numel()
    per_stage = [stem + _numel(blocks[0]), _numel(blocks[1:3]), _numel(blocks[3:5]), _numel(blocks[5:6])]
    assert [row["params"] for row in info["groups"][:4]] == per_stage
    assert [row["blocks"] for row in info["groups"][:4]] == ["0", "1-2", "3-4", "5"]
    neck = _numel(sam.image_encoder.neck) + sam.no_mem_embed.numel()
    decoder = _numel(sam.sam_mask_decoder)
    assert [p["trainable"] for p in info["phases"]] == [
        decoder, decoder + neck + per_stage[2] + per_stage[3], decoder + neck + sum(per_stage)]
    assert [p["epochs"] for p in info["phases"]] == ["0-3", "4-7", "8-11"]
    assert info["total"] == _numel(sam)
    assert cli.main(["model", "info", "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "stage 3" in text and "(always frozen)" in text and "8-11" in text


def test_bench_model_json_shape(capsys):
    assert cli.main(["bench", "model", "--json", "--arch", "tiny", "--sizes", "64", "--steps", "1",
                     "--objects", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("name", "ours_per_s", "peer", "peer_per_s", "ratio", "agreement", "machine"):
        assert key in out
    assert abs(out["ratio"] - out["ours_per_s"] / out["peer_per_s"]) < 1e-9
    assert [r["stages_trainable"] for r in out["rows"]] == [0, 1, 2, 3, 4]
    params = [r["trainable_params"] for r in out["rows"]]
    assert params == sorted(params) and params[0] < params[-1]
    assert all(r["max_abs_diff_vs_frozen"] == 0.0 for r in out["rows"])


def test_model_info_counts_what_the_trainer_trains_for_bcss_yaml(capsys):
    """`model info` builds the head the trainer builds (the data's class spec), so the phase-0 trainable
    count equals the trainer's: configs/bcss.yaml lists no data.classes, BCSS adds outside_roi."""
    from sam_histo.config import load_config
    from sam_histo.data.dataset import class_spec
    from sam_histo.training.build import build_model, set_phase

    overrides = ["model.arch=tiny", "model.image_size=64", "model.checkpoint=null"]
    cfg = load_config("configs/bcss.yaml", overrides)
    assert cfg.model.mode == "semantic"
    model = build_model(cfg, class_spec(cfg.data))
    counts = set_phase(model, cfg.train, cfg.train.phases[0], cfg.model.mode)
    trainer = sum(t for t, _ in counts.values())
    assert cli.main(["model", "info", "--config", "configs/bcss.yaml", *overrides, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_classes"] == class_spec(cfg.data).num_classes == 7
    assert info["phases"][0]["trainable"] == trainer
    assert "semantic_head" in info["phases"][0]["by_group"]
