"""LGG and vesicle adapters on synthetic data, the tissue mask, and the synthetic writers themselves."""
import shutil

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.color import rgb2hed, rgb2hsv
from skimage.measure import label

from sam_histo.config import TissueConfig, load_config
from sam_histo.data.dataset import build_dataset
from sam_histo.data.types import DataError
from sam_histo.data.synth.layouts import render_lgg_crop, write_lgg
from sam_histo.stain.tissue import tissue_mask


def lgg_cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.dataset=lgg", *extra]).data


def ves_cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.dataset=vesicle", "data.split=z", *extra]).data


# ---------------------------------------------------------------------------------------------- tissue
def test_tissue_mask_thresholds_match_skimage_hsv():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    hsv = rgb2hsv(rgb)
    expected = (hsv[..., 1] * 255 > 40) & (hsv[..., 2] * 255 < 200)
    got = tissue_mask(rgb, TissueConfig(sat_min=40, val_max=200, kernel=1))
    assert (got == expected).mean() > 0.999  # only float ties at the thresholds may differ


def test_tissue_mask_close_fills_holes_and_open_removes_specks():
    rgb = np.full((40, 40, 3), 250, np.uint8)  # glass
    rgb[5:25, 5:25] = (180, 60, 160)  # stained tissue
    rgb[15, 15] = 250  # a one-pixel hole inside it
    rgb[35, 35] = (180, 60, 160)  # a one-pixel speck
    m = tissue_mask(rgb, TissueConfig(kernel=5))
    assert m[15, 15] and not m[35, 35] and m[6:24, 6:24].all() and not m[30:, :].any()


def test_tissue_mask_recovers_rendered_crop_tissue():
    rgb, truth = render_lgg_crop(np.random.default_rng(3), (120, 140), 3, (1.0, 1.0))
    m = tissue_mask(rgb, TissueConfig())
    assert (m == truth).mean() > 0.95


# ------------------------------------------------------------------------------------------------- LGG
def test_lgg_full_images_and_crops(lgg_root):
    ds = build_dataset(lgg_cfg(lgg_root), "all")
    assert ds.classes.names == ("background", "CT", "LE", "IT") and ds.classes.ignore_index is None
    assert len(ds) == 6
    crops = [i for i in range(len(ds)) if ds.meta(i)["crop"]]
    assert len(crops) == 3
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.mask.dtype == np.int64
        assert s.mask.shape == s.image.shape[:2] and set(np.unique(s.mask)) <= {0, 1, 2, 3}
        if i not in crops:
            np.testing.assert_array_equal(s.mask, np.asarray(Image.open(s.meta["mask"])))
    for i in crops:
        s = ds[i]
        cls = ("CT", "LE", "IT").index(s.meta["source"].split("_")[-2][:2]) + 1
        assert set(np.unique(s.mask)) == {0, cls}
        border = np.concatenate([s.mask[:3].ravel(), s.mask[-3:].ravel(), s.mask[:, :3].ravel(),
                                 s.mask[:, -3:].ravel()])
        assert (border == 0).all()  # the white margin stays background
        assert 0.5 < (s.mask == cls).mean() < 0.85  # tissue coverage of a crop (60-75 % rendered)


def test_lgg_crop_masks_cached_and_recomputed_when_thresholds_change(lgg_root, tmp_path):
    root = tmp_path / "lgg"
    shutil.copytree(lgg_root, root, ignore=shutil.ignore_patterns(".sam_histo_cache"))
    ds = build_dataset(lgg_cfg(root), "all")
    crops = [i for i in range(len(ds)) if ds.meta(i)["crop"]]
    assert all((ds.label(i) > 0).mean() > 0.5 for i in crops)
    folder = root / ".sam_histo_cache" / "lgg_crop_masks"
    first = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    assert len(first) == 3 and (folder / "manifest.json").is_file()
    build_dataset(lgg_cfg(root), "all")
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} == first  # computed once
    with pytest.raises(DataError, match="its tissue mask is empty"):  # nothing is that saturated: refused,
        build_dataset(lgg_cfg(root, "data.tissue.sat_min=254"), "all")  # never silently all background
    strict = build_dataset(lgg_cfg(root, "data.tissue.sat_min=254", "data.on_error=skip"), "all")
    assert not any(strict.meta(i)["crop"] for i in range(len(strict))) and len(strict) == len(ds) - len(crops)
    assert len(list(folder.glob("*.png"))) == 3


