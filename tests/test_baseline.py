"""The start is measured first and fine-tuning cannot silently end below it: epoch "start", best = start
when no epoch beats it, the report's first lines, WiSE-FT mixing, and release of the start."""
import json

import pytest
import torch
from safetensors.torch import load_file

from sam_histo.config import ConfigError, load_config
from sam_histo.models.weights import unwrap_sam
from sam_histo.training import loop
from sam_histo.training.wise import mix_state
from tiles import quadrants, write_blocks

SIZE = 64


def run_overrides(root, out, name, epochs, lr, *extra, steps=8):
    return [f"data.root={root}", "model.arch=tiny", f"model.image_size={SIZE}", f"data.tile_size={SIZE}",
            f"data.tile_stride={SIZE}", "data.val_fraction=0.25", "data.test_fraction=0", "sampling.oversample=none",
            f"sampling.iter_per_epoch={steps}", "train.batch_size=1", f"train.epochs={epochs}",
            f"train.phases=[{{start_epoch: 0, stages: all, lr: {lr}, min_lr: {lr}}}]", "augment.flip=0",
            "augment.rot90=0", "train.log_with=[]", "train.num_workers=0", "train.checkpoint_every_steps=0",
            "eval.overlays=0", f"output_dir={out}", f"name={name}", *extra]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Four slides of the same four-class layout (one is val), and a tiny model trained on them."""
    root = tmp_path_factory.mktemp("good_start")
    data = write_blocks(root / "data", [quadrants(SIZE)] * 4)
    result = loop.train(load_config(None, run_overrides(data, root, "pre", 10, "3.0e-3")))
    assert result["status"] == "finished"
    return data, root / "pre" / "checkpoints" / "best" / "model.safetensors", result


def test_destructive_fine_tune_keeps_the_start_and_says_so(pretrained, tmp_path):
    from sam_histo.release.build import make_release

    data, weights, pre = pretrained
    assert pre["best"] > 0.6, pre["val"]["per_class"]  # the start is already good
    cfg = load_config(None, run_overrides(data, tmp_path, "ft", 1, "1.0", f"model.checkpoint={weights}",
                                          "train.grad_clip=0", steps=2))
    result = loop.train(cfg)
    run = tmp_path / "ft"
    assert result["best_epoch"] == "start" and result["status"] == "finished"
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [e for e in events if e["event"] == "val"]
    assert [e["epoch"] for e in vals] == ["start", 0]
    assert vals[1]["macro"]["dice"] < vals[0]["macro"]["dice"] and not vals[1]["improved"]
    assert vals[0]["macro"]["dice"] == pytest.approx(pre["best"], abs=1e-6)  # same protocol as pre-training's val
    assert (run / "eval" / "start" / "report.md").is_file()
    first = (run / "eval" / "val" / "report.md").read_text().splitlines()[0]
    assert "fine-tuning did not beat the starting weights on val" in first and "best epoch 0" in first
    text = (run / "eval" / "val" / "report.md").read_text()
    assert "## Start vs best on val" in text and "| epoch 0 (not kept) |" in text  # the lost epoch is shown
    row = next(line for line in text.splitlines() if line.startswith("| **macro Dice** |"))
    assert [float(x) for x in row.strip("|").split("|")[1:5]] == pytest.approx(
        [vals[0]["macro"]["dice"], vals[0]["macro"]["dice"], 0.0, vals[1]["macro"]["dice"]], abs=1e-3)
    best = load_file(str(run / "checkpoints" / "best" / "model.safetensors"))
    start = load_file(str(run / "checkpoints" / "start" / "model.safetensors"))
    assert all(torch.equal(best[k], start[k]) for k in start)
    bundle, _, _ = make_release(run, tmp_path / "release")
    shipped = load_file(str(bundle / "model.safetensors"))
    sam_start = unwrap_sam(start)
    assert shipped.keys() == sam_start.keys() and all(torch.equal(shipped[k], sam_start[k]) for k in shipped)
    assert "epoch start" in (bundle / "README.md").read_text()


def test_wise_mix_is_exact_at_both_ends_and_linear_between():
    torch.manual_seed(0)
    start = {"w": torch.randn(5, 3), "b": torch.tensor([-0.0, 1.0]), "n": torch.tensor([3]),
             "x.lora_A.default.weight": torch.randn(2, 3), "x.lora_B.default.weight": torch.zeros(3, 2)}
    best = {k: (v + torch.randn_like(v.float()) if v.is_floating_point() else v + 4) for k, v in start.items()}
    zero, one, half = mix_state(start, best, 0.0), mix_state(start, best, 1.0), mix_state(start, best, 0.5)
    for k in ("w", "b", "x.lora_B.default.weight"):
        assert zero[k].numpy().tobytes() == start[k].numpy().tobytes()  # bit for bit, signed zeros too
    for k in best:
        assert one[k].numpy().tobytes() == best[k].numpy().tobytes()
    assert torch.allclose(half["w"], (start["w"] + best["w"]) / 2)
    assert torch.equal(half["n"], best["n"])  # integer buffers come from best
    assert torch.equal(half["x.lora_A.default.weight"], best["x.lora_A.default.weight"])
    # mixing B and keeping A mixes the merged update exactly: W0 + a * B A
    merged = half["x.lora_B.default.weight"] @ half["x.lora_A.default.weight"]
    assert torch.allclose(merged, 0.5 * best["x.lora_B.default.weight"] @ best["x.lora_A.default.weight"])


def test_wise_alphas_outside_zero_one_are_refused():
    with pytest.raises(ConfigError, match=r"train.wise_alphas \[1.5\] out of range"):
        load_config(None, ["train.wise_alphas=[0, 1.5]"])


def test_wise_keeps_the_best_mix_and_release_names_its_alpha(pretrained, tmp_path):
    from sam_histo.release.build import make_release

    data, weights, pre = pretrained
    run = weights.parent.parent.parent
    state = json.loads((run / "checkpoints" / "best" / "state.json").read_text())
    wise = [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == "wise"]
    assert wise[0]["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0] and state["wise_alpha"] == wise[0]["chosen"]
    assert state["value"] == max(s for s in wise[0]["scores"] if s is not None) == pytest.approx(pre["best"])
    assert state["wise_of_epoch"] != "start" and pre["wise_alpha"] == state["wise_alpha"]
    assert pre["val"]["macro"]["dice"] == pytest.approx(pre["best"], abs=1e-9)  # the final val is of the kept mix
    text = (run / "eval" / "val" / "report.md").read_text()
    assert text.startswith("fine-tuning beat the starting weights") and "| 0.5 |" in text.replace(" (kept)", "")
    bundle, _, _ = make_release(run, tmp_path / "release")
    assert f"WiSE-FT alpha {state['wise_alpha']:g}" in (bundle / "README.md").read_text()
