"""The training loop behind `accelerate launch sam_histo/train.py --config CFG [k=v ...]` and `sam-histo train`.

One code path for CPU, one GPU, many GPUs and many nodes (accelerate decides). Per epoch: the phase of
the unfreeze schedule (a boundary re-prepares model and optimizer), the sampler's epoch, then optimizer
steps of ``grad_accum`` micro-batches at the learning rate ``lr_at(step)``; a non-finite loss or gradient
skips its step and ``train.max_nonfinite`` in a row stop the run. Checkpoints every
``checkpoint_every_steps`` steps and at every epoch end; validation every ``val_every`` epochs on the
macro per-class metric, which chooses ``checkpoints/best`` and stops early. Before the first step the
starting weights are validated the same way (epoch "start", training/baseline.py) and are the first best;
after the last, WiSE-FT mixes of start and best are validated and the best mix kept (training/wise.py). A preemption signal writes a
checkpoint and exits 0; ``train.resume=auto`` continues from it, mid-epoch, with the same batches.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from sam_histo.config import Config, ConfigError, load_config
from sam_histo.errors import MissingSplitError
from sam_histo.training.recovery import TrainingError, check_phases, mark_diverged, resume_error
from sam_histo.config.argv import add_overrides_help, parse_with_overrides
from sam_histo.training import checkpoint as ck
from sam_histo.training.optim import lr_at, phase_epochs, phase_index, set_lr
from sam_histo.training.runtime import (
    Preemption,
    TrainState,
    flat_config,
    make_accelerator,
    prepare_run_dir,
)
from sam_histo.training.build import (
    JsonlLog,
    build_data,
    build_model,
    describe_counts,
    describe_weights,
    prepare_phase,
)
from sam_histo.training.baseline import compare_with_start, record_validation, val_metrics, validate_start
from sam_histo.training.step import batch_loss
from sam_histo.training.wise import apply_wise

log = logging.getLogger("sam_histo.train")


@dataclasses.dataclass
class Run:
    cfg: Config
    accelerator: object
    run_dir: Path
    data: object
    model: torch.nn.Module  # unwrapped
    state: TrainState
    jsonl: JsonlLog
    preempt: Preemption
    wrapped: Optional[torch.nn.Module] = None
    optimizer: Optional[torch.optim.Optimizer] = None
    phase: int = -1
    val_data: object = None  # the validation split's adapter, built at the first validation
    datasets: Optional[dict] = None  # given adapters per split (the Python API), else built from cfg.data

    def split_data(self, split: str):
        """The adapter of ``split``; MissingSplitError when the caller's datasets have none (nothing to evaluate)."""
        if self.datasets is None:
            from sam_histo.data.dataset import build_dataset

            return build_dataset(self.cfg.data, split)
        if self.datasets.get(split) is None:
            raise MissingSplitError(f"no {split} dataset was given")
        return self.datasets[split]

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.data.batches_per_epoch // self.cfg.train.grad_accum)

    def lr(self) -> float:
        phases = self.cfg.train.phases
        start = phases[self.phase].start_epoch * self.steps_per_epoch
        span = phase_epochs(self.phase, phases, self.cfg.train.epochs) * self.steps_per_epoch
        return lr_at(self.state.step - start, span, phases[self.phase])

    def enter_phase(self, epoch: int) -> None:
        i = phase_index(epoch, self.cfg.train.phases)
        if i == self.phase:
            return
        self.phase = i
        self.wrapped, self.optimizer, counts = prepare_phase(self.accelerator, self.model, self.cfg,
                                                             self.cfg.train.phases[i])
        self.accelerator.print(f"phase {i} from epoch {epoch}: stages {self.cfg.train.phases[i].stages}; "
                               f"{describe_counts(counts)}")

    def save(self) -> Path:
        self.state.sampler = self.data.sampler.state_dict(consumed=self.state.consumed)
        self.state.optimizer_phase = self.phase
        return ck.save_checkpoint(self.accelerator, self.run_dir, self.model, self.optimizer,
                                  self.state.to_json(), keep=self.cfg.train.keep_checkpoints)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="sam-histo train", description="Fine-tune SAM2 on a config.")
    parser.add_argument("--config", required=True, help="YAML listing differences from the defaults")
    args = parse_with_overrides(add_overrides_help(parser), argv)
    result = train(load_config(args.config, args.overrides))
    return 0 if result.get("status") in ("finished", "early_stopped", "preempted") else 1


