"""The trainer under two CPU processes and as a script (DESIGN.md sections 2 and 5).

- Across an unfreeze boundary (phase 0: no Hiera stage, phase 1: all) both ranks hold identical
  weights after every epoch, and the boundary really trained the stages (tests/ddp_param_driver.py).
- sam_histo/train.py run as a script drops its own folder from sys.path, where ``training`` would
  shadow sam2's top-level package (`accelerate launch sam_histo/train.py` itself runs in test_slurm.py).
- A run resumed from the epoch-end checkpoint at an unfreeze boundary ends with the same weights and
  final metrics as the uninterrupted run.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bcss(tmp_path_factory):
    from sam_histo.data.synth.layouts import write_bcss

    return write_bcss(tmp_path_factory.mktemp("bcss_ddp"), n=4, seed=0, size=128)


# Frozen encoder in epoch 0, every Hiera stage from epoch 1: an unfreeze boundary after the first epoch.
TWO_PHASES = ("train.phases=[{start_epoch: 0, stages: none, lr: 1.0e-3, warmup_steps: 2, min_lr: 1.0e-5}, "
              "{start_epoch: 1, stages: all, lr: 1.0e-4, min_lr: 1.0e-6}]")


def _overrides(data_root, out, name, iter_per_epoch):
    return [f"data.root={data_root}", f"output_dir={out}", f"name={name}", "model.image_size=64",
            "data.tile_size=64", "data.tile_stride=64", f"sampling.iter_per_epoch={iter_per_epoch}",
            "train.batch_size=1", "train.num_workers=0", "train.log_with=[]", "train.epochs=2", TWO_PHASES]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_stay_identical_across_an_unfreeze_boundary(tmp_path, tiny_bcss):
    out = tmp_path / "hashes"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_"))}
    env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    # TWO_PHASES: phase 0 from epoch 0 with stages none, phase 1 from epoch 1 with stages all.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(REPO / "tests" / "ddp_param_driver.py"), str(out),
           "configs/demo.yaml", *_overrides(tiny_bcss, tmp_path / "runs", "ddp", 4), "train.val_every=2"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    rec = {(r, e): json.loads((out / f"rank{r}_epoch{e}.json").read_text()) for r in (0, 1) for e in (0, 1)}
    trunk = [n for n in rec[0, 0]["after"] if ".image_encoder.trunk." in n]
    assert trunk
    for e, phase in ((0, 0), (1, 1)):
        assert rec[0, e]["phase"] == rec[1, e]["phase"] == phase
        assert rec[0, e]["before"] == rec[1, e]["before"]
        mismatched = [n for n, h in rec[0, e]["after"].items() if rec[1, e]["after"][n] != h]
        assert not mismatched, f"epoch {e}: ranks differ in {mismatched[:5]}"
        changed = {n for n, h in rec[0, e]["after"].items() if rec[0, e]["before"][n] != h}
        assert changed, f"epoch {e} trained nothing"
        # phase 0 freezes every Hiera stage; phase 1 trains them (so equality above covers them)
        assert (changed & set(trunk)) == (set() if phase == 0 else set(trunk))


def test_train_script_drops_its_own_folder_from_sys_path():
    """Python puts a script's folder first on sys.path; sam_histo/training would then shadow sam2's
    top-level ``training`` package for every later import. Run the script's preamble as Python would."""
    probe = (
        "import importlib.util, os, runpy, sys\n"
        "here = os.path.abspath('sam_histo')\n"
        "sys.path.insert(0, here)\n"
        "assert importlib.util.find_spec('training').origin.startswith(here)  # the trap is real\n"
        "runpy.run_path('sam_histo/train.py', run_name='not_main')\n"
        "assert here not in [os.path.abspath(p or '.') for p in sys.path]\n"
        "print(importlib.util.find_spec('training').origin)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    origin = done.stdout.strip().splitlines()[-1]
    assert not origin.startswith(str(REPO / "sam_histo")), origin


def test_resume_from_the_epoch_end_checkpoint_at_an_unfreeze_boundary(tmp_path, tiny_bcss):
    """The checkpoint written at the end of epoch 0 holds phase 0's optimizer; the resumed run enters
    phase 1, which starts with a fresh optimizer exactly as the uninterrupted run does."""
    from sam_histo.config import load_config
    from sam_histo.training.loop import train

    over = _overrides(tiny_bcss, tmp_path, "full", 4) + ["train.keep_checkpoints=10", "train.checkpoint_every_steps=0"]
    full = train(load_config("configs/demo.yaml", over))
    assert full["status"] == "finished"
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", resumed_dir)
    ckpts = resumed_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000004", "step_00000008"]
    shutil.rmtree(ckpts / "step_00000008")  # killed after the end of epoch 0, before any later checkpoint
    shutil.rmtree(resumed_dir / "eval")
    (ckpts / "LATEST").write_text("step_00000004")
    assert json.loads((ckpts / "step_00000004" / "state.json").read_text())["optimizer_phase"] == 0

    again = train(load_config("configs/demo.yaml", over[:2] + ["name=resumed"] + over[3:]))
    assert again["status"] == "finished"
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_00000008" / "model.safetensors"))
    b = load_file(str(ckpts / "step_00000008" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads((d / "eval" / "val" / "metrics.json").read_text()) for d in (tmp_path / "full", resumed_dir)]
    assert metrics[0]["per_class"] == metrics[1]["per_class"]
