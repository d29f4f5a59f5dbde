"""The trainer end to end on the tiny model: it learns, weights and oversampling matter, and a killed or
diverging run behaves as documented."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sam_histo.config import ConfigError, load_config
from sam_histo.data.dataset import class_spec
from sam_histo.eval.validator import validate
from sam_histo.models.load import load_model
from sam_histo.training import loop
from sam_histo.training.runtime import TrainingError
from tiles import quadrants, write_blocks

SIZE = 64


def halves(a, b):
    return [(a, (0, 0, SIZE, SIZE // 2)), (b, (0, SIZE // 2, SIZE, SIZE))]


@pytest.fixture(scope="module")
def six_tiles(tmp_path_factory):
    """Six two-class tiles; the last holds an 8 x 8 blood vessel, the only one of the set (1.6 %)."""
    layouts = [halves("tumor", "stroma"), halves("stroma", "necrosis_or_debris"),
               halves("tumor", "lymphocytic_infiltrate"), halves("necrosis_or_debris", "tumor"),
               halves("lymphocytic_infiltrate", "stroma"),
               halves("tumor", "stroma") + [("blood_vessel", (28, 28, 36, 36))]]
    return write_blocks(tmp_path_factory.mktemp("six"), layouts)


def overrides(root, run_dir, name, steps_per_epoch, epochs, *extra, stages="all", lr="3.0e-3", batch=1):
    return [f"data.root={root}", "model.arch=tiny", f"model.image_size={SIZE}", f"data.tile_size={SIZE}",
            f"data.tile_stride={SIZE}", "data.val_fraction=0", "sampling.oversample=none",
            f"sampling.iter_per_epoch={steps_per_epoch * batch}", f"train.batch_size={batch}", f"train.epochs={epochs}",
            f"train.phases=[{{start_epoch: 0, stages: {stages}, lr: {lr}, min_lr: {lr}}}]", "augment.flip=0",
            "augment.rot90=0", "train.log_with=[]", "train.num_workers=0", "train.checkpoint_every_steps=0",
            f"output_dir={run_dir}", f"name={name}", *extra]


def score_train_split(cfg, result):
    num = class_spec(cfg.data).num_classes if cfg.model.mode == "semantic" else None
    model = load_model(cfg.model, num, result["run_dir"], which="last")
    return validate(model, cfg, "train", progress=False)


def test_semantic_mode_overfits_a_synthetic_tile_through_main(tmp_path):
    from sam_histo.data.synth.layouts import write_bcss

    root = write_bcss(tmp_path / "data", n=1, seed=0, size=SIZE)
    cfg_args = overrides(root, tmp_path / "runs", "sem", 8, 30)
    assert loop.main(["--config", "configs/demo.yaml", *cfg_args]) == 0
    cfg = load_config("configs/demo.yaml", cfg_args)
    metrics = score_train_split(cfg, {"run_dir": tmp_path / "runs" / "sem"})
    assert len(metrics["macro_over"]) >= 4  # a real multi-class tile
    assert metrics["macro"]["dice"] >= 0.9, metrics["per_class"]


def test_prompted_mode_overfits_a_tile_with_box_prompts(tmp_path):
    root = write_blocks(tmp_path / "data", [quadrants(SIZE)])
    cfg = load_config(None, overrides(root, tmp_path, "prompted", 8, 30, "model.mode=prompted", "prompts.p_box=1.0",
                                      stages="none", lr="1.0e-3"))
    result = loop.train(cfg)
    assert result["status"] == "finished"
    metrics = score_train_split(cfg, result)
    assert metrics["mode"] == "prompted" and len(metrics["macro_over"]) == 4
    assert metrics["macro"]["dice"] >= 0.9, metrics["per_class"]


def test_class_weights_and_oversampling_raise_rare_class_recall(six_tiles, tmp_path):
    recall = {}
    arms = {"neither": ["sampling.oversample=none", "sampling.class_weights.power=0"],
            "both": ["sampling.oversample=auto", "sampling.class_weights.power=1"]}
    for arm, extra in arms.items():
        cfg = load_config(None, overrides(six_tiles, tmp_path, arm, 6, 10, *extra, batch=2))
        result = loop.train(cfg)
        recall[arm] = score_train_split(cfg, result)["per_class"]["blood_vessel"]["recall"]
        if arm == "both":  # the log says which weights were used: blood_vessel far above the common classes
            start = json.loads((tmp_path / arm / "metrics.jsonl").read_text().splitlines()[0])
            assert start["class_weights"]["blood_vessel"] > 5 * start["class_weights"]["tumor"]
    assert recall["neither"] < 0.2 and recall["both"] > recall["neither"] + 0.4, recall


KILL_DRIVER = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from sam_histo.config import load_config
    from sam_histo.training import checkpoint as ck, loop
    real = ck.save_checkpoint
    def save_then_die(acc, run_dir, model, opt, state, keep=2):
        path = real(acc, run_dir, model, opt, state, keep)
        if state["step"] == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)   # as a cluster's OOM killer would, mid-epoch
        return path
    ck.save_checkpoint = save_then_die
    loop.train(load_config(None, sys.argv[1:]))
""")


