"""Cross-field rules of the configuration; each failure names the keys involved and the fix."""
from __future__ import annotations

import math

from sam_histo.config.datasets import dataset_kind
from sam_histo.config.errors import ConfigError, nearest
from sam_histo.config.schema import LOSS_KEYS, ClipConfig, Config, EmConfig, HeatmapConfig, ZeroShotConfig

# Test-time views of the EM pipeline (sam_histo.em.infer.VIEWS); the identity is always included.
EM_VIEWS = ("hflip", "vflip", "rot90", "rot180", "rot270")
# Prompt protocols of `sam-histo validate --protocols` (data/protocols.py); "+tta" may follow any of them.
PROMPT_PROTOCOLS = ("centroid", "points5", "box", "box+neg")
# LoRA target groups (models/lora.py): Hiera attention qkv/proj, Hiera MLP, mask-decoder transformer.
LORA_TARGETS = ("encoder_attn", "encoder_mlp", "decoder")


def parse_protocols(names, key: str = "eval.protocols") -> list[tuple[str, bool]]:
    """["box", "box+neg+tta", ...] -> [(base protocol, with test-time augmentation), ...]; unknown names raise
    ConfigError naming ``key`` and the valid ones."""
    out = []
    for name in names:
        name = str(name).strip()
        base, tta = (name[:-4], True) if name.endswith("+tta") else (name, False)
        if base not in PROMPT_PROTOCOLS:
            raise ConfigError(f"{key}: {name!r} is not a prompt protocol; use {', '.join(PROMPT_PROTOCOLS)}, each "
                              "optionally with +tta (e.g. box+neg+tta)" + nearest(base, PROMPT_PROTOCOLS))
        out.append((base, tta))
    return out


def check_rules(cfg: Config) -> None:
    if cfg.model.image_size % 32:
        raise ConfigError(
            f"model.image_size={cfg.model.image_size} must be a multiple of 32 (Hiera downsamples by 32)"
        )
    if cfg.data.tile_stride <= 0 or cfg.data.tile_stride > cfg.data.tile_size:
        raise ConfigError(
            f"data.tile_stride={cfg.data.tile_stride} must be in 1..data.tile_size={cfg.data.tile_size}"
        )
    parse_protocols(cfg.eval.protocols)
    _check_lora(cfg.model.lora, [p.stages for p in cfg.train.phases], cfg.model.mode)
    if not 0 <= cfg.data.val_fraction + cfg.data.test_fraction < 1:
        raise ConfigError("data.val_fraction + data.test_fraction must be in [0, 1)")
    phases = cfg.train.phases
    if not phases:
        raise ConfigError("train.phases is empty: give at least one phase with start_epoch 0")
    starts = [p.start_epoch for p in phases]
    if starts[0] != 0 or starts != sorted(set(starts)):
        raise ConfigError(
            f"train.phases start_epoch values {starts} must start at 0 and strictly increase"
        )
    for i, p in enumerate(phases):
        if p.lr <= 0 or p.min_lr < 0 or p.min_lr > p.lr:
            raise ConfigError(f"train.phases[{i}]: need 0 <= min_lr <= lr and lr > 0")
    _check_train(cfg.train)
    classes = set(cfg.data.classes)
    if len(classes) != len(cfg.data.classes):
        raise ConfigError(f"data.classes has duplicates: {cfg.data.classes}")
    for name in (*cfg.sampling.rates, *cfg.sampling.class_weights.override):
        if classes and name not in classes:
            raise ConfigError(
                f"sampling names class {name!r} which is not in data.classes {sorted(classes)}"
                + nearest(name, classes)
            )
    _check_data_rules(cfg)
    _check_resolution(cfg)
    if cfg.sampling.oversample == "manual" and not cfg.sampling.rates:
        raise ConfigError("sampling.oversample=manual needs sampling.rates (class -> rate)")
    lo, hi = cfg.sampling.class_weights.clip
    if not 0 < lo <= hi:
        raise ConfigError("sampling.class_weights.clip must be [low, high] with 0 < low <= high")
    if cfg.stain.method != "none" and not cfg.stain.reference:
        raise ConfigError(f"stain.method={cfg.stain.method} needs stain.reference (an RGB tile)")
    _check_clip(cfg.clip, cfg.zeroshot, classes)
    if cfg.eval.overlays < 0:
        raise ConfigError(f"eval.overlays={cfg.eval.overlays} must be >= 0 (0 draws no overlays)")
    if cfg.eval.overlay_class is not None and classes and cfg.eval.overlay_class not in classes:
        raise ConfigError(
            f"eval.overlay_class={cfg.eval.overlay_class!r} is not in data.classes {sorted(classes)}"
            + nearest(cfg.eval.overlay_class, classes)
        )
    if not 0 <= cfg.eval.window_overlap < 1:
        raise ConfigError(f"eval.window_overlap={cfg.eval.window_overlap} must be in [0, 1)")
    _check_semantic_eval(cfg)
    _check_heatmap(cfg.heatmap, classes)
    _check_em(cfg.em)
    kind = dataset_kind(cfg.data.dataset)
    if not kind.stain and (cfg.augment.hed > 0 or cfg.augment.macenko > 0 or cfg.stain.method != "none"):
        raise ConfigError(f"{kind.name} ({kind.modality.upper()}) data takes no stain operations: set "
                          "augment.hed=0, augment.macenko=0, stain.method=none")


