"""The typed configuration: one dataclass per section, with defaults. YAML files list only the differences
from these defaults; the loader runs the cross-field rules of ``rules.py`` once, after overrides."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from sam_histo.config.datasets import KINDS


@dataclass
class TissueConfig:
    """HSV tissue detection (FIELD_NOTES: saturation > 15, value < 240, close then open with 5x5)."""

    sat_min: int = 15
    val_max: int = 240
    kernel: int = 5


@dataclass
class DataConfig:
    dataset: Literal[tuple(KINDS)] = "bcss"  # config/datasets.py: the registered kinds
    root: str = ""
    # Trained class names in id order. For BCSS the ids start at 1 (id 0 is outside_roi, the ignore index);
    # for LGG and vesicles id 0 is background and is a real class.
    classes: list[str] = field(default_factory=list)
    # BCSS only: trained class -> list of BCSS code names (gtruth_codes.tsv) grouped into it.
    grouping: dict[str, list[str]] = field(default_factory=dict)
    tile_size: int = 1024
    tile_stride: int = 1024
    # random (by slide or group), institute (BCSS: TCGA sites), z (volumes), files (splits/*.txt: folder, coco)
    split: Literal["random", "institute", "z", "files"] = "random"
    val_fraction: float = 0.15
    test_fraction: float = 0.0
    # BCSS institute split: TCGA site codes (e.g. "OL", "LL") for each held-out split.
    val_sites: list[str] = field(default_factory=list)
    test_sites: list[str] = field(default_factory=list)
    split_seed: int = 0  # seed of the random split by slide
    on_error: Literal["raise", "skip"] = "raise"
    tissue: TissueConfig = field(default_factory=TissueConfig)
    # Where derived files go (BCSS tile index, LGG generated crop masks); "" = <root>/.sam_histo_cache.
    cache_dir: str = ""
    # Decoded images (BCSS, folder; data/io/decoded.py): memmap | memory (an LRU of decode_cache_mb) | none.
    decode_cache: Literal["memmap", "memory", "none"] = "memmap"
    decode_cache_mb: int = 1024
    # Folder / COCO (data/folder.py, data/io/coco.py): sub-folders of data.root ("" = images|img and
    # masks|labels|labelcol); class -> mask value(s) (default value = id; 0/v binary masks: v = class 1);
    # the ignored mask value; the regex whose first group is a file's split group ("" = its stem).
    image_dir: str = ""
    mask_dir: str = ""
    mask_values: dict[str, Union[int, list[int]]] = field(default_factory=dict)
    ignore_value: Optional[int] = None
    group_regex: str = ""
    annotations: str = "annotations.json"  # COCO instances JSON, relative to data.root or absolute
    ignore_class: str = ""  # kind dataset (sam_histo.train on your Datasets): the ignored class's name
    mpp: Optional[float] = None  # um/px of images whose name and TIFF tags give none (data/io/resolution.py)
    mpp_table: str = ""  # CSV/TSV with columns file,mpp; wins over the name, the TIFF tags and data.mpp
    # Vesicle volumes.
    volume: str = "volume.h5"
    labels: str = "labels.h5"
    dataset_key: str = "main"
    label_key: str = "main"


@dataclass
class ClassWeightConfig:
    power: float = 1.0  # weight ~ (1 / frequency) ** power
    clip: list[float] = field(default_factory=lambda: [0.1, 20.0])  # before normalising to mean 1
    override: dict[str, float] = field(default_factory=dict)


@dataclass
class SamplingConfig:
    # none: every image once per epoch; auto: rates from the statistics so each class shows up in a
    # comparable share of samples; manual: the rates below (rarest class of an image decides its rate).
    oversample: Literal["none", "auto", "manual"] = "auto"
    rates: dict[str, float] = field(default_factory=dict)
    max_rate: float = 20.0
    # Samples drawn per epoch over all processes (steps = iter_per_epoch / (batch_size * processes));
    # None = the sum of the image rates (every image once when oversample=none).
    iter_per_epoch: Optional[int] = None
    class_weights: ClassWeightConfig = field(default_factory=ClassWeightConfig)


@dataclass
class PromptConfig:
    n_pos: int = 1
    n_neg: int = 0
    p_box: float = 0.5  # share of objects prompted with a box (the rest with points)
    box_noise: float = 0.1  # std of box-corner noise as a fraction of the box side
    max_objects: int = 16  # per image and step
    min_area: int = 16  # components smaller than this get no prompt
    exclude: list[str] = field(default_factory=lambda: ["background"])  # classes that get no prompts
    # Training only: this many extra positive clicks per image on pixels of the excluded classes (or, with
    # instances, on no instance), each with an empty target. They get only the object-score loss, which
    # learns to say "nothing here" for a click that misses every object (the EM grid decoding uses it).
    n_background: int = 0


@dataclass
class ModelConfig:
    # A packaged sam2 config name (sam2.1_hiera_t, sam2.1_hiera_s, sam2.1_hiera_b+, sam2.1_hiera_l; short
    # forms hiera_t ... and sam2_hiera_* for SAM 2.0), a named small config for tests (tiny), or a path to
    # a sam2 YAML.
    arch: str = "sam2.1_hiera_t"
    image_size: int = 1024  # any multiple of 32; feature sizes follow
    # A name from third_party/manifest.yaml (sam2.1_hiera_tiny, hiera_t, ...; fetched into cache_dir by
    # `sam-histo fetch-weights NAME`) or a path to a .pt ({"model": state_dict}) / .safetensors file.
    # None: random initialisation.
    checkpoint: Optional[str] = None
    strict: bool = True  # every key must match; false loads what fits (shapes must still agree)
    cache_dir: Optional[str] = None  # default $SAM_HISTO_CACHE or ~/.cache/sam_histo
    # Extra overrides of the sam2 YAML, Hydra spelling: "key=value" changes, "++key=value" adds.
    overrides: list[str] = field(default_factory=list)
    mode: Literal["semantic", "prompted"] = "semantic"
    multimask: bool = True  # prompted mode: 3 masks per prompt (the best one is trained) or 1
    target_mpp: Optional[float] = None  # um/px the model works at; train, validate, predict resample to it


@dataclass
class StainConfig:
    """Stain normalisation of H&E tiles to a reference (sam_histo/stain)."""

    method: Literal["none", "macenko", "reinhard"] = "none"
    reference: Optional[str] = None  # an RGB tile, or a folder whose tiles are pooled
    # For tiles with too little stain (blank, black, one colour, pen): Reinhard on their tissue pixels
    # (the input when even that is impossible) or the input unchanged. Every fallback is counted.
    fallback: Literal["reinhard", "identity"] = "reinhard"
    io: float = 240.0  # Macenko background intensity Io
    alpha: float = 1.0  # Macenko angular percentile (stain directions at alpha and 100 - alpha)
    beta: float = 0.15  # Macenko OD threshold: pixels below it in any channel are background
    min_stained_pixels: int = 64  # fewer stained pixels than this -> fallback


@dataclass
class AugmentConfig:
    """Train-time augmentation (sam_histo/augment.py); probabilities are per sample, 0 disables."""

    flip: float = 0.5  # horizontal and vertical flip, each with this probability
    rot90: float = 0.5
    affine: float = 0.0
    affine_scale: float = 0.1  # zoom in 1 +- this
    affine_rotate: float = 15.0  # degrees, +-
    affine_translate: float = 0.05  # fraction of the side, +-
    elastic: float = 0.0
    elastic_alpha: float = 30.0
    elastic_sigma: float = 4.0
    hed: float = 0.0  # probability of HED jitter (H&E only)
    hed_alpha: float = 0.3  # per-stain scale in 1 +- alpha
    hed_beta: float = 0.3  # per-stain shift in +- beta, optical-density units
    macenko: float = 0.0  # probability of the Macenko-space stain perturbation (H&E only)
    macenko_alpha: float = 0.2  # concentration scale in 1 +- alpha
    macenko_beta: float = 0.2  # concentration shift in +- beta, optical-density units
    macenko_sigma: float = 0.05  # std of the noise added to each unit stain vector
    brightness_contrast: float = 0.0  # probability (EM: the intensity shift and contrast)
    brightness: float = 0.2  # +- fraction of the maximum
    contrast: float = 0.2  # +- fraction
    blur: float = 0.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    noise: float = 0.0  # Gaussian noise probability
    noise_std: list[float] = field(default_factory=lambda: [0.02, 0.08])  # fraction of 255
    cutout: float = 0.0  # cutout probability
    cutout_holes: int = 3
    cutout_size: float = 0.1  # hole side as a fraction of the image side
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])  # relative resolution s: zoom 1/s


@dataclass
class PhaseConfig:
    """One unfreeze phase: from ``start_epoch`` on, these Hiera stages train at this lr."""

    start_epoch: int = 0
    stages: Union[Literal["all", "none"], list[int]] = "none"
    lr: float = 1e-4
    warmup_steps: int = 0
    min_lr: float = 1e-6


# The terms of SAM2's prompted loss, in the order of train.loss.weights.
LOSS_KEYS = ("mask", "dice", "iou", "class")


@dataclass
class LossConfig:
    # Prompted mode (SAM2's recipe): weights of focal, dice, IoU-prediction MSE and object-score losses.
    weights: dict[str, float] = field(
        default_factory=lambda: {"mask": 20.0, "dice": 1.0, "iou": 1.0, "class": 1.0}
    )
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # Semantic mode.
    supervise_all_iou: bool = True  # IoU regression on every candidate mask (sam2.1 training configs)
    # Semantic mode.
    semantic: Literal["ce", "focal"] = "ce"
    semantic_dice: float = 1.0


@dataclass
class EarlyStopConfig:
    # The macro per-class metric (over classes present in the ground truth), never a binary tissue one.
    metric: Literal["dice", "iou", "recall", "precision"] = "dice"
    patience: int = 10  # validations without an improvement of min_delta before stopping; 0 = never stop
    min_delta: float = 0.001


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 4
    grad_accum: int = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    num_workers: int = 2
    weight_decay: float = 0.02
    grad_clip: float = 1.0
    layer_decay: float = 0.9
    train_decoder: bool = True
    train_prompt_encoder: bool = True
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    val_every: int = 1
    checkpoint_every_steps: int = 500  # also at the end of every epoch; 0 = only there
    keep_checkpoints: int = 2  # step checkpoints kept (best/ is kept apart)
    resume: str = "auto"  # auto (the run folder's latest) | never | path to a checkpoint folder
    max_nonfinite: int = 10  # this many non-finite losses or gradients in a row stop the run
    log_every: int = 10  # optimizer steps between train log lines
    # Signals that make the run write a checkpoint at the next step and exit 0 (SLURM preemption).
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class EvalConfig:
    split: Literal["train", "val", "test"] = "val"
    window_overlap: float = 0.25
    batch_size: int = 4
    prompt_seed: int = 1234  # validation prompts are a function of (prompt_seed, sample index)
    max_objects: int = 256  # prompted validation: objects prompted per tile (all components up to this)
    instances: bool = False  # also instance metrics (adapted Rand, matched F1): vesicle volumes
    overlays: int = 3  # best and worst images drawn in the report (0: none)
    overlay_class: Optional[str] = None  # class that ranks them; default the rarest class in the split


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


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stain: StainConfig = field(default_factory=StainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    heatmap: HeatmapConfig = field(default_factory=HeatmapConfig)
    em: EmConfig = field(default_factory=EmConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

