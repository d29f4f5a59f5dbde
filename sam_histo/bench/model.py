"""`sam-histo bench model [--json] [--sizes 256,512,1024] [--steps N]`: one training step of the prompted
model (encode, forward_prompted, focal-free BCE + IoU + object-score loss, backward, AdamW step; batch 1,
a few point prompts) with 0 to 4 Hiera stages trainable (the last ones first, as an unfreeze schedule
opens them), at each size.

``ours`` is the frozen-encoder step, ``peer`` the same model with all stages trainable; ``ratio`` is their
speed ratio at the largest size measured. Peak memory: CUDA ``max_memory_allocated``; on the CPU the rise
of the process's peak resident set (Linux VmHWM, reset through /proc/self/clear_refs) over the resident
set before the steps. ``agreement`` compares the first forward of each setting with the frozen one
(same weights, so it must be 0).
"""
from __future__ import annotations

import time

import numpy as np

from sam_histo.bench import result

_OPENINGS = {0: "none", 1: [3], 2: [2, 3], 3: [1, 2, 3], 4: "all"}


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="256,512", help="comma-separated image sizes (multiples of 32)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up; the median is reported)")
    parser.add_argument("--arch", default="sam2.1_hiera_t", help="model.arch to time (random init)")
    parser.add_argument("--objects", type=int, default=4, help="point prompts per image")


def _rss_kb(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _PeakMemory:
    """Peak memory of a block in MB (see the module docstring for how)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
            except OSError:
                pass
            self.base = _rss_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _rss_kb("VmHWM") * 1024
        self.mb = max(peak - self.base, 0) / 2**20


def _prompts(size: int, k: int, rng):
    from sam_histo.data.types import Prompts

    pts = rng.uniform(0, size, (k, 1, 2)).astype(np.float32)
    targets = rng.random((k, size, size)) < 0.3
    return Prompts(points=pts, point_labels=np.ones((k, 1), np.int32), boxes=None,
                   has_box=np.zeros(k, bool), class_ids=np.ones(k, np.int64), targets=targets)


def _step_fn(model, pixels, prompts, target, opt):
    import torch.nn.functional as F

    def step():
        out = model(pixels, [prompts], multimask=True)
        mask_loss = F.binary_cross_entropy_with_logits(out.logits, target.expand_as(out.logits))
        loss = mask_loss + out.iou_pred.pow(2).mean() + F.softplus(-out.object_score).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return out

    return step


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def _time_setting(model, n_open: int, pixels, prompts, target, steps: int, device) -> dict:
    import torch

    from sam_histo.models.stages import set_trainable

    set_trainable(model, _OPENINGS[n_open], mode="prompted")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    step = _step_fn(model, pixels, prompts, target, opt)
    times = []
    with _PeakMemory(device) as mem:
        first = step().logits.detach()
        for _ in range(steps):
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - t0)
    # The median resists the spikes of a shared machine; all steps are kept in the row.
    return {"stages_trainable": n_open, "s_per_step": float(np.median(times)), "step_times": times,
            "peak_mb": mem.mb,
            "trainable_params": sum(p.numel() for p in params), "first_logits": first}


def _bench_size(size: int, args, device) -> list[dict]:
    import torch

    from sam_histo.config import ModelConfig
    from sam_histo.models.sam import build_sam

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = build_sam(ModelConfig(arch=args.arch, image_size=size)).to(device).train()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    pixels = model.preprocess(image)
    prompts = _prompts(size, args.objects, rng)
    target = torch.as_tensor(prompts.targets, dtype=torch.float32, device=device)[:, None]
    _time_setting(model, 4, pixels, prompts, target, 1, device)  # one-time kernel set-up, not timed
    rows = []
    for n_open in range(5):
        model.load_state_dict(base)  # every setting starts from the same weights
        rows.append(_time_setting(model, n_open, pixels, prompts, target, args.steps, device))
    ref = rows[0].pop("first_logits")
    for row in rows[1:]:
        row["max_abs_diff_vs_frozen"] = float((row.pop("first_logits") - ref).abs().max())
    rows[0]["max_abs_diff_vs_frozen"] = 0.0
    for row in rows:
        row["size"] = size
    return rows


def _table(rows: list[dict]) -> str:
    lines = [f"{'size':>5} {'stages':>7} {'trainable':>11} {'s/step':>8} {'steps/s':>8} {'peak MB':>8} {'vs all':>7}"]
    for r in rows:
        full = next(x for x in rows if x["size"] == r["size"] and x["stages_trainable"] == 4)
        lines.append(f"{r['size']:>5} {r['stages_trainable']:>7} {r['trainable_params'] / 1e6:>9.2f} M "
                     f"{r['s_per_step']:>8.3f} {1 / r['s_per_step']:>8.2f} {r['peak_mb']:>8.0f} "
                     f"{full['s_per_step'] / r['s_per_step']:>6.2f}x")
    return "\n".join(lines)


def run(args) -> dict:
    import torch

    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [row for size in sizes for row in _bench_size(size, args, device)]
    if not getattr(args, "json", False):
        print(_table(rows))
    top = max(sizes)
    frozen = next(r for r in rows if r["size"] == top and r["stages_trainable"] == 0)
    full = next(r for r in rows if r["size"] == top and r["stages_trainable"] == 4)
    ratios = {
        str(s): next(r for r in rows if r["size"] == s and r["stages_trainable"] == 4)["s_per_step"]
        / next(r for r in rows if r["size"] == s and r["stages_trainable"] == 0)["s_per_step"]
        for s in sizes
    }
    worst = max(r["max_abs_diff_vs_frozen"] for r in rows)
    return result(
        "model", 1 / frozen["s_per_step"], f"same model ({args.arch}), all stages trainable",
        1 / full["s_per_step"], f"first-step logits max |diff| vs frozen: {worst:.3g}",
        size=top, ratio_by_size=ratios, rows=rows, steps=args.steps, objects=args.objects,
    )