def _check_semantic_eval(cfg: Config) -> None:
    scales = cfg.eval.tta_scales
    if not scales or not all(0.25 <= s <= 4 for s in scales) or len(set(scales)) != len(scales):
        raise ConfigError(f"eval.tta_scales={scales} must list distinct relative scales in [0.25, 4] (e.g. "
                          "[0.8, 1.0, 1.25]; [1.0] predicts once)")
    area = cfg.eval.min_region_um2
    if not 0 <= area <= 1e6:
        raise ConfigError(f"eval.min_region_um2={area} must be square microns in [0, 1e6] (0 keeps every region)")
    if area and cfg.model.target_mpp is None and cfg.data.mpp is None:
        raise ConfigError(f"eval.min_region_um2={area} needs microns per pixel for images that carry none: set "
                          "model.target_mpp or data.mpp, or eval.min_region_um2=0")
    if (scales != [1.0] or area) and cfg.model.mode != "semantic":
        raise ConfigError("eval.tta_scales and eval.min_region_um2 apply to semantic mode only: set "
                          "eval.tta_scales=[1.0] and eval.min_region_um2=0, or model.mode=semantic")


def _check_resolution(cfg: Config) -> None:
    for key, value in (("data.mpp", cfg.data.mpp), ("model.target_mpp", cfg.model.target_mpp)):
        if value is not None and not 0.01 <= value <= 50:
            raise ConfigError(f"{key}={value} must be microns per pixel in [0.01, 50] (40x is about 0.25, "
                              "20x about 0.5), or null")
    rng = cfg.augment.scale_range
    if len(rng) != 2 or not 0 < rng[0] <= rng[1] or rng[1] / rng[0] > 16:
        raise ConfigError(f"augment.scale_range={rng} must be [low, high] with 0 < low <= high <= 16 x low "
                          "(relative resolution; [1, 1] = off)")
    low = cfg.augment.downscale_range
    if len(low) != 2 or not 0.05 <= low[0] <= low[1] <= 1:
        raise ConfigError(f"augment.downscale_range={low} must be [low, high] with 0.05 <= low <= high <= 1 "
                          "(the downscale factor; 0.5 = a 20x look at a 40x grid)")


def _check_data_rules(cfg: Config) -> None:
    d = cfg.data
    kind = dataset_kind(d.dataset)
    if d.split not in kind.splits:
        if d.split == "z":
            raise ConfigError(f"data.split=z splits a volume along z; data.dataset={d.dataset} needs "
                              + " or ".join(kind.splits))
        if kind.splits == ("z",):
            raise ConfigError(f"data.dataset={d.dataset} cuts its volume along z: set data.split=z")
        if d.split == "institute":
            raise ConfigError("data.split=institute uses TCGA site codes and needs data.dataset=bcss")
        raise ConfigError(f"data.split={d.split} is not supported by data.dataset={d.dataset}; use "
                          + " or ".join(kind.splits))
    if d.split == "institute" and not (d.val_sites or d.test_sites):
        raise ConfigError("data.split=institute needs data.val_sites and/or data.test_sites (TCGA site codes)")
    both = set(d.val_sites) & set(d.test_sites)
    if both:
        raise ConfigError(f"data.val_sites and data.test_sites share {sorted(both)}: a site goes to one split")
    if d.decode_cache_mb < 0:
        raise ConfigError(f"data.decode_cache_mb={d.decode_cache_mb} must be >= 0 (megabytes per process)")
    if d.group_regex:
        import re

        try:
            re.compile(d.group_regex)
        except re.error as e:
            raise ConfigError(f"data.group_regex={d.group_regex!r} is not a regular expression ({e})") from None
    if cfg.sampling.iter_per_epoch is not None and cfg.sampling.iter_per_epoch < 1:
        raise ConfigError("sampling.iter_per_epoch must be a positive number of samples (or null)")
    if cfg.sampling.max_rate < 1:
        raise ConfigError("sampling.max_rate must be >= 1 (a rate multiplies how often an image is drawn)")
    if any(r <= 0 for r in cfg.sampling.rates.values()):
        raise ConfigError(f"sampling.rates must be positive: {cfg.sampling.rates}")
    p = cfg.prompts
    if p.n_pos < 1 or p.n_neg < 0 or not 0 <= p.p_box <= 1 or p.max_objects < 1 or p.box_noise < 0:
        raise ConfigError("prompts: need n_pos >= 1, n_neg >= 0, 0 <= p_box <= 1, max_objects >= 1, box_noise >= 0")


