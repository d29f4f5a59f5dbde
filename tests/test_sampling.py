"""Class statistics, class weights, oversampling rates and the sampler, against hand-computed numbers."""
import numpy as np
import pytest

from sam_histo.config import ClassWeightConfig, ConfigError, SamplingConfig
from sam_histo.data.base import Adapter
from sam_histo.data.sampling import (RareClassSampler, build_sampler, class_rates, class_weights, compute_stats,
                                     image_rates, sampled_share)
from sam_histo.data.types import ClassSpec, Sample

# Three 2 x 2 masks; id 0 is ignored. Non-ignored pixels: a = 2 + 4 + 1 = 7, b = 1, c = 1 (9 in all);
# a is in 3 of 3 images, b in 1, c in 1; 3 of the 12 pixels are ignored.
MASKS = [np.array([[0, 1], [1, 2]]), np.array([[1, 1], [1, 1]]), np.array([[0, 0], [3, 1]])]


class Masks(Adapter):
    def __init__(self, masks):
        self._items = masks
        self.classes = ClassSpec(("outside", "a", "b", "c"), ignore_index=0)
        self.split = "train"

    def _load(self, i):
        return Sample(image=np.zeros((*self._items[i].shape, 3), np.uint8), mask=self._items[i])

    def fingerprint(self):
        return "masks"


@pytest.fixture
def stats():
    return compute_stats(Masks(MASKS), progress=False)


def test_statistics_hand_computed(stats, tmp_path):
    np.testing.assert_allclose(stats.pixel_fraction, [0, 7 / 9, 1 / 9, 1 / 9])
    np.testing.assert_allclose(stats.image_share, [0, 1, 1 / 3, 1 / 3])
    assert stats.ignored_fraction == pytest.approx(3 / 12)
    assert stats.rarest().tolist() == [2, 1, 3]  # b in image 0, a in image 1, c in image 2
    cache = tmp_path / "stats.json"
    compute_stats(Masks(MASKS), cache, progress=False)
    cached = compute_stats(Masks([np.zeros((2, 2), int)] * 3), cache, progress=False)  # same fingerprint
    np.testing.assert_array_equal(cached.counts, stats.counts)


def test_class_weights_inverse_frequency_clip_normalise_override(stats):
    # raw f_max / f: a 1, b 7, c 7 -> mean 5 -> 0.2, 1.4, 1.4; the ignore id 0.
    np.testing.assert_allclose(class_weights(stats, ClassWeightConfig()), [0, 0.2, 1.4, 1.4], rtol=1e-6)
    # clipped at 5: 1, 5, 5 -> mean 11/3
    np.testing.assert_allclose(class_weights(stats, ClassWeightConfig(clip=[0.1, 5.0])),
                               [0, 3 / 11, 15 / 11, 15 / 11], rtol=1e-6)
    # power 0.5: 1, sqrt 7, sqrt 7
    r = np.sqrt(7)
    np.testing.assert_allclose(class_weights(stats, ClassWeightConfig(power=0.5)),
                               np.array([0, 1, r, r]) / ((1 + 2 * r) / 3), rtol=1e-6)
    w = class_weights(stats, ClassWeightConfig(override={"c": 9.0}))
    assert w[3] == 9.0 and w[0] == 0.0
    with pytest.raises(ConfigError, match=r"override names class 'outside'"):
        class_weights(stats, ClassWeightConfig(override={"outside": 1.0}))


def test_rates_auto_manual_none(stats):
    # auto: (max image share 1) / share: a 1, b 3, c 3; each image takes its rarest class's rate.
    np.testing.assert_allclose(class_rates(stats, SamplingConfig()), [1, 1, 3, 3])
    np.testing.assert_allclose(image_rates(stats, SamplingConfig()), [3, 1, 3])
    np.testing.assert_allclose(image_rates(stats, SamplingConfig(max_rate=2.0)), [2, 1, 2])
    np.testing.assert_allclose(image_rates(stats, SamplingConfig(oversample="manual", rates={"b": 5.0})), [5, 1, 1])
    np.testing.assert_allclose(image_rates(stats, SamplingConfig(oversample="none")), [1, 1, 1])
    with pytest.raises(ConfigError, match=r"sampling.rates names class 'd'"):
        image_rates(stats, SamplingConfig(oversample="manual", rates={"d": 5.0}))


def test_sampler_empirical_class_shares_match_the_target(stats):
    sampler = build_sampler(stats, SamplingConfig(iter_per_epoch=700), seed=3)
    assert len(sampler) == 700
    draws = np.concatenate([list(iter_epoch(sampler, e)) for e in range(5)])
    # weights 3, 1, 3: images drawn 3/7, 1/7, 3/7 of the time; a in all, b in image 0, c in image 2.
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / len(draws), [3 / 7, 1 / 7, 3 / 7], atol=0.01)
    has = np.stack([np.bincount(m.ravel(), minlength=4) > 0 for m in MASKS])[draws]
    np.testing.assert_allclose(has[:, 1:].mean(0), [1, 3 / 7, 3 / 7], atol=0.01)
    np.testing.assert_allclose(sampled_share(stats, image_rates(stats, SamplingConfig()))[1:], [1, 3 / 7, 3 / 7])


def iter_epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return iter(sampler)


def test_sampler_equal_weights_is_a_permutation_and_epochs_differ():
    s = RareClassSampler(np.ones(50), seed=1)
    a, b = list(iter_epoch(s, 0)), list(iter_epoch(s, 1))
    assert sorted(a) == list(range(50)) and sorted(b) == list(range(50)) and a != b
    assert list(iter_epoch(RareClassSampler(np.ones(50), seed=1), 0)) == a  # seeded


def test_sampler_resumes_mid_epoch():
    weights = np.arange(1, 11, dtype=float)
    s = RareClassSampler(weights, num_samples=40, seed=7)
    s.set_epoch(2)
    full = list(s)
    it = iter(s)
    head = [next(it) for _ in range(13)]
    state = s.state_dict()
    fresh = RareClassSampler(weights, num_samples=40, seed=0)
    fresh.load_state_dict(state)
    assert head + list(fresh) == full
    fresh.load_state_dict({**state, "consumed": 30})  # the loop says how far it really got
    assert list(fresh) == full[30:]
    with pytest.raises(ValueError, match="sampler state is for 40 samples"):
        RareClassSampler(weights, num_samples=41).load_state_dict(state)


def test_sampler_shards_across_ranks():
    weights = np.array([5.0, 1, 1, 1, 2])
    ranks = [RareClassSampler(weights, num_samples=21, seed=4, num_replicas=3, rank=r) for r in range(3)]
    for r in ranks:
        r.set_epoch(1)
    parts = [list(r) for r in ranks]
    assert [len(p) for p in parts] == [7, 7, 7]
    whole = ranks[0].epoch_indices(1)
    interleaved = [parts[k % 3][k // 3] for k in range(21)]
    assert interleaved == whole.tolist()
    uneven = [list(RareClassSampler(weights, num_samples=20, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(p) for p in uneven] == [7, 7, 7]  # padded to a multiple of the ranks
