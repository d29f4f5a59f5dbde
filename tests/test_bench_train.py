import json

from sam_histo.bench import main


def test_bench_train_prints_the_design_json(capsys):
    assert main(["train", "--json", "--steps", "1", "--size", "64", "--batch", "1"]) == 0
    out = json.loads(capsys.readouterr().out)  # the whole of stdout: the trainer's lines go to stderr
    assert {"name", "ours_per_s", "peer", "peer_per_s", "ratio", "agreement", "machine"} <= set(out)
    assert out["name"] == "train" and set(out["per_phase_s"]) == {"frozen", "last stage", "last two", "all"}
    assert abs(out["ratio"] - out["ours_per_s"] / out["peer_per_s"]) < 1e-9
    assert out["loader_batches_per_s"]["workers_0"] > 0