def train(cfg: Config, accelerator=None, datasets: Optional[dict] = None) -> dict:
    """Run (or resume) the configured training; returns {"status", "run_dir", "best", ...}.

    ``datasets``: {"train": adapter, "val": ..., "test": ...} to use instead of building the splits from
    ``cfg.data`` (``sam_histo.train`` passes the user's own Datasets); a split left out is not evaluated."""
    accelerator = accelerator or make_accelerator(cfg)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    model = preflight(cfg)  # every check before the run folder is touched
    run_dir = prepare_run_dir(cfg, accelerator)
    progress = accelerator.is_local_main_process
    data = build_data(cfg, run_dir, accelerator.process_index, accelerator.num_processes, progress,
                      None if datasets is None else datasets["train"])
    accelerator.print(f"class weights (train split, {len(data.train)} tiles):\n"
                      f"{describe_weights(data.classes, data.class_weights, data.stats)}")
    model = model.to(accelerator.device)
    start_note = getattr(model, "start_note", None)
    if start_note:
        accelerator.print(start_note)
    state, ckpt = resume_state(cfg, run_dir)
    run = Run(cfg, accelerator, run_dir, data, model, state, JsonlLog(run_dir / "metrics.jsonl",
              accelerator.is_main_process, resumed_at=state.step if ckpt else None),
              Preemption(cfg.train.preempt_signals), datasets=datasets)
    run.enter_phase(state.epoch)
    if ckpt is not None:
        same_phase = state.optimizer_phase is None or state.optimizer_phase == run.phase
        try:
            ck.restore(accelerator, ckpt, model, run.optimizer if same_phase else None)
            data.sampler.load_state_dict(state.sampler)
        except Exception as e:  # truncated, edited, or another model's checkpoint
            raise resume_error(ckpt, e) from None
        accelerator.print(f"resumed from {ckpt} (epoch {state.epoch}, step {state.step})")
    if cfg.train.log_with:
        accelerator.init_trackers(cfg.name, config=flat_config(cfg))
    run.jsonl.write({"event": "start", "class_weights": dict(zip(data.classes.names, data.class_weights.tolist())),
                     "world_size": accelerator.num_processes, "resumed_from": str(ckpt) if ckpt else None,
                     "start": start_note})
    validate_start(run)
    try:
        status = fit(run)
    except TrainingError as e:  # diverged: say which checkpoint is the last finite one, never resume it blindly
        say_why_it_ended(run, "diverged", str(e))
        raise mark_diverged(run_dir, state.step, str(e), write=accelerator.is_main_process) from None
    finally:
        run.preempt.restore()
    result = finish(run, status)
    say_why_it_ended(run, status)
    return result


def preflight(cfg: Config):
    """The model, built and checked against the config (every phase's stage ids) before anything is written."""
    from sam_histo.data.dataset import class_spec

    model = build_model(cfg, class_spec(cfg.data))
    check_phases(cfg, model)
    return model


def resume_state(cfg: Config, run_dir: Path):
    """TrainState.initial, with an unreadable state.json said in one line."""
    try:
        return TrainState.initial(cfg, run_dir)
    except (ValueError, OSError) as e:
        if isinstance(e, ConfigError):
            raise
        raise resume_error(ck.latest_checkpoint(run_dir) or run_dir, e) from None


def fit(run: Run) -> str:
    cfg, state = run.cfg, run.state
    for epoch in range(state.epoch, cfg.train.epochs):
        run.enter_phase(epoch)
        if state.consumed == 0:
            run.data.sampler.set_epoch(epoch)
        status = run_epoch(run, epoch)
        if status != "ok":
            return status
        state.epoch, state.consumed = epoch + 1, 0
        last = epoch + 1 == cfg.train.epochs
        stop = False
        if (epoch + 1) % cfg.train.val_every == 0 or last:
            stop = validate_epoch(run, epoch)
        path = run.save()
        if stop:
            return "early_stopped"
        if not last and run.preempt.requested(run.accelerator):  # a signal during validation: stop now
            run.accelerator.print(f"preempted: checkpoint {path} written at the end of epoch {epoch}; the next "
                                  "run with train.resume=auto continues from it")
            return "preempted"
    return "finished"


