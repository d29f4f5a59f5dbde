"""`sam-histo synth` then `sam-histo stats --json` through the CLI, and the data-only demo."""
import json

import numpy as np
import pytest

from sam_histo.cli import main
from sam_histo.config import PROJECT_ROOT


@pytest.mark.parametrize("kind,extra,ignored", [
    ("bcss", ["--n", "4", "--size", "128"], "outside_roi"),
    ("lgg", ["--n", "4", "--size", "96"], None),
    ("vesicle", ["--n", "6", "--size", "48", "--depth", "10"], None),
])
def test_synth_then_stats_json(tmp_path, capsys, kind, extra, ignored):
    out = tmp_path / kind
    assert main(["synth", kind, "--out", str(out), *extra]) == 0
    capsys.readouterr()
    assert main(["stats", "--config", str(PROJECT_ROOT / "configs" / f"{kind}.yaml"), f"data.root={out}", "--split", "all", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    names = rep["class_names"]
    trained = [n for n in names if n != ignored]
    assert list(rep["per_class"]) == trained  # the ignore id (BCSS code 0) is excluded
    fracs = [c["pixel_fraction"] for c in rep["per_class"].values()]
    assert sum(fracs) == pytest.approx(1.0) and all(f > 0 for f in fracs)
    assert all(c["weight"] > 0 and c["rate"] >= 1 for c in rep["per_class"].values())
    if ignored:
        assert rep["ignored"]["name"] == ignored and 0 < rep["ignored"]["fraction_of_all_pixels"] < 1
    if kind == "lgg":  # the recipe's manual rates: IT 20, LE 5
        assert rep["per_class"]["IT"]["rate"] == 20 and rep["per_class"]["LE"]["rate"] == 5
    if kind == "vesicle":
        assert rep["samples_per_epoch"] == 20000


def test_stats_table_and_a_clear_error(tmp_path, capsys):
    assert main(["synth", "bcss", "--out", str(tmp_path / "d"), "--n", "3", "--size", "96"]) == 0
    assert main(["stats", "--config", str(PROJECT_ROOT / "configs" / "bcss.yaml"), f"data.root={tmp_path / 'd'}", "--split", "all"]) == 0
    text = capsys.readouterr().out
    assert "blood_vessel" in text and "excluded from every number below" in text
    assert main(["stats", "--config", str(PROJECT_ROOT / "configs" / "bcss.yaml"), f"data.root={tmp_path / 'none'}"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_demo_writes_data_and_prints_statistics(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "run"), "--n", "3"]) == 0
    text = capsys.readouterr().out
    assert "class statistics of the train split" in text and "[demo] release" in text
    # the demo ends with a release of its run and a prediction of a held-out ROI
    import sam_histo

    assert sam_histo.load_release(tmp_path / "run" / "release").model.semantic_head is not None
    assert len(list((tmp_path / "run" / "predictions" / "labels").glob("*.png"))) == 1
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "class_stats.json").is_file()
    stats = json.loads((tmp_path / "run" / "class_stats.json").read_text())
    assert np.asarray(stats["counts"]).shape[1] == 7
