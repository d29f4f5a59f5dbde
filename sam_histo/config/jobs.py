"""Config sections of the jobs around training: CLIP mask classification, the zero-shot run, heatmaps and
EM vesicle instances (re-exported by ``schema.py``, whose ``Config`` holds them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union


@dataclass
class ClipConfig:
    """CLIP mask classification (sam_histo.models.clip, sam_histo.zeroshot.classify / clip_head).

    backend open_clip: ``arch`` is an open_clip architecture name (ViT-B-32, ...), ``tiny`` (a small
    random-init config for tests), ``hf-hub:org/name`` or ``local-dir:/folder`` (config and weights
    together; ``weights`` is then ignored). ``weights``: null = random init, a local file (.pt, .bin,
    .safetensors), or an open_clip pretrained tag (needs the network or its cache).
    backend transformers: ``arch`` is a local folder or hub id of a CLIPModel, or ``tiny``; ``weights``
    null = the weights in that folder, ``random`` = its config with random init.
    """

    backend: Literal["open_clip", "transformers"] = "open_clip"
    arch: str = "ViT-B-32"
    weights: Optional[str] = None
    # Prompt file; empty = prompts/<data.dataset>.json of the project.
    prompts: str = ""
    # Square crop around each mask's bounding box: side = max(h, w) * (1 + 2 * crop_margin), at least
    # crop_min_side pixels, padded with the model's mean colour outside the image.
    crop_margin: float = 0.25
    crop_min_side: int = 32
    blank_background: bool = False  # pixels outside the mask become the model's mean colour
    batch_size: int = 64
    logit_scale: Optional[float] = None  # null = the model's own (exp of its learned log scale)
    # Text-embedding cache (one file per model and prompt-file hash); empty = memory only.
    cache_dir: str = "~/.cache/sam_histo/clip_text"
    # Linear head on image embeddings, initialised from the text classifier, tuned on ground-truth masks.
    head_lr: float = 1e-3
    head_epochs: int = 50
    head_weight_decay: float = 0.0
    head_batch_size: int = 256
    head_balanced: bool = True  # inverse-frequency class weights in the head's cross-entropy
    # WiSE-FT interpolation: weights = (1 - alpha) * zero-shot + alpha * tuned (0 = pure zero-shot).
    head_alpha: float = 0.5
    # A saved head (clip_head.safetensors) to classify with instead of the zero-shot text classifier.
    head: str = ""
    # After SAM2 training, tune the head on the training split's ground-truth masks and save
    # <run>/clip_head.safetensors with <run>/clip_head_metrics.json (sam_histo.zeroshot.train_head).
    train_head: bool = False
    # Ground-truth masks for the head and for CLIP accuracy: components smaller than this are skipped,
    # and at most this many (largest first) per image.
    min_mask_area: int = 16
    max_masks_per_image: int = 64


@dataclass
class ZeroShotConfig:
    """SAM2 automatic masks -> CLIP class per mask -> one class map (sam_histo.zeroshot.class_map)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    crop_n_layers: int = 0
    box_nms_thresh: float = 0.7
    min_mask_area: int = 0  # automatic masks with fewer pixels are dropped before classification
    # Overlaps: score = the mask with the highest (mask score x class confidence) wins a pixel;
    # area = the smallest covering mask wins (details on top of the regions around them).
    overlap: Literal["score", "area"] = "score"
    min_class_prob: float = 0.0  # masks whose top class probability is lower are left unassigned
    # Class id for pixels no mask covers: a class name; empty = "background" if it is a class, else the
    # ignore id.
    unassigned: str = ""