def _check_clip(clip: ClipConfig, zs: ZeroShotConfig, classes: set) -> None:
    if not 0.0 <= clip.head_alpha <= 1.0:
        raise ConfigError(f"clip.head_alpha={clip.head_alpha} must be in [0, 1] (0 = zero-shot weights only)")
    if clip.crop_margin < 0:
        raise ConfigError(f"clip.crop_margin={clip.crop_margin} must be >= 0 (a fraction of the box side)")
    for key in ("batch_size", "head_batch_size", "crop_min_side", "max_masks_per_image"):
        if getattr(clip, key) < 1:
            raise ConfigError(f"clip.{key}={getattr(clip, key)} must be >= 1")
    if clip.head_epochs < 0 or clip.head_lr <= 0:
        raise ConfigError("clip.head_epochs must be >= 0 and clip.head_lr > 0")
    if clip.logit_scale is not None and clip.logit_scale <= 0:
        raise ConfigError(f"clip.logit_scale={clip.logit_scale} must be > 0 (or null for the model's own)")
    if zs.points_per_side < 1 or zs.points_per_batch < 1 or zs.crop_n_layers < 0:
        raise ConfigError("zeroshot.points_per_side and points_per_batch must be >= 1, crop_n_layers >= 0")
    for key in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_class_prob"):
        if not 0.0 <= getattr(zs, key) <= 1.0:
            raise ConfigError(f"zeroshot.{key}={getattr(zs, key)} must be in [0, 1]")
    if zs.unassigned and classes and zs.unassigned not in classes:
        raise ConfigError(
            f"zeroshot.unassigned={zs.unassigned!r} is not in data.classes {sorted(classes)}"
            + nearest(zs.unassigned, classes)
        )


def _check_heatmap(hm: HeatmapConfig, classes: set) -> None:
    if hm.class_name is not None and classes and hm.class_name not in classes:
        raise ConfigError(
            f"heatmap.class_name={hm.class_name!r} is not in data.classes {sorted(classes)}"
            + nearest(hm.class_name, classes)
        )
    if isinstance(hm.threshold, float):
        if not math.isfinite(hm.threshold):
            raise ConfigError(f"heatmap.threshold={hm.threshold} must be a finite number, auto-iou or auto-f1")
        if not hm.zscore and not 0.0 <= hm.threshold <= 1.0:
            raise ConfigError(
                f"heatmap.threshold={hm.threshold} with heatmap.zscore=false is a probability and must be in "
                "[0, 1]; set heatmap.zscore=true for a threshold in z units"
            )
    if hm.min_size < 0:
        raise ConfigError(f"heatmap.min_size={hm.min_size} must be >= 0 (0 keeps every component)")
    if hm.candidates < 2:
        raise ConfigError(f"heatmap.candidates={hm.candidates} must be >= 2 thresholds")
    if hm.connectivity not in (1, 2):
        raise ConfigError(f"heatmap.connectivity={hm.connectivity} must be 1 (edges) or 2 (edges and corners)")




