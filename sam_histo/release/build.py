"""`sam-histo release --run RUN --out DIR [--checkpoint best|last|PATH] [--force]`: a bundle others can load.

The bundle (layout in :mod:`sam_histo.release.bundle`) holds the SAM2 weights in the official key layout, the
class-token head and the CLIP head in their own safetensors files, the resolved training config with the
base checkpoint's sha256 and the library versions, the classes, the prompt file and its hash, the metrics
of the released checkpoint, a model card and SHA256SUMS. It is built in a temporary folder beside ``--out``
and renamed into place, so a crash never leaves half a bundle; an existing different bundle is replaced only
with ``--force``. The same run and checkpoint give byte-identical bundles (no time stamps).

Metrics: the run's final evaluation (``RUN/eval/{val,test}/metrics.json``) is of ``checkpoints/best``; it is
used when the released weights are byte-identical to those. Otherwise the validator recomputes the metrics
for the released weights when the training data is still at ``data.root``; if it is not, the best
checkpoint's metrics are copied with ``for_released_checkpoint: false`` and a note saying so.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from sam_histo.release import bundle as B
from sam_histo.release.bundle import BundleError, load_release, sha256_file  # noqa: F401  (load_release: public API)
from sam_histo.config import PROJECT_ROOT, Config, ConfigError, load_config, to_dict
from sam_histo.config.argv import first_paragraph


class ReleaseError(ConfigError):
    """The run cannot be released as asked; the message names the file or option and the fix."""


# ------------------------------------------------------------------------------------ the checkpoint
def choose_checkpoint(run: Path, which: str) -> tuple[Path, str]:
    """(weights file, label for reports) of ``--checkpoint``: best, last, or a path (file, checkpoint or run
    folder). The label names the folder and its epoch / step from state.json."""
    from sam_histo.models.load import resolve_model_file

    if which == "best":
        path = run / "checkpoints" / "best" / B.WEIGHTS
        if not path.is_file():
            raise ReleaseError(f"{path} is missing: the run never validated; release --checkpoint last instead")
    elif which == "last":
        path = resolve_model_file(run, "last")
    else:
        path = resolve_model_file(which)
    try:
        label = path.parent.relative_to(run).as_posix()
    except ValueError:
        label = str(path)
    state = path.parent / "state.json"
    if state.is_file():
        s = json.loads(state.read_text())
        label += f" (epoch {s.get('epoch')}, step {s.get('step')})"
        if s.get("wise_alpha") is not None:  # training/wise.py: a mix of the start and the best epoch
            label += (f", WiSE-FT alpha {s['wise_alpha']:g}: (1 - alpha) * start + alpha * epoch "
                      f"{s.get('wise_of_epoch')}")
    return path, label


def split_state(state: dict, mode: str, source: Path) -> tuple[dict, Optional[dict]]:
    """A SamHisto (or bare SAM2) state dict -> (SAM2Base keys, class-token head keys or None)."""
    from sam_histo.models.weights import unwrap_sam

    prefix = "semantic_head."
    head = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if mode == "semantic" else {}
    if mode == "semantic" and not head:
        raise ReleaseError(f"{source}: model.mode is semantic but the checkpoint has no {prefix}* weights")
    return unwrap_sam(state), head or None


# -------------------------------------------------------------------------------------- provenance
def base_checkpoint_info(model_cfg) -> dict:
    """Name, file and sha256 of the checkpoint training started from (``model.checkpoint``)."""
    from sam_histo.models import fetch
    from sam_histo.models.weights import MissingWeightsError

    name = model_cfg.checkpoint
    if not name:
        return {"name": None, "sha256": None, "reason": "random initialisation (model.checkpoint was null)"}
    hit = fetch.find(name, fetch.load_manifest())
    published = hit[1].get("sha256") if hit else None
    try:
        path = fetch.resolve_checkpoint(name, model_cfg.cache_dir)
    except (MissingWeightsError, ConfigError) as e:
        return {"name": name, "file": None, "sha256": None, "sha256_published": published,
                "reason": f"the file is not on this machine, so its sha256 was not computed ({e})"}
    digest = sha256_file(path)
    return {"name": name, "file": str(path), "sha256": digest, "sha256_published": published,
            "matches_published": None if published is None else digest == published}


def versions() -> dict:
    from importlib import metadata

    from sam_histo import __version__

    import torch

    out = {"sam_histo": __version__, "python": platform.python_version()}
    for dist in ("sam2", "open_clip_torch", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["torch"] = torch.__version__  # with its build tag (e.g. +cu130): numerics can differ between builds
    return out


def git_info(root: Path = PROJECT_ROOT) -> dict:
    """The project's commit and whether the work tree had uncommitted changes; a reason when unknown."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return {"commit": None, "reason": f"not a git checkout or git unavailable ({type(e).__name__})"}
    return {"commit": commit, "dirty": bool(dirty)}


