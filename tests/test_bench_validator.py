"""`sam-histo bench validator` runs on small maps and every contender counts the same pixels."""
import json

from sam_histo.bench import main


def test_bench_validator_counts_agree(capsys):
    assert main(["validator", "--json", "--size", "64", "--sizes", "32,48", "--repeat", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["agreement"] == "counts identical"
    assert out["ratio"] == out["ours_per_s"] / out["peer_per_s"]
    assert {"scikit-learn confusion_matrix", "torchmetrics default", "torchmetrics validate_args=False",
            "ours (uint8 maps)"} <= set(out["mpix_per_s"])
    assert set(out["per_size"]) == {"32", "48"}
    for row in out["per_size"].values():
        assert set(row) == {"int64", "uint8"}
        for cell in row.values():
            assert {"ours", "ours (torch inputs)", "numpy bincount", "numpy copy", "counting floor"} == set(
                cell["mpix_per_s"])
            m = cell["mpix_per_s"]
            assert abs(cell["ratio_vs_numpy_bincount"] - m["ours"] / m["numpy bincount"]) < 0.01 * cell[
                "ratio_vs_numpy_bincount"] + 0.01
            assert cell["bandwidth_fraction"] > 0 and cell["read_gb_per_s"]["ours"] > 0
            assert abs(cell["floor_bandwidth_fraction"] - m["counting floor"] / m["numpy copy"]) < 0.01 * cell[
                "floor_bandwidth_fraction"] + 0.01
    assert {">=1.0x numpy bincount (every size and dtype)", ">=0.5 of numpy copy bandwidth (every size and dtype)"
            } <= set(out["goals_met"])
