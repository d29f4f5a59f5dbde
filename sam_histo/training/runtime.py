"""Run bookkeeping: the accelerator, the run folder, the resumable state, preemption signals."""
from __future__ import annotations

import dataclasses
import logging
import signal
from pathlib import Path
from typing import Optional, Union

from sam_histo.config import Config, ConfigError, to_dict
from sam_histo.training import checkpoint as ck
from sam_histo.training.recovery import (  # noqa: F401  (TrainingError re-exported)
    DIVERGED,
    TrainingError,
    check_divergence_marker,
    flatten,
    save_run_config,
)

log = logging.getLogger("sam_histo.train")


def make_accelerator(cfg: Config):
    """An Accelerator for this config. Prompted mode leaves some prompt-encoder weights without a gradient
    on batches without boxes, so DDP must look for unused parameters there."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.model.mode == "prompted")
    return Accelerator(mixed_precision=cfg.train.mixed_precision, log_with=cfg.train.log_with or None,
                       project_dir=str(cfg.run_dir), kwargs_handlers=[ddp])


def prepare_run_dir(cfg: Config, accelerator) -> Path:
    """Create the run folder, refuse to overwrite checkpoints, save the resolved config there (a resume
    with a changed config: config.resume-N.yaml, see training.recovery). Call it after every check."""
    run_dir = cfg.run_dir
    if accelerator.is_main_process:
        diverged = (run_dir / DIVERGED).is_file()
        if cfg.train.resume == "never" and not diverged and ck.latest_checkpoint(run_dir) is not None:
            raise ConfigError(f"{run_dir} already holds checkpoints and train.resume=never: continue it with "
                              "train.resume=auto, or start a new run with another name= or output_dir=")
        check_divergence_marker(cfg, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        resuming = cfg.train.resume != "never" and ck.latest_checkpoint(run_dir) is not None
        save_run_config(cfg, run_dir, resuming)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    accelerator.wait_for_everyone()
    return run_dir


def flat_config(cfg: Config) -> dict:
    """Dotted keys -> scalars (lists and dicts as strings), for trackers' hyperparameter tables."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(to_dict(cfg)).items()}


@dataclasses.dataclass
class TrainState:
    """What a checkpoint needs besides weights and optimizer to continue exactly where it stopped."""

    epoch: int = 0
    step: int = 0  # optimizer steps so far
    consumed: int = 0  # samples of ``epoch`` this rank has trained on
    best: Optional[float] = None
    best_epoch: Union[int, str, None] = None  # "start": no epoch beat the starting weights
    bad_validations: int = 0
    nonfinite_total: int = 0
    nonfinite_run: int = 0
    sampler: dict = dataclasses.field(default_factory=dict)
    # Unfreeze phase whose optimizer the checkpoint holds: an epoch-end checkpoint at a phase boundary
    # resumes into the next phase, which starts with a fresh optimizer (as it does without a restart).
    optimizer_phase: Optional[int] = None
    pending_skip: bool = False  # not saved: the current accumulation had a non-finite loss

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("pending_skip")
        return out

    @classmethod
    def from_json(cls, data: dict) -> "TrainState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def initial(cls, cfg: Config, run_dir: Path) -> tuple["TrainState", Optional[Path]]:
        """A fresh state, or the one of the checkpoint ``train.resume`` names."""
        mode = cfg.train.resume
        if mode == "never":
            return cls(), None
        ckpt = ck.latest_checkpoint(run_dir) if mode == "auto" else Path(mode)
        if ckpt is None:
            return cls(), None
        if not (ckpt / "state.json").exists():
            raise ConfigError(f"train.resume={mode}: {ckpt} is not a complete checkpoint folder (no state.json)")
        return cls.from_json(ck.read_state(ckpt)), ckpt

    def skip_nonfinite(self, what: str, limit: int) -> None:
        self.nonfinite_total += 1
        self.nonfinite_run += 1
        log.warning("non-finite %s at step %d: step skipped (%d in a row, %d in all)", what, self.step,
                    self.nonfinite_run, self.nonfinite_total)
        if self.nonfinite_run >= limit:
            raise TrainingError(
                f"{self.nonfinite_run} non-finite {what} values in a row at step {self.step}: training is "
                "diverging. Lower train.phases[*].lr or add warmup_steps, use train.mixed_precision=no (or bf16 "
                "instead of fp16), and check the data for corrupt tiles; train.max_nonfinite sets this limit.")


class Preemption:
    """Remembers that one of ``names`` (e.g. SIGTERM from SLURM before the time limit) arrived."""

    def __init__(self, names: list[str]):
        self._flag = False
        self._old = {}
        for name in names:
            sig = getattr(signal, name)
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                pass

    def _handle(self, signum, frame) -> None:
        self._flag = True
        log.warning("received %s: a checkpoint follows at the next step", signal.Signals(signum).name)

    def requested(self, accelerator) -> bool:
        """True on every process once any process got a signal (one all-reduce of one number)."""
        import torch

        flag = torch.tensor([1.0 if self._flag else 0.0], device=accelerator.device)
        return accelerator.reduce(flag, "sum").item() > 0

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
