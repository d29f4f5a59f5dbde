"""The sbatch scripts in slurm/, run by bash with stub srun / scontrol / accelerate and SLURM variables.

The stubs (tests/slurm_stubs.py) record the launch lines the scripts build; one test really trains two
CPU processes through slurm/train_1node.sbatch, preempts them with the signal SLURM would send, and
resumes the requeued job to the end.
"""
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from slurm_stubs import accelerate_records, slurm_env, write_stubs

REPO = Path(__file__).resolve().parents[1]
ONE_NODE = REPO / "slurm" / "train_1node.sbatch"
MULTI_NODE = REPO / "slurm" / "train_multinode.sbatch"
EVAL = REPO / "slurm" / "eval.sbatch"


def _run(script: Path, args: list, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the job ended (status {proc.returncode}) before {what}:\n{out[-4000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stubs(tmp_path):
    return write_stubs(tmp_path), tmp_path / "log"


# ------------------------------------------------------------------ launch lines (stubs only, fast)
@pytest.mark.parametrize("gpus,restart", [(4, 0), (1, 2)])
def test_one_node_launch_line(stubs, gpus, restart):
    bin_dir, log = stubs
    env = slurm_env(bin_dir, log, REPO, SLURM_GPUS_ON_NODE=gpus, SLURM_RESTART_COUNT=restart)
    args = ["configs/bcss.yaml", "data.root=/data/BCSS dir", "train.epochs=3"]
    done = _run(ONE_NODE, args, env)
    assert done.returncode == 0, done.stderr
    rec = accelerate_records(log)["x"]
    head = ["launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if gpus > 1:
        head += ["--multi_gpu", "--num_processes", "4", "--main_process_port", str(20000 + 4242 % 20000)]
    else:
        head += ["--num_processes", "1"]
    tail = ["sam_histo/train.py", "--config", *args] + (["train.resume=auto"] if restart else [])
    assert rec["argv"] == head + tail
    assert rec["cwd"] == str(REPO)
    assert rec["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    assert rec["env"]["ACCELERATE_USE_CPU"] is None
    assert rec["usr1_ignored"], "the launcher must ignore the preemption signal (torchrun dies of SIGUSR1)"
    assert not (log / "scontrol.log").exists()  # not preempted: no requeue


def test_one_node_cpu_processes_and_errors(stubs):
    bin_dir, log = stubs
    env = slurm_env(bin_dir, log, REPO, CPU_PROCS=2, MASTER_PORT=31234)
    assert _run(ONE_NODE, ["configs/demo.yaml"], env).returncode == 0
    rec = accelerate_records(log)["x"]
    assert rec["env"]["ACCELERATE_USE_CPU"] == "true"
    assert rec["argv"][rec["argv"].index("--num_processes") + 1] == "2"
    assert rec["argv"][rec["argv"].index("--main_process_port") + 1] == "31234"
    assert "--multi_gpu" in rec["argv"]

    usage = _run(ONE_NODE, [], env)
    assert usage.returncode == 2 and "usage: sbatch slurm/train_1node.sbatch CONFIG" in usage.stderr
    no_gpu = _run(ONE_NODE, ["configs/demo.yaml"], {**env, "CPU_PROCS": "0", "GPUS": "0"})
    assert no_gpu.returncode == 2 and "no GPU found" in no_gpu.stderr
    bad_venv = _run(ONE_NODE, ["configs/demo.yaml"], {**env, "VENV": str(log / "nowhere")})
    assert bad_venv.returncode == 2 and "has no bin/activate" in bad_venv.stderr


def test_multinode_launch_lines(stubs):
    bin_dir, log = stubs
    env = slurm_env(bin_dir, log, REPO, SLURM_NNODES=3, SLURM_JOB_NODELIST="gpu[07-09]", SLURM_GPUS_ON_NODE=4,
                    STUB_HOSTNAMES="gpu07 gpu08 gpu09", SLURM_CPUS_PER_TASK=32, SRUN_ARGS="--exclusive --mpi=none")
    args = ["configs/lgg.yaml", "name=lgg run", "train.batch_size=8"]
    done = _run(MULTI_NODE, args, env)
    assert done.returncode == 0, done.stderr
    assert "show hostnames gpu[07-09]" in (log / "scontrol.log").read_text().splitlines()
    srun_args = (log / "srun.args").read_text().split("\0")[:-1]
    assert srun_args[:6] == ["--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--exclusive",
                             "--mpi=none", "bash"]
    assert (log / "srun.cpus").read_text().strip() == "32"  # the job's CPUs reach the step
    records = accelerate_records(log)
    assert sorted(records) == ["0", "1", "2"]  # one launcher per node
    for node, rec in records.items():
        argv = rec["argv"]
        assert argv[:3] == ["launch", "--machine_rank", node]
        opts = dict(zip(argv[3:], argv[4:]))
        assert opts["--num_machines"] == "3" and opts["--num_processes"] == "12"  # total over nodes
        assert opts["--main_process_ip"] == "gpu07" and opts["--main_process_port"] == str(20000 + 4242 % 20000)
        assert "--multi_gpu" in argv
        assert argv[argv.index("sam_histo/train.py"):] == ["sam_histo/train.py", "--config", *args]
        assert rec["usr1_ignored"] and rec["cwd"] == str(REPO)


def test_multinode_preemption_reaches_every_node_and_requeues(stubs):
    """SIGUSR1 to the batch shell -> srun -> each node's task -> the training process under the launcher."""
    bin_dir, log = stubs
    env = slurm_env(bin_dir, log, REPO, SLURM_NNODES=2, SLURM_JOB_NODELIST="n[1-2]", SLURM_GPUS_ON_NODE=2,
                    STUB_HOSTNAMES="n1 n2", STUB_WORKER=1)
    job = subprocess.Popen(["bash", str(MULTI_NODE), "configs/demo.yaml"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: all((log / f"worker.{n}.ready").exists() for n in "01"), job, "both workers started", 30)
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=30)
    assert job.returncode == 0, out
    assert all((log / f"worker.{n}.signalled").exists() for n in "01"), out
    assert "requeue 4242" in (log / "scontrol.log").read_text().splitlines()
    assert "requeueing job 4242" in out


def test_one_node_no_requeue_when_training_fails_after_the_signal(stubs):
    bin_dir, log = stubs
    env = slurm_env(bin_dir, log, REPO, SLURM_GPUS_ON_NODE=2, STUB_WORKER=1, STUB_WORKER_RC=1)
    job = subprocess.Popen(["bash", str(ONE_NODE), "configs/demo.yaml"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: (log / "worker.x.ready").exists(), job, "the worker started", 30)
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=30)
    assert (log / "worker.x.signalled").exists()
    assert job.returncode == 1 and "not requeued" in out
    assert not (log / "scontrol.log").exists()


def test_eval_line_and_bad_subcommand(stubs):
    bin_dir, log = stubs
    env = slurm_env(bin_dir, log, REPO, PYTHON=bin_dir / "recorder")
    args = ["validate", "--config", "runs/a/config.yaml", "--checkpoint", "runs/a", "--out", "runs/a/test",
            "--split", "test", "eval.batch_size=2"]
    done = _run(EVAL, args, env)
    assert done.returncode == 0, done.stderr
    rec = json.loads((log / "recorder.json").read_text())
    assert rec["argv"] == ["-m", "sam_histo", *args]
    assert rec["cwd"] == str(REPO) and rec["pythonpath"].split(os.pathsep)[0] == str(REPO)
    bad = _run(EVAL, ["train", "--config", "x.yaml"], env)
    assert bad.returncode == 2 and "{validate|zeroshot|score|predict}" in bad.stderr and "got 'train'" in bad.stderr


# ------------------------------------------------------------------ two real CPU processes
@pytest.fixture(scope="module")
def tiny_bcss(tmp_path_factory):
    from sam_histo.data.synth.layouts import write_bcss

    return write_bcss(tmp_path_factory.mktemp("bcss_slurm"), n=4, seed=0, size=128)


def _events(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_one_node_two_cpu_processes_preempted_requeued_and_resumed(tmp_path, tiny_bcss):
    """The real script, trainer and `accelerate launch sam_histo/train.py` (run as a script) on 2 CPU
    processes: SIGUSR1 to the batch shell (what `--signal=B:USR1@120` does) checkpoints mid-epoch and
    exits 0, the script requeues; the restarted job resumes from that checkpoint and finishes."""
    bin_dir = write_stubs(tmp_path, with_accelerate=False)
    log, out = tmp_path / "log", tmp_path / "runs"
    run_dir = out / "demo"
    steps_per_epoch, epochs = 8, 2  # 16 samples per epoch over 2 processes, batch 1
    args = ["configs/demo.yaml", f"data.root={tiny_bcss}", f"output_dir={out}", "name=demo", "model.image_size=64",
            "data.tile_size=64", "data.tile_stride=64", "sampling.iter_per_epoch=16", "train.batch_size=1",
            "train.num_workers=0", "train.log_with=[]", "train.log_every=1", f"train.epochs={epochs}",
            "train.phases=[{start_epoch: 0, stages: none, lr: 1.0e-3, warmup_steps: 2, min_lr: 1.0e-5}, "
            "{start_epoch: 1, stages: all, lr: 1.0e-4, min_lr: 1.0e-6}]"]
    env = slurm_env(bin_dir, log, REPO, CPU_PROCS=2, OMP_NUM_THREADS=1, MASTER_PORT=_free_port())

    first = subprocess.Popen(["bash", str(ONE_NODE), *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    started = lambda: (run_dir / "metrics.jsonl").exists() and '"start"' in (run_dir / "metrics.jsonl").read_text()
    _wait_for(started, first, "training started")
    first.send_signal(signal.SIGUSR1)
    text, _ = first.communicate(timeout=120)
    assert first.returncode == 0, text[-4000:]
    assert "preempted: checkpoint" in text
    assert "requeue 4242" in (log / "scontrol.log").read_text().splitlines()
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "LATEST").read_text().strip()
    state = json.loads((ckpt / "state.json").read_text())
    assert ckpt.name == f"step_{state['step']:08d}"
    assert 0 < state["step"] < steps_per_epoch * epochs and state["consumed"] > 0  # mid-epoch
    assert sorted(p.name for p in ckpt.glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
    assert not (run_dir / "eval" / "val").exists()  # the preempted job did not run the final evaluation
    assert (run_dir / "eval" / "start" / "metrics.json").is_file()  # (only the start's, before step 1)

    env.update(SLURM_RESTART_COUNT="1", MASTER_PORT=str(_free_port()))
    second = subprocess.run(["bash", str(ONE_NODE), *args], env=env, capture_output=True, text=True, timeout=180)
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-4000:]
    assert "train.resume=auto" in text.splitlines()[1]  # the restart asks for the run's latest checkpoint
    assert f"resumed from {ckpt} (epoch {state['epoch']}, step {state['step']})" in text
    assert (log / "scontrol.log").read_text().count("requeue") == 1  # finished: not requeued again

    events = _events(run_dir)
    starts = [e for e in events if e["event"] == "start"]
    assert [s["world_size"] for s in starts] == [2, 2] and starts[1]["resumed_from"] == str(ckpt)
    steps = [e["step"] for e in events if e["event"] == "train"]
    assert steps == list(range(1, steps_per_epoch * epochs + 1))  # no step repeated or skipped
    assert events[-1]["event"] == "end" and events[-1]["status"] == "finished"
    final = json.loads((run_dir / "eval" / "val" / "metrics.json").read_text())
    assert set(final["per_class"]) and final["macro"]["dice"] is not None
    last = run_dir / "checkpoints" / (run_dir / "checkpoints" / "LATEST").read_text().strip()
    assert json.loads((last / "state.json").read_text())["step"] == steps_per_epoch * epochs