@dataclass
class HeatmapConfig:
    """Binary heatmaps of one class over a large image or the tiles of a slide (sam_histo.infer.heatmap).

    The steps run in this order, each optional, and the validator and predict report the effect of each:
    ``zscore`` per-slide z-scores of the class scores; ``threshold`` a fixed number (in z units when
    ``zscore`` is on, else a probability in [0, 1]) or ``auto-iou`` / ``auto-f1``: the threshold that
    maximises that metric on the labelled validation split (predict reuses the value the validator chose);
    ``average`` how the auto rule scores a threshold (``dataset``: pooled pixels, where IoU and F1 pick
    the same threshold; ``slide``: mean over slides); ``min_size`` drops components of fewer elements
    (pixels, or tiles of a tile-level heatmap), ``fill_holes`` then fills enclosed holes.
    """

    class_name: Optional[str] = None  # null = no heatmap
    zscore: bool = True
    threshold: Union[float, Literal["auto-iou", "auto-f1"]] = "auto-iou"
    average: Literal["dataset", "slide"] = "dataset"
    candidates: int = 256  # auto rule: thresholds tried (quantiles of the pooled scores)
    min_size: int = 0
    fill_holes: bool = True
    connectivity: int = 1  # 1 = edge neighbours, 2 = edges and corners


@dataclass
class EmSweepConfig:
    """The decoding grid ``sam-histo em sweep`` tries on the validation part (every combination)."""

    mask_threshold: list[float] = field(default_factory=lambda: [-1.0, 0.0, 1.0])
    iou_thresh: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.7])
    stability_thresh: list[float] = field(default_factory=lambda: [0.0, 0.7, 0.85])
    min_size: list[int] = field(default_factory=lambda: [5, 15, 30])


@dataclass
class EmConfig:
    """EM vesicle instances in 3-D (sam_histo.em.volume, sam_histo.em).

    Each z-slice: a grid of ``points_per_side``^2 single-point prompts through the prompted decoder (optionally
    averaged over flip / rot90 views, ``tta``), candidates filtered by predicted IoU, stability and object
    score, mask-IoU non-maximum suppression, then a 2-D instance map (slice pixels below ``min_size`` are
    dropped). 3-D: ``overlap`` links instances of neighbouring slices whose overlap reaches ``link_overlap``;
    ``video`` propagates each instance not yet covered by a track (IoU below ``merge_iou`` on its slice) through z
    with SAM2's video predictor and merges tracks whose 3-D IoU reaches ``merge_iou``. Overlap =
    |A & B| / min(|A|, |B|): the small end cap of a vesicle joins the slice next to it, which its IoU with that
    slice would not; the video linker uses IoU, so a track that swells over a neighbour does not swallow it. Thresholds on logits (``mask_threshold``, ``obj_score_thresh``) are in
    logit units; the others in [0, 1].
    """

    points_per_side: int = 32
    points_per_batch: int = 64  # prompts per decoder call (memory: batch x 3 x H x W floats)
    multimask: bool = True  # three candidates per point (as SAM2's automatic generator), else one
    mask_threshold: float = 0.0
    iou_thresh: float = 0.5  # predicted IoU must exceed it
    stability_thresh: float = 0.8  # IoU of the masks at mask_threshold +- stability_offset, at least this
    stability_offset: float = 1.0
    obj_score_thresh: float = 0.0  # object-score logit must exceed it (SAM2: > 0 = an object is there)
    nms_thresh: float = 0.5  # mask IoU with a kept mask above this suppresses (acts below 0.5, decode.py)
    min_size: int = 15  # pixels of a slice instance (after overlaps are resolved)
    max_size: int = 0  # pixels; larger slice candidates are dropped (0: no limit)
    linker: Literal["overlap", "video"] = "overlap"
    link_overlap: float = 0.5
    merge_iou: float = 0.5  # video linker
    link_gap: int = 1  # overlap linker: slices an object may be missing from between two links
    min_voxels: int = 0  # 3-D objects with fewer voxels are dropped
    tta: bool = False
    tta_views: list[str] = field(default_factory=lambda: ["hflip", "vflip", "rot90"])
    sweep: EmSweepConfig = field(default_factory=EmSweepConfig)
