"""BCSS adapter on data written by the synthetic writer, checked against the PNGs read independently."""
import numpy as np
import pytest
from PIL import Image

from sam_histo.config import load_config
from sam_histo.data.bcss import BCSS_CODES, tile_origins
from sam_histo.data.dataset import build_dataset, class_spec

# The default grouping restated by hand (BCSS code -> class id), the oracle for the adapter's mapping.
NAME_TO_ID = {"outside_roi": 0, "tumor": 1, "angioinvasion": 1, "dcis": 1, "stroma": 2,
              "lymphocytic_infiltrate": 3, "plasma_cells": 3, "other_immune_infiltrate": 3,
              "necrosis_or_debris": 4, "blood_vessel": 5}
ORACLE = np.array([NAME_TO_ID.get(name, 6) for name, _ in sorted(BCSS_CODES.items(), key=lambda kv: kv[1])])


def data_cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.tile_size=128", "data.tile_stride=128", *extra]).data


def raw(root, kind, name):
    return np.asarray(Image.open(root / kind / name))


def test_tile_origins_cover_the_axis_and_end_at_the_border():
    assert tile_origins(256, 96, 64) == [0, 64, 128, 160]
    assert tile_origins(256, 128, 128) == [0, 128]
    assert tile_origins(100, 128, 128) == [0]
    for length, tile, stride in [(300, 128, 100), (513, 64, 48)]:
        starts = tile_origins(length, tile, stride)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all() and starts[-1] + tile == length


def test_tiles_shapes_ids_ignore_and_dropped_tiles(bcss_root):
    ds = build_dataset(data_cfg(bcss_root), "all")
    assert ds.classes.names[0] == "outside_roi" and ds.classes.ignore_index == 0
    assert ds.classes == class_spec(data_cfg(bcss_root))
    names = sorted(p.name for p in (bcss_root / "images").iterdir())
    expected = []  # tiles with at least one in-ROI pixel, from the mask files directly
    for name in names:
        codes = raw(bcss_root, "masks", name)
        expected += [(name, y, x) for y in (0, 128) for x in (0, 128) if codes[y:y + 128, x:x + 128].any()]
    assert len(expected) < 4 * len(names)  # the writer leaves some tiles entirely outside the ROI
    got = [(ds.meta(i)["source"].split("/")[-1], ds.meta(i)["y"], ds.meta(i)["x"]) for i in range(len(ds))]
    assert sorted(got) == sorted(expected)
    for i in range(0, len(ds), 3):
        s = ds[i]
        name, y, x = got[i]
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (128, 128) and s.mask.dtype == np.int64
        np.testing.assert_array_equal(s.image, raw(bcss_root, "images", name)[y:y + 128, x:x + 128])
        codes = raw(bcss_root, "masks", name)[y:y + 128, x:x + 128]
        np.testing.assert_array_equal(s.mask, ORACLE[codes])
        assert ((codes == 0) == (s.mask == 0)).all()  # outside_roi -> the ignore id, nothing else does
        assert {"source", "slide", "split", "y", "x"} <= set(s.meta)


def test_small_roi_is_padded_with_white_and_outside_roi(bcss_root):
    ds = build_dataset(data_cfg(bcss_root, "data.tile_size=320", "data.tile_stride=320"), "all")
    s = ds[0]
    assert s.image.shape == (320, 320, 3)
    assert (s.image[256:] == 255).all() and (s.mask[256:] == 0).all() and (s.mask[:, 256:] == 0).all()


def test_class_counts_from_the_index_equal_the_decoded_labels(bcss_root):
    cfg = data_cfg(bcss_root, "data.tile_stride=96")
    ds = build_dataset(cfg, "all")
    counts = ds.class_counts()
    decoded = np.stack([np.bincount(ds.label(i).ravel(), minlength=7) for i in range(len(ds))])
    np.testing.assert_array_equal(counts, decoded)
    again = build_dataset(cfg, "all")  # second build reads the cached index
    np.testing.assert_array_equal(again.class_counts(), counts)
    assert again.fingerprint() == ds.fingerprint()


def test_random_split_keeps_each_slide_in_one_split(bcss_root):
    cfg = data_cfg(bcss_root, "data.val_fraction=0.34", "data.test_fraction=0.34")
    slides = {s: {build_dataset(cfg, s).meta(i)["slide"] for i in range(len(build_dataset(cfg, s)))}
              for s in ("train", "val", "test")}
    assert all(slides.values())
    assert not (slides["train"] & slides["val"] or slides["train"] & slides["test"] or slides["val"] & slides["test"])
    every = build_dataset(cfg, "all")
    assert set().union(*slides.values()) == {every.meta(i)["slide"] for i in range(len(every))}
    other_seed = data_cfg(bcss_root, "data.val_fraction=0.34", "data.test_fraction=0.34", "data.split_seed=5")
    assert sum(len(build_dataset(c, s)) for c in (other_seed,) for s in ("train", "val", "test")) == len(every)


def test_institute_split_by_tcga_site(bcss_root):
    cfg = data_cfg(bcss_root, "data.split=institute", "data.val_sites=[A2]", "data.test_sites=[AR]")
    for split, site in (("val", {"A2"}), ("test", {"AR"}), ("train", {"A1"})):
        ds = build_dataset(cfg, split)
        assert len(ds) and {ds.meta(i)["slide"].split("-")[1] for i in range(len(ds))} == site


def test_custom_grouping_sends_the_rest_to_other(bcss_root):
    cfg = data_cfg(bcss_root, "data.classes=[tumor, other]", "data.grouping={tumor: [tumor, dcis]}")
    ds = build_dataset(cfg, "all")
    assert ds.classes.names == ("outside_roi", "tumor", "other")
    i = 1
    name, y, x = ds.meta(i)["source"].split("/")[-1], ds.meta(i)["y"], ds.meta(i)["x"]
    codes = raw(bcss_root, "masks", name)[y:y + 128, x:x + 128]
    expected = np.where(codes == 0, 0, np.where(codes == 1, 1, 2))
    np.testing.assert_array_equal(ds[i].mask, expected)


def test_exclude_and_undetermined_are_ignored_unless_grouped():
    from sam_histo.data.bcss import BCSS_CODES, code_lut
    from sam_histo.data.types import DataError

    lut = code_lut(BCSS_CODES, [], {})
    assert lut[7] == 0 and lut[15] == 0 and lut[9] == 6 and lut[18] == 5  # exclude, undetermined; fat, vessel
    lut = code_lut(BCSS_CODES, ["tumor", "excluded"], {"tumor": ["tumor"], "excluded": ["exclude"]}, ())
    assert lut[7] == 2
    with pytest.raises(DataError, match=r"names 'exclude', which data.ignore_codes ignores"):
        code_lut(BCSS_CODES, ["tumor", "excluded"], {"tumor": ["tumor"], "excluded": ["exclude"]})
