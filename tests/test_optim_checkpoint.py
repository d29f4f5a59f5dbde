import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator

from sam_histo.config import PhaseConfig
from sam_histo.training import checkpoint as ck
from sam_histo.training.optim import lr_at, param_groups, phase_epochs, phase_index, set_lr


def test_phase_lookup_and_lengths():
    phases = [PhaseConfig(start_epoch=0), PhaseConfig(start_epoch=11), PhaseConfig(start_epoch=26)]
    assert [phase_index(e, phases) for e in (0, 10, 11, 25, 26, 39)] == [0, 0, 1, 1, 2, 2]
    assert [phase_epochs(i, phases, 40) for i in range(3)] == [11, 15, 14]


def test_lr_warmup_then_cosine_to_min():
    p = PhaseConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10)
    lrs = [lr_at(s, 110, p) for s in range(110)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # rising during warm-up
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then never rising
    mid = 10 + 50
    assert lrs[mid] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, 110, p) == pytest.approx(1e-5)


def test_param_groups_layer_decay_and_no_decay():
    model = torch.nn.ModuleDict(
        {"enc": torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 3)),
         "head": torch.nn.Linear(3, 2)}
    )
    layer = {"enc.0": 0, "enc.1": 1, "enc.2": 2}

    def layer_of(name):
        return layer.get(name.rsplit(".", 1)[0])

    groups = param_groups(model.named_parameters(), weight_decay=0.05, layer_decay=0.5, layer_of=layer_of, num_layers=2)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["enc.0.weight"]["lr_scale"] == 0.25 and by_name["enc.0.weight"]["weight_decay"] == 0.05
    assert by_name["enc.2.weight"]["lr_scale"] == 1.0
    assert by_name["enc.1.weight"]["weight_decay"] == 0.0  # LayerNorm
    assert by_name["head.bias"]["weight_decay"] == 0.0 and by_name["head.weight"]["lr_scale"] == 1.0
    assert sorted(by_name) == sorted(n for n, _ in model.named_parameters())
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups])
    set_lr(opt, 0.1)
    assert sorted(g["lr"] for g in opt.param_groups) == sorted(0.1 * g["lr_scale"] for g in groups)


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))


def test_checkpoint_round_trip_and_latest(tmp_path):
    acc = Accelerator(cpu=True)
    model = _tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    for step in (5, 10, 15):
        ck.save_checkpoint(acc, tmp_path, model, opt, {"step": step, "epoch": 1}, keep=2)
    latest = ck.latest_checkpoint(tmp_path)
    assert latest.name == "step_00000015"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000010", "step_00000015"]
    ck.save_checkpoint(acc, tmp_path, model, opt, {"step": 20, "epoch": 2})
    after_save = torch.rand(3)
    other = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
    state = ck.restore(acc, ck.latest_checkpoint(tmp_path), other, other_opt)
    assert state["step"] == 20
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], other_opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(3), after_save)  # RNG restored to the moment of saving


def test_incomplete_checkpoint_is_never_latest(tmp_path):
    acc = Accelerator(cpu=True)
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ck.save_checkpoint(acc, tmp_path, model, opt, {"step": 1})
    # a kill while writing step 2 leaves only the temporary folder behind
    (tmp_path / "checkpoints" / ".step_00000002.tmp").mkdir()
    assert ck.latest_checkpoint(tmp_path).name == "step_00000001"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ck.read_state(tmp_path / "checkpoints" / ".step_00000002.tmp")


KILL_SCRIPT = r"""
import sys, torch
from accelerate import Accelerator
from sam_histo.training import checkpoint as ck
acc = Accelerator(cpu=True)
model = torch.nn.Linear(512, 512)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
step = 0
while True:
    step += 1
    with torch.no_grad():
        model.weight.fill_(step)
    ck.save_checkpoint(acc, sys.argv[1], model, opt, {"step": step}, keep=3)
"""


def test_sigkill_while_saving_leaves_a_consistent_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        import time

        deadline = time.time() + 60
        while time.time() < deadline and len(list((tmp_path / "checkpoints").glob("step_*"))) < 3:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    latest = ck.latest_checkpoint(tmp_path)
    assert latest is not None
    model = torch.nn.Linear(512, 512)
    state = ck.read_state(latest)
    ck.load_model_weights(model, latest)
    assert torch.all(model.weight == state["step"])  # the weights belong to the step the folder names
