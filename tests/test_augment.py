"""Train and eval pipelines: masks stay aligned and integer, EM gets no stain ops, seeds reproduce."""
import dataclasses

import numpy as np
import pytest
from PIL import Image

from sam_histo.augment import build_eval_transform, build_train_transform, stain_counter
from sam_histo.config import AugmentConfig, ConfigError, StainConfig, load_config
from sam_histo.stain.synthetic import DEFAULT_HE, blob_concentrations, render

NO_GEOMETRY = dict(flip=0.0, rot90=0.0, affine=0.0, elastic=0.0)


def block_image(size=64, seed=0):
    """Image whose red channel encodes the mask (blocks of 8 px): mask = red > 110."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, 2, (size // 8, size // 8)), np.ones((8, 8), np.int64))
    img = np.stack([20 + 200 * mask, rng.integers(0, 256, mask.shape), 90 + 0 * mask], -1).astype(np.uint8)
    return img, mask + 1  # labels 1, 2


@pytest.mark.parametrize("op", ["flip", "rot90", "affine", "elastic", "crop"])
def test_mask_stays_aligned_through_each_geometric_op(op):
    img, mask = block_image()
    size = 48 if op == "crop" else 64
    aug = AugmentConfig(**{**NO_GEOMETRY, **({} if op == "crop" else {op: 1.0})})
    t = build_train_transform(aug, StainConfig(), size, "he", mask_fill=5, seed=1)
    changed = 0
    for _ in range(4):
        out = t(image=img, mask=mask, instances=mask * 10)
        m, inst = out["mask"], out["instances"]
        assert m.dtype == np.int64 and inst.dtype == np.int64 and m.shape == (size, size)
        assert set(np.unique(m)) <= {1, 2, 5}
        inside = m != 5
        np.testing.assert_array_equal(inst[inside], m[inside] * 10)  # the second mask moves with the first
        assert np.all(inst[~inside] == 0)
        agree = (out["image"][..., 0] > 110) == (m == 2)
        assert agree[inside].mean() > 0.97, op  # only edge pixels may differ (linear vs nearest)
        changed += not np.array_equal(m, mask[:size, :size])
    assert changed > 0, f"{op} never changed the mask"


def test_flips_and_rotations_are_independent_and_seeded():
    img = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    t = build_train_transform(AugmentConfig(), StainConfig(), 16, "he", seed=3)
    first = [t(image=img)["image"] for _ in range(200)]
    # The 8 symmetries of the square show up (albumentations' own Compose seed would tie the flips).
    assert len({o.tobytes() for o in first}) == 8
    t.set_random_seed(3)
    assert all(np.array_equal(a, t(image=img)["image"]) for a in first[:5])


def test_small_image_is_padded_with_the_mask_fill_value():
    img, mask = block_image(size=32)
    t = build_train_transform(AugmentConfig(**NO_GEOMETRY), StainConfig(), 48, "he", mask_fill=7, seed=0)
    out = t(image=img, mask=mask, instances=mask * 3)
    assert out["image"].shape == (48, 48, 3) and out["mask"].shape == (48, 48)
    padded = out["mask"] == 7
    assert padded.sum() == 48 * 48 - 32 * 32
    assert np.all(out["image"][padded] == 255)  # H&E is padded with white
    assert np.all(out["instances"][padded] == 0)  # no instance there, whatever the class fill
    np.testing.assert_array_equal(out["instances"][~padded], out["mask"][~padded] * 3)


def test_em_pipeline_rejects_stain_ops_and_runs_without_them():
    for aug, stain in ((AugmentConfig(hed=0.5), StainConfig()),
                       (AugmentConfig(macenko=0.5), StainConfig()),
                       (AugmentConfig(), StainConfig(method="macenko", reference="ref.png"))):
        with pytest.raises(ConfigError, match="'em'.*no stain operations"):
            build_train_transform(aug, stain, 32, "em")
    with pytest.raises(ConfigError, match="no stain operations"):
        build_eval_transform(StainConfig(method="reinhard", reference="ref.png"), 32, "em")
    with pytest.raises(ConfigError, match="modality='ihc'"):
        build_eval_transform(StainConfig(), 32, "ihc")
    em = AugmentConfig(flip=0.8, rot90=0.8, affine=0.5, brightness_contrast=0.6, noise=0.5, cutout=0.3)
    grey = np.repeat(np.random.default_rng(0).integers(0, 256, (40, 40, 1), dtype=np.uint8), 3, axis=2)
    out = build_train_transform(em, StainConfig(), 32, "em", seed=0)(image=grey, mask=np.ones((40, 40), np.int64))
    assert out["image"].shape == (32, 32, 3) and out["mask"].dtype == np.int64


def test_he_pipeline_normalises_to_reference_and_counts_fallbacks(tmp_path):
    rng = np.random.default_rng(5)
    ref = render(DEFAULT_HE, blob_concentrations(64, rng, n_nuclei=10))
    Image.fromarray(ref).save(tmp_path / "ref.png")
    stain = StainConfig(method="macenko", reference=str(tmp_path / "ref.png"))
    full = dataclasses.replace(AugmentConfig(), hed=0.5, macenko=0.5, elastic=0.3, affine=0.3,
                               brightness_contrast=0.3, blur=0.3)
    train = build_train_transform(full, stain, 48, "he", seed=0)
    evaluate = build_eval_transform(stain, 48, "he")
    tile = render(DEFAULT_HE * 0.9 + 0.05, blob_concentrations(80, rng, n_nuclei=10) * 1.3)
    out = evaluate(image=tile, mask=np.zeros((80, 80), np.int64))
    assert out["image"].shape == (80, 80, 3)  # eval does not crop
    assert np.abs(out["image"].astype(int) - tile).mean() > 1  # it did normalise
    assert train(image=tile, mask=np.zeros((80, 80), np.int64))["image"].shape == (48, 48, 3)
    blank = np.full((64, 64, 3), 255, np.uint8)
    evaluate(image=blank)
    assert stain_counter(evaluate).fallbacks == 1
    with pytest.raises(ConfigError, match="stain.reference=.*missing.png"):
        build_eval_transform(StainConfig(method="macenko", reference=str(tmp_path / "missing.png")), 48)


def test_vesicle_config_refuses_stain_augmentation():
    with pytest.raises(ConfigError, match="vesicle.*no stain operations"):
        load_config(None, ["data.dataset=vesicle", "data.split=z", "augment.macenko=0.5"])
