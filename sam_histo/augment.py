"""Albumentations pipelines for training and evaluation, built from AugmentConfig and StainConfig.

Call a pipeline as ``t(image=img, mask=classes)`` or ``t(image=img, mask=classes, instances=ids)``:
image (H, W, 3) uint8 RGB (EM: grey repeated in 3 channels), mask and instances (H, W) integer maps.
Masks are warped with nearest-neighbour interpolation and come back int64, aligned with the image.

Order: stain normalisation to the reference on the whole tile (so the estimate sees all of it) ->
random zoom (``augment.scale_range``, relative resolution) -> random crop to ``image_size`` (padding first when smaller) -> geometric -> stain augmentation (on
the crop: cheaper, and padding is white so it does not count as stain) -> photometric. EM data gets
no stain operation at all; asking for one raises ConfigError.

Seeding: ``seed`` makes the pipeline reproducible; all its transforms share one random stream
(``Pipeline`` below says why). albumentations 2.0.8 does not derive a different seed per DataLoader
worker, so a worker_init_fn should call ``pipeline.set_random_seed(seed + worker_id)``.
"""
from __future__ import annotations

from typing import Any, Optional

import albumentations as A
import cv2
import numpy as np

from sam_histo.config import AugmentConfig, ConfigError, StainConfig
from sam_histo.stain.base import FallbackCounter
from sam_histo.stain.hed import HEDJitter, MacenkoAugment
from sam_histo.stain.normalize import StainNormalize, build_normalizer

MODALITIES = ("he", "em")
_LINEAR, _NEAREST = cv2.INTER_LINEAR, cv2.INTER_NEAREST


class MasksToInt64(A.DualTransform):
    """Leaves the image alone and casts every mask target to int64 (albumentations returns int32
    from some warps); always applied."""

    def __init__(self, p: float = 1.0):
        super().__init__(p=p)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return img

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        if not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(f"masks must be integer label maps, got dtype {mask.dtype}")
        return mask.astype(np.int64, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


def _check(stain: StainConfig, aug: Optional[AugmentConfig], image_size: int, modality: str) -> None:
    if modality not in MODALITIES:
        raise ConfigError(f"modality={modality!r} must be one of {MODALITIES} (H&E or electron microscopy)")
    if not isinstance(image_size, int) or image_size <= 0:
        raise ConfigError(f"image_size={image_size!r} must be a positive integer")
    if modality == "em":
        asked = [name for name, on in (("stain.method", stain.method != "none"),
                                       ("augment.hed", aug is not None and aug.hed > 0),
                                       ("augment.macenko", aug is not None and aug.macenko > 0)) if on]
        if asked:
            raise ConfigError(f"modality 'em' (electron microscopy) takes no stain operations, but "
                              f"{', '.join(asked)} asks for one: set stain.method=none, augment.hed=0, "
                              "augment.macenko=0")


def _normalise(stain: StainConfig, counter: FallbackCounter) -> list:
    normalizer = build_normalizer(stain, counter=counter)
    return [] if normalizer is None else [StainNormalize(normalizer, p=1.0)]


def _geometric(aug: AugmentConfig, fill: float, mask_fill: int) -> list:
    ops: list = [A.HorizontalFlip(p=aug.flip), A.VerticalFlip(p=aug.flip), A.RandomRotate90(p=aug.rot90)]
    if aug.affine > 0:
        ops.append(A.Affine(scale=(1 - aug.affine_scale, 1 + aug.affine_scale),
                            rotate=(-aug.affine_rotate, aug.affine_rotate),
                            translate_percent=(-aug.affine_translate, aug.affine_translate),
                            interpolation=_LINEAR, mask_interpolation=_NEAREST,
                            border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=mask_fill, p=aug.affine))
    if aug.elastic > 0:
        ops.append(A.ElasticTransform(alpha=aug.elastic_alpha, sigma=aug.elastic_sigma,
                                      interpolation=_LINEAR, mask_interpolation=_NEAREST,
                                      border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=mask_fill,
                                      p=aug.elastic))
    return ops


def _rescale(aug: AugmentConfig) -> list:
    """``augment.scale_range`` [low, high] of relative resolution s: the tile is zoomed by 1 / s, drawn
    uniformly from [1 / high, 1 / low] (area averaging when shrinking, nearest for masks) before the crop."""
    lo, hi = aug.scale_range
    if lo == hi == 1.0:
        return []
    return [A.RandomScale(scale_limit=(1.0 / hi - 1.0, 1.0 / lo - 1.0), interpolation=_LINEAR,
                          mask_interpolation=_NEAREST, area_for_downscale="image", p=1.0)]


def _stain_augment(aug: AugmentConfig, stain: StainConfig, counter: FallbackCounter) -> list:
    ops: list = []
    if aug.hed > 0:
        ops.append(HEDJitter(alpha=aug.hed_alpha, beta=aug.hed_beta, p=aug.hed))
    if aug.macenko > 0:
        ops.append(MacenkoAugment(alpha=aug.macenko_alpha, beta=aug.macenko_beta, sigma=aug.macenko_sigma,
                                  io=stain.io, od_beta=stain.beta, p=aug.macenko, counter=counter))
    return ops


def _photometric(aug: AugmentConfig, fill: float) -> list:
    ops: list = []
    if aug.brightness_contrast > 0:
        ops.append(A.RandomBrightnessContrast(brightness_limit=aug.brightness, contrast_limit=aug.contrast,
                                              p=aug.brightness_contrast))
    if aug.blur > 0:
        lo, hi = aug.blur_sigma
        ops.append(A.GaussianBlur(blur_limit=0, sigma_limit=(lo, hi), p=aug.blur))
    if aug.downscale > 0:  # a scan at lower resolution seen at the model's: area down, bilinear back up
        ops.append(A.Downscale(scale_range=tuple(aug.downscale_range), p=aug.downscale,
                               interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}))
    if aug.noise > 0:
        lo, hi = aug.noise_std
        ops.append(A.GaussNoise(std_range=(lo, hi), p=aug.noise))
    if aug.cutout > 0:
        side = (aug.cutout_size / 2, aug.cutout_size)
        ops.append(A.CoarseDropout(num_holes_range=(aug.cutout_holes, aug.cutout_holes), hole_height_range=side,
                                   hole_width_range=side, fill=fill, fill_mask=None, p=aug.cutout))
    return ops


