"""CLIP classification of masks: the prompt-ensemble text classifier, the linear head, per-mask probabilities.

The text classifier follows the zero-shot ensemble of CLIP / open_clip (``build_zero_shot_classifier``) and
CONCH: every synonym in every template is encoded, each embedding L2-normalised, the class mean taken and
renormalised. Class embeddings are cached per (model name, prompt-file sha256) in memory and on disk.
A :class:`ClipHead` turns image embeddings into class logits, ``logit_scale * e @ W.T + b``; it starts as the
text classifier (W = text embeddings, b = 0) and may hold tuned weights mixed WiSE-FT style (clip_head.py).
Works with any :class:`sam_histo.models.clip.ClipModel`; imports neither open_clip nor transformers.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sam_histo.files import atomic_path
from sam_histo.zeroshot.mask_crops import as_mask_stack, mask_crops
from sam_histo.zeroshot.text_prompts import PromptSet

log = logging.getLogger(__name__)

# (model name, prompt sha256) -> {class name: unit vector [D]}; lives as long as the process.
_TEXT_CACHE: dict[tuple[str, str], dict[str, torch.Tensor]] = {}


# ----------------------------------------------------------------------------------- text classifier
def ensemble(text_embeddings: torch.Tensor) -> torch.Tensor:
    """[T, D] embeddings of one class's prompts -> unit [D]: normalise each, average, renormalise."""
    return F.normalize(F.normalize(text_embeddings.float(), dim=-1).mean(dim=0), dim=-1)


def text_classifier(model, prompts: PromptSet, class_names: Sequence[str],
                    cache_dir: str | Path | None = None) -> torch.Tensor:
    """float32 [C, D] unit rows, one per class in ``class_names`` order (each must be in ``prompts``)."""
    prompts.check_classes(class_names)
    table = class_text_embeddings(model, prompts, cache_dir)
    return torch.stack([table[c] for c in class_names])


