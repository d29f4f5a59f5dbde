"""EM vesicle instances in 3-D: predict a label volume, evaluate it, sweep the decoding thresholds.

    labels = predict_volume(model, volume, cfg.em, model_cfg=cfg.model)          # (Z, H, W) int32 ids
    metrics = evaluate_volume(model, adapter, cfg.em, model_cfg=cfg.model, checkpoint="runs/x/best")
    result = sweep_volume(model, val_adapter, cfg.em)                            # best: result.best_setting

Per slice (``sam_histo.em.infer``): a grid of point prompts through the prompted decoder, optionally
averaged over flip / rot90 views; ``decode`` turns the candidates into a 2-D instance map (thresholds,
stability, mask-IoU NMS, minimum size). Through z: ``em.linker`` ``overlap`` (default: links instances of
neighbouring slices by 2-D overlap; cheap, deterministic, and what the sweep scores) or ``video`` (SAM2's video
predictor propagates each new instance forwards and backwards from its slice; duplicates merged by 3-D IoU).
Metrics are those of ``Evaluator(instances=True)`` over the whole volume of the split: the DESIGN.md section
3 object with its ``instances`` block (adapted Rand error, Rand precision and recall, F1 at IoU 0.5, counts)
and the voxel-level vesicle Dice beside it; ``em`` (an extra) records the decoding settings and the linker.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np

from sam_histo.data.types import ClassSpec
from sam_histo.em.decode import DecodeParams
from sam_histo.em.infer import bounds, volume_candidates
from sam_histo.em.link import link_overlap
from sam_histo.em.sweep import SweepResult, decode_volume, run_sweep

CLASSES = ClassSpec(("background", "vesicle"))


def link(volume: np.ndarray, slices: np.ndarray, scores: list, em, *, model=None, model_cfg=None,
         video_predictor=None, progress: bool = True) -> np.ndarray:
    """Per-slice instance maps (Z, H, W) -> 3-D ids (Z, H, W) int32 with ``em.linker``. The video linker needs
    ``video_predictor`` or both ``model`` and ``model_cfg`` (the ModelConfig it was built from)."""
    if em.linker == "overlap":
        return link_overlap(slices, em.link_overlap, em.link_gap, em.min_voxels)
    if em.linker != "video":
        raise ValueError(f"em.linker={em.linker!r} must be 'overlap' or 'video'")
    from sam_histo.em.video import link_video, video_predictor_for

    if video_predictor is None:
        if model is None or model_cfg is None:
            raise ValueError("em.linker=video builds SAM2's video predictor from the model: pass model_cfg "
                             "(cfg.model) or video_predictor=, or set em.linker=overlap")
        video_predictor = video_predictor_for(model, model_cfg)
    return link_video(video_predictor, volume, slices, scores, em.merge_iou, em.min_voxels, progress)


def predict_volume(model, volume: np.ndarray, em, *, model_cfg=None, video_predictor=None,
                   progress: bool = True) -> np.ndarray:
    """3-D vesicle instances of a (Z, H, W) uint8 volume: (Z, H, W) int32, 0 background, ids 1..n.

    model: a SamHisto (prompted decoder); em: an EmConfig (``cfg.em``); model_cfg / video_predictor: for
    ``em.linker=video`` (see ``link``)."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.shape[0] == 0:
        raise ValueError(f"predict_volume needs a (Z, H, W) volume with at least one slice, got shape {volume.shape}")
    cands = volume_candidates(model, volume, em, bounds(em), progress=progress)
    slices, scores = decode_volume(cands, DecodeParams.from_config(em))
    return link(volume, slices, scores, em, model=model, model_cfg=model_cfg, video_predictor=video_predictor,
                progress=progress)


def volume_metrics(pred: np.ndarray, gt: np.ndarray, split: Optional[str] = None,
                   checkpoint: Optional[str] = None, source: Optional[str] = None) -> dict:
    """The metrics object (DESIGN.md section 3, with ``instances``) of one predicted instance volume against
    its labels, both (Z, H, W) integer ids with 0 background. Voxel-level classes: background, vesicle."""
    from sam_histo.scoring.evaluator import Evaluator

    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"predicted volume {pred.shape} and label volume {gt.shape} differ in shape")
    ev = Evaluator(CLASSES, instances=True)
    ev.add(pred > 0, gt > 0, key=split or "volume", meta={"source": source or "volume"},
           gt_instances=gt, pred_instances=pred)
    return ev.result(split=split, checkpoint=checkpoint)


def evaluate_prediction(pred: np.ndarray, adapter, em, *, checkpoint: Optional[str] = None,
                        seconds: Optional[float] = None) -> dict:
    """The metrics object of a predicted instance volume of the adapter's split, against
    ``adapter.label_volume()``; the extra ``em`` records ``em``'s decoding settings, the linker and ``seconds``."""
    metrics = volume_metrics(pred, adapter.label_volume(), split=adapter.split, checkpoint=checkpoint,
                             source=str(getattr(adapter, "volume_path", "volume")))
    settings = dataclasses.asdict(DecodeParams.from_config(em))
    settings.update(obj_score_thresh=em.obj_score_thresh, linker=em.linker, link_overlap=em.link_overlap,
                    link_gap=em.link_gap, merge_iou=em.merge_iou, min_voxels=em.min_voxels, points_per_side=em.points_per_side,
                    multimask=em.multimask, tta=em.tta, tta_views=list(em.tta_views) if em.tta else [],
                    seconds=None if seconds is None else round(seconds, 3))
    metrics["em"] = settings
    return metrics


def evaluate_volume(model, adapter, em, *, model_cfg=None, checkpoint: Optional[str] = None,
                    video_predictor=None, progress: bool = True) -> dict:
    """Predict the adapter's split volume (``adapter.volume()``) and score it against ``adapter.label_volume()``.

    adapter: a ``data.vesicle.Vesicle`` of one split; em: ``cfg.em``; model_cfg: ``cfg.model`` (needed by the
    video linker); checkpoint: named in the metrics. Returns the metrics object (``evaluate_prediction``).
    """
    start = time.perf_counter()
    pred = predict_volume(model, adapter.volume(), em, model_cfg=model_cfg, video_predictor=video_predictor,
                          progress=progress)
    return evaluate_prediction(pred, adapter, em, checkpoint=checkpoint, seconds=time.perf_counter() - start)


def sweep_volume(model, adapter, em, *, checkpoint: Optional[str] = None, progress: bool = True) -> SweepResult:
    """The decoding sweep (``em.sweep`` grid) on the adapter's split: the network once, every setting decoded
    from the cached candidates, linked by overlap and scored; ``result.best_setting`` has the lowest adapted
    Rand error. Write it with ``sam_histo.em.sweep.write_sweep``."""
    cands = volume_candidates(model, adapter.volume(), em, bounds(em, sweep=True), progress=progress)
    result = run_sweep(cands, adapter.label_volume(), em, progress=progress)
    result.split, result.checkpoint = adapter.split, checkpoint
    return result