def sam2_build_info(model_cfg) -> dict:
    from sam_histo.models.archs import sam2_build_args

    try:
        name, overrides = sam2_build_args(model_cfg.arch, model_cfg.image_size, model_cfg.overrides)
    except ConfigError as e:
        return {"config_file": None, "reason": str(e)}
    return {"config_file": name, "hydra_overrides_extra": overrides}


# ------------------------------------------------------------------------------------- extra files
def copy_prompts(cfg: Config, tmp: Path) -> dict:
    from sam_histo.zeroshot.text_prompts import load_prompts, prompt_file_for

    src = prompt_file_for(cfg.clip.prompts, cfg.data.dataset)
    try:
        prompts = load_prompts(src)
    except ConfigError as e:
        return {"file": None, "reason": str(e)}
    shutil.copyfile(src, tmp / B.PROMPTS)
    return {"file": B.PROMPTS, "source": str(src), "name": prompts.name, "sha256": prompts.sha256}


def copy_stain_reference(stain, tmp: Path) -> tuple[list[str], Optional[str]]:
    """Copy the stain-normalisation reference (a tile or a folder of tiles) into the bundle."""
    if stain.method == "none" or not stain.reference:
        return [], None
    src = Path(stain.reference).expanduser()
    dest = tmp / B.STAIN_DIR
    dest.mkdir()
    if src.is_file():
        shutil.copyfile(src, dest / src.name)
        return [f"{B.STAIN_DIR}/{src.name}"], f"{B.STAIN_DIR}/{src.name}"
    if src.is_dir():
        names = sorted(p.name for p in src.iterdir() if p.is_file())
        for n in names:
            shutil.copyfile(src / n, dest / n)
        return [f"{B.STAIN_DIR}/{n}" for n in names], B.STAIN_DIR
    raise ReleaseError(f"stain.reference={stain.reference} is not on this machine; the bundle needs it to "
                       "normalise new images as in training (restore the file or folder, then release again)")


def clip_info(cfg: Config, run: Path, tmp: Path) -> dict:
    from safetensors import safe_open

    from sam_histo.zeroshot.train_head import HEAD_FILE

    head = run / HEAD_FILE if (run / HEAD_FILE).is_file() else (Path(cfg.clip.head) if cfg.clip.head else None)
    weights = Path(cfg.clip.weights).expanduser() if cfg.clip.weights else None
    out = {"backend": cfg.clip.backend, "arch": cfg.clip.arch, "weights": cfg.clip.weights,
           "weights_sha256": sha256_file(weights) if weights is not None and weights.is_file() else None,
           "head": None}
    if head is not None and head.is_file():
        shutil.copyfile(head, tmp / B.CLIP_HEAD)
        with safe_open(str(tmp / B.CLIP_HEAD), framework="pt") as f:
            meta = f.metadata() or {}
        out.update(head=B.CLIP_HEAD, model=meta.get("model"), head_alpha=meta.get("alpha"),
                   head_prompts_sha256=meta.get("prompts_sha256"))
    return out


