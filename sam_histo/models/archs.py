"""SAM2 architecture names, the small test configs, and the YAML overrides that size a model.

Pure: reads the sam2 package's YAML files as data (found with ``importlib.util.find_spec``, never imported)
and edits them with OmegaConf; ``sam_histo.models.sam`` instantiates the result. Override strings use
Hydra's spelling: ``key=value`` changes an existing key and fails on a missing one, ``++key=value`` adds or
changes, ``+key=value`` adds. Values are YAML (``[8, 8]``, ``true``, ``0.5``).

Keys that must change together (DESIGN.md section 5): ``model.image_size`` (multiple of 32), the RoPE
``feat_sizes`` of memory attention (= image_size / 16), trunk ``embed_dim`` with the neck's
``backbone_channel_list`` ([8E, 4E, 2E, E]), the hidden size D across neck, memory attention and memory
encoder, and ``kv_in_dim`` = the memory encoder's ``out_dim``.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import yaml

from sam_histo.config import ConfigError

# Canonical name -> YAML path inside the sam2 package.
PACKAGED = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_s": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_b+": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_l": "configs/sam2/sam2_hiera_l.yaml",
}
_SIZE_WORDS = {"t": "t", "tiny": "t", "s": "s", "small": "s", "b+": "b+", "base_plus": "b+", "l": "l", "large": "l"}

# Hidden size D of the tiny configs, its Hiera embed dim E and the memory dim.
_TINY_D, _TINY_E, _TINY_MEM = 32, 8, 16


def _tiny_overrides() -> list[str]:
    """About 0.66 M parameters: Hiera E=8 with stages [1, 2, 2, 1], D=32, one memory-attention layer.

    The mask decoder's transformer MLP width (2048) and IoU head width (256) are fixed in sam2's
    ``_build_sam_heads``; they dominate the count. Stage 3 (blocks 3-4) ends with a global-attention
    block, never starting with one (a q-pooling block cannot be global).
    """
    d, e, mem = _TINY_D, _TINY_E, _TINY_MEM
    return [
        f"model.image_encoder.trunk.embed_dim={e}",
        "model.image_encoder.trunk.num_heads=1",
        "model.image_encoder.trunk.stages=[1, 2, 2, 1]",
        "model.image_encoder.trunk.global_att_blocks=[4]",
        "++model.image_encoder.trunk.window_spec=[8, 4, 4, 2]",
        "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4, 4]",
        f"model.image_encoder.neck.d_model={d}",
        f"model.image_encoder.neck.backbone_channel_list=[{8 * e}, {4 * e}, {2 * e}, {e}]",
        f"model.image_encoder.neck.position_encoding.num_pos_feats={d}",
        f"model.memory_attention.d_model={d}",
        "model.memory_attention.num_layers=1",
        f"model.memory_attention.layer.d_model={d}",
        "model.memory_attention.layer.dim_feedforward=64",
        f"model.memory_attention.layer.self_attention.embedding_dim={d}",
        f"model.memory_attention.layer.cross_attention.embedding_dim={d}",
        f"model.memory_attention.layer.cross_attention.kv_in_dim={mem}",
        f"model.memory_encoder.out_dim={mem}",
        f"++model.memory_encoder.in_dim={d}",
        f"model.memory_encoder.position_encoding.num_pos_feats={mem}",
        f"++model.memory_encoder.mask_downsampler.embed_dim={d}",
        f"model.memory_encoder.fuser.layer.dim={d}",
    ]


# Named small configs: name -> (packaged base, overrides). Random-init only; for tests and demos.
SMALL = {"tiny": ("sam2.1_hiera_t", _tiny_overrides)}


@dataclass(frozen=True)
class ArchSpec:
    """What to instantiate: a YAML file and the overrides to apply to it, in order."""

    name: str  # canonical name (or the YAML path as given)
    yaml_path: Path
    overrides: tuple[str, ...]


def sam2_package_dir() -> Path:
    spec = importlib.util.find_spec("sam2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the sam2 package is not installed; see docs/DESIGN.md section 5 for the install")
    return Path(list(spec.submodule_search_locations)[0])


def canonical_name(arch: str) -> str | None:
    """'hiera_t', 'sam2.1_hiera_tiny', 'sam2.1-hiera-tiny' ... -> 'sam2.1_hiera_t'; None if unknown."""
    key = arch.strip().lower().replace("-", "_")
    if key in SMALL or key in PACKAGED:
        return key
    version = "sam2.1"
    for prefix in ("sam2.1_", "sam2_"):
        if key.startswith(prefix):
            version, key = prefix[:-1], key[len(prefix):]
            break
    if key.startswith("hiera_") and key[len("hiera_"):] in _SIZE_WORDS:
        return f"{version}_hiera_{_SIZE_WORDS[key[len('hiera_'):]]}"
    return None


def known_names() -> list[str]:
    return [*PACKAGED, *SMALL]


def size_overrides(image_size: int) -> list[str]:
    """The keys tied to the input size: the model's image size and memory attention's RoPE grid."""
    if image_size <= 0 or image_size % 32:
        raise ConfigError(f"model.image_size={image_size} must be a positive multiple of 32")
    g = image_size // 16
    # '?' (ours, not Hydra's): set only where the key exists, so a user YAML without RoPE still builds.
    return [
        f"++model.image_size={image_size}",
        f"?model.memory_attention.layer.self_attention.feat_sizes=[{g}, {g}]",
        f"?model.memory_attention.layer.cross_attention.feat_sizes=[{g}, {g}]",
    ]


def resolve_arch(arch: str, image_size: int, extra: list[str] | tuple[str, ...] = ()) -> ArchSpec:
    """Turn ``model.arch`` (+ image size and user overrides) into an :class:`ArchSpec`."""
    name = canonical_name(arch)
    if name in SMALL:
        base, make = SMALL[name]
        path, overrides = sam2_package_dir() / PACKAGED[base], make()
    elif name in PACKAGED:
        path, overrides = sam2_package_dir() / PACKAGED[name], []
    else:
        path = Path(arch).expanduser()
        if path.suffix not in (".yaml", ".yml"):
            import difflib

            close = difflib.get_close_matches(arch, known_names(), n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"model.arch={arch!r} is neither a known config ({', '.join(known_names())}) "
                f"nor a .yaml path{hint}"
            )
        if not path.is_file():
            raise ConfigError(f"model.arch: YAML file {str(path)!r} not found")
        name, overrides = str(path), []
    return ArchSpec(name, path, (*overrides, *size_overrides(image_size), *extra))


def parse_override(text: str) -> tuple[str, str, object]:
    """'++a.b=[1, 2]' -> ('++', 'a.b', [1, 2])."""
    mode = ""
    for prefix in ("++", "+", "?"):
        if text.startswith(prefix):
            mode, text = prefix, text[len(prefix):]
            break
    if "=" not in text:
        raise ConfigError(f"model override {text!r} must look like key=value (e.g. ++model.num_maskmem=3)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"model override {key}: cannot parse {raw!r} ({e})") from None
    return mode, key.strip(), value


def load_yaml_with_overrides(spec: ArchSpec):
    """The sam2 YAML as an OmegaConf tree with every override applied and interpolations resolved."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(spec.yaml_path)
    if "model" not in cfg:
        raise ConfigError(f"{spec.yaml_path}: a sam2 config needs a top-level 'model' section")
    for text in spec.overrides:
        mode, key, value = parse_override(text)
        exists = OmegaConf.select(cfg, key, default="__missing__") != "__missing__"
        if mode == "" and not exists:
            raise ConfigError(
                f"override {text!r}: key {key!r} is not in {spec.yaml_path.name}; write ++{key}=... to add it"
            )
        if mode == "?" and not exists:
            continue
        if mode == "+" and exists:
            raise ConfigError(f"override {text!r}: key {key!r} already exists; drop the '+' to change it")
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg


