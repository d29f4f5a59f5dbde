"""HED jitter, the Macenko-space augmentation and the normalisation transform as albumentations ops."""
import warnings

import albumentations as A
import numpy as np
import pytest
from skimage import color

from sam_histo.stain.hed import HEDJitter, MacenkoAugment, hed_jitter
from sam_histo.stain.synthetic import DEFAULT_HE, blob_concentrations, render


def he_tile(size=64, seed=0):
    return render(DEFAULT_HE, blob_concentrations(size, np.random.default_rng(seed), n_nuclei=8))


def test_hed_jitter_matches_scikit_image_colour_deconvolution():
    # Colours made from non-negative H, E, D amounts, so skimage's clamp at zero does not act.
    hed = np.abs(np.random.default_rng(0).normal(0, 0.03, (48, 48, 3)))
    img = np.rint(color.hed2rgb(hed) * 255).astype(np.uint8)
    scale, shift = np.array([1.2, 0.8, 1.0]), np.array([0.1, -0.05, 0.02])
    expected = color.hed2rgb(color.rgb2hed(img) * scale + shift / np.log(1e6))  # shift: OD -> skimage units
    diff = np.abs(hed_jitter(img, scale, shift).astype(int) - np.rint(expected * 255))
    assert diff.mean() < 0.2 and diff.max() <= 2


def test_hed_jitter_zero_strength_is_identity():
    img = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert np.array_equal(hed_jitter(img, np.ones(3), np.zeros(3)), img)
    t = A.Compose([HEDJitter(alpha=0.0, beta=0.0, p=1.0)], seed=3)
    assert np.array_equal(t(image=img)["image"], img)


def test_hed_jitter_same_seed_same_output_and_it_changes_colour():
    img = he_tile()
    outs = [A.Compose([HEDJitter(0.3, 0.3, p=1.0)], seed=s)(image=img)["image"] for s in (7, 7, 8)]
    assert np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])
    assert np.abs(outs[0].astype(int) - img).mean() > 1.0


def test_hed_jitter_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha=1.5 must be >= 0 and below 1"):
        HEDJitter(alpha=1.5)
    with pytest.raises(ValueError, match="uint8"):
        HEDJitter(p=1.0)(image=np.zeros((4, 4, 3), np.float32))


def test_macenko_augment_zero_strength_identity_and_seeded():
    img = he_tile(seed=2)
    zero = MacenkoAugment(alpha=0, beta=0, sigma=0, p=1.0)
    assert np.abs(A.Compose([zero], seed=1)(image=img)["image"].astype(int) - img).max() <= 1
    outs = [A.Compose([MacenkoAugment(p=1.0)], seed=s)(image=img)["image"] for s in (4, 4, 5)]
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    assert zero.counter.fallbacks == 0


def test_macenko_augment_degenerate_tile_uses_fixed_vectors_and_counts():
    aug = MacenkoAugment(p=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for img in (np.full((16, 16, 3), 255, np.uint8), np.zeros((8, 8, 3), np.uint8)):
            out = A.Compose([aug], seed=0)(image=img)["image"]
            assert out.shape == img.shape and out.dtype == np.uint8
    assert aug.counter.fallbacks == 2
    assert all("fixed H&E vectors" in r for r in aug.counter.reasons)
