"""`sam-histo bench learn`: its data loading, folds, magnifications and baseline on two generated tiles (the
benchmark itself trains for minutes on real tiles and is not part of the suite)."""
import numpy as np
import pytest
import tifffile
from PIL import Image

from sam_histo.bench import learn
from sam_histo.data.types import DataError

NUCLEUS, BACKGROUND = (95, 45, 150), (235, 190, 215)  # haematoxylin purple on eosin pink


def _tile(rng, size=96, n=7):
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for _ in range(n):
        cy, cx, r = rng.integers(10, size - 10, 2).tolist() + [int(rng.integers(4, 8))]
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    image = np.where(mask[..., None], NUCLEUS, BACKGROUND).astype(np.int16)
    image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    return image, mask


@pytest.fixture()
def monuseg(tmp_path):
    """Two tiles in the MoNuSeg layout: Test_Folder/img/*.tif (72 dpi placeholder tags) + labelcol/*.png."""
    rng = np.random.default_rng(0)
    img_dir, mask_dir = tmp_path / "Test_Folder" / "img", tmp_path / "Test_Folder" / "labelcol"
    img_dir.mkdir(parents=True)
    mask_dir.mkdir()
    truth = {}
    for name in ("TCGA-AA-0001-01A", "TCGA-BB-0002-01A"):
        image, mask = _tile(rng)
        tifffile.imwrite(img_dir / f"{name}.tif", image, photometric="rgb", resolution=(72, 72),
                         resolutionunit=tifffile.RESUNIT.INCH)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{name}.png")
        truth[name] = (image, mask)
    (img_dir / "unpaired.tif").write_bytes((img_dir / "TCGA-AA-0001-01A.tif").read_bytes())
    return tmp_path, truth


def test_loads_monuseg_pairs_as_binary_nucleus_samples_with_their_resolution(monuseg):
    root, truth = monuseg
    pairs = learn.find_pairs(root)
    assert [p[0].stem for p in pairs] == sorted(truth)  # the unpaired image is left out
    tiles = learn.load_tiles(pairs, 0.25)
    for tile in tiles:
        image, mask = truth[tile.meta["mask"].rsplit("/", 1)[1][:-4]]
        np.testing.assert_array_equal(tile.image, image)
        np.testing.assert_array_equal(tile.mask, mask.astype(np.int64))  # 255 -> id 1
        assert tile.mpp == 0.25 and tile.meta["mpp_source"] == "data.mpp"  # 72 dpi is no resolution
    assert learn.load_tiles(pairs, None)[0].meta["mpp_source"] == "unknown"


def test_finding_no_pairs_names_the_folder_and_the_layouts(tmp_path):
    with pytest.raises(DataError, match=r"no image/mask pairs; expected one of Test_Folder/img/ \+ "
                                        r"Test_Folder/labelcol/, img/ \+ labelcol/, images/ \+ masks/"):
        learn.find_pairs(tmp_path)


def test_simulated_20x_halves_the_tile_and_doubles_its_mpp(monuseg):
    tiles = learn.load_tiles(learn.find_pairs(monuseg[0]), 0.25)
    low = learn.at_magnification(tiles[0], 0.5)
    assert low.image.shape == (48, 48, 3) and low.mask.shape == (48, 48) and low.mpp == 0.5
    assert set(np.unique(low.mask)) <= {0, 1}
    assert abs(low.mask.mean() - tiles[0].mask.mean()) < 0.03  # the nucleus fraction is kept
    assert learn.at_magnification(tiles[0], 1.0) is tiles[0]


def test_baseline_finds_the_nuclei_and_drops_specks_by_area_in_microns(monuseg):
    tiles = learn.load_tiles(learn.find_pairs(monuseg[0]), 0.25)
    for tile in tiles:
        for scale in (1.0, 0.5):
            t = learn.at_magnification(tile, scale)
            assert learn.dice(learn.otsu_nuclei(t.image, t.mpp), t.mask) > 0.9
    image = tiles[0].image.copy()
    image[2:6, 2:6] = NUCLEUS  # a 16 px speck = 1 um^2 at 0.25 um/px
    assert not learn.otsu_nuclei(image, 0.25, min_area_um2=2.0)[2:6, 2:6].any()
    assert learn.otsu_nuclei(image, 0.25, min_area_um2=0.5)[2:6, 2:6].all()


def test_dice_folds_and_the_table():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2] = True
    b[:, :2] = True
    assert learn.dice(a, b) == pytest.approx(2 * 4 / 16) and learn.dice(a & False, b & False) == 1.0
    folds = learn.folds_by_tile(14, 3, seed=0)
    assert sorted(i for f in folds for i in f) == list(range(14)) and sorted(map(len, folds)) == [4, 5, 5]
    with pytest.raises(ValueError, match="--folds 1 must be between 2"):
        learn.folds_by_tile(14, 1)
    rows = [[{"mag": m, "ours": o, "baseline": 0.7} for m, o in (("40x", 0.8), ("20x", 0.75))],
            [{"mag": m, "ours": o, "baseline": 0.6} for m, o in (("40x", 0.7), ("20x", 0.62))]]
    s = learn.summarise(rows)
    assert s["40x"]["ours"] == [0.8, 0.7] and s["20x"]["margin_min"] == pytest.approx(0.02)
    out = {"dice": s, "ratio": 1.1, "goal_met": False, "tiles": 4, "folds": 2, "wall_s": 1.0, "train_s": 0.5,
           "cpu_s": 1.0, "machine": "test", "jobs": 2}
    table = learn.format_table(out)
    assert "| 1 | 0.700 | 0.600 | 0.620 | 0.600 |" in table and "NOT met" in table and "(2 at a time)" in table
