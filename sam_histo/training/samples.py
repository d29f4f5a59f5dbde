"""From adapter samples to training batches: seeded augmentation, prompts, collation.

Every random choice of a training item is a function of (run seed, epoch, rank, position in the
epoch): the sampler hands the dataset a key (index, item seed) and the dataset reseeds its pipeline
and prompt generator from it. A run killed mid-epoch and resumed therefore sees exactly the same
crops, flips, stain jitter and prompts as an uninterrupted one, whatever the worker count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from sam_histo.data.prompts import make_prompts
from sam_histo.data.io.resolution import to_target
from sam_histo.data.types import ClassSpec, Prompts


def item_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """A 32-bit seed for one training item, independent across the four coordinates."""
    return int(np.random.SeedSequence([seed, epoch, rank, position]).generate_state(1)[0])


class KeyedSampler(torch.utils.data.Sampler):
    """Wraps a RareClassSampler; yields (dataset index, item seed) keys in the same order."""

    def __init__(self, sampler, seed: int):
        self.sampler = sampler
        self.seed = seed

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        s = self.sampler
        position = s.resume_offset
        for index in s:
            yield index, item_seed(self.seed, s.epoch, s.rank, position)
            position += 1


@dataclass
class Batch:
    """images: (B, S, S, 3) uint8; masks: (B, S, S) int64 class ids; prompts: one Prompts per image in
    prompted mode (coordinates in the S x S crop), else None; indices: dataset indices."""

    images: torch.Tensor
    masks: torch.Tensor
    prompts: Optional[list[Prompts]]
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    def num_objects(self) -> int:
        return sum(len(p) for p in self.prompts) if self.prompts is not None else 0


class TrainSet(torch.utils.data.Dataset):
    """Augmented samples of an adapter, addressed by (index, item seed) keys.

    transform: a pipeline from ``sam_histo.augment.build_train_transform`` (crops to the model size);
    prompt_cfg: a PromptConfig in prompted mode, None in semantic mode; target_mpp: model.target_mpp, to
    which each tile of known resolution is resampled before the transform (None: none is).
    """

    def __init__(self, adapter, transform, classes: ClassSpec, prompt_cfg=None, target_mpp=None):
        self.adapter = adapter
        self.transform = transform
        self.classes = classes
        self.prompt_cfg = prompt_cfg
        self.target_mpp = target_mpp  # model.target_mpp: tiles are resampled to it before the crop

    def __len__(self) -> int:
        return len(self.adapter)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        sample = to_target(self.adapter[index], self.target_mpp)
        self.transform.set_random_seed(seed)
        extra = {"instances": sample.instances} if sample.instances is not None else {}
        out = self.transform(image=sample.image, mask=sample.mask, **extra)
        prompts = None
        if self.prompt_cfg is not None:
            rng = np.random.default_rng([seed, 1])
            prompts = make_prompts(out["mask"], self.classes, self.prompt_cfg, rng, instances=out.get("instances"))
        return {"image": out["image"], "mask": out["mask"], "prompts": prompts, "index": int(index)}


def collate(items: list[dict]) -> Batch:
    images = torch.from_numpy(np.stack([np.ascontiguousarray(it["image"]) for it in items]))
    masks = torch.from_numpy(np.stack([np.asarray(it["mask"], np.int64) for it in items]))
    prompts = [it["prompts"] for it in items] if items[0]["prompts"] is not None else None
    return Batch(images, masks, prompts, [it["index"] for it in items])


def make_loader(trainset: TrainSet, sampler, seed: int, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over ``trainset`` in the order of ``sampler`` (one RareClassSampler per rank)."""
    return torch.utils.data.DataLoader(
        trainset,
        batch_size=batch_size,
        sampler=KeyedSampler(sampler, seed),
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=False,
        drop_last=False,
    )
