"""The folder adapter (data.dataset=folder) on written fixtures: formats, pairing, mappings, splits, errors."""
import numpy as np
import pytest
import tifffile
from PIL import Image

from sam_histo.config import ConfigError, load_config
from sam_histo.data.dataset import build_dataset, class_spec
from sam_histo.data.types import DataError


def _cfg(root, *extra):
    return load_config("folder", [f"data.root={root}", "data.classes=[background,nucleus]", "data.tile_size=64",
                                  "data.tile_stride=64", "data.val_fraction=0", *extra]).data


def _nuclei(size, seed, value=255):
    """A 0/value mask with a few discs and an H&E-like image whose nuclei are dark (the same layout)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    for _ in range(4):
        cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(4, 8))]
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value
    img = np.where(mask[..., None] > 0, [70, 40, 140], [235, 170, 200]).astype(np.uint8)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return img, mask


def _write(root, stem, img, mask, img_ext=".tif", mask_ext=".png"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    if img_ext in (".tif", ".tiff"):
        tifffile.imwrite(root / "images" / f"{stem}{img_ext}", img)
    else:
        Image.fromarray(img).save(root / "images" / f"{stem}{img_ext}")
    Image.fromarray(mask).save(root / "masks" / f"{stem}{mask_ext}")


@pytest.fixture()
def binary_root(tmp_path):
    """Three .tif images with 0/255 .png masks, MoNuSeg style (two slides of one patient share a prefix)."""
    for k, stem in enumerate(["TCGA-AA-0001-01A", "TCGA-AA-0001-01B", "TCGA-BB-0002-01A"]):
        _write(tmp_path, stem, *_nuclei(64, k))
    return tmp_path


def test_tif_images_with_0_255_png_masks_need_only_the_class_names(binary_root, caplog):
    ds = build_dataset(_cfg(binary_root), "all")
    assert ds.classes.names == ("background", "nucleus") and ds.classes.ignore_index is None
    assert len(ds) == 3 and "value 255 is 'nucleus'" in ds.note
    for i in range(3):
        s = ds[i]
        raw = np.asarray(Image.open(s.meta["mask"]))
        assert s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3)
        np.testing.assert_array_equal(s.image, tifffile.imread(s.meta["source"]))
        np.testing.assert_array_equal(s.mask, (raw == 255).astype(np.int64))
    counts = ds.class_counts(progress=False)  # from the cached histograms, equal to the decoded masks
    np.testing.assert_array_equal(counts, [np.bincount(ds.label(i).ravel(), minlength=2) for i in range(3)])


def test_stats_command_says_how_the_binary_masks_were_read(binary_root, capsys):
    from sam_histo.cli import main

    assert main(["stats", "--config", "folder", f"data.root={binary_root}", "data.classes=[background,nucleus]",
                 "data.val_fraction=0"]) == 0
    assert "binary masks: value 0 is 'background' and value 255 is 'nucleus'" in capsys.readouterr().out


def test_16_bit_rgba_and_grey_images_become_rgb_uint8(tmp_path):
    img, mask = _nuclei(64, 0, value=1)
    _write(tmp_path, "deep", (img.astype(np.uint16) * 257), mask)  # 16-bit TIFF, full range
    rgba = np.dstack([img, np.full((64, 64), 7, np.uint8)])
    _write(tmp_path, "alpha", rgba, mask, img_ext=".png")
    _write(tmp_path, "grey", img[..., 0], mask, img_ext=".png")
    _write(tmp_path, "greytif", img[..., 1], mask, img_ext=".tiff")
    ds = build_dataset(_cfg(tmp_path), "all")
    by = {s.meta["source"].split("/")[-1]: s for s in ds}
    np.testing.assert_array_equal(by["deep.tif"].image, img)
    np.testing.assert_array_equal(by["alpha.png"].image, img)
    np.testing.assert_array_equal(by["grey.png"].image, np.repeat(img[..., :1], 3, axis=2))
    np.testing.assert_array_equal(by["greytif.tiff"].image, np.repeat(img[..., 1:2], 3, axis=2))
    assert all(s.image.dtype == np.uint8 for s in ds)
    assert "mask values: 0 -> background, 1 -> nucleus" == ds.note  # 0/1 masks: value = id


def test_stems_pair_across_extensions_and_alternative_folder_names(tmp_path):
    img, mask = _nuclei(64, 0)
    (tmp_path / "img").mkdir()
    (tmp_path / "labelcol").mkdir()
    Image.fromarray(img).save(tmp_path / "img" / "a.jpg", quality=100)
    tifffile.imwrite(tmp_path / "labelcol" / "a.tiff", mask)
    Image.fromarray(img).save(tmp_path / "img" / "b.bmp")
    Image.fromarray(mask).save(tmp_path / "labelcol" / "b.png")
    ds = build_dataset(_cfg(tmp_path), "all")
    assert sorted(m["source"].split("/")[-1] for m in map(ds.meta, range(len(ds)))) == ["a.jpg", "b.bmp"]
    assert all(ds.meta(i)["mask"].split("/")[-1].split(".")[0] == ds.meta(i)["source"].split("/")[-1].split(".")[0]
               for i in range(len(ds)))


def test_large_images_are_tiled_to_the_border_and_small_ones_kept_whole(tmp_path):
    big_img, big_mask = _nuclei(150, 1)
    _write(tmp_path, "big", big_img, big_mask)
    _write(tmp_path, "small", *_nuclei(40, 2))
    ds = build_dataset(_cfg(tmp_path), "all")
    tiles = [(ds.meta(i)["y"], ds.meta(i)["x"]) for i in range(len(ds)) if "big" in ds.meta(i)["source"]]
    assert sorted(tiles) == [(y, x) for y in (0, 64, 86) for x in (0, 64, 86)]
    for i in range(len(ds)):
        s, (y, x) = ds[i], (ds.meta(i)["y"], ds.meta(i)["x"])
        if "big" in s.source:
            np.testing.assert_array_equal(s.image, big_img[y:y + 64, x:x + 64])
            np.testing.assert_array_equal(s.mask, big_mask[y:y + 64, x:x + 64] // 255)
        else:
            assert s.image.shape == (40, 40, 3) and s.mask.shape == (40, 40)


def test_mask_values_ignore_value_and_multi_class_maps(tmp_path):
    img, _ = _nuclei(64, 0)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 20:40], mask[:, 40:60], mask[:, 60:] = 10, 20, 99
    _write(tmp_path, "m", img, mask)
    cfg = load_config("folder", [f"data.root={tmp_path}", "data.classes=[bg,a,b]", "data.tile_size=64", "data.tile_stride=64",
                                 "data.val_fraction=0", "data.mask_values={bg: 0, a: [10], b: 20}",
                                 "data.ignore_value=99"]).data
    spec = class_spec(cfg)
    assert spec.names == ("bg", "a", "b", "ignore") and spec.ignore_index == 3
    s = build_dataset(cfg, "all")[0]
    assert (s.mask[:, :20] == 0).all() and (s.mask[:, 20:40] == 1).all() and (s.mask[:, 40:60] == 2).all()
    assert (s.mask[:, 60:] == 3).all()


def test_group_regex_keeps_the_tiles_of_one_slide_together(tmp_path):
    for slide in range(6):
        for part in range(3):
            _write(tmp_path, f"TCGA-{slide:02d}-X_part{part}", *_nuclei(32, slide * 3 + part))
    cfg = _cfg(tmp_path, "data.group_regex=^(TCGA-\\d+)", "data.val_fraction=0.34", "data.test_fraction=0.34")
    where = {}
    for split in ("train", "val", "test"):
        ds = build_dataset(cfg, split)
        for i in range(len(ds)):
            where.setdefault(ds.meta(i)["slide"], set()).add(split)
    assert len(where) == 6 and all(len(s) == 1 for s in where.values())
    assert {next(iter(s)) for s in where.values()} == {"train", "val", "test"}


def test_explicit_split_lists(binary_root):
    (binary_root / "splits").mkdir()
    (binary_root / "splits" / "train.txt").write_text("TCGA-AA-0001-01A.tif\nTCGA-AA-0001-01B  # a comment\n")
    (binary_root / "splits" / "val.txt").write_text("TCGA-BB-0002-01A\n")
    cfg = _cfg(binary_root, "data.split=files")
    assert len(build_dataset(cfg, "train")) == 2
    assert [build_dataset(cfg, "val").meta(0)["source"].endswith("TCGA-BB-0002-01A.tif")] == [True]
    (binary_root / "splits" / "val.txt").write_text("TCGA-BB-0002-01A\nTCGA-AA-0001-01A\n")
    with pytest.raises(DataError, match=r"val.txt line 2: 'TCGA-AA-0001-01A' is already in splits/train.txt"):
        build_dataset(cfg, "val")
    (binary_root / "splits" / "val.txt").write_text("nope\n")
    with pytest.raises(DataError, match=r"val.txt line 1: 'nope' is not an image of the folder"):
        build_dataset(cfg, "val")


# ------------------------------------------------------------------------------------------ errors
def _error(root, *extra) -> str:
    with pytest.raises((DataError, ConfigError)) as e:
        build_dataset(_cfg(root, *extra), "all")
    return str(e.value)


def test_an_image_without_a_mask_is_named_with_the_fix(binary_root):
    (binary_root / "masks" / "TCGA-BB-0002-01A.png").unlink()
    err = _error(binary_root)
    assert "TCGA-BB-0002-01A.tif: no mask in" in err and "add it or remove the image" in err
    ds = build_dataset(_cfg(binary_root, "data.on_error=skip"), "all")
    assert len(ds) == 2


def test_two_masks_for_one_image(binary_root):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(binary_root / "masks" / "TCGA-BB-0002-01A.tif")
    err = _error(binary_root)
    assert "TCGA-BB-0002-01A.png and TCGA-BB-0002-01A.tif are two masks for the image" in err
    assert "keep one mask per image" in err


def test_a_value_not_in_the_mapping(binary_root):
    mask = np.asarray(Image.open(binary_root / "masks" / "TCGA-BB-0002-01A.png")).copy()
    mask[:4, :4] = 128  # three values: the binary rule no longer applies
    Image.fromarray(mask).save(binary_root / "masks" / "TCGA-BB-0002-01A.png")
    err = _error(binary_root)
    assert "TCGA-AA-0001-01A.png: mask value(s) [255] are not in the mapping" in err
    assert "add them to data.mask_values" in err and "data.ignore_value" in err
    err = _error(binary_root, "data.mask_values={nucleus: 255}")
    assert "TCGA-BB-0002-01A.png: mask value(s) [128] are not in the mapping" in err
    assert len(build_dataset(_cfg(binary_root, "data.mask_values={nucleus: 255}", "data.ignore_value=128"), "all")) == 3


def test_image_and_mask_sizes_differ(binary_root):
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(binary_root / "masks" / "TCGA-BB-0002-01A.png")
    err = _error(binary_root)
    assert "TCGA-BB-0002-01A.tif: image is 64x64 but its mask" in err and "is 48x32" in err
    assert "re-export the pair at the same resolution" in err


def test_config_errors_name_the_key(binary_root):
    with pytest.raises(ConfigError, match=r"needs the class names in id order"):
        class_spec(load_config("folder", [f"data.root={binary_root}"]).data)
    assert "data.mask_values names class 'nucleos'" in _error(binary_root, "data.mask_values={nucleos: 255}")
    assert "value 3 is given to both" in _error(binary_root, "data.mask_values={background: 3, nucleus: 3}")
    assert "no images folder" in _error(binary_root / "masks")
    assert "data.image_dir='pics'" in _error(binary_root, "data.image_dir=pics")
    with pytest.raises(ConfigError, match="data.split=files is not supported by data.dataset=bcss"):
        load_config("bcss", ["data.split=files"])
