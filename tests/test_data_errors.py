"""Bad input: each case fails with a message that names the file or key and the fix."""
import logging

import h5py
import numpy as np
import pytest
from PIL import Image

from sam_histo.config import ConfigError, load_config
from sam_histo.data.bcss import write_code_table
from sam_histo.data.dataset import build_dataset, class_spec
from sam_histo.data.types import DataError


def png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def tiny_bcss(root, n=2):
    """n 32 x 32 ROIs of codes 1 (tumor) and 2 (stroma) with their code table."""
    write_code_table(root)
    for i in range(n):
        name = f"TCGA-A{i}-000{i}-DX1_xmin0_ymin0_MPP-0.2500.png"
        png(root / "images" / name, np.full((32, 32, 3), 200))
        png(root / "masks" / name, np.tile([1, 2], (32, 16)))
    return root


def cfg(root, dataset="bcss", *extra):
    split = ["data.split=z"] if dataset == "vesicle" else []
    return load_config(None, [f"data.root={root}", f"data.dataset={dataset}", "data.tile_size=32",
                              "data.tile_stride=32", *split, *extra]).data


def test_image_without_mask_names_the_file(tmp_path):
    root = tiny_bcss(tmp_path)
    victim = sorted((root / "masks").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match=rf"{victim.name}: no mask .*masks/<same name>"):
        build_dataset(cfg(root), "all")


def test_image_and_mask_sizes_differ(tmp_path):
    root = tiny_bcss(tmp_path)
    victim = sorted((root / "masks").iterdir())[1]
    png(victim, np.ones((20, 24)))
    with pytest.raises(DataError, match=r"image is 32x32 but its mask .* is 24x20"):
        build_dataset(cfg(root), "all")


def test_mask_codes_absent_from_the_code_table(tmp_path):
    root = tiny_bcss(tmp_path)
    victim = sorted((root / "masks").iterdir())[0]
    png(victim, np.full((32, 32), 57))
    with pytest.raises(DataError, match=rf"{victim.name}: codes \[57\] are absent from gtruth_codes.tsv"):
        build_dataset(cfg(root), "all")


def test_unreadable_image(tmp_path):
    root = tiny_bcss(tmp_path)
    victim = sorted((root / "images").iterdir())[0]
    victim.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=rf"{victim.name}: cannot read the image"):
        build_dataset(cfg(root), "all")


def test_empty_or_missing_data_root(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="gtruth_codes.tsv not found: copy meta/gtruth_codes.tsv"):
        build_dataset(cfg(empty), "all")
    with pytest.raises(DataError, match="no LGG images"):
        build_dataset(cfg(empty, "lgg"), "all")
    write_code_table(empty)
    with pytest.raises(DataError, match="images: no images found"):
        build_dataset(cfg(empty), "all")
    with pytest.raises(DataError, match="data.root is not set"):
        build_dataset(load_config(None, []).data, "all")
    with pytest.raises(DataError, match="is not a folder"):
        build_dataset(cfg(tmp_path / "nowhere"), "all")


def test_unknown_config_key_in_a_data_section():
    with pytest.raises(ConfigError, match=r"unknown config key 'data.tile_sise'.*did you mean 'tile_size'"):
        load_config(None, ["data.tile_sise=256"])
    with pytest.raises(ConfigError, match=r"unknown config key 'sampling.over_sample'"):
        load_config(None, ["sampling.over_sample=auto"])


def test_data_cross_field_rules():
    with pytest.raises(ConfigError, match="data.split=z splits a volume"):
        load_config(None, ["data.split=z"])
    with pytest.raises(ConfigError, match="vesicle cuts its volume along z"):
        load_config(None, ["data.dataset=vesicle"])
    with pytest.raises(ConfigError, match="institute needs data.val_sites"):
        load_config(None, ["data.split=institute"])
    with pytest.raises(ConfigError, match="does not match the lgg label codes"):
        class_spec(load_config(None, ["data.dataset=lgg", "data.classes=[bg, tumour]"]).data)


def test_grouping_class_without_codes_and_unknown_code_names(tmp_path):
    root = tiny_bcss(tmp_path)
    with pytest.raises(DataError, match=r"class 'gland' in data.classes gets no BCSS code"):
        build_dataset(cfg(root, "bcss", "data.classes=[tumor, gland]"), "all")
    with pytest.raises(DataError, match=r"names code 'tumour' absent from gtruth_codes.tsv; did you mean 'tumor'"):
        build_dataset(cfg(root, "bcss", "data.classes=[tumor]", "data.grouping={tumor: [tumour]}"), "all")
    with pytest.raises(DataError, match=r"'stroma' is grouped into both 'tumor' and 'stroma'"):
        build_dataset(cfg(root, "bcss", "data.classes=[tumor, stroma]",
                          "data.grouping={tumor: [tumor, stroma], stroma: [stroma]}"), "all")


def test_on_error_skip_logs_every_file_and_the_count(tmp_path, caplog):
    root = tiny_bcss(tmp_path, n=4)
    images = sorted((root / "images").iterdir())
    (root / "masks" / images[0].name).unlink()
    images[1].write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="sam_histo.data"):
        ds = build_dataset(cfg(root, "bcss", "data.on_error=skip"), "all")
    assert len(ds) == 2
    text = caplog.text
    assert f"skipping {images[0]}: no mask" in text
    assert f"skipping {images[1]}: cannot read the image" in text
    assert "skipped 2 file(s)" in text


def test_lgg_full_image_needs_a_mask_but_crops_do_not(tmp_path):
    png(tmp_path / "crops" / "1234_01_IT1_preprocessed.png", np.full((16, 16, 3), (200, 100, 150)))  # tissue-pink
    png(tmp_path / "images" / "1234_02_LE3_preprocessed.png", np.full((16, 16, 3), (200, 100, 150)))  # crop in images/
    ds = build_dataset(cfg(tmp_path, "lgg"), "all")
    assert len(ds) == 2 and all(ds.meta(i)["crop"] for i in range(2))
    png(tmp_path / "images" / "1234_03.png", np.full((16, 16, 3), 255))
    with pytest.raises(DataError, match=r"1234_03.png: no mask .*only crops named"):
        build_dataset(cfg(tmp_path, "lgg"), "all")
    png(tmp_path / "masks" / "1234_03.png", np.full((16, 16), 7))
    with pytest.raises(DataError, match=r"1234_03.png: codes \[7\] are absent from the LGG code table"):
        build_dataset(cfg(tmp_path, "lgg"), "all")


def test_vesicle_volume_problems(tmp_path):
    with h5py.File(tmp_path / "volume.h5", "w") as f:
        f.create_dataset("main", data=np.zeros((4, 8, 8), np.uint8))
    with h5py.File(tmp_path / "labels.h5", "w") as f:
        f.create_dataset("main", data=np.zeros((4, 8, 9), np.uint16))
        f.create_dataset("seg", data=np.zeros((4, 8, 8), np.uint16))
    with pytest.raises(DataError, match=r"volume.h5 has shape \(4, 8, 8\) but .*labels.h5 has \(4, 8, 9\)"):
        build_dataset(cfg(tmp_path, "vesicle"), "all")
    with pytest.raises(DataError, match=r"labels.h5: no dataset 'instances'; datasets here: \['main', 'seg'\]"):
        build_dataset(cfg(tmp_path, "vesicle", "data.label_key=instances"), "all")
    assert len(build_dataset(cfg(tmp_path, "vesicle", "data.label_key=seg"), "all")) == 4