def _check_lora(lora, phase_stages, mode: str) -> None:
    if lora.rank < 0 or lora.alpha <= 0 or not 0 <= lora.dropout < 1:
        raise ConfigError(f"model.lora: need rank >= 0 (0 = off), alpha > 0 and 0 <= dropout < 1, got rank "
                          f"{lora.rank}, alpha {lora.alpha}, dropout {lora.dropout}")
    for t in lora.targets:
        if t not in LORA_TARGETS:
            raise ConfigError(f"model.lora.targets: {t!r} is not one of {list(LORA_TARGETS)}" + nearest(t, LORA_TARGETS))
    if lora.rank and not lora.targets:
        raise ConfigError("model.lora.rank > 0 but model.lora.targets is empty: name the layers to adapt")
    if lora.rank and mode == "semantic" and "decoder" in lora.targets:
        raise ConfigError("model.lora.targets: 'decoder' adapts the prompted mask decoder, which semantic mode "
                          "never runs (its class-token head trains whole with train.train_decoder); drop "
                          "'decoder', or set model.mode=prompted")
    if not lora.rank and "lora" in phase_stages:
        raise ConfigError("train.phases: stages 'lora' trains LoRA adapters, but model.lora.rank is 0 (no adapters); "
                          "set model.lora.rank (e.g. 8) or name Hiera stages")


def _check_train(t) -> None:
    import signal

    for key in ("epochs", "batch_size", "grad_accum", "val_every", "log_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key}={getattr(t, key)} must be >= 1")
    late = [p.start_epoch for p in t.phases if p.start_epoch >= t.epochs]
    if late:
        raise ConfigError(f"train.phases start at epochs {late}, but train.epochs={t.epochs}: those phases "
                          "would never run; raise train.epochs or drop them")
    if t.checkpoint_every_steps < 0 or t.max_nonfinite < 1 or t.keep_checkpoints < 1:
        raise ConfigError("need train.checkpoint_every_steps >= 0, train.max_nonfinite >= 1, "
                          "train.keep_checkpoints >= 1")
    for name in t.preempt_signals:
        if not isinstance(getattr(signal, name, None), signal.Signals):
            raise ConfigError(f"train.preempt_signals: {name!r} is not a signal name (e.g. SIGTERM, SIGUSR1)")
    bad = [a for a in t.wise_alphas if not 0.0 <= float(a) <= 1.0]
    if bad:
        raise ConfigError(f"train.wise_alphas {bad} out of range: each alpha mixes (1 - a) * start + a * best, "
                          "so use values in [0, 1] (e.g. [0, 0.25, 0.5, 0.75, 1]; [] turns WiSE-FT off)")
    unknown = set(t.loss.weights) - set(LOSS_KEYS)
    if unknown:
        raise ConfigError(f"train.loss.weights has unknown key(s) {sorted(unknown)}; the keys are {list(LOSS_KEYS)}"
                          + nearest(sorted(unknown)[0], LOSS_KEYS))


def _check_em(em: EmConfig) -> None:
    for key in ("points_per_side", "points_per_batch"):
        if getattr(em, key) < 1:
            raise ConfigError(f"em.{key}={getattr(em, key)} must be >= 1")
    for key in ("iou_thresh", "stability_thresh", "nms_thresh", "link_overlap", "merge_iou"):
        if not 0.0 <= getattr(em, key) <= 1.0:
            raise ConfigError(f"em.{key}={getattr(em, key)} must be in [0, 1]")
    for key in ("stability_offset", "min_size", "max_size", "link_gap", "min_voxels"):
        if getattr(em, key) < 0:
            raise ConfigError(f"em.{key}={getattr(em, key)} must be >= 0")
    if em.max_size and em.max_size < em.min_size:
        raise ConfigError(f"em.max_size={em.max_size} is below em.min_size={em.min_size}: nothing could be kept "
                          "(set em.max_size=0 for no upper limit)")
    for view in em.tta_views:
        if view not in EM_VIEWS:
            raise ConfigError(f"em.tta_views: {view!r} is not one of {list(EM_VIEWS)}" + nearest(view, EM_VIEWS))
    for key in ("mask_threshold", "iou_thresh", "stability_thresh", "min_size"):
        values = getattr(em.sweep, key)
        if not values:
            raise ConfigError(f"em.sweep.{key} is empty: give at least one value (e.g. [{getattr(em, key)}])")
        if key in ("iou_thresh", "stability_thresh") and not all(0.0 <= v <= 1.0 for v in values):
            raise ConfigError(f"em.sweep.{key}={values}: every value must be in [0, 1]")
        if key == "min_size" and min(values) < 0:
            raise ConfigError(f"em.sweep.min_size={values}: sizes must be >= 0")
