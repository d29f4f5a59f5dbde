"""SAM2 for image training and evaluation: the only module of sam_histo that imports sam2.

``build_sam(cfg.model, num_classes)`` builds a :class:`SamHisto` from a packaged config name
(sam2.1_hiera_t/s/b+/l, short forms like hiera_t), a sam2 YAML path, or the small ``tiny`` config, at any
``image_size`` that is a multiple of 32, and loads ``cfg.checkpoint`` (a manifest name or a path). The
trainable forward (``encode`` + ``forward_prompted``) follows ``SAM2ImagePredictor`` step for step, so the
two agree to float rounding for the same weights and prompts; ``forward_semantic`` runs the class-token head.

Coordinates: prompts are (x, y) pixels of the image as given. Pass ``orig_hw=(H, W)`` of that image to
``forward_prompted`` (as the predictor does with the image it was set with); leave it None when the prompts
are already in the model's S x S input frame (S = ``image_size``); ``logits`` then come out at (H, W) or
(S, S) respectively.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

import sam2.sam2_video_predictor as _video_module
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_image_predictor import SAM2ImagePredictor

from sam_histo.config import ModelConfig
from sam_histo.data.types import Prompts
from sam_histo.models import archs
from sam_histo.models.semantic import ClassTokenHead
from sam_histo.models.stages import MEMORY_PREFIXES
from sam_histo.models.weights import is_wrapped, load_into, read_state_dict, unwrap_sam

# ImageNet statistics, as SAM2Transforms normalises.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)
# What sam2's build_sam2 adds by default (dynamic fallback to the best multimask output when the single
# mask is unstable; eval mode only), so zero-shot results match upstream usage.
_IMAGE_POSTPROCESSING = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)
# build_sam2_video_predictor's extras, except fill_hole_area: it needs sam2's optional CUDA extension,
# which setup.sh does not build (every call would warn and skip).
_VIDEO_OVERRIDES = (
    "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=0",
)


class ImageFeatures(NamedTuple):
    """image_embed (B, D, S/16, S/16) with ``no_mem_embed`` added; high_res_feats [(B, D/8, S/4, S/4),
    (B, D/4, S/8, S/8)] already projected by the decoder's conv_s0 / conv_s1."""

    image_embed: torch.Tensor
    high_res_feats: list[torch.Tensor]


class PromptedOutput(NamedTuple):
    """N objects over the batch, M = 3 masks (multimask) or 1. low_res_logits (N, M, S/4, S/4) float
    (not clamped, unlike the predictor's returned copy); logits (N, M, H, W) bilinear from them; iou_pred
    (N, M); object_score (N, 1) logits; image_index (N,) int64 into the batch; class_ids (N,) int64."""

    low_res_logits: torch.Tensor
    logits: torch.Tensor
    iou_pred: torch.Tensor
    object_score: torch.Tensor
    image_index: torch.Tensor
    class_ids: torch.Tensor


