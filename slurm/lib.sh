# Shared by the sbatch scripts of this folder; sourced by bash, never run. Functions:
#
#   sam_histo_env                 cd to the checkout, activate its virtual environment, put it on PYTHONPATH
#   sam_histo_procs               set PROCS_PER_NODE (GPUs of this node, or CPU_PROCS CPU processes)
#   sam_histo_supervise MODE CMD  run CMD in the background and pass the preemption signal on to training
#   sam_histo_finish RC           after a preempted run that exited 0, requeue this job; then exit RC
#
# Knobs (environment variables, all optional):
#   SAM_HISTO_DIR   the checkout to run from (default: where sbatch was called, $SLURM_SUBMIT_DIR)
#   VENV            virtual environment to activate (default: $SAM_HISTO_DIR/.venv when it exists;
#                   VENV= (empty) uses whatever python and accelerate are on PATH)
#   GPUS            processes per node (default: $SLURM_GPUS_ON_NODE, else the ids in CUDA_VISIBLE_DEVICES,
#                   else the GPUs `nvidia-smi -L` lists, else 1)
#   CPU_PROCS       N > 0 runs N CPU processes per node instead (tests, CPU-only nodes): exports
#                   ACCELERATE_USE_CPU=true, which makes accelerate use gloo and no GPU
#   PREEMPT_SIGNAL  the signal `#SBATCH --signal` sends (default USR1); it must be one of the config's
#                   train.preempt_signals (default [SIGTERM, SIGUSR1])
#
# How preemption works: `#SBATCH --signal=B:USR1@120` makes SLURM signal only this batch shell 120 s
# before the time limit. The launcher (`accelerate launch`) is started with that signal ignored (an
# ignored disposition survives exec and is inherited by its children), so neither it nor a stray copy
# of the signal can kill it; the training processes install their own handler (training/runtime.py
# Preemption), which overrides the inherited one. The trap below sends the signal to them; they write
# a checkpoint at the next optimizer step and exit 0; this shell then runs `scontrol requeue`, and the
# requeued job (same job id, same log, SLURM_RESTART_COUNT > 0) resumes with train.resume=auto.

SAM_HISTO_PREEMPTED=0

sam_histo_env() {
    export SAM_HISTO_DIR=${SAM_HISTO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
    cd "$SAM_HISTO_DIR" || { echo "sam_histo: SAM_HISTO_DIR=$SAM_HISTO_DIR does not exist" >&2; exit 2; }
    VENV=${VENV-$SAM_HISTO_DIR/.venv}
    if [ -n "$VENV" ]; then
        if [ -f "$VENV/bin/activate" ]; then
            # shellcheck disable=SC1091
            source "$VENV/bin/activate"
        elif [ "$VENV" != "$SAM_HISTO_DIR/.venv" ]; then
            echo "sam_histo: VENV=$VENV has no bin/activate; set VENV to a virtual environment, or VENV= to use PATH" >&2
            exit 2
        fi
    fi
    # This checkout's code runs whether or not the package is installed into the environment.
    export PYTHONPATH="$SAM_HISTO_DIR${PYTHONPATH:+:$PYTHONPATH}"
    PREEMPT_SIGNAL=${PREEMPT_SIGNAL:-USR1}
    PREEMPT_SIGNAL=${PREEMPT_SIGNAL#SIG}
}

sam_histo_procs() {
    if [ "${CPU_PROCS:-0}" -gt 0 ]; then
        export ACCELERATE_USE_CPU=true
        PROCS_PER_NODE=$CPU_PROCS
    elif [ -n "${GPUS:-}" ]; then
        PROCS_PER_NODE=$GPUS
    elif [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
        PROCS_PER_NODE=$SLURM_GPUS_ON_NODE
    elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        local ids
        IFS=, read -ra ids <<< "$CUDA_VISIBLE_DEVICES"
        PROCS_PER_NODE=${#ids[@]}
    elif command -v nvidia-smi > /dev/null 2>&1; then
        PROCS_PER_NODE=$(nvidia-smi -L | grep -c '^GPU')
    else
        PROCS_PER_NODE=1
    fi
    if ! [ "$PROCS_PER_NODE" -ge 1 ] 2>/dev/null; then
        echo "sam_histo: no GPU found (GPUS=${GPUS:-}, SLURM_GPUS_ON_NODE=${SLURM_GPUS_ON_NODE:-}); request GPUs with --gpus-per-node, or set GPUS or CPU_PROCS" >&2
        exit 2
    fi
}

# Append train.resume=auto to the overrides of a requeued job: whatever the first start said about
# resuming, a restart must continue from the run's latest checkpoint. Prints one override per line.
sam_histo_restart_overrides() {
    if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
        echo "train.resume=auto"
    fi
}

# sam_histo_supervise children|self CMD...
#   children: CMD is a launcher; it runs with the signal ignored and the signal goes to its children
#             (the training processes that `accelerate launch` / torchrun start)
#   self:     the signal goes to CMD itself (srun, which passes signals on to its tasks on every node)
# Sets SAM_HISTO_RC to CMD's exit status and SAM_HISTO_PREEMPTED=1 when the signal arrived.
sam_histo_supervise() {
    local mode=$1
    shift
    if [ "$mode" = children ]; then
        ( trap '' "$PREEMPT_SIGNAL"; exec "$@" ) &
    else
        "$@" &
    fi
    SAM_HISTO_CHILD=$!
    # shellcheck disable=SC2064  # expand mode and signal now
    trap "_sam_histo_forward $mode" "$PREEMPT_SIGNAL"
    _sam_histo_wait "$SAM_HISTO_CHILD" $((128 + $(kill -l "$PREEMPT_SIGNAL")))
    trap - "$PREEMPT_SIGNAL"
}

_sam_histo_forward() {
    SAM_HISTO_PREEMPTED=1
    echo "$(date '+%F %T') sam_histo: got SIG$PREEMPT_SIGNAL; passing it on so training checkpoints and exits" >&2
    if [ "$1" = children ]; then
        pkill "-$PREEMPT_SIGNAL" -P "$SAM_HISTO_CHILD" || echo "sam_histo: no training process to signal yet" >&2
    else
        kill "-$PREEMPT_SIGNAL" "$SAM_HISTO_CHILD" 2>/dev/null || true
    fi
}

# `wait` returns 128+signal as soon as a trapped signal arrives, while the child still runs: wait again.
# A second wait answers 127 when the first one had already collected the child (it died of the signal).
_sam_histo_wait() {
    local pid=$1 interrupted=$2 rc prev=""
    while :; do
        rc=0
        wait "$pid" || rc=$?
        if [ "$rc" -eq 127 ] && [ -n "$prev" ]; then
            rc=$prev
            break
        fi
        [ "$rc" -eq "$interrupted" ] || break
        prev=$rc
    done
    SAM_HISTO_RC=$rc
}

sam_histo_finish() {
    local rc=$1
    if [ "$SAM_HISTO_PREEMPTED" = 1 ]; then
        if [ "$rc" -eq 0 ]; then
            echo "$(date '+%F %T') sam_histo: checkpoint written; requeueing job $SLURM_JOB_ID (it resumes from the checkpoint)"
            if ! scontrol requeue "$SLURM_JOB_ID"; then
                echo "sam_histo: scontrol requeue failed (is #SBATCH --requeue allowed here?); resubmit the same command to resume" >&2
                exit 1
            fi
        else
            echo "sam_histo: training exited with status $rc after SIG$PREEMPT_SIGNAL: not requeued" >&2
        fi
    fi
    exit "$rc"
}
