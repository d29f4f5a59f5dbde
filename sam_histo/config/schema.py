"""The typed configuration: one dataclass per section, with defaults. YAML files list only the differences
from these defaults; the loader runs the cross-field rules of ``rules.py`` once, after overrides."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from sam_histo.config.datasets import KINDS
from sam_histo.config.jobs import ClipConfig, EmConfig, EmSweepConfig, HeatmapConfig, ZeroShotConfig  # noqa: F401 (re-exported)


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
    # BCSS only: codes scored as nothing (the ignore id, like outside_roi), never swept into "other": exclude
    # (7, regions the annotators excluded) and undetermined (15, tissue they could not call).
    ignore_codes: list[str] = field(default_factory=lambda: ["exclude", "undetermined"])
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
class LoraConfig:  # LoRA adapters (models/lora.py) on the linear layers of targets; base weights frozen
    rank: int = 0  # 0 = no adapters
    alpha: float = 16.0  # the update is (alpha / rank) * B A
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["encoder_attn"])  # encoder_attn, encoder_mlp, decoder


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
    lora: LoraConfig = field(default_factory=LoraConfig)
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
    # probability of a lower-resolution look at the same grid (downscaled by s, then back; s drawn from the
    # range): what a 20x tile resampled to a 40x model's target_mpp looks like
    downscale: float = 0.0
    downscale_range: list[float] = field(default_factory=lambda: [0.5, 1.0])
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
    stages: Union[Literal["all", "none", "lora"], list[int]] = "none"  # lora: adapters only, no whole stage
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
    validate_start: bool = True  # validate the starting weights first (epoch "start"); best may be the start
    # WiSE-FT: (1 - a) * start + a * best, each a validated on val, the best kept as checkpoints/best; [] = off
    wise_alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])


@dataclass
class EvalConfig:
    split: Literal["train", "val", "test"] = "val"
    window_overlap: float = 0.25
    batch_size: int = 4
    tta: bool = False  # semantic: every window also predicted flipped (3 flips), probabilities averaged; 4x cost
    # semantic: the image is also predicted at these relative scales (0.8: shrunk to 80 %), the probabilities
    # brought back to its grid and averaged; [1.0] = once. Cost: the sum of the squared scales.
    tta_scales: list[float] = field(default_factory=lambda: [1.0])
    # semantic: every connected region of one class under this many square microns takes the class that
    # borders it most (specks dropped, small holes filled); 0 = off. Pixels are converted at the image's
    # microns per pixel, else model.target_mpp, else data.mpp.
    min_region_um2: float = 0.0
    prompt_seed: int = 1234  # validation prompts are a function of (prompt_seed, sample index)
    max_objects: int = 256  # prompted validation: objects prompted per tile (all components up to this)
    instances: bool = False  # also instance metrics (adapted Rand, matched F1): vesicle volumes
    overlays: int = 3  # best and worst images drawn in the report (0: none)
    overlay_class: Optional[str] = None  # class that ranks them; default the rarest class in the split
    # `sam-histo validate`: one table of centroid, points5, box, box+neg (each optionally +tta); [] = usual
    protocols: list[str] = field(default_factory=list)


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