def to_pixels(images, size: int, device=None) -> torch.Tensor:
    """uint8 (B, H, W, 3) / (H, W, 3) numpy or tensor, or float (B, 3, H, W) in [0, 1] -> normalised float
    (B, 3, size, size), as SAM2Transforms: to [0, 1], bilinear antialiased resize, ImageNet mean/std."""
    if not isinstance(images, torch.Tensor):
        arr = np.asarray(images)
        # read-only arrays (e.g. from a decoded PNG) are copied: torch cannot wrap them safely
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    else:
        x = images
    if x.dtype == torch.uint8:
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (B, H, W, 3) or (H, W, 3), got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float().div(255)
    elif x.is_floating_point():
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"float images must be (B, 3, H, W) in [0, 1], got {tuple(x.shape)}")
        x = x.float()
    else:
        raise ValueError(f"images must be uint8 (B, H, W, 3) or float (B, 3, H, W), got dtype {x.dtype}")
    x = x.to(device) if device is not None else x
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def feat_sizes(image_size: int) -> list[tuple[int, int]]:
    """Backbone feature sizes at strides 4, 8, 16 (what SAM2ImagePredictor hard-codes for 1024)."""
    return [(image_size // 4,) * 2, (image_size // 8,) * 2, (image_size // 16,) * 2]


def _freeze_memory(sam: nn.Module) -> None:
    for name, p in sam.named_parameters():
        if name.startswith(MEMORY_PREFIXES):
            p.requires_grad_(False)


def _instantiate(cfg: ModelConfig, extra: Sequence[str]) -> tuple[SAM2Base, str]:
    spec = archs.resolve_arch(cfg.arch, cfg.image_size, [*extra, *cfg.overrides])
    tree = archs.load_yaml_with_overrides(spec)
    return instantiate(tree.model, _recursive_=True), spec.name


def _checkpoint_state(cfg: ModelConfig) -> Optional[dict]:
    if not cfg.checkpoint:
        return None
    from sam_histo.models.fetch import resolve_checkpoint
    from sam_histo.models.weights import release_folder

    bundle = release_folder(cfg.checkpoint)  # a release folder: its SAM2 weights (heads: start_from_release)
    return read_state_dict(bundle / "model.safetensors" if bundle else resolve_checkpoint(cfg.checkpoint, cfg.cache_dir))


def build_sam(cfg: ModelConfig, num_classes: Optional[int] = None) -> "SamHisto":
    """Build (and load ``cfg.checkpoint`` into) a SamHisto on the CPU. ``num_classes`` attaches the
    class-token head, initialised from the (loaded) decoder. Memory/video modules come frozen."""
    sam, name = _instantiate(cfg, _IMAGE_POSTPROCESSING)
    state = _checkpoint_state(cfg)
    if state is not None and not is_wrapped(state):  # an official SAM2 checkpoint
        load_into(sam, state, strict=cfg.strict, source=f"checkpoint {cfg.checkpoint}")
    head = None
    if num_classes:
        head = ClassTokenHead.from_decoder(sam.sam_mask_decoder, sam.sam_prompt_encoder, num_classes)
    model = SamHisto(sam, head, arch=name)
    if cfg.lora.rank:  # adapters after the official weights, before our own (which may hold adapters)
        from sam_histo.models.lora import add_lora, to_adapted_keys

        add_lora(model, cfg.lora)
        if state is not None and is_wrapped(state):
            state = to_adapted_keys(state, model.state_dict())
    if state is not None and is_wrapped(state):  # one of our own (fine-tuned) checkpoints
        load_into(model, state, strict=cfg.strict, source=f"checkpoint {cfg.checkpoint}")
    _freeze_memory(model.sam)
    return model


class SamHisto(nn.Module):
    """A SAM2Base (``.sam``) with a trainable image forward and an optional class-token head."""

    def __init__(self, sam: SAM2Base, semantic_head: Optional[ClassTokenHead] = None, arch: str = ""):
        super().__init__()
        self.sam = sam
        self.semantic_head = semantic_head
        self.arch = arch

    @property
    def image_size(self) -> int:
        return int(self.sam.image_size)

    @property
    def num_classes(self) -> Optional[int]:
        return self.semantic_head.num_classes if self.semantic_head is not None else None

    def preprocess(self, images) -> torch.Tensor:
        """See :func:`to_pixels`; the result is on the model's device."""
        return to_pixels(images, self.image_size, self.sam.device)

    def encode(self, pixels: torch.Tensor) -> ImageFeatures:
        """pixels (B, 3, S, S) normalised -> ImageFeatures (as SAM2ImagePredictor.set_image computes)."""
        out = self.sam.forward_image(pixels)
        levels = out["backbone_fpn"][-self.sam.num_feature_levels:]
        embed = levels[-1]
        if self.sam.directly_add_no_mem_embed:
            embed = embed + self.sam.no_mem_embed.view(1, -1, 1, 1)
        return ImageFeatures(embed, list(levels[:-1]))

    def forward(self, pixels: torch.Tensor, prompts: Optional[list[Prompts]] = None, **kwargs):
        """For DDP-wrapped training: encode, then ``forward_prompted`` (prompts given) or
        ``forward_semantic`` (prompts None). kwargs go to the chosen one."""
        feats = self.encode(pixels)
        if prompts is None:
            return self.forward_semantic(feats, **kwargs)
        return self.forward_prompted(feats, prompts, **kwargs)

    def forward_semantic(self, feats: ImageFeatures, out_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """Class logits (B, C, H, W) at ``out_size`` (default S x S), bilinear from stride 4."""
        if self.semantic_head is None:
            raise RuntimeError("this model has no class-token head: build it with build_sam(cfg, num_classes=C)")
        image_pe = self.sam.sam_prompt_encoder.get_dense_pe()
        low = self.semantic_head(feats.image_embed, feats.high_res_feats, image_pe)
        size = tuple(out_size) if out_size else (self.image_size, self.image_size)
        return F.interpolate(low, size=size, mode="bilinear", align_corners=False)

    def forward_prompted(
        self,
        feats: ImageFeatures,
        prompts: Sequence[Prompts],
        multimask: bool = True,
        orig_hw: Optional[tuple[int, int]] = None,
        mask_inputs: Optional[Sequence[torch.Tensor]] = None,
        use_points_with_box: bool = False,
    ) -> PromptedOutput:
        """Masks for every object of every image (``prompts[i]`` belongs to image i of ``feats``).

        Objects with ``has_box`` use their box (and, with ``use_points_with_box``, their points too); the
        others use their points (label -1 = padding). ``mask_inputs[i]`` (K_i, 1, S/4, S/4) are optional
        previous low-res logits for every object. Objects that share a prompt layout run in one decoder
        call, so the result equals the predictor's one-image-at-a-time calls. Differentiable.
        """
        if len(prompts) != feats.image_embed.shape[0]:
            raise ValueError(f"{len(prompts)} prompt sets for {feats.image_embed.shape[0]} images")
        if mask_inputs is not None and len(mask_inputs) != len(prompts):
            raise ValueError(f"{len(mask_inputs)} mask inputs for {len(prompts)} images")
        device = feats.image_embed.device
        tokens = self._prompt_tokens(prompts, orig_hw, use_points_with_box, device)
        masks_in = None
        if mask_inputs is not None:
            masks_in = torch.cat([torch.as_tensor(m, dtype=torch.float32, device=device) for m in mask_inputs])
        pieces, order = [], []
        for idx, coords, labels in tokens["groups"]:
            pieces.append(self._decode(feats, tokens["image_index"][idx], coords, labels,
                                       None if masks_in is None else masks_in[idx], multimask))
            order.append(idx)
        return self._assemble(pieces, order, tokens, multimask, orig_hw, device)

    def _prompt_tokens(self, prompts, orig_hw, with_points: bool, device) -> dict:
        """Group objects by token layout; coordinates scaled to the S x S frame as SAM2Transforms does."""
        s = float(self.image_size)
        per_object, image_index, class_ids = [], [], []
        for i, p in enumerate(prompts):
            pts = torch.as_tensor(np.asarray(p.points, dtype=np.float32), device=device)
            lab = torch.as_tensor(np.asarray(p.point_labels, dtype=np.int32), device=device)
            has_box = np.asarray(p.has_box, dtype=bool)
            boxes = None if p.boxes is None else torch.as_tensor(np.asarray(p.boxes, dtype=np.float32), device=device)
            for k in range(len(p)):
                c, l = pts[k], lab[k]
                if has_box[k]:
                    if boxes is None:
                        raise ValueError(f"prompts[{i}]: object {k} has has_box=True but boxes is None")
                    box_c = boxes[k].reshape(2, 2)
                    box_l = torch.tensor([2, 3], dtype=torch.int32, device=device)
                    c, l = (torch.cat([box_c, c]), torch.cat([box_l, l])) if with_points else (box_c, box_l)
                per_object.append((bool(has_box[k]), c, l))
                image_index.append(i)
            class_ids.append(torch.as_tensor(np.asarray(p.class_ids, dtype=np.int64)))
        groups: dict[tuple[bool, int], list[int]] = {}
        for n, (box, c, _) in enumerate(per_object):
            groups.setdefault((box, c.shape[0]), []).append(n)
        out = []
        for members in groups.values():
            coords = torch.stack([per_object[n][1] for n in members])
            if orig_hw is not None:  # the predictor's transform_coords: x / w * S, y / h * S
                coords = coords.clone()
                coords[..., 0] = coords[..., 0] / orig_hw[1]
                coords[..., 1] = coords[..., 1] / orig_hw[0]
                coords = coords * s
            labels = torch.stack([per_object[n][2] for n in members])
            out.append((torch.tensor(members, device=device), coords, labels))
        cls = torch.cat(class_ids).to(device) if class_ids else torch.zeros(0, dtype=torch.long, device=device)
        return {"groups": out, "image_index": torch.tensor(image_index, dtype=torch.long, device=device),
                "class_ids": cls, "n": len(per_object)}

    def _decode(self, feats, img_idx, coords, labels, mask_in, multimask):
        pe = self.sam.sam_prompt_encoder
        if mask_in is not None and tuple(mask_in.shape[-2:]) != tuple(pe.mask_input_size):
            raise ValueError(f"mask inputs must be (K, 1, {pe.mask_input_size[0]}, {pe.mask_input_size[1]}) "
                             f"low-res logits, got {tuple(mask_in.shape)}")
        sparse, dense = pe(points=(coords, labels), boxes=None, masks=mask_in)
        low, iou, _, obj = self.sam.sam_mask_decoder(
            image_embeddings=feats.image_embed[img_idx],
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=[f[img_idx] for f in feats.high_res_feats],
        )
        return low.float(), iou, obj

    def _assemble(self, pieces, order, tokens, multimask, orig_hw, device) -> PromptedOutput:
        s4 = self.image_size // 4
        size = tuple(orig_hw) if orig_hw is not None else (self.image_size, self.image_size)
        if not pieces:
            m = 3 if multimask else 1
            return PromptedOutput(torch.zeros(0, m, s4, s4, device=device), torch.zeros(0, m, *size, device=device),
                                  torch.zeros(0, m, device=device), torch.zeros(0, 1, device=device),
                                  tokens["image_index"], tokens["class_ids"])
        inv = torch.argsort(torch.cat(order))
        low, iou, obj = (torch.cat([p[j] for p in pieces])[inv] for j in range(3))
        logits = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
        return PromptedOutput(low, logits, iou, obj, tokens["image_index"], tokens["class_ids"])

    # ---------------------------------------------------------------- sam2 tools at this model's size
    def predictor(self, **kwargs) -> SAM2ImagePredictor:
        """SAM2ImagePredictor on ``self.sam`` with its feature sizes fixed for ``image_size``."""
        predictor = SAM2ImagePredictor(self.sam, **kwargs)
        predictor._bb_feat_sizes = feat_sizes(self.image_size)
        return predictor

    def automatic_mask_generator(self, **kwargs) -> SAM2AutomaticMaskGenerator:
        """SAM2AutomaticMaskGenerator at any size. Random-init models need ``pred_iou_thresh=0`` and
        ``stability_score_thresh=0`` to return masks; ``min_mask_region_area`` > 0 needs OpenCV."""
        generator = SAM2AutomaticMaskGenerator(self.sam, **kwargs)
        generator.predictor._bb_feat_sizes = feat_sizes(self.image_size)
        return generator


# --------------------------------------------------------------------------------------- video
def _memory_to_float32(module, args, kwargs):
    """The video predictor stores mask memories in bfloat16. When a frame's memory holds no float32 object
    pointers to promote them (tracking backwards from past the annotated frame), CPU memory attention fails
    with "mat1 and mat2 must have the same dtype". Cast memory and its position encoding to float32."""
    for key in ("memory", "memory_pos"):
        if isinstance(kwargs.get(key), torch.Tensor) and kwargs[key].dtype == torch.bfloat16:
            kwargs[key] = kwargs[key].float()
    return args, kwargs


def build_video_predictor(cfg: ModelConfig):
    """A ``SAM2VideoPredictor`` for ``cfg`` (same arch, size and checkpoint rules as build_sam; a SamHisto
    checkpoint contributes its SAM2 part). Feed it arrays with :func:`init_video_state`."""
    predictor, _ = _instantiate(cfg, _VIDEO_OVERRIDES)
    state = _checkpoint_state(cfg)
    if state is not None:
        load_into(predictor, unwrap_sam(state), strict=cfg.strict, source=f"checkpoint {cfg.checkpoint}")
    predictor.memory_attention.register_forward_pre_hook(_memory_to_float32, with_kwargs=True)
    return predictor.eval()


def init_video_state(predictor, frames, offload_video_to_cpu: bool = True, chunk: int = 16) -> dict:
    """``predictor.init_state`` for frames in memory instead of a folder of JPEGs (no lossy re-encoding).

    frames: (T, H, W) grey or (T, H, W, 3) RGB, uint8 or float in [0, 1]. They are normalised exactly as
    the predictor's own loader does (resize to S, ImageNet mean/std), ``chunk`` frames at a time.
    """
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W) or (T, H, W, 3), got {arr.shape}")
    height, width = arr.shape[1:3]
    size = predictor.image_size
    parts = []
    for start in range(0, len(arr), chunk):
        block = torch.as_tensor(arr[start:start + chunk])
        block = block if block.dtype == torch.uint8 else block.permute(0, 3, 1, 2).float()
        parts.append(to_pixels(block, size).cpu())
    images = torch.cat(parts)
    if not offload_video_to_cpu:
        images = images.to(predictor.device)

    def _loaded(**_):
        return images, height, width

    with mock.patch.object(_video_module, "load_video_frames", _loaded):
        return predictor.init_state(video_path="<frames in memory>", offload_video_to_cpu=offload_video_to_cpu)

