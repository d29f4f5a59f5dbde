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


def test_demo_trains_two_phases_and_writes_the_report(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["demo", "--out", str(run), "--n", "3", "sampling.iter_per_epoch=8"]) == 0
    text = capsys.readouterr().out
    assert "class statistics of the train split" in text and str(run / "eval" / "val" / "report.md") in text
    assert (run / "config.yaml").is_file() and (run / "class_stats.json").is_file()
    stats = json.loads((run / "class_stats.json").read_text())
    assert np.asarray(stats["counts"]).shape[1] == 7  # outside_roi + the 6 trained classes
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {e["phase"] for e in events if e["event"] == "train"} == {0, 1}  # both unfreeze phases ran
    vals = [e for e in events if e["event"] == "val"]
    assert [e["epoch"] for e in vals] == ["start", *range(12)]  # the random-init start is measured first
    report_text = (run / "eval" / "val" / "report.md").read_text()
    assert report_text.startswith("fine-tuning beat the starting weights on val")  # random init is beaten
    start_row = next(line for line in report_text.splitlines() if line.startswith("| **macro Dice** |"))
    start, best, diff = (float(x) for x in start_row.strip("|").split("|")[1:4])
    assert best > start and diff == pytest.approx(best - start, abs=2e-3) and start == pytest.approx(
        vals[0]["macro"]["dice"], abs=1e-3)
    assert "## WiSE-FT" in report_text and "(kept)" in report_text
    report = run / "eval" / "val"
    for name in ("report.md", "metrics.json", "confusion_matrix.png", "per_class.png"):
        assert (report / name).is_file(), name
    assert list(report.glob("overlay_*.png"))
    metrics = json.loads((report / "metrics.json").read_text())
    assert "outside_roi" not in metrics["per_class"] and metrics["split"] == "val"
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()
    assert "[demo] release" in text
    # the demo ends with a release of its run and a prediction of a held-out ROI
    import sam_histo

    assert sam_histo.load_release(run / "release").model.semantic_head is not None
    assert len(list((run / "predictions" / "labels").glob("*.png"))) == 1
