"""Point and box prompts: inside their components, deterministic per (seed, index), per instance."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from sam_histo.config import PromptConfig
from sam_histo.data.prompts import make_prompts, prompt_rng
from sam_histo.data.types import ClassSpec

SPEC = ClassSpec(("outside", "background", "x", "y"), ignore_index=0)
EIGHT = np.ones((3, 3), int)


def random_mask(seed, shape=(64, 72)):
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal((4, *shape)), (0, 3, 3))
    return field.argmax(0)  # blobs of ids 0..3


@pytest.mark.parametrize("seed", range(4))
def test_points_inside_their_component_and_negatives_outside(seed):
    mask = random_mask(seed)
    cfg = PromptConfig(n_pos=3, n_neg=2, max_objects=100, min_area=5, box_noise=0.0)
    p = make_prompts(mask, SPEC, cfg, prompt_rng(11, seed))
    assert len(p) > 0
    assert p.points.shape == (len(p), 5, 2) and p.point_labels.shape == (len(p), 5)
    assert p.targets.shape == (len(p), *mask.shape) and p.boxes.shape == (len(p), 4)
    comps = {c: ndi.label(mask == c, structure=EIGHT)[0] for c in (2, 3)}
    expected = sum(int((np.bincount(comps[c].ravel())[1:] >= 5).sum()) for c in (2, 3))
    assert len(p) == expected  # every component of x and y with >= 5 pixels; none of outside/background
    for k in range(len(p)):
        t, cid = p.targets[k], p.class_ids[k]
        assert cid in (2, 3) and (mask[t] == cid).all()
        comp_id = comps[cid][t][0]
        np.testing.assert_array_equal(t, comps[cid] == comp_id)  # a whole 8-connected component
        for (x, y), lab in zip(p.points[k].astype(int), p.point_labels[k]):
            if lab == 1:
                assert t[y, x]
            else:
                assert lab == 0 and not t[y, x] and mask[y, x] != 0  # outside, and not on ignored pixels
        ys, xs = np.nonzero(t)
        np.testing.assert_array_equal(p.boxes[k], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_prompts_are_deterministic_per_seed_and_index():
    mask = random_mask(9)
    cfg = PromptConfig(n_pos=2, n_neg=1, max_objects=3)
    a = make_prompts(mask, SPEC, cfg, prompt_rng(5, 17))
    b = make_prompts(mask, SPEC, cfg, prompt_rng(5, 17))
    c = make_prompts(mask, SPEC, cfg, prompt_rng(5, 18))
    for field in ("points", "point_labels", "boxes", "has_box", "class_ids", "targets"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert len(a) == 3
    assert not np.array_equal(a.points, c.points) or not np.array_equal(a.boxes, c.boxes)


def test_box_noise_and_box_share():
    mask = np.ones((80, 80), int)
    mask[20:60, 30:50] = 2
    cfg = PromptConfig(box_noise=0.1, p_box=0.5, exclude=["background"])
    boxes, has_box = [], []
    for i in range(400):
        p = make_prompts(mask, SPEC, cfg, prompt_rng(0, i))
        boxes.append(p.boxes[0])
        has_box.append(p.has_box[0])
    err = np.array(boxes) - [30, 20, 50, 60]
    np.testing.assert_allclose(err.std(0), [2.0, 4.0, 2.0, 4.0], rtol=0.2)  # 10 % of width 20 / height 40
    assert 0.4 < np.mean(has_box) < 0.6


def test_instances_give_one_object_each_and_min_area_filters():
    inst = np.zeros((40, 40), int)
    inst[2:10, 2:10] = 1
    inst[8:20, 12:30] = 2  # touches nothing else; a separate instance id
    inst[30:32, 30:32] = 3  # 4 pixels, below min_area
    spec = ClassSpec(("background", "vesicle"))
    p = make_prompts((inst > 0).astype(int), spec, PromptConfig(min_area=5), prompt_rng(0, 0), instances=inst)
    assert len(p) == 2 and p.class_ids.tolist() == [1, 1]
    np.testing.assert_array_equal(p.targets[0], inst == 1)
    np.testing.assert_array_equal(p.targets[1], inst == 2)
    empty = make_prompts(np.zeros((8, 8), int), spec, PromptConfig(), prompt_rng(0, 0))
    assert len(empty) == 0 and empty.targets.shape == (0, 8, 8) and empty.points.shape == (0, 1, 2)


def test_background_clicks_have_empty_targets_and_land_on_background():
    rng = np.random.default_rng(3)
    instances = np.zeros((40, 40), np.int64)
    instances[5:12, 5:12], instances[20:30, 22:33] = 1, 2
    classes = ClassSpec(("background", "vesicle"))
    cfg = PromptConfig(n_pos=1, n_neg=1, p_box=0.0, min_area=4, n_background=5)
    p = make_prompts((instances > 0).astype(np.int64), classes, cfg, rng, instances=instances)
    assert len(p) == 2 + 5
    bg = slice(2, None)
    assert not p.targets[bg].any() and (p.class_ids[bg] == 0).all() and not p.has_box[bg].any()
    assert (p.point_labels[bg, 0] == 1).all() and (p.point_labels[bg, 1:] == -1).all()  # one click + padding
    for x, y in p.points[bg, 0].astype(int):
        assert instances[y, x] == 0
    # a data set whose every class is prompted (BCSS: no background class) gets no background clicks
    q = make_prompts(random_mask(0), SPEC, PromptConfig(exclude=[], n_background=3, min_area=5), prompt_rng(0, 0))
    assert (q.point_labels == 1).sum() == len(q) and q.targets.reshape(len(q), -1).any(1).all()
