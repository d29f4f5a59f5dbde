"""COCO RLE of label maps: round trips, area and bbox against numpy, JSON, errors."""
import json

import numpy as np
import pytest
from skimage import measure

from sam_histo.infer.rle import decode, decode_instances, encode_label_map, write_records

NAMES = ["outside_roi", "tumor", "stroma", "necrosis", "vessel"]


def numpy_bbox(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


@pytest.mark.parametrize("seed, shape", [(0, (37, 53)), (1, (64, 64)), (2, (1, 9)), (3, (20, 3))])
def test_round_trip_and_area_bbox(seed, shape):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, len(NAMES), shape)
    lab[: shape[0] // 2] = rng.integers(1, 3, (shape[0] // 2, shape[1]))  # blocks as well as noise
    records = encode_label_map(lab, NAMES, image_id=7, file_name="a.png")
    np.testing.assert_array_equal(decode(records, shape), lab)
    assert [r["category_id"] for r in records] == sorted(np.unique(lab).tolist())
    for r in records:
        m = lab == r["category_id"]
        assert r["area"] == m.sum() and r["bbox"] == numpy_bbox(m)
        assert r["category_name"] == NAMES[r["category_id"]] and r["image_id"] == 7 and r["file_name"] == "a.png"
        assert "score" not in r and "instance_id" not in r


def test_ignore_pixels_get_no_record_and_json_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    lab = rng.integers(0, 5, (30, 40))
    records = encode_label_map(lab, NAMES, ignore_index=0, scores=[0.0, 0.9, 0.8, 0.7, 0.6])
    assert 0 not in [r["category_id"] for r in records]
    assert {r["category_id"]: r["score"] for r in records} == {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6}
    path = write_records(tmp_path / "out" / "a.json", records)
    loaded = json.loads(path.read_text())
    assert isinstance(loaded[0]["segmentation"]["counts"], str)
    np.testing.assert_array_equal(decode(loaded, lab.shape, fill=0), lab)
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temporary file left behind


def test_instances_round_trip_with_majority_class():
    rng = np.random.default_rng(5)
    inst = measure.label(rng.random((48, 56)) < 0.35, connectivity=1)  # many small objects
    lab = np.zeros(inst.shape, np.int64)
    majority = {}
    for i in range(1, inst.max() + 1):
        c = 1 + i % 4
        lab[inst == i] = c
        majority[i] = c
    # One pixel of object 1 (if it has more than one) votes for another class; the majority still wins.
    ys, xs = np.nonzero(inst == 1)
    if len(ys) > 2:
        lab[ys[0], xs[0]] = 1 + (majority[1] % 4)
    scores = {i: i / 1000 for i in range(1, inst.max() + 1)}
    records = encode_label_map(lab, NAMES, ignore_index=0, instances=inst, scores=scores)
    assert len(records) == inst.max() > 40
    np.testing.assert_array_equal(decode_instances(records, inst.shape), inst)
    for r in records:
        m = inst == r["instance_id"]
        assert r["category_id"] == majority[r["instance_id"]] and r["score"] == scores[r["instance_id"]]
        assert r["area"] == m.sum() and r["bbox"] == numpy_bbox(m)


def test_instance_on_ignore_pixels_is_dropped():
    lab = np.zeros((10, 10), np.int64)
    lab[5:] = 2
    inst = np.zeros((10, 10), np.int64)
    inst[1:3, 1:3] = 1  # wholly on ignore pixels
    inst[6:8, 6:8] = 2
    records = encode_label_map(lab, NAMES, ignore_index=0, instances=inst)
    assert [(r["instance_id"], r["category_id"]) for r in records] == [(2, 2)]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"ids \[7\] outside 0..4"):
        encode_label_map(np.full((4, 4), 7), NAMES)
    with pytest.raises(ValueError, match="expected integer class ids"):
        encode_label_map(np.zeros((4, 4), np.float32), NAMES)
    with pytest.raises(ValueError, match="scores has no entry for class id 2"):
        encode_label_map(np.array([[1, 2]]), NAMES, scores={1: 0.5})
    records = encode_label_map(np.array([[1, 2]]), NAMES)
    with pytest.raises(ValueError, match=r"record 0 has size \[1, 2\]; expected \[2, 2\]"):
        decode(records, (2, 2))
    with pytest.raises(ValueError, match="record 0 has no instance_id"):
        decode_instances(records, (1, 2))
