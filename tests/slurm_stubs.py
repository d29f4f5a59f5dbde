"""Stand-ins for a SLURM cluster, written into a test's tmp folder and put first on PATH.

- ``srun``: records its arguments (and $SRUN_CPUS_PER_TASK), then runs the command once per node (SLURM_NNODES) in the background
  with SLURM_NODEID / SLURM_PROCID set, passing a SIGUSR1 it gets on to its tasks, as srun does.
- ``scontrol``: records each call as one line; ``show hostnames`` prints $STUB_HOSTNAMES one per line.
- ``accelerate``: records argv, cwd, some environment and whether SIGUSR1 is ignored in it; with
  STUB_WORKER=1 it starts one "training process" (``stub_worker``) and exits with its status.
- ``stub_worker``: writes ``worker.<node>.ready``, then waits for SIGUSR1; on it writes
  ``worker.<node>.signalled`` and exits with $STUB_WORKER_RC (0); after 60 s without it, exits 3.
- ``recorder``: records argv (stands in for python in eval.sbatch).
Records go to $STUB_LOG.
"""
import json
import os
import stat
import sys
from pathlib import Path

SRUN = r"""#!/bin/bash
printf '%s\0' "$@" > "$STUB_LOG/srun.args"
echo "${SRUN_CPUS_PER_TASK:-}" > "$STUB_LOG/srun.cpus"
while [[ "${1:-}" == -* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i "$@" &
    pids+=($!)
done
trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1
rc=0
for p in "${pids[@]}"; do
    while :; do
        s=0
        wait "$p" || s=$?
        if [ "$s" -ne 138 ]; then break; fi
        t=0
        wait "$p" || t=$?
        if [ "$t" -ne 127 ]; then s=$t; fi
        if [ "$s" -ne 138 ]; then break; fi
    done
    if [ "$s" -ne 0 ]; then rc=$s; fi
done
exit $rc
"""

SCONTROL = r"""#!/bin/bash
echo "$*" >> "$STUB_LOG/scontrol.log"
if [ "${1:-}" = show ] && [ "${2:-}" = hostnames ]; then
    for h in $STUB_HOSTNAMES; do echo "$h"; done
fi
"""

ACCELERATE = r"""#!{python}
import json, os, signal, subprocess, sys
log = os.environ["STUB_LOG"]
node = os.environ.get("SLURM_NODEID", "x")
record = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "node": node,
          "usr1_ignored": signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN,
          "env": {{k: os.environ.get(k) for k in ("ACCELERATE_USE_CPU", "PYTHONPATH", "SLURM_NODEID")}}}}
with open(os.path.join(log, f"accelerate.{{node}}.json"), "w") as f:
    json.dump(record, f)
if os.environ.get("STUB_WORKER") == "1":
    sys.exit(subprocess.call([sys.executable, os.path.join(os.path.dirname(__file__), "stub_worker")]))
"""

WORKER = r"""#!{python}
import os, signal, sys, time
log, node = os.environ["STUB_LOG"], os.environ.get("SLURM_NODEID", "x")
def got(signum, frame):
    open(os.path.join(log, f"worker.{{node}}.signalled"), "w").close()
    sys.exit(int(os.environ.get("STUB_WORKER_RC", "0")))
signal.signal(signal.SIGUSR1, got)
open(os.path.join(log, f"worker.{{node}}.ready"), "w").close()
deadline = time.time() + 60
while time.time() < deadline:
    time.sleep(0.05)
sys.exit(3)
"""

RECORDER = r"""#!{python}
import json, os, sys
with open(os.path.join(os.environ["STUB_LOG"], "recorder.json"), "w") as f:
    json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd(), "pythonpath": os.environ.get("PYTHONPATH")}}, f)
"""


def write_stubs(folder: Path, with_accelerate: bool = True) -> Path:
    """Write the stubs into ``folder/bin`` (without ``accelerate`` when the real one must run)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    files = {"srun": SRUN, "scontrol": SCONTROL, "stub_worker": WORKER, "recorder": RECORDER}
    if with_accelerate:
        files["accelerate"] = ACCELERATE
    for name, text in files.items():
        path = bin_dir / name
        path.write_text(text.format(python=sys.executable) if "{python}" in text else text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def slurm_env(bin_dir: Path, log: Path, repo: Path, **extra) -> dict:
    """The environment of a batch job: this machine's, without SLURM_* and the scripts' knobs, stubs first."""
    names = {"GPUS", "CPU_PROCS", "CUDA_VISIBLE_DEVICES", "PREEMPT_SIGNAL", "SAM_HISTO_DIR", "VENV", "PYTHON"}
    env = {k: v for k, v in os.environ.items()
           if k not in names and not k.startswith(("SLURM_", "MASTER_", "ACCELERATE_"))}
    log.mkdir(parents=True, exist_ok=True)
    env.update(PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               STUB_LOG=str(log), SAM_HISTO_DIR=str(repo), VENV="", SLURM_JOB_ID="4242",
               SLURM_SUBMIT_DIR=str(repo), SLURM_NNODES="1", SLURM_JOB_NODELIST="gpu07")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def accelerate_records(log: Path) -> dict:
    """{node: record} of every stub accelerate call."""
    return {json.loads(p.read_text())["node"]: json.loads(p.read_text()) for p in log.glob("accelerate.*.json")}
