"""Microns per pixel through the data, training, validation and predict (sam_histo/data/resolution.py)."""
import json
import shutil

import numpy as np
import pytest
import yaml
from scipy import ndimage

from sam_histo.config import ConfigError, load_config
from sam_histo.data.io import resolution as R
from sam_histo.data.types import ClassSpec, DataError, Sample


# ------------------------------------------------------------------------------------ where mpp comes from
@pytest.mark.parametrize("name, mpp", [
    ("TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500.png", 0.25),
    ("slide_mpp=0.5.tif", 0.5),
    ("tile_MPP-1.png", 1.0),
    ("TCGA-A1-A0SK-DX1_xmin45749.png", None),
    ("bumpy-0.25.png", None),  # a number without the MPP token is not a resolution
    ("tile_MPP-400.png", None),  # implausible for a microscope: ignored
])
def test_mpp_from_file_names(name, mpp):
    assert R.mpp_from_name(name) == mpp


def _tiff(path, **kwargs):
    import tifffile

    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb", **kwargs)
    return path


def test_mpp_from_tiff_tags(tmp_path):
    import tifffile

    cm = _tiff(tmp_path / "cm.tif", resolution=(40000, 40000), resolutionunit=tifffile.RESUNIT.CENTIMETER)
    inch = _tiff(tmp_path / "inch.tif", resolution=(50800, 50800), resolutionunit=tifffile.RESUNIT.INCH)
    placeholder = _tiff(tmp_path / "dpi72.tif", resolution=(72, 72), resolutionunit=tifffile.RESUNIT.INCH)
    aperio = _tiff(tmp_path / "aperio.tif", description="Aperio Image Library v12 |AppMag = 40|MPP = 0.2520")
    bare = _tiff(tmp_path / "bare.tif")
    assert R.mpp_from_tiff(cm) == pytest.approx(0.25)
    assert R.mpp_from_tiff(inch) == pytest.approx(0.5)
    assert R.mpp_from_tiff(aperio) == pytest.approx(0.252)
    assert R.mpp_from_tiff(placeholder) is None  # 72 dpi = 352.8 um/px: a writer's default, not a scan
    assert R.mpp_from_tiff(bare) is None
    assert R.mpp_from_tiff(tmp_path / "missing.tif") is None


def test_resolve_order_table_name_tiff_default_unknown(tmp_path):
    import tifffile

    tagged = _tiff(tmp_path / "a_MPP-0.2500.tif", resolution=(20000, 20000),
                   resolutionunit=tifffile.RESUNIT.CENTIMETER)
    only_tags = _tiff(tmp_path / "b.tif", resolution=(20000, 20000), resolutionunit=tifffile.RESUNIT.CENTIMETER)
    plain = tmp_path / "c.png"
    table_file = tmp_path / "mpp.csv"
    table_file.write_text("file,mpp\na_MPP-0.2500.tif,0.3\n")
    table = R.read_mpp_table(table_file)
    assert R.resolve_mpp(tagged, 1.0, table) == (0.3, "table")
    assert R.resolve_mpp(tagged, 1.0) == (0.25, "name")
    assert R.resolve_mpp(only_tags, 1.0) == (pytest.approx(0.5), "tiff")
    assert R.resolve_mpp(plain, 1.0) == (1.0, "data.mpp")
    assert R.resolve_mpp(plain) == (None, "unknown")


