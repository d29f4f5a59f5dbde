"""The clip and zeroshot config sections, and the zeroshot benchmark on a tiny model."""
import json

import pytest

from sam_histo.config import ConfigError, load_config


def test_clip_sections_defaults_and_overrides():
    cfg = load_config(None, ["clip.backend=transformers", "clip.arch=/models/plip", "zeroshot.overlap=area",
                             "clip.head_alpha=0.25", "zeroshot.points_per_side=16"])
    assert cfg.clip.backend == "transformers" and cfg.clip.arch == "/models/plip" and cfg.clip.weights is None
    assert cfg.zeroshot.overlap == "area" and cfg.clip.head_alpha == 0.25 and cfg.zeroshot.points_per_side == 16


@pytest.mark.parametrize("override, message", [
    ("clip.head_alpha=1.5", r"clip.head_alpha=1.5 must be in \[0, 1\]"),
    ("clip.backend=open-clip", r"clip.backend: 'open-clip' is not one of .*did you mean 'open_clip'"),
    ("zeroshot.overlap=scores", r"zeroshot.overlap: 'scores' is not one of .*did you mean 'score'"),
    ("zeroshot.pred_iou_thresh=2", r"zeroshot.pred_iou_thresh=2.0 must be in \[0, 1\]"),
    ("clip.batch_size=0", r"clip.batch_size=0 must be >= 1"),
    ("clip.logit_scale=-1", r"clip.logit_scale=-1.0 must be > 0"),
    ("clip.crop_margn=0.1", r"unknown config key 'clip.crop_margn'.*did you mean 'crop_margin'"),
])
def test_clip_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unassigned_must_be_a_class():
    with pytest.raises(ConfigError, match=r"zeroshot.unassigned='othr' is not in data.classes.*'other'"):
        load_config(None, ["data.classes=[tumor, other]", "zeroshot.unassigned=othr"])


def test_zeroshot_benchmark_runs_and_agrees(capsys):
    from sam_histo.bench import main

    assert main(["zeroshot", "--json", "--arch", "tiny", "--masks", "4", "--size", "96", "--peer-masks", "1",
                 "--repeat", "1", "--prompts", "vesicle"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "zeroshot" and out["masks"] == 4 and out["texts"] == 50
    assert out["agreement"] < 1e-5 and out["ratio"] == pytest.approx(out["ours_per_s"] / out["peer_per_s"])
    assert out["peer"] == "one image call per mask, text embeddings computed once"
    secs = out["s_per_image"]
    assert set(secs) == {"ours", out["peer"], "batched masks, crops cut one by one, text once",
                         "prompts re-encoded per mask (old peer, not a fair baseline; extrapolated)"}
    assert out["ratio_vs_batched_loop"] == pytest.approx(secs["batched masks, crops cut one by one, text once"]
                                                         / secs["ours"])
    assert len(out["saving"]) == 3 and all(v > 0 for v in out["saving"].values())
