"""Every shell command in README.md's code blocks runs as written, on synthetic data, in README order.

How it works: every ```bash block of README.md is split into commands (``\\`` continuations joined, ``#``
comments dropped, ``&&`` chains split). Each command is rewritten by the SUBSTITUTIONS table below and run
in one work folder laid out like the checkout (configs/, prompts/, slurm/, sam_histo/, third_party/ linked in),
after the FIXTURES have written the inputs the README assumes a user has. ``sam-histo ...`` commands run
in-process through ``sam_histo.cli.main`` (one interpreter: seconds instead of minutes); anything else
(``accelerate launch``, ``mkdir``, ``sbatch``) runs in bash. Each must exit 0. The ```python block runs too;
blocks without a language hold file layouts, not commands; any other language fails
test_every_block_is_accounted_for.

Before any substitution, every ``--config CFG k=v ...`` command must load as written (``load_config``): a
README example that contradicts the config it names (``train.epochs=5`` under phases that start at epoch 11)
fails here even though the run itself uses smaller settings.

Adding a README section? Put its commands in a ```bash block; if one needs data or weights the work folder
lacks, add a FIXTURES entry (a path the README names -> how the test writes it) or a SUBSTITUTIONS row (real
path or model -> its synthetic stand-in) here, with the reason. Nothing is skipped silently: a command that
cannot run here goes into NOT_RUN with its reason, and test_every_block_is_accounted_for fails on any
command neither run nor listed.

SUBSTITUTIONS (regex -> replacement, applied in order to each command's text):

| README says | the test runs | why |
|---|---|---|
| `/data/BCSS`, `/data/LGG` | `data/bcss`, `data/lgg` | synthetic BCSS (6 ROIs, 128 px) and LGG (64 px) written by FIXTURES |
| `/data/nuclei`, `/data/monuseg/Test_Folder` | `data/nuclei` | 6 synthetic 96 px nucleus tiles in the MoNuSeg layout (img/*.tif + labelcol/*.png, 0/255) |
| `model.checkpoint=sam2.1_hiera_large` | `model.checkpoint=sam2.1_hiera_tiny` | the manifest name of the tiny .pt (no large weights offline) |
| `sam-histo bench learn` | `... --data data/nuclei --folds 2 --epochs 1` and 2 steps an epoch (both folds at once, `--jobs` 2) | the benchmark's whole path on the nucleus fixture in seconds; README options after it still win |
| `--config configs/X.yaml` (train, validate, zeroshot, em, stats) | the same, followed by TINY[X] | a 0.7 M-parameter random-init SAM2 at 64 px, 2 epochs of 2 steps; README overrides come after and win |
| `model.arch=sam2.1_hiera_l`, `model.arch=hiera_b+` (training lines) | dropped | TINY's `model.arch=tiny` stays |
| `model.checkpoint=/models/sam2.1_hiera_large.pt` | `model.checkpoint=sam2.1_hiera_tiny` | the manifest name, which the fake manifest points at a tiny .pt |
| `clip.arch=local-dir:/models/...`, `clip.arch=ViT-B-32 clip.weights=/models/clip.pt`, `clip.backend=transformers clip.arch=/models/plip` | `clip.arch=tiny clip.weights=tiny/clip.pt` | no CLIP weights offline: one tiny random open_clip saved by FIXTURES, so a head tuned by one line loads in the next |
| `--clip-head runs/bcss/clip_head.safetensors` | `--clip-head runs/zs_head/clip_head.safetensors` | the head the `--train-head` line before it tuned |
| `checkpoints/step_00001200` | the run's last `step_*` folder | step numbers depend on the run length |
| `--checkpoint best.safetensors` | `runs/vesicle/checkpoints/best/model.safetensors` | the vesicle run's own best weights |
| `--gt my_val_labels/` | `--gt ves_val_labels/` | a copy of the `em predict` labels just written (any labelled volume does) |
| `synth vesicle --n 24 --size 128 --depth 24` | `--n 8 --size 64 --depth 8` | smaller volume |
| `synth bcss --out data/bcss_synth --n 12` | `--n 6 --size 128` | smaller ROIs |
| `accelerate launch ... name=` | `+ name=bcss_accelerate` | the next line trains runs/bcss itself |
| `sbatch [opts] SCRIPT ARGS` | `bash SCRIPT ARGS` under tests/slurm_stubs.py (srun, scontrol, accelerate and, for eval.sbatch, python record their argv) | no cluster: the test checks the script accepts the line and passes the README's arguments on |
| `fetch-weights NAME` | the same, with `SAM_HISTO_MANIFEST` naming a copy of the manifest whose `sam2.1_hiera_tiny` is a file:// URL to a tiny .pt | no network |
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_stubs import slurm_env, write_stubs

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

_PHASES = "train.phases=[{start_epoch: 0, stages: none, lr: 1.0e-3}, {start_epoch: 1, stages: all, lr: 1.0e-3}]"
_COMMON = ["model.arch=tiny", "model.image_size=64", "train.epochs=2", _PHASES, "train.batch_size=2",
           "train.num_workers=0", "train.log_with=[]", "train.checkpoint_every_steps=0", "sampling.iter_per_epoch=2",
           "clip.arch=tiny", "zeroshot.points_per_side=2", "zeroshot.pred_iou_thresh=0.0",
           "zeroshot.stability_score_thresh=0.0"]
TINY = {
    "configs/bcss.yaml": [*_COMMON, "data.tile_size=128", "data.tile_stride=128"],
    "configs/lgg.yaml": _COMMON,
    "configs/folder.yaml": _COMMON, "folder": _COMMON, "nuclei": _COMMON, "configs/nuclei.yaml": _COMMON,
    "configs/vesicle.yaml": [*_COMMON, "em.points_per_side=4", "em.sweep.iou_thresh=[0.0]",
                             "em.sweep.mask_threshold=[-1.0, 0.0]", "em.sweep.min_size=[15]"],
}

SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"/data/BCSS", "data/bcss"),
    (r"/data/LGG", "data/lgg"),
    (r"/data/nuclei|/data/monuseg/Test_Folder", "data/nuclei"),
    (r"model\.checkpoint=sam2\.1_hiera_large\b", "model.checkpoint=sam2.1_hiera_tiny"),
    (r"^sam-histo bench learn", "sam-histo bench learn --data data/nuclei --folds 2 --epochs 1 "
                                "--set sampling.iter_per_epoch=2 --set train.batch_size=2 --set model.image_size=64"),
    (r" model\.arch=(sam2\.1_hiera_l|hiera_b\+)(?= model\.checkpoint| name=| clip\.)", ""),
    (r"model\.checkpoint=/models/sam2\.1_hiera_large\.pt", "model.checkpoint=sam2.1_hiera_tiny"),
    (r"clip\.arch=local-dir:/models/\S+", "clip.arch=tiny clip.weights=tiny/clip.pt"),
    (r"clip\.arch=ViT-B-32 clip\.weights=/models/\S+", "clip.arch=tiny clip.weights=tiny/clip.pt"),
    (r"clip\.backend=transformers clip\.arch=/models/\S+", "clip.arch=tiny clip.weights=tiny/clip.pt"),
    (r"--clip-head runs/bcss/clip_head\.safetensors", "--clip-head runs/zs_head/clip_head.safetensors"),
    (r"--checkpoint best\.safetensors", "--checkpoint runs/vesicle/checkpoints/best/model.safetensors"),
    (r"--gt my_val_labels/", "--gt ves_val_labels/"),
    (r"(synth vesicle .*)--n 24 --size 128 --depth 24", r"\1--n 8 --size 64 --depth 8"),
    (r"(synth bcss --out data/bcss_synth) --n 12", r"\1 --n 6 --size 128"),
    (r"^(accelerate launch .*)$", r"\1 name=bcss_accelerate"),
]

# Commands that are not run here, with the reason (matched as a prefix of the command).
NOT_RUN = {
    "./setup.sh": "Quickstart: CI runs setup.sh, the demo and the tests itself; here it would reinstall .venv",
    ".venv/bin/sam-histo demo": "Quickstart, after ./setup.sh (CI runs it; tests/test_demo* cover the demo)",
    ".venv/bin/python -m pytest": "Quickstart, after ./setup.sh: the test suite this test is part of",
}


# ---------------------------------------------------------------------------------------- extraction
def readme_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, first line number, body) of every fenced block, in order."""
    blocks, lang, start, body = [], None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if lang is None:
                lang, start, body = stripped[3:].strip(), i + 1, []
            else:
                blocks.append((lang, start, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def shell_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every command in the ```bash blocks, continuations joined, comments gone."""
    out = []
    for lang, start, body in readme_blocks(text):
        if lang not in ("bash", "sh", "shell"):
            continue
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            first, parts = start + i, []
            while True:
                line = lines[i]
                cont = line.rstrip().endswith("\\")
                parts.append(line.rstrip()[:-1] if cont else line)
                i += 1
                if not cont or i >= len(lines):
                    break
            words = shlex.split(" ".join(parts), comments=True)
            if words:
                for cmd in _split_chain(words):
                    out.append((first, shlex.join(cmd)))
    return out


def _split_chain(words: list[str]) -> list[list[str]]:
    chain, cur = [], []
    for w in words:
        if w == "&&":
            chain.append(cur)
            cur = []
        else:
            cur.append(w)
    return [c for c in [*chain, cur] if c]


def substitute(cmd: str, work: Path) -> str:
    for pattern, repl in SUBSTITUTIONS:
        cmd = re.sub(pattern, repl, cmd)
    if "step_00001200" in cmd:
        steps = sorted((work / "runs" / "bcss" / "checkpoints").glob("step_*"))
        cmd = cmd.replace("runs/bcss/checkpoints/step_00001200", str(steps[-1].relative_to(work)) if steps else "none")
    words = shlex.split(cmd)
    if words[0] in ("sam-histo", "accelerate") and "--config" in words and words[1] != "model":
        at = words.index("--config") + 1
        words[at + 1:at + 1] = TINY.get(words[at], [])
    return shlex.join(words)


def config_lines_load_as_written(commands) -> list[str]:
    """Errors of ``load_config`` on every README ``--config`` command's config and overrides, unsubstituted."""
    from sam_histo.config import ConfigError, load_config
    from sam_histo.config.argv import is_override

    errors = []
    for line, cmd in commands:
        words = shlex.split(cmd)
        if words[0] not in ("sam-histo", "accelerate") or "--config" not in words:
            continue
        config = REPO / words[words.index("--config") + 1]
        if not config.is_file():
            continue  # a run's config.yaml, written by an earlier command
        try:
            load_config(config, [w for w in words if is_override(w)])
        except ConfigError as e:
            errors.append(f"README.md:{line}: {cmd}\n    {e}")
    return errors


# ------------------------------------------------------------------------------------------- fixtures
def write_fixtures(work: Path) -> dict:
    """The inputs the README assumes: data folders, tiles, reference tiles, a tiny checkpoint, a manifest."""
    import numpy as np
    import tifffile
    import yaml
    from PIL import Image

    from sam_histo.config import ModelConfig
    from sam_histo.data.synth.layouts import write_bcss, write_lgg
    from sam_histo.models.sam import build_sam
    from sam_histo.models.weights import save_state_dict

    for name in ("configs", "prompts", "slurm", "sam_histo", "third_party"):
        (work / name).symlink_to(REPO / name)
    write_bcss(work / "data" / "bcss", 6, 0, size=128)
    write_lgg(work / "data" / "lgg", 6, 0, size=64)
    _nucleus_tiles(work / "data" / "nuclei")
    images = sorted((work / "data" / "bcss" / "images").glob("*.png"))
    for folder in ("tiles", "refs", "slides/tiles"):
        (work / folder).mkdir(parents=True)
        for p in images[:2]:
            (work / folder / p.name).write_bytes(p.read_bytes())
    (work / "ref.png").write_bytes(images[0].read_bytes())
    _instance_volumes(work)
    roi = np.concatenate([np.array(Image.open(p).convert("RGB")) for p in images[:3]], axis=1)
    tifffile.imwrite(work / "big_roi.tif", roi)
    # predictions for the BCSS `score` example: the ground truth's class ids with a corner wrong
    tiny = work / "tiny" / "sam2.1_hiera_tiny.pt"
    save_state_dict(build_sam(ModelConfig(arch="tiny", image_size=64)).sam, tiny)
    from sam_histo.models.clip import build_open_clip

    import torch

    torch.save(build_open_clip("tiny", None).module.state_dict(), work / "tiny" / "clip.pt")
    man = yaml.safe_load((REPO / "third_party" / "manifest.yaml").read_text())
    entry = man["artifacts"]["sam2.1_hiera_tiny"]
    import hashlib

    entry.update(url=tiny.as_uri(), mirror=None, size_bytes=tiny.stat().st_size,
                 sha256=hashlib.sha256(tiny.read_bytes()).hexdigest())
    (work / "tiny" / "manifest.yaml").write_text(yaml.safe_dump(man))
    return {"SAM_HISTO_MANIFEST": str(work / "tiny" / "manifest.yaml"), "SAM_HISTO_CACHE": str(work / "cache")}


def _nucleus_tiles(root: Path, n: int = 6, size: int = 96) -> None:
    """img/*.tif (RGB, dark nuclei on pink) and labelcol/*.png (0/255) as MoNuSeg lays them out."""
    import numpy as np
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "labelcol").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(8):
            cy, cx, r = rng.integers(10, size - 10, 2).tolist() + [int(rng.integers(4, 8))]
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image = np.where(mask[..., None], (95, 45, 150), (235, 190, 215)).astype(np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        tifffile.imwrite(root / "img" / f"TCGA-N{i}-01A.tif", image, photometric="rgb")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "labelcol" / f"TCGA-N{i}-01A.png")


def _instance_volumes(work: Path) -> None:
    """labels/vol.h5 and seg/vol.h5: two (Z, Y, X) instance volumes (dataset main) for the `score --instances` line."""
    import h5py
    import numpy as np

    gt = np.zeros((4, 32, 32), np.uint16)
    gt[:, 2:10, 2:10], gt[1:3, 15:25, 15:25], gt[:, 26:30, 4:12] = 1, 2, 3
    seg = np.roll(gt, 1, axis=2)
    seg[seg == 3] = 0
    for folder, vol in (("labels", gt), ("seg", seg)):
        (work / folder).mkdir()
        with h5py.File(work / folder / "vol.h5", "w") as f:
            f["main"] = vol


def _bcss_id_maps(work: Path) -> None:
    """preds/ (a model's class-id maps: the truth with its left quarter called stroma) and my_id_maps/ (the
    truth as class ids), named like the masks of data/bcss, for the two `score` lines."""
    import numpy as np
    from PIL import Image

    from sam_histo.data.bcss import code_lut, read_code_table

    lut = code_lut(read_code_table(work / "data" / "bcss"), [], {})
    for folder in ("preds", "my_id_maps"):
        (work / folder).mkdir()
    for p in sorted((work / "data" / "bcss" / "masks").glob("*.png")):
        ids = lut[np.array(Image.open(p))].astype(np.uint8)
        Image.fromarray(ids).save(work / "my_id_maps" / p.name)
        ids[:, : ids.shape[1] // 4] = 2
        Image.fromarray(ids).save(work / "preds" / p.name)


def before(cmd: str, work: Path) -> None:
    """Inputs that depend on what earlier commands wrote."""
    import numpy as np

    if "--pred preds/ --gt" in cmd and not (work / "preds").is_dir():
        _bcss_id_maps(work)
    src = work / "reports" / "ves" / "instances" / "labels.h5"  # missing when `em predict` failed: reported there
    if "--gt ves_val_labels/" in cmd and not (work / "ves_val_labels").is_dir() and src.is_file():
        import shutil

        (work / "ves_val_labels").mkdir()
        shutil.copy(work / "reports" / "ves" / "instances" / "labels.h5", work / "ves_val_labels" / "labels.h5")
    if "--volume new.tif" in cmd and not (work / "new.tif").exists():
        import h5py
        import tifffile

        with h5py.File(work / "data" / "ves" / "volume.h5") as f:
            tifffile.imwrite(work / "new.tif", f["main"][:3])


# -------------------------------------------------------------------------------------------- running
SBATCH = r"""#!/bin/bash
# sbatch [options] SCRIPT ARGS as a one-shot batch job: the options become the SLURM_* a job would see
while [[ "${1:-}" == -* ]]; do
    case "$1" in
        --nodes=*) export SLURM_NNODES=${1#*=} ;;
        --gpus-per-node=*) export SLURM_GPUS_ON_NODE=${1#*=} ;;
    esac
    shift
done
exec bash "$@"
"""


def run_shell(cmd: str, work: Path, env: dict) -> tuple[int, str]:
    bin_dir = write_stubs(work / ".stubs")
    (bin_dir / "sbatch").write_text(SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    (bin_dir / "python").symlink_to(bin_dir / "recorder") if not (bin_dir / "python").exists() else None
    words = shlex.split(cmd)
    full = {**os.environ, **env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if words[0] == "sbatch":
        full = {**slurm_env(bin_dir, work / ".stubs" / "log", work, SLURM_GPUS_ON_NODE=4, STUB_HOSTNAMES="n1 n2 n3 n4"),
                **env, "PYTHON": str(bin_dir / "recorder")}
    else:
        full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full.get('PATH', '')}"
    try:
        proc = subprocess.run(["bash", "-c", cmd], cwd=work, env=full, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as e:
        return 124, f"timed out after 240 s\n{e.stdout or ''}{e.stderr or ''}"
    out = proc.stdout + proc.stderr
    if words[0] == "sbatch" and proc.returncode == 0:
        out += _check_passed_on(words, work / ".stubs" / "log")
    return (proc.returncode if "FAILED" not in out else 1), out


def _check_passed_on(words: list[str], log: Path) -> str:
    """The README's arguments after the script reach the launcher (or python) unchanged, in order."""
    script = next(i for i, w in enumerate(words) if w.endswith(".sbatch"))
    wanted = words[script + 1:]
    recs = [json.loads(p.read_text())["argv"] for p in [*log.glob("accelerate.*.json"), *log.glob("recorder.json")]]
    for p in [*log.glob("accelerate.*.json"), *log.glob("recorder.json")]:
        p.unlink()
    ok = any(r[-len(wanted):] == wanted or r[-len(wanted) + 1:] == wanted[1:] for r in recs)
    return "" if ok else f"\nFAILED: no launch line ends with {wanted}; recorded {recs}"


def run_cli(cmd: str, capsys) -> tuple[int, str]:
    from sam_histo import cli

    capsys.readouterr()
    try:
        rc = cli.main(shlex.split(cmd)[1:])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except Exception as e:  # noqa: BLE001 - the report names the command; the traceback is printed
        import traceback

        traceback.print_exc()
        rc = f"{type(e).__name__}: {e}"
    out = capsys.readouterr()
    return rc, out.out + out.err


def run_python_blocks(text: str, work: Path) -> list[str]:
    failures = []
    for _, start, body in (b for b in readme_blocks(text) if b[0] == "python"):
        try:
            exec(compile(body, f"README.md:{start}", "exec"), {})
        except Exception as e:  # noqa: BLE001
            failures.append(f"README.md:{start} (python block): {type(e).__name__}: {e}")
    return failures


# ---------------------------------------------------------------------------------------------- tests
def test_every_block_is_accounted_for():
    text = README.read_text()
    cmds = shell_commands(text)
    assert len(cmds) > 30  # the extraction found the README's commands
    runners = ("sam-histo", "accelerate", "mkdir", "sbatch", *NOT_RUN)
    unknown = [f"README.md:{n}: {c}" for n, c in cmds if not c.startswith(runners)]
    assert not unknown, "commands the test does not know how to run (add a runner or a NOT_RUN reason):\n" + \
        "\n".join(unknown)
    langs = {lang for lang, _, _ in readme_blocks(text)}
    assert langs <= {"bash", "python", ""}, f"code blocks of a language the test does not run: {langs}"


def test_config_commands_load_as_written():
    errors = config_lines_load_as_written(shell_commands(README.read_text()))
    assert not errors, "README commands whose config and overrides do not load:\n" + "\n".join(errors)


def test_readme_commands_run(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    work = tmp_path / "checkout"
    work.mkdir()
    monkeypatch.chdir(work)
    env = write_fixtures(work)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # file:// only: the fake manifest names no server
    monkeypatch.setenv("SAM_HISTO_THREADS", "1")
    failures, ran = [], 0
    for line, cmd in shell_commands(text):
        if cmd.startswith(tuple(NOT_RUN)):
            continue
        real = substitute(cmd, work)
        before(real, work)
        rc, out = run_cli(real, capsys) if real.startswith("sam-histo ") else run_shell(real, work, env)
        ran += 1
        if rc != 0:
            failures.append(f"README.md:{line}: {cmd}\n  ran: {real}\n  exit {rc}\n" + out[-1500:])
    failures += run_python_blocks(text, work)
    assert ran > 30
    assert not failures, f"{len(failures)} README commands failed:\n\n" + "\n\n".join(failures)