def test_sigkilled_run_resumes_to_the_same_final_metrics(six_tiles, tmp_path):
    extra = ["data.val_fraction=0.34", "train.checkpoint_every_steps=3", "augment.flip=0.5", "augment.rot90=0.5"]
    reference = loop.train(load_config(None, overrides(six_tiles, tmp_path, "reference", 4, 3, *extra)))
    args = overrides(six_tiles, tmp_path, "killed", 4, 3, *extra)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "KILL_AT_STEP": "6"}  # epoch 1, after 2 of 4 steps
    proc = subprocess.run([sys.executable, "-c", KILL_DRIVER, *args], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    state = json.loads((tmp_path / "killed" / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert state["epoch"] == 1 and state["consumed"] == 2  # really mid-epoch
    resumed = loop.train(load_config(None, args))
    assert resumed["status"] == "finished"
    assert resumed["val"]["confusion_matrix"] == reference["val"]["confusion_matrix"]
    assert resumed["best"] == reference["best"] and resumed["best_epoch"] == reference["best_epoch"]
    lines = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert any(x.get("resumed_from", "") and x["resumed_from"].endswith("step_00000006") for x in lines)


def test_nonfinite_losses_are_skipped_and_a_run_of_them_stops(six_tiles, tmp_path, monkeypatch):
    real = loop.batch_loss
    calls = {"n": 0}

    def nan_on(bad):
        def fake(*args, **kwargs):
            calls["n"] += 1
            out = real(*args, **kwargs)
            if bad(calls["n"]):
                out["total"] = out["total"] * float("nan")
            return out
        return fake

    monkeypatch.setattr(loop, "batch_loss", nan_on(lambda n: n == 2))
    result = loop.train(load_config(None, overrides(six_tiles, tmp_path, "one_nan", 4, 1)))
    assert result["status"] == "finished" and result["nonfinite_skipped"] == 1
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "one_nan" / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())

    calls["n"] = 0
    monkeypatch.setattr(loop, "batch_loss", nan_on(lambda n: n >= 2))
    with pytest.raises(TrainingError, match=r"3 non-finite loss values in a row at step 3.*lr"):
        loop.train(load_config(None, overrides(six_tiles, tmp_path, "all_nan", 4, 1, "train.max_nonfinite=3")))


def test_each_end_of_a_run_prints_why_and_where(six_tiles, tmp_path, monkeypatch, capsys):
    """finish, early stop and divergence each end with one line naming the reason and the report."""
    loop.train(load_config(None, overrides(six_tiles, tmp_path, "done", 1, 2, "data.val_fraction=0.34")))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("training finished all 2 epochs; best val macro dice") and \
        last.endswith(f"report {tmp_path / 'done' / 'eval' / 'val' / 'report.md'}")
    # patience 1 and an impossible gain: the first epoch's validation cannot beat the start, so the run stops
    loop.train(load_config(None, overrides(six_tiles, tmp_path, "early", 1, 4, "data.val_fraction=0.34", "train.early_stop.patience=1",
                                           "train.early_stop.min_delta=10")))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("training stopped early after epoch 0: val macro dice gained less than 10.0 in 1 ")
    assert last.endswith(f"report {tmp_path / 'early' / 'eval' / 'val' / 'report.md'}")
    real = loop.batch_loss
    monkeypatch.setattr(loop, "batch_loss", lambda *a, **k: {**real(*a, **k), "total": torch.tensor(float("nan"))})
    with pytest.raises(TrainingError):
        loop.train(load_config(None, overrides(six_tiles, tmp_path, "nan", 4, 1, "train.max_nonfinite=2")))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("training stopped at step 1, diverging: 2 non-finite loss values in a row at step 1;")
    assert last.endswith(f"checkpoints in {tmp_path / 'nan' / 'checkpoints'}")


def test_resume_never_refuses_a_run_folder_with_checkpoints(six_tiles, tmp_path):
    args = overrides(six_tiles, tmp_path, "once", 2, 1)
    loop.train(load_config(None, args))
    with pytest.raises(ConfigError, match="already holds checkpoints and train.resume=never"):
        loop.train(load_config(None, [*args, "train.resume=never"]))