def run_epoch(run: Run, epoch: int) -> str:
    cfg, acc, state = run.cfg, run.accelerator, run.state
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    batches = run.data.batches_per_epoch
    micro = state.consumed // bs
    bar = tqdm(total=batches, initial=micro, desc=f"epoch {epoch}", unit="batch",
               disable=not acc.is_local_main_process, leave=False)
    t0, n_seen, sum_loss = time.perf_counter(), 0, 0.0
    try:  # the bar is closed on any exit, so an error line never lands on it
        for batch in run.data.loader:
            micro += 1
            sync = micro % accum == 0 or micro == batches
            loss = train_micro_batch(run, batch, sync)
            sum_loss += loss
            n_seen += len(batch) * acc.num_processes
            if sync:
                optimizer_step(run)
                state.consumed = micro * bs
                rate = n_seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{run.lr():.2e}", phase=run.phase, samples_s=f"{rate:.1f}")
                if state.step % cfg.train.log_every == 0:
                    log_train(run, epoch, loss, rate)
                if cfg.train.checkpoint_every_steps and state.step % cfg.train.checkpoint_every_steps == 0 \
                        and micro < batches:
                    run.save()
                if run.preempt.requested(acc):
                    path = run.save()
                    acc.print(f"preempted: checkpoint {path} written at step {state.step}; "
                              "the next run with train.resume=auto continues from it")
                    return "preempted"
            bar.update(1)
    finally:
        bar.close()
    return "ok"


def train_micro_batch(run: Run, batch, sync: bool) -> float:
    """Forward + backward of one micro-batch; DDP syncs gradients only on the last of an accumulation.

    Every process learns whether the loss was finite on all of them, so all skip the same steps."""
    cfg, acc = run.cfg, run.accelerator
    with acc.no_sync(run.wrapped) if not sync and acc.num_processes > 1 else nullcontext():
        with acc.autocast():
            losses = batch_loss(run.wrapped, batch, cfg.model.mode, run.data.class_weights, cfg.train.loss,
                                run.data.classes.ignore_index, acc.device)
        total = losses["total"]
        finite = torch.isfinite(total.detach()).float().reshape(1)
        if acc.reduce(finite, "sum").item() < acc.num_processes:
            run.state.skip_nonfinite("loss", cfg.train.max_nonfinite)
            run.state.pending_skip = True
            return float("nan")
        acc.backward(total / cfg.train.grad_accum)
    return float(total.detach())


def optimizer_step(run: Run) -> None:
    cfg, acc, state, opt = run.cfg, run.accelerator, run.state, run.optimizer
    set_lr(opt, run.lr())
    params = [p for p in run.wrapped.parameters() if p.requires_grad]
    clip = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
    norm = acc.clip_grad_norm_(params, clip)
    if state.pending_skip:
        state.pending_skip = False
    elif norm is not None and not torch.isfinite(torch.as_tensor(norm)):
        state.skip_nonfinite("gradient", cfg.train.max_nonfinite)
    else:
        opt.step()
        state.nonfinite_run = 0
    opt.zero_grad(set_to_none=True)
    state.step += 1


def log_train(run: Run, epoch: int, loss: float, rate: float) -> None:
    record = {"event": "train", "epoch": epoch, "step": run.state.step, "loss": loss, "lr": run.lr(),
              "phase": run.phase, "samples_per_s": rate, "nonfinite_skipped": run.state.nonfinite_total}
    run.jsonl.write(record)
    if run.cfg.train.log_with:
        run.accelerator.log({"train/loss": loss, "train/lr": run.lr(), "train/phase": run.phase}, step=run.state.step)


