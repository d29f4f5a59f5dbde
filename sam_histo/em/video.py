"""The video linker: per-slice instances propagated through z with SAM2's video predictor.

The z-stack is the video (frames fed from arrays by ``models.sam.init_video_state``, never written as JPEGs;
the CPU bfloat16 fix of DESIGN.md section 5 is installed by ``build_video_predictor``). Slices are visited
largest total instance area first (a vesicle is best seeded from its widest cross-section); on each, every
instance not already covered by a tracked object (its IoU with every tracked mask there below ``merge_iou``) is
added as a mask prompt and all of them are tracked forwards and then backwards from that slice. An object
stops in a direction at its first empty frame (what comes after is drift onto a neighbour), and a pass stops
when every object of the round has stopped, so cost follows the vesicles' extent, not the volume depth.
Tracked objects whose 3-D IoU reaches ``merge_iou`` are then merged, and objects are painted best seed first
(predicted IoU of the seed instance), each claiming free voxels only.

Expensive next to the overlap linker: each round re-encodes the frames it passes (sam2 caches only the latest
frame's features), and every object runs its own memory attention per frame.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from sam_histo.em.link import UnionFind, drop_small, relabel_sequential_3d


@dataclass
class Track:
    """One tracked object: z -> (box (y0, x0, y1, x1), bool mask inside the box); the seed's score."""

    score: float
    masks: dict[int, tuple[tuple[int, int, int, int], np.ndarray]] = field(default_factory=dict)

    def voxels(self) -> int:
        return sum(int(m.sum()) for _, m in self.masks.values())


def _cut(mask: np.ndarray):
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    return (y0, x0, y1, x1), mask[y0:y1, x0:x1].copy()


def _overlap(a, b) -> int:
    (ba, ma), (bb, mb) = a, b
    y0, x0, y1, x1 = max(ba[0], bb[0]), max(ba[1], bb[1]), min(ba[2], bb[2]), min(ba[3], bb[3])
    if y0 >= y1 or x0 >= x1:
        return 0
    return int((ma[y0 - ba[0]:y1 - ba[0], x0 - ba[1]:x1 - ba[1]] & mb[y0 - bb[0]:y1 - bb[0], x0 - bb[1]:x1 - bb[1]]).sum())


def video_predictor_for(model, model_cfg):
    """A SAM2 video predictor carrying ``model``'s SAM2 weights (a SamHisto, e.g. just fine-tuned in memory).
    ``model_cfg``: the ModelConfig it was built from (arch, image_size, overrides)."""
    from sam_histo.models.sam import build_video_predictor
    from sam_histo.models.weights import load_into

    predictor = build_video_predictor(dataclasses.replace(model_cfg, checkpoint=None))
    load_into(predictor, model.sam.state_dict(), strict=True, source="the evaluated model")
    return predictor.to(model.sam.device).eval()


def _covered(seed: np.ndarray, z: int, tracks: list[Track], merge_iou: float) -> bool:
    cut = _cut(seed)
    area = int(cut[1].sum())
    for t in tracks:
        if z in t.masks:
            inter = _overlap(cut, t.masks[z])
            if inter and inter / (area + int(t.masks[z][1].sum()) - inter) >= merge_iou:
                return True
    return False


def _propagate(predictor, state, z: int, new: list[Track]) -> None:
    """Track the round's objects (already added on frame z) forwards, then backwards, into ``new``."""
    for reverse in (False, True):
        alive = np.ones(len(new), bool)
        for frame, _, logits in predictor.propagate_in_video(state, start_frame_idx=z, reverse=reverse):
            masks = (logits[:, 0] > 0).cpu().numpy()
            for k in np.flatnonzero(alive):
                if masks[k].any():
                    new[k].masks[frame] = _cut(masks[k])
                elif frame != z:
                    alive[k] = False
            if not alive.any():
                break


def _merge_and_paint(tracks: list[Track], shape, merge_iou: float) -> np.ndarray:
    sizes = [t.voxels() for t in tracks]
    uf = UnionFind(len(tracks))
    for a in range(len(tracks)):
        for b in range(a + 1, len(tracks)):
            common = set(tracks[a].masks) & set(tracks[b].masks)
            inter = sum(_overlap(tracks[a].masks[z], tracks[b].masks[z]) for z in common)
            if inter and inter / (sizes[a] + sizes[b] - inter) >= merge_iou:
                uf.union(a, b)
    roots = uf.roots()
    out = np.zeros(shape, np.int64)
    for k in sorted(range(len(tracks)), key=lambda k: -tracks[k].score):
        for z, ((y0, x0, y1, x1), m) in tracks[k].masks.items():
            window = out[z, y0:y1, x0:x1]
            window[m & (window == 0)] = roots[k] + 1
    return relabel_sequential_3d(out)


def link_video(predictor, volume: np.ndarray, slices: np.ndarray, scores: list[np.ndarray], merge_iou: float = 0.5,
               min_voxels: int = 0, progress: bool = True) -> np.ndarray:
    """3-D instances from per-slice ones by video propagation (see the module docstring).

    predictor: a SAM2VideoPredictor (``video_predictor_for``); volume: (Z, H, W) uint8 frames; slices: (Z, H, W)
    per-slice instance maps, ids 1..n_z on slice z; scores[z]: (n_z,) score of each id (predicted IoU).
    Returns (Z, H, W) int32 ids 1..n, objects below ``min_voxels`` voxels dropped.
    """
    from tqdm import tqdm

    from sam_histo.models.sam import init_video_state

    slices = np.asarray(slices)
    if slices.shape != np.shape(volume) or slices.ndim != 3:
        raise ValueError(f"slices {slices.shape} and volume {np.shape(volume)} must be one (Z, H, W) shape")
    state = init_video_state(predictor, volume)
    tracks: list[Track] = []
    order = np.argsort(-(slices > 0).reshape(len(slices), -1).sum(1), kind="stable")
    for z in tqdm(order, desc="video linking", disable=not progress, leave=False):
        z = int(z)
        seeds = [i for i in range(1, int(slices[z].max(initial=0)) + 1)
                 if (slices[z] == i).any() and not _covered(slices[z] == i, z, tracks, merge_iou)]
        if not seeds:
            continue
        predictor.reset_state(state)
        new = [Track(score=float(scores[z][i - 1])) for i in seeds]
        for k, i in enumerate(seeds):
            predictor.add_new_mask(state, frame_idx=z, obj_id=k, mask=slices[z] == i)
        _propagate(predictor, state, z, new)
        tracks.extend(t for t in new if t.masks)
    return drop_small(_merge_and_paint(tracks, slices.shape, merge_iou), min_voxels)
