"""`sam-histo bench train [--json]`: our training step against a bare PyTorch loop, per unfreeze phase.

Both sides run the same model, the same pre-collated batches (synthetic BCSS, our augmentation and
prompts) and the same loss (``training.step.batch_loss``). ``ours`` is the trainer's step: accelerate's
autocast and backward, the all-process non-finite check, gradient clipping, the learning rate of the
schedule, AdamW over layer-decay parameter groups. ``bare`` is ``loss.backward(); opt.step();
opt.zero_grad()`` with one AdamW group. Settings take turns one step at a time and each keeps its best
time (other processes only ever add time). ``ratio`` = bare seconds / our seconds, over all phases
(goal >= 1/1.10 = 0.91, i.e. at most 10 % overhead). Separately, the data loader's batches per second
with 0 and 2 workers against the steps per second the trainer consumes.
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

from sam_histo.bench import result

PHASES = {"frozen": "none", "last stage": [3], "last two": [2, 3], "all": "all"}


def add_arguments(parser) -> None:
    parser.add_argument("--arch", default="tiny", help="model.arch (random init); e.g. sam2.1_hiera_t")
    parser.add_argument("--size", type=int, default=128, help="model input size (multiple of 32)")
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--mode", default="semantic", choices=["semantic", "prompted"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting (best kept)")
    parser.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"],
                        help="train.mixed_precision of our step (the bare loop runs in float32)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a "
                        "shared CPU)")


def _config(args, root: Path, run: Path):
    from sam_histo.config import load_config

    return load_config("demo", [
        f"data.root={root}", f"model.arch={args.arch}", f"model.image_size={args.size}", f"model.mode={args.mode}",
        f"data.tile_size={2 * args.size}", f"data.tile_stride={2 * args.size}", "data.val_fraction=0",
        f"train.batch_size={args.batch}", f"train.mixed_precision={args.precision}", "train.num_workers=0", "train.log_with=[]", f"output_dir={run}",
        "name=bench", "train.phases=[{start_epoch: 0, stages: none, lr: 1.0e-4}]", "train.epochs=1"])


def _our_step(run):
    from sam_histo.training.loop import optimizer_step, train_micro_batch

    def step(batch):
        train_micro_batch(run, batch, sync=True)
        optimizer_step(run)
    return step


def _bare_step(model, cfg, data, device):
    import torch

    from sam_histo.training.step import batch_loss

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(batch):
        loss = batch_loss(model, batch, cfg.model.mode, data.class_weights, cfg.train.loss,
                          data.classes.ignore_index, device)["total"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _loader_rate(data, workers: int, n: int) -> float:
    from sam_histo.training.samples import make_loader

    loader = make_loader(data.loader.dataset, data.sampler, 0, data.loader.batch_size, workers)
    t0, got = None, 0
    for batch in loader:
        if t0 is None:  # the first batch pays for starting the workers
            t0 = time.perf_counter()
            continue
        got += 1
        if got >= n:
            break
    return got / (time.perf_counter() - t0)


def run(args) -> dict:
    from dataclasses import replace

    from sam_histo.config import PhaseConfig
    from sam_histo.data.synth.layouts import write_bcss
    from sam_histo.models.stages import set_trainable
    from sam_histo.training.loop import Run
    from sam_histo.training.runtime import Preemption, TrainState, make_accelerator
    from sam_histo.training.build import JsonlLog, build_data, build_model

    import torch

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    root = write_bcss(tmp / "data", n=4, seed=0, size=2 * args.size)
    base = _config(args, root, tmp / "runs")
    acc = make_accelerator(base)
    base.run_dir.mkdir(parents=True, exist_ok=True)
    data = build_data(base, base.run_dir, 0, 1, progress=False)
    batches = [b for _, b in zip(range(args.steps + 1), data.loader)]
    template = build_model(base, data.classes).to(acc.device)
    timings, peak = {}, {}
    for name, stages in PHASES.items():
        cfg = replace(base, train=replace(base.train, phases=[PhaseConfig(stages=stages, lr=1e-4)]))
        ours_model, bare_model = copy.deepcopy(template), copy.deepcopy(template)
        set_trainable(bare_model, stages, mode=cfg.model.mode)
        r = Run(cfg, acc, cfg.run_dir, data, ours_model, TrainState(), JsonlLog(tmp / "x.jsonl", False), Preemption([]))
        r.enter_phase(0)
        sides = {"ours": _our_step(r), "bare": _bare_step(bare_model, cfg, data, acc.device)}
        best = {k: float("inf") for k in sides}
        for i, batch in enumerate(batches):
            for side, step in sides.items():
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                step(batch)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    peak[(name, side)] = max(peak.get((name, side), 0), torch.cuda.max_memory_allocated() / 2**20)
                if i:  # the first round is a warm-up
                    best[side] = min(best[side], time.perf_counter() - t0)
        timings[name] = best
    ours = sum(t["ours"] for t in timings.values())
    bare = sum(t["bare"] for t in timings.values())
    steps_per_s = 1 / timings["all"]["ours"]
    loader = {f"workers_{w}": _loader_rate(data, w, 2 * args.steps) for w in (0, 2)}
    return result("train", len(timings) / ours, "bare PyTorch loop (same model, batches, loss)", len(timings) / bare,
                  "same model and batches on both sides", arch=args.arch, size=args.size, batch=args.batch,
                  mode=args.mode, per_phase_s={k: {s: round(v, 4) for s, v in t.items()} for k, t in timings.items()},
                  overhead={k: round(t["ours"] / t["bare"] - 1, 3) for k, t in timings.items()},
                  loader_batches_per_s=loader, step_batches_per_s_all_stages=steps_per_s, precision=args.precision,
                  cuda_peak_mb={f"{k[0]}/{k[1]}": round(v, 1) for k, v in peak.items()} or None)
