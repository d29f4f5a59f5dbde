"""CLIP image and text towers behind one interface; the ONLY module that imports open_clip / transformers.

``build_clip(cfg.clip)`` returns a frozen :class:`ClipModel` whose ``encode_image`` and ``encode_text``
give L2-normalised float32 [N, D] embeddings. Backends:

- open_clip: any architecture name (``pretrained=None`` random init; weights from a local file),
  ``hf-hub:org/name`` and ``local-dir:/folder`` (open_clip's own schemas), and ``tiny`` for tests.
- transformers ``CLIPModel``: a local folder or a hub id, and ``tiny`` for tests.

Traps handled (docs/DESIGN.md section 5): transformers 5 returns output objects from
``get_*_features`` (we take ``.pooler_output``); ``CLIPTokenizer.from_pretrained(hub_id)`` offline returns
a 2-token placeholder, so every tokenizer is checked for CLIP's 49408 tokens, and a tokenizer is built
offline from open_clip's bundled BPE vocabulary when a folder has none. Heavy imports happen inside the
builders, so importing this module (e.g. for :class:`ClipModel` in tests) stays cheap.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sam_histo.config import ConfigError

log = logging.getLogger(__name__)

CLIP_VOCAB_SIZE = 49408  # 256 bytes + 256 bytes</w> + 48894 BPE merges + <|startoftext|> + <|endoftext|>
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip constants.OPENAI_DATASET_MEAN
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Tiny random-init configs for tests (vocab_size must stay 49408: the real tokenizer's ids index it).
TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": CLIP_VOCAB_SIZE, "width": 64, "heads": 2, "layers": 2},
}
TINY_HF_CLIP = {
    "projection_dim": 32,
    "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "vocab_size": CLIP_VOCAB_SIZE, "max_position_embeddings": 77},
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
}

# Where the histopathology CLIPs come from (third_party/manifest.yaml has sources, licenses and hashes).
KNOWN_WEIGHTS = (
    "PLIP: transformers, hub id vinid/plip (a CLIPModel folder); "
    "QuiltNet: open_clip, hf-hub:wisdomik/QuiltNet-B-32 (offline: local-dir: with its open_clip_config.json "
    "and open_clip_pytorch_model.bin); "
    "BiomedCLIP: open_clip, hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224; "
    "CONCH: hf-hub:MahmoodLab/conch (gated; its model code lives in the CONCH package, not in open_clip)"
)


class ClipWeightsError(ConfigError):
    """Weights or tokenizer unavailable (usually: they would need the network); says where to put them.
    A ConfigError, so `sam-histo` prints it as a one-line error: the fix is a clip.* setting."""


class ClipModel:
    """Frozen CLIP towers. Subclasses implement ``_image_features`` and ``_text_features``.

    Attributes: ``name`` (backend, arch and a weights fingerprint; keys the text cache), ``image_size``
    (square input side S in pixels), ``embed_dim`` D, ``mean``/``std`` (RGB normalisation in [0, 1] units),
    ``logit_scale`` (the model's exp(learned log scale); 100 for trained CLIPs, ~14.3 at random init).
    """

    def __init__(self, name: str, image_size: int, embed_dim: int, mean=OPENAI_MEAN, std=OPENAI_STD,
                 logit_scale: float = 100.0, device: str | torch.device = "cpu"):
        self.name = name
        self.image_size = int(image_size)
        self.embed_dim = int(embed_dim)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.logit_scale = float(logit_scale)
        self.device = torch.device(device)

    @property
    def fill_rgb(self) -> tuple[int, int, int]:
        """The model's mean colour as uint8 RGB: zero after normalisation, the neutral padding colour."""
        return tuple(int(round(m * 255)) for m in self.mean)

    # -------------------------------------------------------------------------------- to subclass
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: float32 [N, 3, S, S] normalised, on ``self.device`` -> unnormalised [N, D]."""
        raise NotImplementedError

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        """texts -> unnormalised [N, D] on any device."""
        raise NotImplementedError

    def to(self, device) -> "ClipModel":
        self.device = torch.device(device)
        return self

    # -------------------------------------------------------------------------------- public
    def preprocess(self, images) -> torch.Tensor:
        """uint8 RGB images -> float32 [N, 3, S, S] normalised, on ``self.device``.

        ``images``: an array/tensor [N, H, W, 3] or [H, W, 3], or a list of [H_i, W_i, 3] arrays. Images not
        already S x S get CLIP's resize: shorter side to S (bicubic, antialiased), then a centre crop.
        """
        if isinstance(images, (list, tuple)):
            return torch.cat([self.preprocess(im) for im in images]) if images else self._empty_pixels()
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        if x.dtype != torch.uint8:
            raise TypeError(f"preprocess expects uint8 RGB images, got {x.dtype}; float input must already be "
                            "normalised [N, 3, S, S] pixels (pass it to encode_image directly)")
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got shape {tuple(x.shape)}")
        x = x.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        s = self.image_size
        if x.shape[-2:] != (s, s):
            h, w = x.shape[-2:]
            scale = s / min(h, w)
            size = (max(s, round(h * scale)), max(s, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
            top, left = (size[0] - s) // 2, (size[1] - s) // 2
            x = x[..., top:top + s, left:left + s]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _empty_pixels(self) -> torch.Tensor:
        return torch.zeros(0, 3, self.image_size, self.image_size, device=self.device)

    @torch.inference_mode()
    def encode_image(self, images, batch_size: int = 64) -> torch.Tensor:
        """uint8 images (see ``preprocess``) or float pixels [N, 3, S, S] -> L2-normalised float32 [N, D] (CPU)."""
        if torch.is_tensor(images) and images.is_floating_point():
            pixels = images
        else:
            pixels = self.preprocess(images)
        out = [self._image_features(pixels[i:i + batch_size].to(self.device)).float().cpu()
               for i in range(0, len(pixels), batch_size)]
        return F.normalize(torch.cat(out), dim=-1) if out else torch.zeros(0, self.embed_dim)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings -> L2-normalised float32 [N, D] (CPU)."""
        texts = list(texts)
        out = [self._text_features(texts[i:i + batch_size]).float().cpu() for i in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(out), dim=-1) if out else torch.zeros(0, self.embed_dim)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """16 hex digits identifying a model's weights: sha256 over every tensor's shape and ~256 strided values.

    Cheap (well under a second for ViT-L) and changes with any load, random seed or fine-tune; it keys the
    text-embedding cache so two random-init models never share entries.
    """
    h = hashlib.sha256()
    for key, t in module.state_dict().items():
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        h.update(f"{key}{tuple(t.shape)}".encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ open_clip
class OpenClipModel(ClipModel):
    def __init__(self, module, tokenizer, arch: str, device="cpu"):
        size = module.visual.image_size
        pcfg = getattr(module.visual, "preprocess_cfg", {}) or {}
        super().__init__(
            f"open_clip:{arch}:{weights_fingerprint(module)}",
            size[0] if isinstance(size, (tuple, list)) else size,
            _open_clip_embed_dim(module),
            pcfg.get("mean", OPENAI_MEAN), pcfg.get("std", OPENAI_STD),
            float(module.logit_scale.detach().exp()), device,
        )
        self.module = module.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer

    def to(self, device):
        super().to(device)
        self.module.to(self.device)
        return self

    def _image_features(self, pixels):
        return self.module.encode_image(pixels)

    def _text_features(self, texts):
        return self.module.encode_text(self.tokenizer(texts).to(self.device))


def _open_clip_embed_dim(module) -> int:
    dim = getattr(module.visual, "output_dim", None)
    if dim is None:  # towers without the attribute: measure one forward pass
        size = module.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        with torch.no_grad():
            dim = module.encode_image(torch.zeros(1, 3, *size)).shape[-1]
    return int(dim)


def build_open_clip(arch: str, weights: str | None, device="cpu") -> OpenClipModel:
    """An open_clip model: ``arch`` a built-in name, ``tiny``, ``hf-hub:org/name`` or ``local-dir:PATH``."""
    import open_clip

    if arch == "tiny":
        module = open_clip.model.CLIP(**TINY_OPEN_CLIP)
        if weights:
            _open_clip_load_file(open_clip, module, weights)
        return OpenClipModel(module, open_clip.tokenizer.SimpleTokenizer(), arch, device)
    if arch.startswith(("hf-hub:", "local-dir:")):
        if weights:
            log.warning("clip.weights=%s ignored: %s carries its own weights", weights, arch)
        hub_id = arch.split(":", 1)[1] if arch.startswith("hf-hub:") else None
        try:
            module = open_clip.create_model(arch, device="cpu")
            tokenizer = open_clip.get_tokenizer(arch)
        except Exception as e:  # network, gated repo or missing files all end here
            raise ClipWeightsError(_network_message(arch, e, hub_id)) from None
        return OpenClipModel(module, tokenizer, arch, device)
    if arch not in open_clip.list_models():
        raise ClipWeightsError(f"clip.arch={arch!r} is not an open_clip architecture; choose one of "
                               "open_clip.list_models() (e.g. ViT-B-32, ViT-B-16), 'tiny', hf-hub:ORG/NAME "
                               "or local-dir:PATH")
    if weights and not Path(weights).expanduser().is_file():
        # Not a file: an open_clip pretrained tag, which only resolves from the network or its cache.
        try:
            module = open_clip.create_model(arch, pretrained=weights, device="cpu")
        except Exception as e:
            raise ClipWeightsError(_network_message(f"{arch} pretrained={weights}", e)) from None
    else:
        module = open_clip.create_model(arch, pretrained=None, device="cpu")
        if weights:
            _open_clip_load_file(open_clip, module, weights)
        else:
            log.warning("clip: %s with random weights (clip.weights is null); zero-shot numbers mean nothing", arch)
    try:  # architectures with a Hugging Face tokenizer (SigLIP, BiomedCLIP text towers) fetch it from the hub
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as e:
        raise ClipWeightsError(_network_message(f"the tokenizer of {arch}", e)) from None
    return OpenClipModel(module, tokenizer, arch, device)


def _open_clip_load_file(open_clip, module, path: str) -> None:
    path = str(Path(path).expanduser())
    if not Path(path).is_file():
        raise ClipWeightsError(f"clip.weights={path!r}: no such file")
    try:
        open_clip.load_checkpoint(module, path, strict=True)
    except RuntimeError as e:  # strict load names missing and unexpected keys
        detail = " ".join(str(e).split())
        raise ClipWeightsError(f"clip.weights={path}: does not fit this architecture: {detail}") from None


def _network_message(what: str, err: Exception, hub_id: str | None = None) -> str:
    where = f" from https://huggingface.co/{hub_id}" if hub_id else ""
    detail = " ".join(str(err).split())[:300]
    return (
        f"could not load CLIP weights for {what} ({type(err).__name__}: {detail}). This needs the network"
        f"{where} or the Hugging Face cache. Offline: download the files by hand and point the config at them: "
        "open_clip -> clip.arch=local-dir:/folder (open_clip_config.json + open_clip_pytorch_model.bin) or "
        "clip.arch=<architecture> clip.weights=/path/to/weights; transformers -> clip.backend=transformers "
        "clip.arch=/folder (config.json, model.safetensors or pytorch_model.bin, tokenizer files). Sources, "
        f"licenses and hashes: third_party/manifest.yaml. Known models: {KNOWN_WEIGHTS}."
    )


# ------------------------------------------------------------------------------------- transformers
class HFClipModel(ClipModel):
    def __init__(self, module, tokenizer, arch: str, mean=OPENAI_MEAN, std=OPENAI_STD, device="cpu"):
        cfg = module.config
        super().__init__(f"transformers:{arch}:{weights_fingerprint(module)}", cfg.vision_config.image_size,
                         cfg.projection_dim, mean, std, float(module.logit_scale.detach().exp()), device)
        self.module = module.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.context_length = int(cfg.text_config.max_position_embeddings)

    def to(self, device):
        super().to(device)
        self.module.to(self.device)
        return self

    def _image_features(self, pixels):
        return _pooled(self.module.get_image_features(pixel_values=pixels))

    def _text_features(self, texts):
        tok = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt").to(self.device)
        return _pooled(self.module.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]))


