"""`sam-histo bench predict` and `bench loader` on tiny inputs print the documented JSON and their checks hold."""
import json

from sam_histo.bench import main

DESIGN_KEYS = {"name", "ours_per_s", "peer", "peer_per_s", "ratio", "agreement", "machine"}


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_predict_times_each_size_in_its_own_process(tiny_run, tmp_path, capsys):
    from sam_histo.release.build import make_release

    bundle = make_release(tiny_run, tmp_path / "release")[0]
    assert main(["predict", "--json", "--release", str(bundle), "--sizes", "96,160"]) == 0
    out = _last_json(capsys)
    assert DESIGN_KEYS <= set(out) and out["name"] == "predict"
    assert out["agreement"] == "every label map has its input's size"
    assert set(out["per_size"]) == {"96", "160"}
    for row in out["per_size"].values():
        assert {"seconds", "s_above_baseline", "mpix_per_s", "peak_rss_mb", "rss_above_baseline_mb",
                "bytes_per_pixel_above_baseline"} <= set(row)
        assert row["seconds"] > 0 and row["peak_rss_mb"] > 50  # a process that imported torch
    assert out["baseline"]["peak_rss_mb"] > 50
    assert out["ours_per_s"] == out["per_size"]["160"]["mpix_per_s"]
    assert out["peer_per_s"] == out["per_size"]["96"]["mpix_per_s"]


def test_bench_loader_adapter_equals_the_bare_loader(capsys):
    assert main(["loader", "--json", "--roi-sizes", "200,300", "--tile", "128", "--repeat", "1",
                 "--monuseg", "none"]) == 0
    out = _last_json(capsys)
    assert DESIGN_KEYS <= set(out) and out["name"] == "loader"
    assert out["agreement"] == "images and masks identical to the bare loader on every tile"
    (row,) = out["datasets"].values()
    assert row["rois"] == 2 and 4 <= row["tiles"] <= 4 + 9  # 2x2 + 3x3 tiles, less any wholly outside the ROI
    for name in ("adapter, in order", "adapter, shuffled", "bare decode + crop, shuffled",
                 "training pipeline, shuffled"):
        assert row[name] > 0
    assert out["ours_per_s"] == row["adapter, shuffled"] and out["peer_per_s"] == row["bare decode + crop, shuffled"]
    assert out["monuseg"] == "not found (synthetic only)"
