"""A released model bundle on disk: its file names, its SHA256SUMS, and loading it back (``load_release``).

Layout (written by :mod:`sam_histo.release.build`)::

    model.safetensors          SAM2 weights, SAM2Base keys as in the official checkpoints (no ``sam.`` prefix)
    semantic_head.safetensors  class-token head (semantic mode)
    clip_head.safetensors      tuned CLIP head (when the run has one)
    config.json                resolved training config, base checkpoint and its sha256, versions, git commit
    classes.json               ids, names, colours, ignore index
    prompts.json               the CLIP prompt file of the run (its canonical sha256 is in config.json)
    metrics.json               per-class metrics of the released checkpoint
    stain_reference/...        the stain-normalisation reference tiles (when the run normalised stains)
    README.md                  the model card
    SHA256SUMS                 ``<sha256>  <name>`` per file, as ``sha256sum -c SHA256SUMS`` checks it

Loading reads only safetensors and JSON (never ``torch.load`` or pickle), and what the JSON says is data:
the model is built from the project's own architecture names and numeric fields only, paths and names are
checked (:mod:`sam_histo.release.trust`). Every file is hashed before it is used; a changed, missing or
unlisted file, a SHA256SUMS entry that is not a plain relative name and any symlink refuse the bundle with
the file's name. The hashes catch corruption and edits; they do not prove who made the bundle. For that,
compare :func:`bundle_digest` (the sha256 of SHA256SUMS, printed by ``sam-histo release``) with the value
the publisher gives (``--expected-digest``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Optional

FORMAT = "sam_histo.release.build/1"
WEIGHTS = "model.safetensors"
SEMANTIC_HEAD = "semantic_head.safetensors"
CLIP_HEAD = "clip_head.safetensors"
CONFIG = "config.json"
CLASSES = "classes.json"
PROMPTS = "prompts.json"
METRICS = "metrics.json"
CARD = "README.md"
SUMS = "SHA256SUMS"
STAIN_DIR = "stain_reference"
ALWAYS = (WEIGHTS, CONFIG, CLASSES, METRICS, CARD)
_LINE = re.compile(r"^([0-9a-f]{64})  (\S(?:.*\S)?)$")
_CHUNK = 1 << 20


from sam_histo.release.trust import (BundleError, check_class_names, check_files, check_model, plain_name,
                                     strip_paths)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(folder: Path):
    """Every entry under ``folder`` without following links (os.scandir: a symlinked folder is not entered)."""
    import os

    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                yield entry
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))


def refuse_links(folder: Path) -> None:
    """A bundle holds plain files and folders only: a symlink could point anywhere."""
    for entry in _walk(folder):
        if entry.is_symlink():
            raise BundleError(f"{entry.path} is a symbolic link; a bundle holds plain files only: refused")


def bundle_files(folder: Path) -> list[str]:
    """Every plain file under ``folder`` except SHA256SUMS, as sorted POSIX paths relative to it."""
    return sorted(Path(e.path).relative_to(folder).as_posix() for e in _walk(folder)
                  if e.is_file(follow_symlinks=False) and not (e.name == SUMS and Path(e.path).parent == folder))


def write_sums(folder: str | Path) -> str:
    """Write SHA256SUMS over every file of ``folder``; returns the bundle digest (sha256 of SHA256SUMS)."""
    folder = Path(folder)
    text = "".join(f"{sha256_file(folder / name)}  {name}\n" for name in bundle_files(folder))
    (folder / SUMS).write_text(text, encoding="ascii")
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def bundle_digest(folder: str | Path) -> str:
    """sha256 of the bundle's SHA256SUMS: one value that pins every file of the bundle."""
    return sha256_file(Path(folder) / SUMS)


def read_sums(folder: Path) -> dict[str, str]:
    path = folder / SUMS
    if not path.is_file():
        raise BundleError(f"{path} is missing: {folder} is not a complete release bundle (make one with "
                          "`sam-histo release --run RUN --out DIR`)")
    try:
        lines = path.read_bytes().decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise BundleError(f"{path}: not an ASCII checksum list (the file was changed)") from None
    sums: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        m = _LINE.match(line)
        if m is None or m.group(2) in sums or not plain_name(m.group(2)):
            raise BundleError(f"{path}, line {n}: {line[:80]!r} is not '<64 lowercase hex>  <file name>' "
                              "with a plain relative name inside the bundle (the checksum list was changed)")
        sums[m.group(2)] = m.group(1)
    return sums