def sam2_build_args(arch: str, image_size: int, extra: list[str] | tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """``(config_file, hydra_overrides_extra)`` that make sam2's own ``build_sam2`` build this architecture.

    ``config_file`` is the packaged YAML's name inside sam2 (``configs/sam2.1/sam2.1_hiera_t.yaml``), the
    overrides are ours in Hydra's spelling (our ``?key=value``, "only where the key exists", becomes a plain
    override or is dropped). build_sam2 adds the image post-processing overrides itself. Raises ConfigError
    for an architecture given as a YAML file outside the sam2 package: Hydra only finds packaged configs.
    """
    from omegaconf import OmegaConf

    spec = resolve_arch(arch, image_size, extra)
    try:
        name = spec.yaml_path.resolve().relative_to(sam2_package_dir().resolve()).as_posix()
    except ValueError:
        raise ConfigError(f"model.arch={arch!r} is a YAML file outside the sam2 package; sam2's build_sam2 only "
                          "composes packaged configs (copy it into sam2/configs to use build_sam2)") from None
    base = OmegaConf.load(spec.yaml_path)
    out = []
    for text in spec.overrides:
        if text.startswith("?"):
            _, key, _ = parse_override(text)
            if OmegaConf.select(base, key, default="__missing__") == "__missing__":
                continue
            text = text[1:]
        out.append(text)
    return name, out