def test_lgg_split_by_slide(lgg_root):
    cfg = lgg_cfg(lgg_root, "data.val_fraction=0.34")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    ts = {train.meta(i)["slide"] for i in range(len(train))}
    vs = {val.meta(i)["slide"] for i in range(len(val))}
    assert ts and vs and not ts & vs and len(train) + len(val) == 6


# --------------------------------------------------------------------------------------------- vesicle
@pytest.mark.parametrize("fmt", ["h5", "tif"])
def test_vesicle_slices_volumes_and_z_split(vesicle_root, fmt):
    extra = [] if fmt == "h5" else ["data.volume=volume.tif", "data.labels=labels.tif"]
    cfg = ves_cfg(vesicle_root, "data.val_fraction=0.25", "data.test_fraction=0.25", *extra)
    if fmt == "h5":
        with h5py.File(vesicle_root / "labels.h5") as f:
            labels = f["main"][()]
    else:
        labels = tifffile.imread(vesicle_root / "labels.tif")
    every = build_dataset(cfg, "all")
    assert every.classes.names == ("background", "vesicle") and len(every) == 12
    np.testing.assert_array_equal(every.label_volume(), labels)
    s = every[5]
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert (s.image[..., 0] == s.image[..., 2]).all() and s.meta["z"] == 5
    np.testing.assert_array_equal(s.instances, labels[5])
    np.testing.assert_array_equal(s.mask, (labels[5] > 0).astype(np.int64))
    zs = {sp: [build_dataset(cfg, sp).meta(i)["z"] for i in range(len(build_dataset(cfg, sp)))]
          for sp in ("train", "val", "test")}
    assert zs["train"] == list(range(6)) and zs["val"] == [6, 7, 8] and zs["test"] == [9, 10, 11]
    assert build_dataset(cfg, "val").volume().shape == (3, 64, 64)


# ------------------------------------------------------------------------------------------- synthetic
def test_synthetic_vesicles_have_dark_membranes_and_realistic_sizes(vesicle_root):
    with h5py.File(vesicle_root / "labels.h5") as f:
        labels = f["main"][()]
    with h5py.File(vesicle_root / "volume.h5") as f:
        vol = f["main"][()]
    sizes = np.bincount(labels.ravel())[1:]
    assert len(sizes) == 8 and sizes.min() >= 200 and sizes.max() <= 1500
    assert label(labels > 0).max() == 8  # separate vesicles never touch
    from scipy.ndimage import binary_erosion

    shell = (labels > 0) & ~binary_erosion(labels > 0)
    assert vol[shell].mean() < vol[labels == 0].mean() - 30


def test_synthetic_is_deterministic_per_seed(tmp_path):
    a, b, c = (write_lgg(tmp_path / k, n=2, seed=s, size=64) for k, s in (("a", 1), ("b", 1), ("c", 2)))
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_synthetic_he_follows_stain_physics_and_class_shares(bcss_root):
    """Colour deconvolution (skimage, an independent oracle) finds more hematoxylin in lymphocyte
    regions than in stroma, and more eosin in stroma; blood vessels stay rare; names span sites."""
    h_lym, h_str, e_lym, e_str, counts = [], [], [], [], np.zeros(256)
    names = sorted(p.name for p in (bcss_root / "images").iterdir())
    for name in names:
        hed = rgb2hed(np.asarray(Image.open(bcss_root / "images" / name)))
        codes = np.asarray(Image.open(bcss_root / "masks" / name))
        counts += np.bincount(codes.ravel(), minlength=256)
        if (codes == 3).sum() > 500 and (codes == 2).sum() > 500:
            h_lym.append(hed[..., 0][codes == 3].mean()), h_str.append(hed[..., 0][codes == 2].mean())
            e_lym.append(hed[..., 1][codes == 3].mean()), e_str.append(hed[..., 1][codes == 2].mean())
    assert h_lym and np.mean(h_lym) > np.mean(h_str) and np.mean(e_str) > np.mean(e_lym)
    frac = counts / counts[1:].sum()
    assert 0 < frac[18] < 0.06 and frac[1] > 3 * frac[18] and counts[0] > 0
    assert len({n.split("-")[1] for n in names}) >= 3 and all(n.startswith("TCGA-") for n in names)