def verify(folder: str | Path, required: tuple[str, ...] = ALWAYS) -> dict[str, str]:
    """Check every file against SHA256SUMS; returns {name: sha256}. Raises BundleError naming the first
    missing, unlisted or changed file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"release folder {folder} does not exist")
    refuse_links(folder)
    if (folder / SUMS).is_symlink():
        raise BundleError(f"{folder / SUMS} is a symbolic link; a bundle holds plain files only: refused")
    sums = read_sums(folder)
    check_required(folder, sums, required)
    for name in sums:
        if not (folder / name).is_file():
            raise BundleError(f"{folder / name} is missing (listed in {SUMS}): incomplete bundle")
    extra = [n for n in bundle_files(folder) if n not in sums]
    if extra:
        raise BundleError(f"{folder / extra[0]} is not listed in {SUMS}: the bundle was changed")
    for name, expected in sums.items():
        if sha256_file(folder / name) != expected:
            raise BundleError(f"{folder / name}: sha256 differs from {SUMS}: the file was changed or corrupted")
    return sums


def check_required(folder: Path, sums: dict[str, str], required) -> None:
    for name in required:
        if name not in sums:
            raise BundleError(f"{folder / name}: required file is not listed in {SUMS}: incomplete bundle")


def _json(folder: Path, name: str) -> dict:
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{folder / name}: not valid JSON ({e})") from None


@dataclasses.dataclass
class Release:
    """A loaded bundle. ``model``: SamHisto in eval mode on the CPU (class-token head in semantic mode);
    ``classes``: ClassSpec; ``config``: the training Config (``model.checkpoint`` cleared, stain reference
    and CLIP head pointing into the bundle); ``info``: config.json as read; ``metrics``: metrics.json;
    ``clip_head``: ClipHead or None; ``digest``: sha256 of SHA256SUMS."""

    path: Path
    model: object
    classes: object
    config: object
    info: dict
    metrics: dict
    clip_head: Optional[object]
    digest: str

    @property
    def mode(self) -> str:
        return self.config.model.mode

    @property
    def prompts_path(self) -> Optional[Path]:
        name = self.info.get("files", {}).get("prompts")
        return self.path / name if name else None


def required_files(info: dict) -> tuple[str, ...]:
    """ALWAYS plus the files config.json says the bundle has, so deleting one with its checksum line fails."""
    files = info.get("files", {})
    named = [files.get(k) for k in ("semantic_head", "clip_head", "prompts")]
    return (*ALWAYS, *[n for n in named if n], *files.get("stain_reference", []))


def load_release(path: str | Path, expected_digest: Optional[str] = None) -> Release:
    """Verify and load a bundle (see the module docstring); ``expected_digest`` also pins SHA256SUMS itself."""
    from safetensors.torch import load_file

    from sam_histo.config import config_from_dict
    from sam_histo.data.types import ClassSpec
    from sam_histo.models.sam import build_sam
    from sam_histo.models.weights import load_into

    folder = Path(path).expanduser()
    sums = verify(folder)
    if expected_digest is not None and bundle_digest(folder) != expected_digest.lower():
        raise BundleError(f"{folder / SUMS}: sha256 {bundle_digest(folder)} is not the expected {expected_digest}")
    info = _json(folder, CONFIG)
    if info.get("format") != FORMAT:
        raise BundleError(f"{folder / CONFIG}: format {info.get('format')!r} is not {FORMAT!r}")
    where = str(folder / CONFIG)
    check_files(info.get("files", {}), where)
    check_required(folder, sums, required_files(info))
    files = info["files"]
    tree = strip_paths(info.get("config") if isinstance(info.get("config"), dict) else {})
    tree["model"] = check_model(tree.get("model", {}), where)
    if isinstance(tree.get("stain"), dict):  # the bundle's own reference tiles, never a path it names
        root = files.get("stain_reference_root") if files.get("stain_reference") else None
        tree["stain"] = {**tree["stain"], "reference": str(folder / root) if root else None}
    cfg = config_from_dict(tree, f" (in {where})")
    if cfg.model.mode == "semantic" and not files.get("semantic_head"):
        raise BundleError(f"{folder / CONFIG}: a semantic-mode model without {SEMANTIC_HEAD}: incomplete bundle")
    cj = _json(folder, CLASSES)
    check_class_names(cj.get("names", []), str(folder / CLASSES))
    classes = ClassSpec(tuple(cj["names"]), cj["ignore_index"])
    model = build_sam(cfg.model, classes.num_classes if files.get("semantic_head") else None)
    load_into(model.sam, load_file(str(folder / WEIGHTS)), source=str(folder / WEIGHTS))
    if files.get("semantic_head"):
        load_into(model.semantic_head, load_file(str(folder / SEMANTIC_HEAD)), source=str(folder / SEMANTIC_HEAD))
    clip_head = None
    if files.get("clip_head"):
        from sam_histo.zeroshot.classify import ClipHead

        clip_head = ClipHead.load(folder / CLIP_HEAD)
        cfg.clip.head = str(folder / CLIP_HEAD)
    if files.get("prompts"):
        cfg.clip.prompts = str(folder / PROMPTS)
    return Release(folder, model.eval(), classes, cfg, info, _json(folder, METRICS), clip_head,
                   bundle_digest(folder))