def build_train_transform(aug: AugmentConfig, stain: StainConfig, image_size: int, modality: str = "he", *,
                          mask_fill: int = 0, seed: Optional[int] = None,
                          counter: Optional[FallbackCounter] = None) -> Pipeline:
    """Training pipeline: normalise, random ``image_size`` crop, geometric, stain and photometric ops.

    mask_fill: label written into ``mask`` where padding or a warp uncovers pixels (pass the ignore
    index, or the background id when there is none); ``instances`` gets 0 (no instance) there.
    Images are padded with white (H&E) or black (EM).
    counter: FallbackCounter shared by the stain ops (one is made if None; ``stain_counter(t)``).
    """
    _check(stain, aug, image_size, modality)
    counter = counter if counter is not None else FallbackCounter()
    fill = 255.0 if modality == "he" else 0.0
    ops = _normalise(stain, counter) if modality == "he" else []
    ops += _rescale(aug)
    ops.append(A.RandomCrop(image_size, image_size, pad_if_needed=True, pad_position="random",
                            border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=mask_fill))
    ops += _geometric(aug, fill, mask_fill)
    if modality == "he":
        ops += _stain_augment(aug, stain, counter)
    ops += _photometric(aug, fill)
    ops.append(MasksToInt64())
    return _compose(ops, seed, counter, instance_offset=mask_fill)


def build_eval_transform(stain: StainConfig, image_size: int, modality: str = "he", *,
                         seed: Optional[int] = None, counter: Optional[FallbackCounter] = None) -> Pipeline:
    """Evaluation pipeline: stain normalisation only (H&E), no crop or pad: the validator slides
    ``image_size`` windows over the full tile. Masks come back int64."""
    _check(stain, None, image_size, modality)
    counter = counter if counter is not None else FallbackCounter()
    ops = _normalise(stain, counter) if modality == "he" else []
    ops.append(MasksToInt64())
    return _compose(ops, seed, counter)


class Pipeline(A.Compose):
    """``A.Compose`` whose transforms draw from one shared random stream.

    albumentations 2.0.8's ``Compose.set_random_seed(S)`` gives every child transform its own
    generator seeded with the same S, so e.g. HorizontalFlip and VerticalFlip with equal p always
    decide alike (both or neither). Here the seed builds one generator that all children share, so
    the decisions are independent yet reproducible; this also holds for ``set_random_seed`` called
    later (e.g. per DataLoader worker). ``stain_counter`` is the FallbackCounter of its stain ops.
    """

    stain_counter: FallbackCounter
    # albumentations pads and warps every mask with the same fill (the class ignore value); instance
    # ids are shifted up by it on the way in and back on the way out, so uncovered pixels read 0.
    instance_offset: int = 0

    def set_random_seed(self, seed: Optional[int]) -> None:
        super().set_random_seed(seed)
        self.set_random_state(self.random_generator, self.py_random)

    def __call__(self, *args: Any, force_apply: bool = False, **data: Any) -> dict[str, Any]:
        shift = self.instance_offset
        if shift and data.get("instances") is not None:
            data["instances"] = np.asarray(data["instances"]).astype(np.int64) + shift
        out = super().__call__(*args, force_apply=force_apply, **data)
        if shift and out.get("instances") is not None:
            out["instances"] = out["instances"] - shift
        return out


def _compose(ops: list, seed: Optional[int], counter: FallbackCounter, instance_offset: int = 0) -> Pipeline:
    pipeline = Pipeline(ops, additional_targets={"instances": "mask"}, seed=seed)
    pipeline.stain_counter = counter
    pipeline.instance_offset = int(instance_offset)
    return pipeline


def stain_counter(pipeline: A.Compose) -> FallbackCounter:
    """The FallbackCounter of a pipeline from this module: ``.snapshot()`` for a log line."""
    return pipeline.stain_counter