def _pooled(out) -> torch.Tensor:
    # transformers < 5 returns the projected tensor; 5 returns an output object whose pooler_output it is.
    return out if torch.is_tensor(out) else out.pooler_output


def check_tokenizer(tokenizer, source: str):
    """Return ``tokenizer`` if it has CLIP's 49408 tokens; raise ClipWeightsError naming ``source`` otherwise."""
    n = len(tokenizer)
    if n != CLIP_VOCAB_SIZE:
        raise ClipWeightsError(
            f"tokenizer from {source} has {n} tokens, not CLIP's {CLIP_VOCAB_SIZE}: transformers returns a placeholder "
            "tokenizer when the vocabulary files are missing (typically offline with a hub id). Put vocab.json and "
            "merges.txt (or tokenizer.json) into the model folder, or remove all tokenizer files from it to use the "
            "CLIP vocabulary bundled with open_clip."
        )
    return tokenizer


@functools.lru_cache(maxsize=1)
def offline_clip_tokenizer():
    """CLIP's BPE tokenizer built from open_clip's bundled vocabulary (no network; same ids as OpenAI CLIP)."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    # Line 0 is a version header; CLIP uses the next 48894 merges (as open_clip's SimpleTokenizer does).
    merges = [tuple(m.split()) for m in lines[1:1 + CLIP_VOCAB_SIZE - 512 - 2]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return check_tokenizer(CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges),
                           "open_clip's bundled BPE vocabulary")


def build_hf_clip(arch: str, weights: str | None, device="cpu") -> HFClipModel:
    """A transformers CLIPModel: ``arch`` a local folder, a hub id, or ``tiny``; ``weights='random'`` keeps
    the architecture of ``arch`` with random init."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    if arch == "tiny":
        return HFClipModel(CLIPModel(CLIPConfig(**TINY_HF_CLIP)), offline_clip_tokenizer(), arch, device=device)
    if weights not in (None, "random"):
        raise ClipWeightsError(f"clip.weights={weights!r}: the transformers backend reads weights from the folder "
                               "in clip.arch; use null (those weights) or 'random'")
    folder = Path(arch).expanduser()
    local = folder.is_dir()
    if not local and (arch.startswith((".", "/", "~")) or arch.count("/") != 1):
        raise ClipWeightsError(f"clip.arch={arch!r}: no such folder, and not a hub id of the form org/name")
    try:
        if weights == "random":
            module = CLIPModel(CLIPConfig.from_pretrained(arch, local_files_only=local))
        else:
            module = CLIPModel.from_pretrained(arch, local_files_only=local)
    except OSError as e:
        raise ClipWeightsError(_network_message(arch, e, None if local else arch)) from None
    if local and not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        log.info("clip: %s has no tokenizer files; using the CLIP vocabulary bundled with open_clip", folder)
        tokenizer = offline_clip_tokenizer()
    else:
        try:
            tokenizer = CLIPTokenizer.from_pretrained(arch, local_files_only=local)
        except OSError as e:
            raise ClipWeightsError(_network_message(f"the tokenizer of {arch}", e, None if local else arch)) from None
        check_tokenizer(tokenizer, arch)
    mean, std = _hf_normalisation(folder if local else None)
    return HFClipModel(module, tokenizer, arch, mean, std, device)


def _hf_normalisation(folder: Path | None):
    """image_mean/image_std from a folder's preprocessor_config.json, else OpenAI's (what CLIP models use)."""
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        cfg = json.loads((folder / "preprocessor_config.json").read_text())
        return cfg.get("image_mean", OPENAI_MEAN), cfg.get("image_std", OPENAI_STD)
    return OPENAI_MEAN, OPENAI_STD


# ---------------------------------------------------------------------------------------- entry point
def build_clip(cfg, device: str | torch.device = "cpu") -> ClipModel:
    """Build the frozen CLIP of ``cfg`` (a ClipConfig: backend, arch, weights) on ``device``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cfg.backend == "open_clip":
        return build_open_clip(cfg.arch, cfg.weights, device)
    if cfg.backend == "transformers":
        return build_hf_clip(cfg.arch, cfg.weights, device)
    raise ValueError(f"clip.backend={cfg.backend!r} is not open_clip or transformers")
