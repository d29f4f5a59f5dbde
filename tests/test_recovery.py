"""Failures a user meets on the way, each one line with the fix, and nothing already written lost: a bug
inside validation, an empty split, a bad stage, a changed resume, a full disk, a diverged run."""
import json

import pytest

from sam_histo import cli
from sam_histo.config import load_config
from sam_histo.errors import MissingSplitError
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
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err, err
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