def validate_epoch(run: Run, epoch: int) -> bool:
    """Validate, keep the best checkpoint by the macro per-class metric; True when it is time to stop."""
    from sam_histo.eval.validator import headline, selection_scores

    cfg, acc, state = run.cfg, run.accelerator, run.state
    es = cfg.train.early_stop
    metrics = val_metrics(run, f"epoch {epoch}")
    if metrics is None:  # no validation split: keep the last weights as the best
        ck.save_best(acc, run.run_dir, run.model, {"epoch": epoch, "step": state.step, "metric": None})
        return False
    score = selection_scores(metrics)[es.metric]
    score = float("-inf") if score is None else score
    improved = score > (state.best if state.best is not None else float("-inf")) + es.min_delta
    if improved:
        state.best, state.best_epoch, state.bad_validations = score, epoch, 0
        ck.save_best(acc, run.run_dir, run.model, {"epoch": epoch, "step": state.step, "metric": es.metric,
                                                   "value": score})
    else:
        state.bad_validations += 1
        if state.best is None and not (run.run_dir / ck.CKPT_DIR / "best").is_dir():
            # every score so far undefined (e.g. no vesicle found yet): keep a best/ so that the commands
            # that read RUN/checkpoints/best work; the first defined score replaces it
            ck.save_best(acc, run.run_dir, run.model, {"epoch": epoch, "step": state.step, "metric": es.metric,
                                                       "value": None})
    acc.print(f"epoch {epoch} {headline(metrics)}{'  * best' if improved else ''}")
    record_validation(run, epoch, metrics, improved)
    return bool(es.patience) and state.bad_validations >= es.patience


def say_why_it_ended(run: Run, status: str, detail: str = "") -> None:
    """One console line: why the run ended and where its report (or checkpoint) is."""
    cfg, state = run.cfg, run.state
    metric = f"val macro {cfg.train.early_stop.metric}"
    best = ("no validation yet" if state.best is None else
            f"best {metric} {state.best:.4f} at epoch {state.best_epoch}")
    report = run.run_dir / "eval" / "val" / "report.md"
    es = cfg.train.early_stop
    why = {
        "finished": f"finished all {cfg.train.epochs} epochs",
        "early_stopped": (f"stopped early after epoch {state.epoch - 1}: {metric} gained less than {es.min_delta} "
                          f"in {es.patience} validations (train.early_stop)"),
        "preempted": f"preempted at step {state.step} (signal): checkpoint written, resume with train.resume=auto",
        "diverged": f"stopped at step {state.step}, diverging: {detail.split(':')[0]}",
    }.get(status, status)
    where = (f"report {report}" if status in ("finished", "early_stopped") and report.is_file() else
             f"checkpoints in {run.run_dir / ck.CKPT_DIR}")
    run.accelerator.print(f"training {why}; {best}; {where}")


def finish(run: Run, status: str) -> dict:
    """Final report of the best checkpoint on val (and test when the split has tiles)."""
    cfg, acc = run.cfg, run.accelerator
    result = {"status": status, "run_dir": str(run.run_dir), "best": run.state.best,
              "best_epoch": run.state.best_epoch, "nonfinite_skipped": run.state.nonfinite_total}
    if status == "preempted":
        acc.end_training()
        return result
    from sam_histo.eval.validator import evaluate_splits, headline

    wise = apply_wise(run)
    result.update(best=run.state.best, best_epoch=run.state.best_epoch)
    best = run.run_dir / ck.CKPT_DIR / "best"
    if (best / "model.safetensors").exists():
        ck.load_model_weights(run.model, best)
    label = f"checkpoints/best (epoch {run.state.best_epoch})"
    if wise is not None:
        label += f" WiSE-FT alpha {wise['chosen']:g}"
        result["wise_alpha"] = wise["chosen"]
    splits = ("val", "test") if run.datasets is None else [s for s in ("val", "test") if run.datasets.get(s)]
    finals, _ = evaluate_splits(run.model, cfg, splits, out_dirs={s: run.run_dir / "eval" / s for s in splits},
                                checkpoint=label, accelerator=acc, progress=acc.is_local_main_process,
                                adapters=run.datasets)
    for split, metrics in finals.items():
        result[split] = metrics
        acc.print(f"final {headline(metrics)} -> {run.run_dir / 'eval' / split / 'report.md'}")
    comparison = compare_with_start(run, finals, wise)
    if comparison is not None:
        result["start_comparison"] = comparison
    if cfg.clip.train_head and acc.is_main_process:
        from sam_histo.zeroshot.train_head import train_clip_head

        result["clip"] = train_clip_head(cfg, run.run_dir, run.data.train, run.split_data("val"))
    run.jsonl.write({"event": "end", **{k: v for k, v in result.items() if k not in ("val", "test")}})
    acc.end_training()
    return result
