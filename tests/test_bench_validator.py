"""`sam-histo bench validator` runs on small maps and every contender counts the same pixels."""
import json

from sam_histo.bench import main


def test_bench_validator_counts_agree(capsys):
    assert main(["validator", "--json", "--size", "64", "--repeat", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["agreement"] == "counts identical"
    assert out["ratio"] == out["ours_per_s"] / out["peer_per_s"]
    assert {"scikit-learn confusion_matrix", "torchmetrics default", "torchmetrics validate_args=False",
            "ours (uint8 maps)"} <= set(out["mpix_per_s"])