# ------------------------------------------------------------------------------------------ metrics
def _read(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def choose_metrics(run: Path, cfg: Config, weights: Path, label: str, model, recompute: bool) -> dict:
    """metrics.json of the bundle: {"checkpoint", "for_released_checkpoint", "source", "val", "test", ...}."""
    from sam_histo.data.classstats import ClassStats

    best = run / "checkpoints" / "best"
    evals = {s: _read(run / "eval" / s / "metrics.json") for s in ("val", "test")}
    evals = {s: m for s, m in evals.items() if m is not None}
    best_epoch = (_read(best / "state.json") or {}).get("epoch")
    same = (best / B.WEIGHTS).is_file() and sha256_file(best / B.WEIGHTS) == sha256_file(weights)
    current = same and evals and all(f"(epoch {best_epoch})" in str(m.get("checkpoint")) for m in evals.values())
    out: dict = {"checkpoint": label}
    if current:
        out |= {"for_released_checkpoint": True, "source": "the run's final evaluation of checkpoints/best "
                "(eval/<split>/metrics.json); the released weights are byte-identical to it", **evals}
    elif recompute and Path(cfg.data.root).is_dir():
        out |= {"for_released_checkpoint": True, "source": "recomputed by the validator for the released weights",
                **recompute_metrics(model, cfg, label)}
    else:
        why = "recomputing was switched off" if not recompute else f"data.root={cfg.data.root} is not on this machine"
        out |= {"for_released_checkpoint": False, **evals,
                "source": "the run's final evaluation (eval/<split>/metrics.json)",
                "note": f"these numbers are of checkpoints/best (epoch {best_epoch}), not of the released "
                        f"{label}, and {why}; run `sam-histo validate` on the released weights for theirs"}
    stats = _read(run / "class_stats.json")
    if stats is not None:
        s = ClassStats.from_json(stats)
        out["train_data"] = {"split": "train", "n_tiles": int(len(s.counts)),
                             "pixel_fraction": {s.classes.names[i]: float(s.pixel_fraction[i]) for i in s.trained_ids},
                             "image_share": {s.classes.names[i]: float(s.image_share[i]) for i in s.trained_ids}}
    clip = _read(run / "clip_head_metrics.json")
    if clip is not None:
        out["clip_head"] = clip
    return out


def recompute_metrics(model, cfg: Config, label: str) -> dict:
    from sam_histo.eval.validator import evaluate_splits

    return evaluate_splits(model, cfg, ("val", "test"), checkpoint=label)[0]  # an empty split is left out


# ------------------------------------------------------------------------------------------- build
def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def merge_adapters(cfg: Config, classes, state: dict, source: Path) -> tuple[dict, Optional[dict]]:
    """A checkpoint with LoRA adapters -> the merged plain state dict (stock SAM2 layout), and the adapter
    settings it had; ``cfg.model.lora`` is switched off so the bundle builds without adapters."""
    from sam_histo.config import LoraConfig
    from sam_histo.models.lora import has_lora_keys, merge_lora
    from sam_histo.models.sam import build_sam
    from sam_histo.models.weights import load_into

    if not has_lora_keys(state):
        return state, None
    if not cfg.model.lora.rank:
        raise ReleaseError(f"{source} holds LoRA adapters but the run's model.lora.rank is 0: release it with the "
                           "config it was trained with")
    model = build_sam(dataclasses.replace(cfg.model, checkpoint=None),
                      classes.num_classes if cfg.model.mode == "semantic" else None)
    load_into(model, state, source=str(source))
    merge_lora(model)
    settings = dataclasses.asdict(cfg.model.lora)
    cfg.model = dataclasses.replace(cfg.model, lora=LoraConfig())
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, settings


def _build_model(cfg: Config, classes, sam_state: dict, head_state: Optional[dict], source: Path):
    """The model of the bundle, loaded strictly from exactly the tensors that go into it (catches a
    checkpoint that does not fit the run's config before anything is written)."""
    from sam_histo.models.sam import build_sam
    from sam_histo.models.weights import load_into

    model = build_sam(dataclasses.replace(cfg.model, checkpoint=None), classes.num_classes if head_state else None)
    load_into(model.sam, sam_state, source=str(source))
    if head_state:
        load_into(model.semantic_head, head_state, source=f"{source} (semantic_head.*)")
    return model.eval()


def write_bundle(run: Path, tmp: Path, checkpoint: str, recompute: bool) -> dict:
    """Write every file of the bundle into the empty folder ``tmp``; returns config.json's content."""
    from sam_histo.data.dataset import class_spec
    from sam_histo.release.model_card import render_card
    from sam_histo.models.weights import read_state_dict, save_state_dict

    cfg = load_config(run / "config.yaml")
    classes = class_spec(cfg.data)
    weights, label = choose_checkpoint(run, checkpoint)
    state, lora = merge_adapters(cfg, classes, read_state_dict(weights), weights)
    sam_state, head_state = split_state(state, cfg.model.mode, weights)
    model = _build_model(cfg, classes, sam_state, head_state, weights)
    # One metadata entry only: safetensors keeps metadata in a hash map, so two keys come out in a random
    # order and identical weights would give different bytes. "format": "pt" is what transformers expects.
    meta = {"format": "pt"}
    save_state_dict(sam_state, tmp / B.WEIGHTS, metadata=meta)
    if head_state:
        save_state_dict(head_state, tmp / B.SEMANTIC_HEAD, metadata=meta)
    stain_files, stain_root = copy_stain_reference(cfg.stain, tmp)
    prompts = copy_prompts(cfg, tmp)
    clip = clip_info(cfg, run, tmp)
    metrics = choose_metrics(run, cfg, weights, label, model, recompute)
    info = {
        "format": B.FORMAT,
        "name": cfg.name,
        "released_checkpoint": {"label": label, "source_file": str(weights), "sha256": sha256_file(weights)},
        "model": {"arch": cfg.model.arch, "canonical_arch": model.arch, "image_size": cfg.model.image_size,
                  "target_mpp": cfg.model.target_mpp, "mode": cfg.model.mode, "num_classes": model.num_classes,
                  "parameters": sum(p.numel() for p in model.parameters()), "sam2_build": sam2_build_info(cfg.model)},
        "base_checkpoint": base_checkpoint_info(cfg.model),
        "lora_merged": lora,
        "versions": versions(),
        "git": git_info(),
        "prompts": prompts,
        "clip": clip,
        "files": {"weights": B.WEIGHTS, "semantic_head": B.SEMANTIC_HEAD if head_state else None,
                  "clip_head": clip["head"], "prompts": prompts["file"], "stain_reference": stain_files,
                  "stain_reference_root": stain_root},
        "config": to_dict(cfg),
    }
    _write_json(tmp / B.CONFIG, info)
    _write_json(tmp / B.CLASSES, classes.to_json())
    _write_json(tmp / B.METRICS, metrics)
    (tmp / B.CARD).write_text(render_card(info, classes.to_json(), metrics), encoding="utf-8")
    return info


def _install(tmp: Path, out: Path, force: bool) -> str:
    """Move the finished ``tmp`` to ``out``; returns "new", "identical" or "replaced"."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return "new"
    if (out / B.SUMS).is_file() and (out / B.SUMS).read_bytes() == (tmp / B.SUMS).read_bytes():
        shutil.rmtree(tmp)
        return "identical"
    if not force:
        kind = "a different bundle" if (out / B.SUMS).is_file() else "other files"
        raise ReleaseError(f"{out} already holds {kind}; choose another --out, or pass --force to replace it")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return "replaced"


def make_release(run: str | Path, out: str | Path, checkpoint: str = "best", force: bool = False,
                 recompute: bool = True) -> tuple[Path, str, str]:
    """Bundle ``checkpoint`` of the run folder ``run`` into ``out``; returns (out, digest, outcome) where the
    digest is the sha256 of SHA256SUMS and outcome is "new", "identical" or "replaced"."""
    run, out = Path(run).expanduser(), Path(out).expanduser()
    if not (run / "config.yaml").is_file():
        raise ReleaseError(f"{run} is not a run folder: {run / 'config.yaml'} is missing (a run folder is what "
                           "`sam-histo train` writes: config.yaml, checkpoints/, eval/)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_bundle(run, tmp, checkpoint, recompute)
        for path in tmp.rglob("*"):  # a bundle is for sharing: world-readable whatever the umask
            path.chmod(0o755 if path.is_dir() else 0o644)
        digest = B.write_sums(tmp)
        outcome = _install(tmp, out, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, digest, outcome


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="sam-histo release", description=first_paragraph(__doc__))
    p.add_argument("--run", required=True, type=Path, help="the run folder (config.yaml, checkpoints/, eval/)")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create")
    p.add_argument("--checkpoint", default="best",
                   help="best (default), last, or a checkpoint folder / weights file")
    p.add_argument("--force", action="store_true", help="replace an existing different bundle at --out")
    p.add_argument("--no-recompute", action="store_true",
                   help="never run the validator; copy the run's metrics, with a note when they are of another "
                        "checkpoint")
    args = p.parse_args(argv)
    try:
        out, digest, outcome = make_release(args.run, args.out, args.checkpoint, args.force, not args.no_recompute)
    except BundleError as e:
        raise ReleaseError(str(e)) from None
    files = B.bundle_files(out)
    what = {"new": "written", "identical": "already there, identical", "replaced": "replaced (--force)"}[outcome]
    print(f"release {out}: {what}; {len(files)} files + {B.SUMS}\n  bundle sha256 (of {B.SUMS}): {digest}\n"
          f"  load: python -c \"import sam_histo; r = sam_histo.load_release('{out}')\"\n"
          f"  predict: sam-histo predict --release {out} --input IMAGES --out PREDICTIONS")
    return 0
