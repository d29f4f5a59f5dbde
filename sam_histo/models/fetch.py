"""`sam-histo fetch-weights NAME [--cache DIR]`: download an upstream checkpoint listed in
third_party/manifest.yaml into the cache and verify it; `--list` prints the manifest.

Offline (``HF_HUB_OFFLINE=1`` / ``SAM_HISTO_OFFLINE=1``, or no answer within ``--timeout`` seconds) it fails
at once with the URL and the path to put the file by hand. ``resolve_checkpoint`` turns
``model.checkpoint`` (a manifest name or a path) into a file path for the model builder.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import yaml

from sam_histo.config import ConfigError
from sam_histo.config.resources import resource_dir
from sam_histo.models.weights import MissingWeightsError, missing_message
from sam_histo.config.argv import first_paragraph

MANIFEST = resource_dir("third_party") / "manifest.yaml"
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A download that failed or did not verify; the message says what to do by hand."""


def manifest_path() -> Path:
    return Path(os.environ.get("SAM_HISTO_MANIFEST", MANIFEST))


def load_manifest(path: Optional[Path] = None) -> dict[str, dict]:
    path = Path(path or manifest_path())
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the artifact manifest {path} ({e})") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("artifacts"), dict):
        raise ConfigError(f"{path}: expected a top-level 'artifacts' mapping")
    return tree["artifacts"]


def cache_dir(override: Optional[str] = None) -> Path:
    """--cache / model.cache_dir, else $SAM_HISTO_CACHE, else ~/.cache/sam_histo."""
    raw = override or os.environ.get("SAM_HISTO_CACHE") or "~/.cache/sam_histo"
    return Path(raw).expanduser()


def find(name: str, manifest: dict[str, dict]) -> Optional[tuple[str, dict]]:
    """Manifest entry by name or alias (case-insensitive)."""
    key = name.strip().lower()
    for entry_name, entry in manifest.items():
        if key == entry_name.lower() or key in [a.lower() for a in entry.get("aliases", [])]:
            return entry_name, entry
    return None


def target_path(entry_name: str, entry: dict, cache: Path) -> Path:
    """Where a fetched artifact lives: <cache>/sam2/<file> for checkpoints, <cache>/hf/<repo> for repos."""
    if entry["kind"] == "sam2_checkpoint":
        return cache / "sam2" / entry["filename"]
    return cache / "hf" / entry["hf_repo"].replace("/", "--")


def resolve_checkpoint(name_or_path: str, cache: Optional[str] = None, manifest: Optional[Path] = None) -> Path:
    """An existing file path as given, else the cached file of a manifest name; else a clear error."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    hit = find(name_or_path, load_manifest(manifest))
    if hit is not None:
        entry_name, entry = hit
        if entry["kind"] != "sam2_checkpoint":
            raise ConfigError(f"{entry_name!r} is a {entry['kind']} artifact, not a SAM2 checkpoint")
        target = target_path(entry_name, entry, cache_dir(cache))
        if target.is_file():
            return target
        raise MissingWeightsError(missing_message(target, entry["url"], entry_name))
    if path.suffix in (".pt", ".pth", ".safetensors") or os.sep in name_or_path:
        raise MissingWeightsError(missing_message(path))
    names = [n for n, e in load_manifest(manifest).items() if e["kind"] == "sam2_checkpoint"]
    raise ConfigError(f"model.checkpoint={name_or_path!r} is neither a file nor a known name ({', '.join(names)})")


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "SAM_HISTO_OFFLINE"))


def _by_hand(entry_name: str, entry: dict, target: Path) -> str:
    if entry["kind"] == "sam2_checkpoint":
        return f"download {entry['url']} on a machine with network and put it at {target}"
    gated = " (gated: accept the terms on the model page and log in first)" if entry.get("gated") else ""
    return (f"on a machine with network run `huggingface-cli download {entry['hf_repo']} --local-dir DIR`"
            f"{gated} and copy DIR to {target} on this machine")


def verify(path: Path, entry: dict) -> str:
    """sha256 of ``path``; raises FetchError when size or sha256 differ from the manifest."""
    size = path.stat().st_size
    if entry.get("size_bytes") and size != entry["size_bytes"]:
        raise FetchError(f"{path}: {size} bytes, the manifest says {entry['size_bytes']}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    got = digest.hexdigest()
    if entry.get("sha256") and got != entry["sha256"]:
        raise FetchError(f"{path}: sha256 {got} differs from the manifest's {entry['sha256']}")
    return got


def download(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` to ``dest`` (through a .part file) with a progress bar."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
    os.replace(part, dest)


def fetch(name: str, cache: Optional[str] = None, timeout: float = 10.0, manifest: Optional[Path] = None) -> Path:
    """Download (if not cached) and verify one artifact; returns its path."""
    man = load_manifest(manifest)
    hit = find(name, man)
    if hit is None:
        raise ConfigError(f"unknown artifact {name!r}; known: {', '.join(man)}")
    entry_name, entry = hit
    target = target_path(entry_name, entry, cache_dir(cache))
    if entry["kind"] == "sam2_checkpoint" and target.is_file():
        verify(target, entry)
        return target
    if offline():
        raise FetchError(f"offline (HF_HUB_OFFLINE / SAM_HISTO_OFFLINE is set): {_by_hand(entry_name, entry, target)}")
    try:
        if entry["kind"] == "sam2_checkpoint":
            download(entry["url"], target, timeout)
            try:
                verify(target, entry)
            except FetchError:
                target.unlink()  # never leave an unverified file where resolve_checkpoint would use it
                raise
        else:
            _fetch_hf(entry, target, timeout)
    except (urllib.error.URLError, socket.timeout, TimeoutError, OSError) as e:
        raise FetchError(f"could not download {entry_name} ({e}): {_by_hand(entry_name, entry, target)}") from None
    return target


def _fetch_hf(entry: dict, target: Path, timeout: float) -> None:
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout)))
    from huggingface_hub import snapshot_download

    snapshot_download(entry["hf_repo"], revision=entry.get("revision"), local_dir=str(target))
    if entry.get("filename") and entry.get("sha256"):
        verify(target / entry["filename"], entry)


def _table(man: dict[str, dict], cache: Path) -> str:
    rows = [("name", "kind", "license", "size", "sha256", "cached")]
    for name, e in man.items():
        size = f"{e['size_bytes'] / 1e6:.0f} MB" if e.get("size_bytes") else "?"
        cached = "yes" if target_path(name, e, cache).exists() else "no"
        lic = str(e.get("license", "?")).split(" (")[0].split(";")[0]
        rows.append((name, e["kind"], lic[:28], size, "yes" if e.get("sha256") else "no", cached))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sam-histo fetch-weights", description=first_paragraph(__doc__))
    p.add_argument("name", nargs="?", help="artifact name or alias (see --list)")
    p.add_argument("--list", action="store_true", help="print the manifest")
    p.add_argument("--json", action="store_true", help="with --list: the manifest as JSON")
    p.add_argument("--cache", default=None, help="cache folder (default $SAM_HISTO_CACHE or ~/.cache/sam_histo)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")
    p.add_argument("--manifest", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    man = load_manifest(args.manifest)
    if args.list or not args.name:
        print(json.dumps(man, indent=1) if args.json else _table(man, cache_dir(args.cache)))
        return 0
    try:
        path = fetch(args.name, args.cache, args.timeout, args.manifest)
    except FetchError as e:
        print(f"sam-histo fetch-weights: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
