"""`sam-histo bench model [--json] [--sizes 256,512,1024] [--steps N]`: one training step of the prompted
model (encode, forward_prompted, BCE mask + IoU + object-score loss, backward, AdamW step; batch 1, a few
point prompts) with 0 to 4 Hiera stages trainable (the last ones first, as an unfreeze schedule opens
them), at each size.

``ours`` is the frozen-encoder step, ``peer`` the same model with all stages trainable; ``ratio`` is their
speed ratio at the largest size measured. The five settings take turns, one step each per round, and a
setting's time is its best of ``--steps`` rounds after a warm-up round (as ``sam_histo.bench.timeit``
takes the best): other processes on a shared machine only ever add time, and they hit every setting alike.

Memory, per setting: ``train_state_mb`` = gradients + AdamW moments of the trainable parameters;
``saved_mb`` = tensors autograd keeps for backward (unique storages, parameters excluded), counted with
saved-tensor hooks, so the figure does not depend on the allocator; on CUDA also ``peak_mb`` =
``max_memory_allocated`` over the step. ``agreement`` compares the first forward of each setting with the
frozen one (same weights, so it must be 0).
"""
from __future__ import annotations

import time

import numpy as np

from sam_histo.bench import result

_OPENINGS = {0: "none", 1: [3], 2: [2, 3], 3: [1, 2, 3], 4: "all"}
_MB = 2**20


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default="256,512", help="comma-separated image sizes (multiples of 32)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (best one reported)")
    parser.add_argument("--arch", default="sam2.1_hiera_t", help="model.arch to time (random init)")
    parser.add_argument("--objects", type=int, default=4, help="point prompts per image")


def _prompts(size: int, k: int, rng):
    from sam_histo.data.types import Prompts

    pts = rng.uniform(0, size, (k, 1, 2)).astype(np.float32)
    targets = rng.random((k, size, size)) < 0.3
    return Prompts(points=pts, point_labels=np.ones((k, 1), np.int32), boxes=None,
                   has_box=np.zeros(k, bool), class_ids=np.ones(k, np.int64), targets=targets)


class _SavedBytes:
    """Bytes of the tensors autograd saves for backward inside the block (unique storages, no params)."""

    def __init__(self, model):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[int, int] = {}

    def pack(self, t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.seen[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def mb(self) -> float:
        return sum(self.seen.values()) / _MB


def _step_fn(model, pixels, prompts, target, opt):
    import torch
    import torch.nn.functional as F

    def step(saved: _SavedBytes | None = None):
        hooks = torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t) if saved else None
        if hooks:
            hooks.__enter__()
        try:
            out = model(pixels, [prompts], multimask=True)
            mask_loss = F.binary_cross_entropy_with_logits(out.logits, target.expand_as(out.logits))
            loss = mask_loss + out.iou_pred.pow(2).mean() + F.softplus(-out.object_score).mean()
        finally:
            if hooks:
                hooks.__exit__(None, None, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return out

    return step


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


class _Setting:
    """One unfreeze setting: its trainable flags and its own optimizer over the shared model."""

    def __init__(self, model, n_open: int, pixels, prompts, target):
        import torch

        from sam_histo.models.stages import set_trainable

        self.model, self.n_open = model, n_open
        set_trainable(model, _OPENINGS[n_open], mode="prompted")
        self.flags = [p.requires_grad for p in model.parameters()]
        params = [p for p in model.parameters() if p.requires_grad]
        self.n_train = sum(p.numel() for p in params)
        self.step = _step_fn(model, pixels, prompts, target, torch.optim.AdamW(params, lr=1e-6))
        self.times: list[float] = []

    def activate(self) -> None:
        for p, flag in zip(self.model.parameters(), self.flags):
            p.requires_grad_(flag)

    def timed_step(self, device) -> None:
        self.activate()
        _sync(device)
        t0 = time.perf_counter()
        self.step()
        _sync(device)
        self.times.append(time.perf_counter() - t0)


def _bench_size(size: int, args, device) -> list[dict]:
    """Settings take turns, one step each per round, so load from other processes hits them alike."""
    import torch

    from sam_histo.config import ModelConfig
    from sam_histo.models.sam import build_sam

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = build_sam(ModelConfig(arch=args.arch, image_size=size)).to(device).train()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    pixels = model.preprocess(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    prompts = _prompts(size, args.objects, rng)
    target = torch.as_tensor(prompts.targets, dtype=torch.float32, device=device)[:, None]
    settings = [_Setting(model, n, pixels, prompts, target) for n in range(5)]
    rows = []
    for s in settings:  # warm-up round: same starting weights, saved-tensor bytes, first forward
        model.load_state_dict(base)
        s.activate()
        saved = _SavedBytes(model)
        first = s.step(saved).logits.detach()
        rows.append({"stages_trainable": s.n_open, "trainable_params": s.n_train,
                     "train_state_mb": 3 * 4 * s.n_train / _MB, "saved_mb": saved.mb, "first_logits": first})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.steps):
        for s, row in zip(settings, rows):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            s.timed_step(device)
            if device.type == "cuda":
                row["peak_mb"] = max(row.get("peak_mb", 0.0), torch.cuda.max_memory_allocated() / _MB)
    ref = rows[0]["first_logits"]
    for s, row in zip(settings, rows):
        row.update(s_per_step=min(s.times), step_times=s.times, size=size,
                   max_abs_diff_vs_frozen=float((row.pop("first_logits") - ref).abs().max()))
    return rows


def _table(rows: list[dict]) -> str:
    head = f"{'size':>5} {'stages':>7} {'trainable':>11} {'s/step':>8} {'steps/s':>8} {'saved MB':>9} {'state MB':>9}"
    lines = [head + (f" {'peak MB':>8}" if "peak_mb" in rows[0] else "") + f" {'vs all':>7}"]
    for r in rows:
        full = next(x for x in rows if x["size"] == r["size"] and x["stages_trainable"] == 4)
        line = (f"{r['size']:>5} {r['stages_trainable']:>7} {r['trainable_params'] / 1e6:>9.2f} M "
                f"{r['s_per_step']:>8.3f} {1 / r['s_per_step']:>8.2f} {r['saved_mb']:>9.0f} {r['train_state_mb']:>9.0f}")
        line += f" {r['peak_mb']:>8.0f}" if "peak_mb" in r else ""
        lines.append(line + f" {full['s_per_step'] / r['s_per_step']:>6.2f}x")
    return "\n".join(lines)


def _pick(rows, size, n_open):
    return next(r for r in rows if r["size"] == size and r["stages_trainable"] == n_open)


def run(args) -> dict:
    import torch

    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [row for size in sizes for row in _bench_size(size, args, device)]
    if not getattr(args, "json", False):
        print(_table(rows))
    top = max(sizes)
    frozen, full = _pick(rows, top, 0), _pick(rows, top, 4)
    ratios = {str(s): _pick(rows, s, 4)["s_per_step"] / _pick(rows, s, 0)["s_per_step"] for s in sizes}
    worst = max(r["max_abs_diff_vs_frozen"] for r in rows)
    return result(
        "model", 1 / frozen["s_per_step"], f"same model ({args.arch}), all stages trainable",
        1 / full["s_per_step"], f"first-step logits max |diff| vs frozen: {worst:.3g}",
        size=top, ratio_by_size=ratios, rows=rows, steps=args.steps, objects=args.objects,
    )
