"""What keeps a run recoverable when something expected goes wrong: checks before the run folder is
written, the run's config never overwritten, a full disk and a diverged run said in one line.

* ``check_phases``: every ``train.phases[i].stages`` against the built model's stage map, before anything
  is written (a bad stage of phase 3 used to surface only when phase 3 started, as a traceback).
* ``save_run_config``: ``config.yaml`` is written once per run; a resume whose config differs writes
  ``config.resume-N.yaml`` beside it and says which keys changed (``validate`` and ``release`` keep
  reading the config the checkpoints were started with).
* ``disk_guard``: a full disk (ENOSPC / EDQUOT, or the bare ``unexpected pos`` torch's zip writer gives)
  becomes a :class:`~sam_histo.errors.RunError` naming the file and the checkpoint that survived.
* ``DIVERGED.json``: written when non-finite steps stop a run; ``train.resume=auto`` then refuses to pick
  the diverged weights up again, ``train.resume=never`` restarts the folder (its checkpoints are moved
  to ``checkpoints.diverged-N``, nothing is deleted), ``train.resume=PATH`` continues from a chosen one.
"""
from __future__ import annotations

import errno
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import yaml

from sam_histo.config import Config, ConfigError, to_dict
from sam_histo.errors import RunError
from sam_histo.models.load import CKPT_DIR

log = logging.getLogger("sam_histo.train")
DIVERGED = "DIVERGED.json"
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


# ---------------------------------------------------------------------------------- before the run
def check_phases(cfg: Config, model) -> None:
    """ConfigError naming the first phase whose stage ids the model does not have."""
    from sam_histo.models.stages import normalize_stages, stage_ends

    n = len(stage_ends(model))
    for i, phase in enumerate(cfg.train.phases):
        try:
            normalize_stages(phase.stages, n)
        except ValueError as e:
            raise ConfigError(f"train.phases[{i}].stages={phase.stages}: {e} (model.arch={cfg.model.arch}); "
                              "fix the phase before the run starts") from None


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def save_run_config(cfg: Config, run_dir: Path, resuming: bool) -> Path:
    """Write the run's config where it belongs (see the module docstring); returns the file written."""
    from sam_histo.config import save_config

    path = run_dir / "config.yaml"
    if not path.exists() or not resuming:
        return save_config(cfg, path)
    old = flatten(yaml.safe_load(path.read_text()) or {})
    new = flatten(to_dict(cfg))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not changed:
        return path
    n = 1
    while (run_dir / f"config.resume-{n}.yaml").exists():
        n += 1
    out = save_config(cfg, run_dir / f"config.resume-{n}.yaml")
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
    more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
    print(f"resume with a changed config: {shown}{more}; written to {out.name}, {path.name} is kept", flush=True)
    return out


def check_divergence_marker(cfg: Config, run_dir: Path) -> None:
    """Refuse to resume diverged weights silently; ``train.resume=never`` moves the old checkpoints aside."""
    marker = run_dir / DIVERGED
    if not marker.is_file():
        return
    info = json.loads(marker.read_text())
    if cfg.train.resume == "auto":
        raise ConfigError(f"{run_dir} diverged at step {info.get('step')} ({marker}); resuming would pick the "
                          "diverged weights up again. Start a new run (another name=), restart this folder with "
                          f"train.resume=never, or continue from a finite checkpoint with train.resume=PATH "
                          f"(the last finite one: {info.get('last_finite')})")
    if cfg.train.resume == "never" and (run_dir / CKPT_DIR).is_dir():
        n = 1
        while (run_dir / f"{CKPT_DIR}.diverged-{n}").exists():
            n += 1
        os.replace(run_dir / CKPT_DIR, run_dir / f"{CKPT_DIR}.diverged-{n}")
        print(f"train.resume=never: the diverged checkpoints moved to {CKPT_DIR}.diverged-{n}", flush=True)
    marker.unlink()


# ------------------------------------------------------------------------------------ during the run
def _is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _FULL:
        return True
    text = str(e)
    return isinstance(e, (RuntimeError, OSError)) and any(
        s in text for s in ("unexpected pos", "No space left", "file write failed", "Disk quota"))


@contextmanager
def disk_guard(what: Path, survivor: Optional[Path]):
    """Turn a full disk while writing ``what`` into one RunError that names the surviving checkpoint."""
    try:
        yield
    except Exception as e:
        if not _is_disk_full(e):
            raise
        kept = f"the previous checkpoint {survivor} is intact" if survivor else "no earlier checkpoint exists"
        raise RunError(f"no space left on the device while writing {what} ({type(e).__name__}); {kept}. Free "
                       "space (or lower train.keep_checkpoints) and run the same command again to resume") from None


def last_finite_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest step folder (else best/) whose weights are all finite."""
    import torch
    from safetensors.torch import load_file

    root = Path(run_dir) / CKPT_DIR
    candidates = sorted(root.glob("step_*"), reverse=True) + [root / "best"]
    for folder in candidates:
        weights = folder / "model.safetensors"
        if weights.is_file() and all(torch.isfinite(t).all() for t in load_file(str(weights)).values()
                                     if t.is_floating_point()):
            return folder
    return None


def mark_diverged(run_dir: Path, step: int, message: str, write: bool = True) -> RunError:
    """Write DIVERGED.json (``write``: the main process) and return the error to raise: the cause, the last
    finite checkpoint, the fix."""
    from sam_histo.files import write_json

    finite = last_finite_checkpoint(run_dir)
    if write:
        write_json(Path(run_dir) / DIVERGED, {"step": step, "last_finite": str(finite) if finite else None,
                                              "message": message}, indent=1)
    where = f"The last finite checkpoint is {finite}" if finite else "No finite checkpoint was written"
    return TrainingError(f"{message} {where}. Rerunning the same name refuses to resume it: start a new run "
                    f"(another name=) or restart this folder with train.resume=never"
                    + (f", or continue from it with train.resume={finite}" if finite else ""))


def json_safe(x):
    """NaN / inf -> None (JSON has no such numbers), recursively."""
    if isinstance(x, float):
        return x if x == x and x not in (float("inf"), float("-inf")) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


class TrainingError(RunError):
    """The run cannot go on (e.g. diverging); the message says what to change."""


def resume_error(ckpt: Path, e: BaseException) -> RunError:
    """A checkpoint that cannot be read back (truncated, edited, of another model): one line and the fix."""
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return RunError(f"{ckpt}: cannot resume from this checkpoint ({type(e).__name__}: {first}). Continue from "
                    "another with train.resume=PATH (an earlier step_* folder or best/), or start a new run with "
                    "another name=")
