"""The COCO adapter on a JSON written with pycocotools from synthetic instance maps (round trip equal)."""
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_histo.config import ConfigError, load_config
from sam_histo.data.dataset import build_dataset, class_spec
from sam_histo.data.types import DataError

CATS = [{"id": 3, "name": "nucleus"}, {"id": 7, "name": "vessel"}, {"id": 9, "name": "artefact"}]


def _instance_map(seed, h=48, w=64):
    """Non-overlapping objects: instance ids 1..K (in decreasing area) with a category each."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((h, w), np.int64)
    boxes = [(4, 4, 24, 30), (28, 34, 44, 60), (30, 6, 40, 16)]
    cats = [7, 3, 3] if seed % 2 == 0 else [3, 7, 9]
    for k, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        dy, dx = rng.integers(0, 3, 2)
        inst[y0 + dy:y1, x0 + dx:x1] = k
    return inst, cats


def write_coco(root, n=4, polygon_for=None):
    (root / "images").mkdir(parents=True)
    images, anns, truth = [], [], {}
    for i in range(n):
        inst, cats = _instance_map(i)
        h, w = inst.shape
        name = f"sub/tile_{i}.png" if i == 0 else f"tile_{i}.png"
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / "images" / name)
        images.append({"id": 100 + i, "file_name": name, "height": h, "width": w})
        for k, cat in enumerate(cats, start=1):
            m = np.asfortranarray((inst == k).astype(np.uint8))
            rle = mask_utils.encode(m)
            seg = {"size": rle["size"], "counts": rle["counts"].decode()}
            if polygon_for == (i, k):  # a rectangle as a polygon on pixel borders
                ys, xs = np.nonzero(m)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                seg = [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat, "segmentation": seg,
                         "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle)), "iscrowd": 0})
        truth[100 + i] = (inst, cats)
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    return truth


def _cfg(root, *extra):
    return load_config(None, ["data.dataset=coco", f"data.root={root}", "data.val_fraction=0", *extra]).data


def test_round_trip_class_and_instance_maps(tmp_path):
    truth = write_coco(tmp_path, polygon_for=(1, 1))
    ds = build_dataset(_cfg(tmp_path), "all")
    assert ds.classes.names == ("background", "nucleus", "vessel", "artefact")
    ids = {"nucleus": 1, "vessel": 2, "artefact": 3}
    by_cat = {c["id"]: ids[c["name"]] for c in CATS}
    assert len(ds) == 4
    for i in range(len(ds)):
        s = ds[i]
        inst, cats = truth[s.meta["image_id"]]
        np.testing.assert_array_equal(s.instances, inst)  # ids 1..K by decreasing area, as written
        expected = np.zeros_like(inst)
        for k, cat in enumerate(cats, start=1):
            expected[inst == k] = by_cat[cat]
        np.testing.assert_array_equal(s.mask, expected)
        np.testing.assert_array_equal(ds.label(i), expected)
    assert ds.meta(0)["source"].endswith("images/sub/tile_0.png")


def test_classes_by_name_and_left_out_categories(tmp_path):
    truth = write_coco(tmp_path)
    ds = build_dataset(_cfg(tmp_path, "data.classes=[bg,vessel]"), "all")
    assert ds.classes.names == ("bg", "vessel")
    s = ds[0]
    inst, cats = truth[s.meta["image_id"]]
    np.testing.assert_array_equal(s.mask, np.isin(inst, [k for k, c in enumerate(cats, 1) if c == 7]).astype(int))
    with pytest.raises(ConfigError, match=r"data.classes names 'vesel', which is no category .*did you mean 'vessel'"):
        build_dataset(_cfg(tmp_path, "data.classes=[bg,vesel]"), "all")
    assert class_spec(_cfg(tmp_path)).names[0] == "background"


def test_bad_files_are_named(tmp_path):
    write_coco(tmp_path, n=2)
    tree = json.loads((tmp_path / "annotations.json").read_text())
    tree["images"][1]["file_name"] = "../../etc/passwd"
    (tmp_path / "annotations.json").write_text(json.dumps(tree))
    ds = build_dataset(_cfg(tmp_path), "all")
    with pytest.raises(DataError, match=r"file_name '../../etc/passwd' leaves the image folder"):
        [ds[i] for i in range(len(ds))]
    tree["images"][1]["file_name"] = "tile_1.png"
    tree["images"][1]["height"] = 50
    tree["annotations"][0]["image_id"] = 5
    (tmp_path / "annotations.json").write_text(json.dumps(tree))
    with pytest.raises(DataError, match=r"annotations.json: annotation 1 names an image_id or category_id"):
        build_dataset(_cfg(tmp_path), "all")
    tree["annotations"][0]["image_id"] = 100
    (tmp_path / "annotations.json").write_text(json.dumps(tree))
    ds = build_dataset(_cfg(tmp_path), "all")
    with pytest.raises(DataError, match=r"tile_1.png: the image is 64x48 but .*annotations.json says 64x50"):
        [ds[i] for i in range(len(ds))]
    with pytest.raises(DataError, match=r"nope.json not found: set data.annotations"):
        build_dataset(_cfg(tmp_path, "data.annotations=nope.json"), "all")