def class_text_embeddings(model, prompts: PromptSet, cache_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Every class of ``prompts`` -> its ensemble embedding; memory cache, then disk cache, then the model."""
    key = (model.name, prompts.sha256)
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key]
    path = _cache_path(cache_dir, *key)
    table = _read_cache(path, *key) if path is not None else None
    if table is None:
        texts = {c: prompts.texts(c) for c in prompts.class_names}
        flat = [t for c in prompts.class_names for t in texts[c]]
        emb = model.encode_text(flat)
        table, start = {}, 0
        for c in prompts.class_names:
            table[c] = ensemble(emb[start:start + len(texts[c])])
            start += len(texts[c])
        if path is not None:
            _write_cache(path, table, model.name, prompts)
    _TEXT_CACHE[key] = table
    return table


def clear_text_cache() -> None:
    """Forget the in-memory text embeddings (the disk cache stays)."""
    _TEXT_CACHE.clear()


def _cache_path(cache_dir, model_name: str, sha: str) -> Path | None:
    if not cache_dir:
        return None
    tag = hashlib.sha256(model_name.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"text_{tag}_{sha[:16]}.safetensors"


def _read_cache(path: Path, model_name: str, sha: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("model") != model_name or meta.get("prompts_sha256") != sha:
                return None
            names = json.loads(meta["classes"])
            return {n: f.get_tensor(f"class_{i}") for i, n in enumerate(names)}
    except Exception as e:  # a truncated or foreign file: recompute and overwrite it
        log.warning("text cache %s unreadable (%s); recomputing", path, e)
        return None


def _write_cache(path: Path, table: dict[str, torch.Tensor], model_name: str, prompts: PromptSet) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace (readers never see half a file)."""
    from safetensors.torch import save_file

    names = list(table)
    meta = {"model": model_name, "prompts_sha256": prompts.sha256, "prompt_file": prompts.path,
            "classes": json.dumps(names)}
    with atomic_path(path) as tmp:
        save_file({f"class_{i}": table[n].contiguous() for i, n in enumerate(names)}, str(tmp), metadata=meta)


# ---------------------------------------------------------------------------------------------- head
class ClipHead(torch.nn.Module):
    """Linear classifier on unit image embeddings [N, D] -> logits [N, C].

    weight = (1 - alpha) * zs_weight + alpha * ft_weight, bias = alpha * ft_bias; logits =
    logit_scale * normalize(e) @ weight.T + bias. ``class_names`` name the C columns. Zero-shot: alpha 0.
    """

    def __init__(self, zs_weight: torch.Tensor, class_names: Sequence[str], logit_scale: float,
                 model_name: str = "", prompts_sha256: str = "", alpha: float = 0.0,
                 ft_weight: torch.Tensor | None = None, ft_bias: torch.Tensor | None = None):
        super().__init__()
        zs = zs_weight.detach().float().clone()
        if zs.ndim != 2 or zs.shape[0] != len(class_names):
            raise ValueError(f"zs_weight {tuple(zs.shape)} must be [C={len(class_names)}, D]")
        self.register_buffer("zs_weight", zs)
        self.ft_weight = torch.nn.Parameter(zs.clone() if ft_weight is None else ft_weight.detach().float().clone())
        self.ft_bias = torch.nn.Parameter(torch.zeros(len(zs)) if ft_bias is None else ft_bias.detach().float().clone())
        self.class_names = list(class_names)
        self.logit_scale = float(logit_scale)
        self.model_name = model_name
        self.prompts_sha256 = prompts_sha256
        self.alpha = float(alpha)

    def weights(self, alpha: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [C, D], bias [C]) at ``alpha`` (default: the head's own)."""
        a = self.alpha if alpha is None else float(alpha)
        return (1 - a) * self.zs_weight + a * self.ft_weight, a * self.ft_bias

    def forward(self, embeddings: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
        weight, bias = self.weights(alpha)
        return self.logit_scale * F.normalize(embeddings.float(), dim=-1) @ weight.T + bias

    @torch.no_grad()
    def probabilities(self, embeddings: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
        """Softmax over classes: float32 [N, C], rows sum to 1."""
        return self.forward(embeddings, alpha).softmax(dim=-1)

    def save(self, path: str | Path) -> Path:
        """safetensors with zero-shot and tuned weights (alpha can change at load) and the metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"class_names": json.dumps(self.class_names), "logit_scale": repr(self.logit_scale),
                "alpha": repr(self.alpha), "model": self.model_name, "prompts_sha256": self.prompts_sha256}
        tensors = {"zs_weight": self.zs_weight, "ft_weight": self.ft_weight.detach(), "ft_bias": self.ft_bias.detach()}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path, expect_model: str | None = None) -> "ClipHead":
        """Read ``save``'s file; with ``expect_model``, refuse a head trained on another CLIP's embeddings."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in ("zs_weight", "ft_weight", "ft_bias")}
        if expect_model is not None and meta.get("model") != expect_model:
            raise ValueError(f"{path}: head was trained on CLIP {meta.get('model')!r}, not {expect_model!r}; "
                             "retrain it or set clip.arch/clip.weights to the model it was trained on")
        return cls(t["zs_weight"], json.loads(meta["class_names"]), float(meta["logit_scale"]),
                   meta.get("model", ""), meta.get("prompts_sha256", ""), float(meta["alpha"]),
                   t["ft_weight"], t["ft_bias"])


def zero_shot_head(model, prompts: PromptSet, class_names: Sequence[str], clip_cfg) -> ClipHead:
    """The head equal to the text classifier; logit scale from ``clip_cfg.logit_scale`` or the model."""
    weights = text_classifier(model, prompts, class_names, clip_cfg.cache_dir)
    scale = clip_cfg.logit_scale if clip_cfg.logit_scale is not None else model.logit_scale
    return ClipHead(weights, class_names, scale, model.name, prompts.sha256)


# --------------------------------------------------------------------------------- masks -> classes
class MaskClassifier:
    """CLIP + head + crop settings: masks of one image -> class probabilities, in batches.

    ``clip_cfg`` is the ClipConfig (crop_margin, crop_min_side, blank_background, batch_size).
    """

    def __init__(self, model, head: ClipHead, clip_cfg):
        self.model, self.head, self.cfg = model, head, clip_cfg

    @property
    def class_names(self) -> list[str]:
        return self.head.class_names

    def crops(self, image: np.ndarray, masks) -> np.ndarray:
        """uint8 [K, S, S, 3] crops at the model's input size."""
        c = self.cfg
        return mask_crops(image, masks, self.model.image_size, margin=c.crop_margin, min_side=c.crop_min_side,
                          blank_background=c.blank_background, fill=self.model.fill_rgb)

    def embed(self, image: np.ndarray, masks) -> torch.Tensor:
        """Unit image embeddings float32 [K, D] of the masks' crops."""
        masks = as_mask_stack(masks, image.shape[:2])
        out = []
        for i in range(0, len(masks), self.cfg.batch_size):  # crops of one batch at a time bound the memory
            out.append(self.model.encode_image(self.crops(image, masks[i:i + self.cfg.batch_size]),
                                               batch_size=self.cfg.batch_size))
        return torch.cat(out) if out else torch.zeros(0, self.model.embed_dim)

    def probabilities(self, image: np.ndarray, masks) -> np.ndarray:
        """float32 [K, C] class probabilities (columns = ``class_names``) of K masks of one image."""
        emb = self.embed(image, masks)
        return self.head.probabilities(emb.to(self.head.zs_weight.device)).cpu().numpy()


def build_mask_classifier(clip_cfg, class_names: Sequence[str], prompt_path: str | Path,
                          device: str | torch.device = "cpu", head_path: str | Path | None = None) -> MaskClassifier:
    """Build CLIP from ``clip_cfg``, then the zero-shot head of ``prompt_path`` or a saved head.

    ``prompt_path``: usually ``text_prompts.prompt_file_for(cfg.clip.prompts, cfg.data.dataset)``.
    """
    from sam_histo.zeroshot.text_prompts import load_prompts
    from sam_histo.models.clip import build_clip

    model = build_clip(clip_cfg, device)
    if head_path is not None:
        head = ClipHead.load(head_path, expect_model=model.name)
        if head.class_names != list(class_names):
            raise ValueError(f"{head_path}: head classes {head.class_names} differ from {list(class_names)}")
    else:
        head = zero_shot_head(model, load_prompts(prompt_path), class_names, clip_cfg)
    return MaskClassifier(model, head, clip_cfg)