def test_bad_mpp_table_and_keys_fail_in_one_line(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("file,mpp\nx.png,fast\n")
    with pytest.raises(DataError, match=r"t.csv line 2: mpp 'fast' is not a number"):
        R.read_mpp_table(bad)
    bad.write_text("name,res\nx.png,0.25\n")
    with pytest.raises(DataError, match="columns 'file' and 'mpp'"):
        R.read_mpp_table(bad)
    with pytest.raises(ConfigError, match=r"model.target_mpp=0.0 must be microns per pixel"):
        load_config("demo", ["model.target_mpp=0.0"])
    with pytest.raises(ConfigError, match=r"augment.scale_range"):
        load_config("demo", ["augment.scale_range=[2.0, 1.0]"])


def test_bcss_samples_carry_the_mpp_of_their_file_name(bcss_root):
    from sam_histo.data.dataset import build_dataset

    cfg = load_config("demo", [f"data.root={bcss_root}", "data.tile_size=128", "data.tile_stride=128"])
    ds = build_dataset(cfg.data, "all")
    assert ds[0].mpp == 0.25 and ds[0].meta["mpp_source"] == "name"
    assert ds.resolutions() == {"sources": {"name": len(ds)}, "mpp": {0.25: len(ds)}}


# ------------------------------------------------------------------------------------------ resampling
def _blobs(h=120, w=100, seed=0):
    """A label map of a few large discs of ids 1..4 on 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((h, w), np.int64)
    for k in range(1, 9):
        cy, cx, r = rng.integers(10, h - 10), rng.integers(10, w - 10), rng.integers(8, 18)
        out[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1 + k % 4
    return out


@pytest.mark.parametrize("mpp, target", [(0.25, 0.5), (0.5, 0.25), (0.25, 0.4), (0.3, 0.25), (0.25, 1.0)])
def test_label_map_to_target_and_back_equals_the_original_on_the_interior(mpp, target):
    labels = _blobs()
    factor = R.scale_factor(mpp, target)
    there = R.resample_labels(labels, factor)
    assert there.shape == R.scaled_size(*labels.shape, factor) and there.dtype == labels.dtype
    assert set(np.unique(there)) <= set(np.unique(labels))  # nearest neighbour: no blended ids
    back = R.resample_labels(there, size=labels.shape)
    # Interior: pixels farther than one target pixel (in original pixels, plus one) from any label edge.
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    interior = ndimage.distance_transform_edt(~edge) > max(1.0, 1.0 / factor) + 1
    assert interior.mean() > 0.5
    np.testing.assert_array_equal(back[interior], labels[interior])
    if factor == 2.0:  # enlarging by a whole factor and back is exact everywhere
        np.testing.assert_array_equal(back, labels)


def test_images_shrink_by_area_and_probabilities_come_back_to_the_exact_grid():
    image = np.zeros((64, 64, 3), np.uint8)
    image[::2, ::2] = 255  # a one-pixel checker: area averaging gives exactly a quarter of white
    small = R.resample_image(image, 0.5)
    assert small.shape == (32, 32, 3) and np.all(small == 64)
    probs = np.random.default_rng(0).random((3, 31, 47)).astype(np.float32)
    assert R.to_size(probs, (97, 131)).shape == (3, 97, 131)


def test_to_target_resamples_image_mask_and_instances_and_keeps_unknown_tiles():
    labels = _blobs(64, 48)
    s = Sample(image=np.zeros((64, 48, 3), np.uint8), mask=labels, instances=labels.copy(),
               meta={"source": "x", "mpp": 0.25})
    out = R.to_target(s, 0.5)
    assert out.image.shape == (32, 24, 3) and out.mask.shape == (32, 24) and out.instances.shape == (32, 24)
    assert out.meta["mpp"] == 0.5 and out.meta["native_mpp"] == 0.25
    unknown = Sample(image=np.zeros((64, 48, 3), np.uint8), mask=labels, meta={"source": "y", "mpp": None})
    assert R.to_target(unknown, 0.5).image.shape == (64, 48, 3)


class _ListAdapter:
    classes = ClassSpec(("background", "fg"))

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        return Sample(s.image.copy(), s.mask.copy(), None, dict(s.meta))


def test_training_tiles_are_resampled_to_the_target_before_the_crop_and_zoomed_by_scale_range():
    from sam_histo.augment import build_train_transform
    from sam_histo.config import AugmentConfig, StainConfig
    from sam_histo.training.samples import TrainSet

    mask = np.zeros((128, 128), np.int64)
    mask[:, 64:] = 1  # left half background, right half foreground
    image = np.where(mask[..., None] == 1, 200, 20).astype(np.uint8).repeat(3, axis=2)
    adapter = _ListAdapter([Sample(image, mask, None, {"source": "t", "mpp": 0.25})])
    still = AugmentConfig(flip=0.0, rot90=0.0)
    crop = build_train_transform(still, StainConfig(), 64, mask_fill=0, seed=0)
    # At 0.5 um/px the 128 px tile is 64 px: the 64 px crop is the whole tile, half foreground.
    out = TrainSet(adapter, crop, adapter.classes, target_mpp=0.5)[(0, 1)]
    assert out["mask"].shape == (64, 64) and out["mask"][:, :32].max() == 0 and out["mask"][:, 32:].min() == 1
    # scale_range [2, 2] (twice as coarse) shrinks the 128 px tile to 64 px: the crop is the whole tile.
    coarse = build_train_transform(AugmentConfig(flip=0.0, rot90=0.0, scale_range=[2.0, 2.0]), StainConfig(),
                                   64, mask_fill=0, seed=0)
    for seed in range(3):
        coarse.set_random_seed(seed)
        t = coarse(image=image, mask=mask)
        np.testing.assert_array_equal(t["mask"], mask[::2, ::2])
    # scale_range [0.5, 0.5] enlarges it to 256 px: a 64 px crop holds at most one edge, and some crops none.
    fine = build_train_transform(AugmentConfig(flip=0.0, rot90=0.0, scale_range=[0.5, 0.5]), StainConfig(), 64,
                                 mask_fill=0, seed=0)
    uniform = 0
    for seed in range(8):
        fine.set_random_seed(seed)
        t = fine(image=image, mask=mask)
        uniform += int(t["mask"].min() == t["mask"].max())
    assert uniform >= 2  # crops 0..192 of 256: 128 of 193 starts see one class (at native scale 2 of 65)


# --------------------------------------------------------------------------- inference at any resolution
@pytest.fixture(scope="module")
def model():
    from sam_histo.config import ModelConfig
    from sam_histo.models.sam import build_sam

    return build_sam(ModelConfig(arch="tiny", image_size=64), 3).eval()


@pytest.mark.parametrize("mpp", [None, 0.13, 0.25, 0.5, 0.97])
@pytest.mark.parametrize("hw", [(97, 131), (40, 33)])
def test_semantic_probabilities_match_the_input_size_at_any_mpp(model, mpp, hw):
    from sam_histo.infer.image import semantic_probs

    image = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    probs = semantic_probs(model, image, 3, None, mpp=mpp, target_mpp=0.5)
    assert probs.shape == (3, *hw)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)


def test_at_resolution_runs_the_model_on_the_target_grid(model):
    from sam_histo.infer.image import at_resolution

    seen = []

    def fn(im):
        seen.append(im.shape[:2])
        return np.ones((2, *im.shape[:2]), np.float32) / 2

    image = np.zeros((100, 60, 3), np.uint8)
    assert at_resolution(fn, image, 0.25, 0.5).shape == (2, 100, 60)
    assert at_resolution(fn, image, None, 0.5).shape == (2, 100, 60)
    assert seen == [(50, 30), (100, 60)]


def test_predict_release_with_target_mpp_writes_outputs_of_the_input_size(tiny_run, tmp_path):
    import sam_histo
    from PIL import Image

    from sam_histo.release.build import make_release
    from sam_histo.release.predict import main, make_predictor

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg_file = run / "config.yaml"
    tree = yaml.safe_load(cfg_file.read_text())
    tree["model"]["target_mpp"] = 0.5
    cfg_file.write_text(yaml.safe_dump(tree))
    bundle = make_release(run, tmp_path / "release", recompute=False)[0]
    release = sam_histo.load_release(bundle)
    assert release.config.model.target_mpp == 0.5
    assert json.loads((bundle / "config.json").read_text())["model"]["target_mpp"] == 0.5
    predictor = make_predictor(release)
    image = np.random.default_rng(1).integers(0, 256, (91, 77, 3), dtype=np.uint8)
    for mpp in (None, 0.25, 0.5, 1.0):
        label, probs = predictor(image, mpp)
        assert label.shape == (91, 77) and probs.shape == (7, 91, 77)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(image).save(inputs / "tile_MPP-0.2500.png")
    Image.fromarray(image[:50]).save(inputs / "plain.png")
    assert main(["--release", str(bundle), "--input", str(inputs), "--out", str(tmp_path / "out")]) == 0
    assert np.asarray(Image.open(tmp_path / "out" / "labels" / "tile_MPP-0.2500.png")).shape == (91, 77)
    assert np.asarray(Image.open(tmp_path / "out" / "labels" / "plain.png")).shape == (50, 77)
    report = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert report["target_mpp"] == 0.5
    assert report["resolution"] == {"plain": {"mpp": None, "source": "unknown"},
                                    "tile_MPP-0.2500": {"mpp": 0.25, "source": "name"}}


def test_validate_predicts_at_the_target_and_scores_on_the_tile_grid(bcss_root):
    from sam_histo.data.dataset import build_dataset
    from sam_histo.eval.validator import EvalSetup, SplitPredictor
    from sam_histo.models.sam import build_sam

    cfg = load_config("demo", [f"data.root={bcss_root}", "data.tile_size=96", "data.tile_stride=96",
                               "model.image_size=64", "model.arch=tiny", "model.target_mpp=0.5"])
    adapter = build_dataset(cfg.data, "all")
    net = build_sam(cfg.model, adapter.classes.num_classes).eval()
    sample, pred, probs = SplitPredictor(net, adapter, EvalSetup.of(cfg))(0)
    assert sample.mpp == 0.25 and sample.mask.shape == (96, 96)
    assert pred.shape == (96, 96) and probs.shape == (adapter.classes.num_classes, 96, 96)
    np.testing.assert_array_equal(pred, probs.argmax(0))


def test_validate_cleans_small_regions_at_the_tile_resolution(bcss_root):
    """eval.min_region_um2 in validation: the scored map is the clean-up of the argmax, its pixel count from
    the tile's own mpp (BCSS names: 0.25 um/px), not the model's target."""
    from sam_histo.data.dataset import build_dataset
    from sam_histo.eval.validator import EvalSetup, SplitPredictor
    from sam_histo.infer.postprocess import absorb_small_regions
    from sam_histo.models.sam import build_sam

    cfg = load_config("demo", [f"data.root={bcss_root}", "data.tile_size=96", "data.tile_stride=96",
                               "model.image_size=64", "model.arch=tiny", "model.target_mpp=0.5",
                               "eval.min_region_um2=1.0"])
    adapter = build_dataset(cfg.data, "all")
    net = build_sam(cfg.model, adapter.classes.num_classes).eval()
    sample, pred, probs = SplitPredictor(net, adapter, EvalSetup.of(cfg))(0)
    raw = probs.argmax(0)
    np.testing.assert_array_equal(pred, absorb_small_regions(raw, 16))  # 1 um^2 at 0.25 um/px
    assert (pred != raw).any() and (pred != absorb_small_regions(raw, 4)).any()  # at the target: 4 pixels


def test_downscale_augmentation_is_a_lower_resolution_look_at_the_same_grid():
    """augment.downscale: the crop is shrunk by the drawn factor (area) and enlarged back (bilinear), as a
    20x tile resampled to a 40x target looks; the mask is untouched. Checked against cv2 directly."""
    import cv2

    from sam_histo.augment import build_train_transform
    from sam_histo.config import AugmentConfig, StainConfig, load_config

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (64, 64)).astype(np.int64)
    aug = AugmentConfig(flip=0.0, rot90=0.0, downscale=1.0, downscale_range=[0.5, 0.5])
    out = build_train_transform(aug, StainConfig(), 64, mask_fill=0, seed=0)(image=image, mask=mask)
    small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)
    want = cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert np.abs(out["image"].astype(int) - want.astype(int)).max() <= 1
    np.testing.assert_array_equal(out["mask"], mask)
    off = build_train_transform(AugmentConfig(flip=0.0, rot90=0.0), StainConfig(), 64, mask_fill=0, seed=0)
    np.testing.assert_array_equal(off(image=image, mask=mask)["image"], image)
    with pytest.raises(ConfigError, match=r"augment.downscale_range=\[0.5, 2.0\] must be \[low, high\]"):
        load_config("demo", ["augment.downscale_range=[0.5, 2.0]"])


@pytest.mark.parametrize("k", [2, 3])
def test_shrunk_labels_take_each_footprints_majority_aligned_with_the_shrunk_image(k):
    """Shrinking by an integer k: each new pixel's id is the most common id of its k x k block (an oracle
    loop; ties to the smaller id), the block the area-averaged image pixel is made of; nearest would take a
    corner pixel instead. Instance-sized id sets keep nearest."""
    rng = np.random.default_rng(k)
    labels = rng.integers(0, 4, (9 * k, 7 * k)).astype(np.int64)
    got = R.resample_labels(labels, 1.0 / k)
    want = np.empty((9, 7), np.int64)
    for i in range(9):
        for j in range(7):
            want[i, j] = np.bincount(labels[i * k:(i + 1) * k, j * k:(j + 1) * k].ravel(), minlength=4).argmax()
    assert got.dtype == labels.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(R.resample_labels(labels - 2, 1.0 / k), want - 2)  # negative ids: np.unique
    # a vertical edge one old pixel right of a block start: the image says mostly left, and so do the labels
    edge = np.zeros((4 * k, 4 * k), np.uint8)
    edge[:, 1:] = 1
    image = (edge * 200).astype(np.uint8)
    np.testing.assert_array_equal(R.resample_labels(edge, 1.0 / k), R.resample_image(image, 1.0 / k) > 100)
    many = rng.permutation(64 * k * k).reshape(8 * k, 8 * k)  # more than VOTE_MAX_IDS ids
    np.testing.assert_array_equal(R.resample_labels(many, 1.0 / k), many[::k, ::k])  # nearest: the corner
