"""Overlap resolution of classified masks into a class map, against a per-pixel brute force."""
import numpy as np
import pytest

from sam_histo.data.types import ClassSpec
from sam_histo.config import ZeroShotConfig
from sam_histo.zeroshot.class_map import (
    generator_kwargs, masks_from_records, pixel_probabilities, resolve_overlaps, unassigned_id,
)


def brute_force(masks, scores, probs, column_ids, fill_id, method, min_prob):
    """Pixel by pixel: among the kept masks covering it, the winner by the documented rule."""
    k, h, w = masks.shape
    area = masks.reshape(k, -1).sum(axis=1)
    out = np.full((h, w), fill_id)
    for y in range(h):
        for x in range(w):
            cover = [i for i in range(k) if masks[i, y, x] and probs[i].max() >= min_prob]
            if not cover:
                continue
            if method == "score":
                best = max(cover, key=lambda i: (scores[i] * probs[i].max(), -area[i]))
            else:
                best = min(cover, key=lambda i: area[i])
            out[y, x] = column_ids[int(np.argmax(probs[best]))]
    return out


def random_case(rng, k=7, size=24, c=3):
    yy, xx = np.mgrid[:size, :size]
    masks = np.stack([((yy - rng.uniform(0, size)) ** 2 + (xx - rng.uniform(0, size)) ** 2)
                      <= rng.uniform(3, 10) ** 2 for _ in range(k)])
    masks[:, 0, 0] = False  # at least one pixel stays uncovered
    scores = rng.uniform(0, 1, k)
    probs = rng.dirichlet(np.ones(c), k)
    return masks, scores, probs


@pytest.mark.parametrize("method", ["score", "area"])
@pytest.mark.parametrize("min_prob", [0.0, 0.5])
def test_matches_brute_force_on_random_masks(method, min_prob):
    rng = np.random.default_rng(4)
    for _ in range(4):
        masks, scores, probs = random_case(rng)
        column_ids = [1, 3, 4]
        label, winner = resolve_overlaps(masks, scores, probs, column_ids, 9, method, min_prob)
        assert np.array_equal(label, brute_force(masks, scores, probs, column_ids, 9, method, min_prob))
        assert label[0, 0] == 9 and winner[0, 0] == -1
        covered = winner >= 0
        assert all(masks[winner[y, x], y, x] for y, x in zip(*np.nonzero(covered)))


def test_overlap_by_score_and_by_area():
    masks = np.zeros((2, 6, 6), bool)
    masks[0, :, :4] = True   # large mask, class column 0
    masks[1, 2:4, 2:6] = True  # small mask overlapping it, class column 1
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    label, _ = resolve_overlaps(masks, [0.95, 0.5], probs, [1, 2], 0, "score")
    assert (label[2:4, 2:4] == 1).all() and (label[2:4, 4:] == 2).all()  # 0.95*0.9 beats 0.5*0.8
    label, _ = resolve_overlaps(masks, [0.5, 0.95], probs, [1, 2], 0, "score")
    assert (label[2:4, 2:6] == 2).all()
    label, _ = resolve_overlaps(masks, [0.95, 0.5], probs, [1, 2], 0, "area")
    assert (label[2:4, 2:6] == 2).all() and (label[0, :4] == 1).all() and (label[0, 4:] == 0).all()
    with pytest.raises(ValueError, match="overlap method 'sizes'"):
        resolve_overlaps(masks, [0.5, 0.5], probs, [1, 2], 0, "sizes")
    with pytest.raises(ValueError, match=r"probs \(2, 2\) \(want \[K, 3\]\)"):
        resolve_overlaps(masks, [0.5, 0.5], probs, [1, 2, 3], 0)


def test_unassigned_id_rules():
    assert unassigned_id(ClassSpec(("background", "CT", "LE", "IT"))) == 0
    assert unassigned_id(ClassSpec(("outside_roi", "tumor", "stroma"), ignore_index=0)) == 0
    assert unassigned_id(ClassSpec(("outside_roi", "tumor", "other"), ignore_index=0), "other") == 2
    with pytest.raises(ValueError, match="set zeroshot.unassigned"):
        unassigned_id(ClassSpec(("tumor", "stroma")))


def test_pixel_probabilities_follow_winner():
    rng = np.random.default_rng(0)
    masks, scores, probs = random_case(rng, k=4, c=2)
    label, winner = resolve_overlaps(masks, scores, probs, [2, 3], 0)
    full = pixel_probabilities(winner, probs, [2, 3], 4, 0)
    assert full.shape == (4, 24, 24) and np.allclose(full.sum(axis=0), 1)
    assert np.array_equal(full.argmax(axis=0), label)
    assert (full[0][winner < 0] == 1).all() and (full[1] == 0).all()


def test_amg_records_and_generator_kwargs():
    kwargs = generator_kwargs(ZeroShotConfig(points_per_side=8, crop_n_layers=1, box_nms_thresh=0.5))
    assert kwargs["points_per_side"] == 8 and kwargs["crop_n_layers"] == 1 and kwargs["box_nms_thresh"] == 0.5
    assert kwargs["output_mode"] == "binary_mask" and "min_mask_region_area" not in kwargs
    big, small = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    big[:3, :3] = True
    small[4, 4] = True
    records = [{"segmentation": big, "predicted_iou": 0.9}, {"segmentation": small, "predicted_iou": 0.7}]
    masks, scores = masks_from_records(records, (5, 5), min_area=2)
    assert masks.shape == (1, 5, 5) and np.array_equal(masks[0], big) and scores.tolist() == [0.9]
    assert masks_from_records(records, (5, 5))[0].shape == (2, 5, 5)
    with pytest.raises(ValueError, match=r"mask 0 has shape \(5, 5\), the image \(4, 4\)"):
        masks_from_records(records, (4, 4))
