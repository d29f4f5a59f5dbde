"""Failures a user meets on the way, each one line with the fix, and nothing already written lost: a bug
inside validation, an empty split, a bad stage, a changed resume, a full disk, a diverged run."""
import json

import pytest

from sam_histo import cli
from sam_histo.config import load_config
from sam_histo.training import loop
from test_training import overrides
from tiles import write_blocks

SIZE = 64


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    half = lambda a, b: [(a, (0, 0, SIZE, SIZE // 2)), (b, (0, SIZE // 2, SIZE, SIZE))]  # noqa: E731
    return write_blocks(tmp_path_factory.mktemp("rec"), [half("tumor", "stroma"), half("stroma", "tumor"),
                                                         half("tumor", "necrosis_or_debris")])


def _one_line(capsys, rc, *words):
    """rc 2, no traceback, and the error is the last line of stderr (progress bars may precede it)."""
    whole = capsys.readouterr().err
    err = whole.replace("\r", "\n").strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in whole and err.startswith("sam-histo "), whole
    for w in words:
        assert w in err, err
    return err


# ------------------------------------------------------------------------------ (8) validation errors
def test_an_error_inside_validation_fails_the_run(tiles, tmp_path, monkeypatch):
    import sam_histo.eval.validator as V

    def broken(*a, **k):
        raise ValueError("a bug in the evaluator")

    monkeypatch.setattr(V, "evaluate", broken)
    cfg = load_config(None, overrides(tiles, tmp_path, "bug", 1, 1, "data.val_fraction=0.34"))
    with pytest.raises(ValueError, match="a bug in the evaluator"):
        loop.train(cfg)


def test_an_empty_split_is_the_dedicated_error_skipped_by_the_reports(tiles, tmp_path, capsys):
    from sam_histo.errors import MissingSplitError
    from sam_histo.eval.validator import evaluate_splits
    from sam_histo.models.load import load_model

    cfg = load_config(None, overrides(tiles, tmp_path, "noval", 1, 1))  # data.val_fraction=0
    result = loop.train(cfg)
    assert result["status"] == "finished" and "val" not in result and "test" not in result
    model = load_model(cfg.model, 7, result["run_dir"])
    assert evaluate_splits(model, cfg, ["val", "test"], progress=False)[1] == ["val", "test"]
    with pytest.raises(MissingSplitError, match="split 'val' .* is empty"):
        evaluate_splits(model, cfg, ["val"], progress=False, required=True)
    capsys.readouterr()
    rc = cli.main(["validate", "--config", f"{result['run_dir']}/config.yaml", "--checkpoint", result["run_dir"],
                   "--out", str(tmp_path / "v"), "--split", "val"])
    _one_line(capsys, rc, "split 'val'", "is empty", "data.val_fraction")


def _cli_train(tmp_path, args):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("seed: 0\n")
    return cli.main(["train", "--config", str(cfg), *args])


def _strict_json(line):
    def refuse(name):
        raise AssertionError(f"{name} in metrics.jsonl is not JSON")
    return json.loads(line, parse_constant=refuse)


# -------------------------------------------------------------------------- (4) a bad stage, found first
def test_a_bad_stage_of_a_later_phase_is_refused_before_the_run_folder_exists(tiles, tmp_path, capsys):
    args = overrides(tiles, tmp_path, "badstage", 1, 2)
    args = [a for a in args if not a.startswith("train.phases")]
    args.append("train.phases=[{start_epoch: 0, stages: all, lr: 1.0e-3}, {start_epoch: 1, stages: [7], lr: 1.0e-3}]")
    rc = _cli_train(tmp_path, args)
    _one_line(capsys, rc, "train.phases[1].stages=[7]", "do not exist", "0..3")
    assert not (tmp_path / "badstage").exists()


# ---------------------------------------------------------- (5) config.yaml of a run is never overwritten
def test_a_failing_or_changed_resume_keeps_the_run_config(tiles, tmp_path, capsys):
    args = overrides(tiles, tmp_path, "cfgrun", 1, 1)
    assert loop.train(load_config(None, args))["status"] == "finished"
    saved = (tmp_path / "cfgrun" / "config.yaml").read_bytes()
    capsys.readouterr()
    bad = [a for a in args if not a.startswith("train.phases")]
    bad.append("train.phases=[{start_epoch: 0, stages: [9], lr: 1.0e-3}]")
    _one_line(capsys, _cli_train(tmp_path, bad), "train.phases[0].stages=[9]")
    assert (tmp_path / "cfgrun" / "config.yaml").read_bytes() == saved
    assert not list((tmp_path / "cfgrun").glob("config.resume-*"))
    assert loop.train(load_config(None, [*args, "train.epochs=2"]))["status"] == "finished"
    assert "train.epochs: 1 -> 2; written to config.resume-1.yaml" in capsys.readouterr().out
    assert (tmp_path / "cfgrun" / "config.yaml").read_bytes() == saved
    assert load_config(tmp_path / "cfgrun" / "config.resume-1.yaml").train.epochs == 2


# ------------------------------------------------------------------------------------- (6) a full disk
@pytest.mark.parametrize("error", ["enospc", "torch_zip"])
def test_a_full_disk_while_saving_is_one_line_and_the_previous_checkpoint_survives(tiles, tmp_path, capsys,
                                                                                    monkeypatch, error):
    import errno

    from sam_histo.training import checkpoint as ck

    real, calls = ck.save_file, {"n": 0}

    def fill_up(tensors, path, *a, **k):
        calls["n"] += ".step_" in str(path)  # start/ and best/ are written too; count step checkpoints
        if calls["n"] == 2 and ".step_" in str(path):  # step 1 is written, then step 2 fails
            with open(path, "wb") as f:
                f.write(b"\0" * 100)  # a partial file, as a full disk leaves it
            if error == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 32")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", fill_up)
    rc = _cli_train(tmp_path, overrides(tiles, tmp_path, "full", 1, 2))
    err = _one_line(capsys, rc, "no space left on the device", "step_00000002", "step_00000001 is intact",
                    "run the same command again")
    assert "Traceback" not in err
    ckpts = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["LATEST", "best", "start", "step_00000001"]  # no half folder
    from safetensors.torch import load_file

    assert load_file(str(ckpts / "step_00000001" / "model.safetensors"))


# ------------------------------------------------------------------------------------- (7) divergence
def test_divergence_names_the_last_finite_checkpoint_and_is_not_resumed_blindly(tiles, tmp_path, capsys,
                                                                                 monkeypatch):
    real, calls = loop.batch_loss, {"n": 0}

    def nan_later(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        if calls["n"] > 2:
            out["total"] = out["total"] * float("nan")
        return out

    monkeypatch.setattr(loop, "batch_loss", nan_later)
    args = overrides(tiles, tmp_path, "div", 2, 3, "train.max_nonfinite=2", "train.log_every=1")
    err = _one_line(capsys, _cli_train(tmp_path, args), "non-finite loss values in a row",
                    "The last finite checkpoint is", "step_00000002", "train.resume=never", "name=")
    run = tmp_path / "div"
    for line in (run / "metrics.jsonl").read_text().splitlines():
        _strict_json(line)
    assert any(_strict_json(ln).get("loss", 0) is None for ln in (run / "metrics.jsonl").read_text().splitlines())
    monkeypatch.setattr(loop, "batch_loss", real)
    _one_line(capsys, _cli_train(tmp_path, args), "diverged at step", "train.resume=never", "step_00000002")
    assert _cli_train(tmp_path, [*args, "train.resume=never"]) == 0
    assert (run / "checkpoints.diverged-1" / "step_00000002").is_dir()  # nothing deleted
    assert not (run / "DIVERGED.json").exists() and (run / "checkpoints" / "step_00000006").is_dir()
    assert "non-finite" in err


# ------------------------------------------------------------------------------- a bad checkpoint
def test_an_unreadable_checkpoint_is_one_line_naming_it(tiles, tmp_path, capsys):
    args = overrides(tiles, tmp_path, "badck", 1, 1)
    assert loop.train(load_config(None, args))["status"] == "finished"
    weights = tmp_path / "badck" / "checkpoints" / "step_00000001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated
    capsys.readouterr()
    _one_line(capsys, _cli_train(tmp_path, [*args, "train.epochs=2"]), "step_00000001",
              "cannot resume from this checkpoint", "train.resume=PATH")


# ------------------------------------------------------------------- (11) records once after a resume
def test_metrics_jsonl_holds_each_step_once_after_a_resume(tiles, tmp_path):
    args = overrides(tiles, tmp_path, "once", 1, 3, "train.log_every=1", "train.keep_checkpoints=3")
    loop.train(load_config(None, args))
    ckpts = tmp_path / "once" / "checkpoints"
    import shutil

    shutil.rmtree(ckpts / "step_00000003")  # killed after logging step 3, before its checkpoint
    (ckpts / "LATEST").write_text("step_00000002")
    loop.train(load_config(None, args))
    records = [_strict_json(ln) for ln in (tmp_path / "once" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["event"] == "train"]
    assert steps == [1, 2, 3]
