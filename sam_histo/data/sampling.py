"""Rare-class oversampling: per-class rates, per-image rates by the image's rarest class, the sampler,
and `sam-histo stats`.

An image is drawn in proportion to the rate of the rarest class it contains (FIELD_NOTES, LGG: IT 20x,
LE 5x turned 140 images into about 894 samples an epoch). ``auto`` rates make each class appear in a
comparable share of samples: rate = (share of images holding the most common class) / (share holding
this class), capped at ``sampling.max_rate``.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Optional

import numpy as np
import torch

from sam_histo.data.classstats import ClassStats, _check_names, class_weights, compute_stats

__all__ = ["ClassStats", "compute_stats", "class_weights", "class_rates", "image_rates", "sampled_share",
           "RareClassSampler", "build_sampler", "main"]


def class_rates(stats: ClassStats, cfg) -> np.ndarray:
    """(C,) oversampling rate of each class id (>= 1; 1 for the ignore id). ``cfg`` is a SamplingConfig."""
    rates = np.ones(len(stats.names))
    if cfg.oversample == "manual":
        trained = [n for i, n in enumerate(stats.names) if i != stats.ignore_index]
        _check_names(cfg.rates, trained, "sampling.rates")
        for name, rate in cfg.rates.items():
            rates[stats.names.index(name)] = rate
    elif cfg.oversample == "auto":
        share = stats.image_share
        present = stats.present
        if present.any():
            rates[present] = np.clip(share[present].max() / share[present], 1.0, cfg.max_rate)
    return rates


def image_rates(stats: ClassStats, cfg) -> np.ndarray:
    """(N,) rate of each sample: the rate of its rarest present class (1 for samples with none)."""
    rates = class_rates(stats, cfg)
    rarest = stats.rarest()
    return np.where(rarest >= 0, rates[np.maximum(rarest, 0)], 1.0)


def sampled_share(stats: ClassStats, weights: np.ndarray) -> np.ndarray:
    """(C,) expected share of drawn samples that contain each class when sample i is drawn in
    proportion to ``weights[i]`` (the target the sampler's empirical shares converge to)."""
    has = stats.counts > 0
    if stats.ignore_index is not None:
        has[:, stats.ignore_index] = False
    w = np.asarray(weights, np.float64)
    return (w[:, None] * has).sum(0) / w.sum()


class RareClassSampler(torch.utils.data.Sampler):
    """Draws sample indices in proportion to ``weights``, ``num_samples`` per epoch over all ranks.

    Each epoch is a seeded function of (seed, epoch): systematic resampling gives image i either the
    floor or the ceiling of its expected count ``num_samples * w_i / sum(w)`` (with equal weights and
    num_samples = N, every image exactly once), then the list is shuffled. With ``num_replicas`` > 1 the
    list is padded to a multiple of it and rank r takes every num_replicas-th index from r (as
    torch's DistributedSampler does). ``state_dict``/``load_state_dict`` resume mid-epoch.
    """

    def __init__(self, weights, num_samples: Optional[int] = None, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0):
        w = np.asarray(weights, np.float64)
        if w.ndim != 1 or not len(w) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be a non-empty 1-D array of non-negative numbers, not all 0")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.weights = w
        self.num_samples = int(num_samples) if num_samples else max(int(round(w.sum())), 1)
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0
        self._skip = 0  # samples of the current epoch already consumed before a restart
        self._yielded = 0

    @property
    def iter_per_epoch(self) -> int:
        """Samples this rank yields per epoch."""
        return math.ceil(self.num_samples / self.num_replicas)

    def __len__(self) -> int:
        return self.iter_per_epoch

    @property
    def resume_offset(self) -> int:
        """Position in this rank's epoch where the next iteration starts (0 unless resumed mid-epoch)."""
        return self._skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """All ranks' indices of ``epoch`` before sharding: (num_samples,) int64."""
        rng = np.random.default_rng([self.seed, epoch])
        cum = np.cumsum(self.weights / self.weights.sum())
        cum[-1] = 1.0
        points = (rng.random() + np.arange(self.num_samples)) / self.num_samples
        idx = np.searchsorted(cum, points, side="right")
        return rng.permutation(idx).astype(np.int64)

    def rank_indices(self, epoch: int) -> np.ndarray:
        idx = self.epoch_indices(epoch)
        pad = self.iter_per_epoch * self.num_replicas - len(idx)
        if pad:
            idx = np.concatenate([idx, idx[:pad]])
        return idx[self.rank::self.num_replicas]

    def __iter__(self):
        idx = self.rank_indices(self.epoch)
        start, self._skip = self._skip, 0
        self._yielded = start
        for i in idx[start:]:
            self._yielded += 1
            yield int(i)

    def state_dict(self, consumed: Optional[int] = None) -> dict:
        """Where this rank stands. A DataLoader prefetches, so pass ``consumed`` = samples the training
        loop really used this epoch (steps * batch size); without it, the samples yielded so far."""
        return {"seed": self.seed, "epoch": self.epoch, "num_samples": self.num_samples,
                "num_replicas": self.num_replicas, "consumed": self._yielded if consumed is None else consumed}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples or state["num_replicas"] != self.num_replicas:
            raise ValueError(f"sampler state is for {state['num_samples']} samples on {state['num_replicas']} "
                             f"ranks, this sampler has {self.num_samples} on {self.num_replicas}")
        self.seed, self.epoch, self._skip = state["seed"], state["epoch"], int(state["consumed"])


def build_sampler(stats: ClassStats, cfg, seed: int = 0, num_replicas: int = 1, rank: int = 0
                  ) -> RareClassSampler:
    """The training sampler of ``cfg`` (a SamplingConfig) over the samples ``stats`` describes."""
    return RareClassSampler(image_rates(stats, cfg), cfg.iter_per_epoch, seed, num_replicas, rank)


# ------------------------------------------------------------------------------------ sam-histo stats
def report(stats: ClassStats, cfg) -> dict:
    """The numbers `sam-histo stats` prints, per trained class (the ignore id excluded). ``cfg`` is a
    SamplingConfig."""
    weights = class_weights(stats, cfg.class_weights)
    rates = class_rates(stats, cfg)
    per_image = image_rates(stats, cfg)
    sampler = RareClassSampler(per_image, cfg.iter_per_epoch)
    shares = sampled_share(stats, per_image)
    per_class = {}
    for i in stats.trained_ids:
        per_class[stats.names[i]] = {
            "id": i, "pixels": int(stats.pixels[i]), "pixel_fraction": float(stats.pixel_fraction[i]),
            "image_share": float(stats.image_share[i]), "weight": float(weights[i]), "rate": float(rates[i]),
            "sampled_share": float(shares[i])}
    ignore = None
    if stats.ignore_index is not None:
        ignore = {"id": stats.ignore_index, "name": stats.names[stats.ignore_index],
                  "fraction_of_all_pixels": stats.ignored_fraction}
    return {"n_samples": int(len(stats.counts)), "class_names": list(stats.names), "ignored": ignore,
            "oversample": cfg.oversample, "samples_per_epoch": sampler.num_samples, "per_class": per_class}


def format_table(rep: dict, title: str) -> str:
    lines = [title]
    if rep["ignored"]:
        ig = rep["ignored"]
        lines.append(f"ignore id {ig['id']} ({ig['name']}): {100 * ig['fraction_of_all_pixels']:.1f} % of all "
                     "pixels, excluded from every number below")
    head = f"{'id':>3}  {'class':<24}{'pixels %':>9}{'images %':>10}{'weight':>8}{'rate':>7}{'sampled %':>11}"
    lines += [head, "-" * len(head)]
    for name, c in rep["per_class"].items():
        lines.append(f"{c['id']:>3}  {name:<24}{100 * c['pixel_fraction']:>9.2f}{100 * c['image_share']:>10.1f}"
                     f"{c['weight']:>8.2f}{c['rate']:>7.2f}{100 * c['sampled_share']:>11.1f}")
    lines.append(f"oversample={rep['oversample']}: {rep['samples_per_epoch']} samples per epoch "
                 f"from {rep['n_samples']} (sampled % = share of drawn samples holding the class)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sam_histo.config import load_config
    from sam_histo.config.argv import add_overrides_help, parse_with_overrides
    from sam_histo.data.dataset import build_dataset

    ap = argparse.ArgumentParser(prog="sam-histo stats", description="Class pixel and image frequencies, loss weights and oversampling rates of a split.")
    ap.add_argument("--config", required=True, help="a YAML config (path, or a name under configs/)")
    ap.add_argument("--split", default="train", choices=("train", "val", "test", "all"))
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--cache", help="JSON file to cache the counts in (reused while the data is unchanged)")
    args = parse_with_overrides(add_overrides_help(ap, "data.root=/data/bcss"), argv)
    cfg = load_config(args.config, args.overrides)
    dataset = build_dataset(cfg.data, args.split)
    stats = compute_stats(dataset, args.cache, progress=not args.json)
    rep = report(stats, cfg.sampling)
    rep.update({"dataset": cfg.data.dataset, "split": args.split, "root": cfg.data.root})
    if getattr(dataset, "note", None):  # how mask values became classes (folder adapter)
        rep["labels"] = dataset.note
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(format_table(rep, f"{cfg.data.dataset} {args.split} split of {cfg.data.root}: "
                                f"{rep['n_samples']} samples"))
        if "labels" in rep:
            print(rep["labels"])
    return 0
