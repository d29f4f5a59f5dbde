"""Oracle stand-ins for the EM pipeline tests: a prompted model and a video predictor that segment exactly.

``OracleModel`` reads instance ids from the image itself (the red channel holds them): a point prompt on id k
returns logits +8 on every pixel of id k and -8 elsewhere, predicted IoU 0.9 and object score +5 (-5 on id 0,
the background). Feeding it a label volume as the image volume therefore makes the pipeline's answer known:
exactly the instances in the image. It counts its ``encode`` calls. ``OracleVideoPredictor`` tracks a seed by
returning, on every frame, the true 3-D object under the seed mask.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch


class OracleModel:
    training = False

    def __init__(self):
        self.encodes = 0

    def eval(self):
        self.training = False
        return self

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def preprocess(self, images):
        return torch.as_tensor(np.asarray(images))

    def encode(self, pixels):
        self.encodes += 1
        return pixels[0, ..., 0].long()  # (H, W) ids

    def forward_prompted(self, feats, prompts, multimask=True, orig_hw=None):
        ids = feats
        h, w = ids.shape
        pts = np.asarray(prompts[0].points[:, 0])
        cols = np.clip(np.floor(pts[:, 0]).astype(int), 0, w - 1)
        rows = np.clip(np.floor(pts[:, 1]).astype(int), 0, h - 1)
        pid = ids[torch.from_numpy(rows), torch.from_numpy(cols)]
        inside = (ids[None] == pid[:, None, None]) & (pid[:, None, None] > 0)
        logits = torch.where(inside, 8.0, -8.0)[:, None].repeat(1, 3 if multimask else 1, 1, 1)
        k = len(pid)
        return SimpleNamespace(logits=logits, iou_pred=torch.full((k, logits.shape[1]), 0.9),
                               object_score=torch.where(pid > 0, 5.0, -5.0)[:, None])


class OracleVideoPredictor:
    """Follows the true 3-D object under each seed mask; records the frames each propagation visits."""

    image_size = 64

    def __init__(self, labels: np.ndarray):
        self.labels = np.asarray(labels)
        self.visited: list[tuple[int, bool]] = []
        self.seeded: list[int] = []  # the true object under each seed
        self.rounds = 0

    def init_state(self, video_path=None, offload_video_to_cpu=True):
        return {"objects": {}}

    def reset_state(self, state):
        state["objects"].clear()
        self.rounds += 1

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        under = self.labels[frame_idx][np.asarray(mask, bool)]
        state["objects"][obj_id] = int(np.bincount(under).argmax())
        self.seeded.append(state["objects"][obj_id])

    def propagate_in_video(self, state, start_frame_idx=0, reverse=False):
        ids = list(state["objects"])
        frames = range(start_frame_idx, -1, -1) if reverse else range(start_frame_idx, len(self.labels))
        for f in frames:
            self.visited.append((f, reverse))
            true = np.stack([self.labels[f] == state["objects"][k] for k in ids])
            yield f, ids, torch.from_numpy(np.where(true, 5.0, -5.0))[:, None].float()
