"""The rules of DESIGN.md section 4 as tests, the metrics JSON contract and the report files."""
import json

import numpy as np
import pytest

from sam_histo.data.types import ClassSpec
from sam_histo.scoring import confusion as M
from sam_histo.scoring.evaluator import Evaluator
from sam_histo.scoring.report import write_report
from sam_histo.scoring.metrics_json import PER_CLASS_KEYS

BCSS = ClassSpec(("outside_roi", "tumor", "stroma", "necrosis", "blood_vessel"), ignore_index=0)


def _blocks(rng, ids, shape=(32, 32), block=8):
    coarse = rng.choice(ids, size=(shape[0] // block, shape[1] // block))
    return np.kron(coarse, np.ones((block, block), np.int64))


def test_false_positives_on_images_without_the_class_count():
    vessel = BCSS.id_of("blood_vessel")
    with_vessel = np.full((20, 20), 1)
    with_vessel[5:10, 5:10] = vessel  # 25 vessel pixels, predicted perfectly
    without = np.full((20, 20), 2)  # no vessel in this image's ground truth ...
    pred_without = without.copy()
    pred_without[:5, :10] = vessel  # ... but the model paints 50 vessel pixels
    ev = Evaluator(BCSS)
    ev.add(with_vessel, with_vessel, key=0)
    ev.add(pred_without, without, key=1)
    m = ev.result()
    v = m["per_class"]["blood_vessel"]
    assert (v["support_pixels"], v["pred_pixels"], v["images_present"]) == (25, 75, 1)
    assert v["precision"] == pytest.approx(25 / 75)  # an "empty class is always right" test would say 1.0
    assert v["dice"] == pytest.approx(2 * 25 / (25 + 75))
    assert m["images_predicted"]["blood_vessel"] == 2
    assert m["image_level"]["per_class"]["blood_vessel"] == {"dice": pytest.approx(0.5), "iou": pytest.approx(0.5),
                                                              "n_images": 2}  # (1 + 0) / 2


def test_macro_leaves_out_only_absent_classes_and_the_report_names_them(tmp_path):
    rng = np.random.default_rng(0)
    ev = Evaluator(BCSS)
    for i in range(3):
        gt = _blocks(rng, [0, 1, 2, 4])  # necrosis (3) absent from the ground truth
        pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(1, 5, gt.shape))  # necrosis predicted
        ev.add(pred, gt, key=i)
    m = ev.result(split="val", checkpoint="ckpt-7")
    assert m["macro_over"] == ["tumor", "stroma", "blood_vessel"]
    assert m["absent_classes"] == ["necrosis"]
    nec = m["per_class"]["necrosis"]
    assert nec["support_pixels"] == 0 and nec["pred_pixels"] > 0
    assert nec["dice"] == nec["precision"] == nec["iou"] == 0.0 and nec["recall"] is None
    for key in ("dice", "iou", "precision", "recall"):
        expected = np.mean([m["per_class"][n][key] for n in ("tumor", "stroma", "blood_vessel")])
        assert m["macro"][key] == pytest.approx(expected, abs=1e-12)
    text = write_report(m, tmp_path, BCSS)["report"].read_text()
    assert "macro** over the 3 classes present in the ground truth (tumor, stroma, blood_vessel)" in text
    assert "left out of the macro average: necrosis (predicted on" in text


def test_permuted_tissue_classes_score_near_zero_macro_while_binary_tissue_dice_is_one():
    rng = np.random.default_rng(1)
    gt = _blocks(rng, [0, 1, 2, 3, 4], shape=(64, 64))
    perm = np.array([0, 2, 3, 4, 1])  # outside stays outside, every tissue class gets another's id
    pred = perm[gt]
    ev = Evaluator(BCSS)
    ev.add(pred, gt, key=0)
    m = ev.result()
    assert m["macro"]["dice"] < 0.05 and m["micro"]["accuracy"] < 0.05
    # what the "Dice 0.82" validator computed: any tissue versus outside
    binary = M.per_class_scores(M.confusion_counts(pred > 0, gt > 0, 2), None)["dice"][1]
    assert binary == pytest.approx(1.0)


def test_same_key_counts_once_and_results_do_not_depend_on_add_order():
    rng = np.random.default_rng(2)
    items = [(_blocks(rng, [1, 2, 3]), _blocks(rng, [1, 2, 3, 4])) for _ in range(4)]
    a, b = Evaluator(BCSS), Evaluator(BCSS)
    for i, (p, t) in enumerate(items):
        a.add(p, t, key=i)
    for i in (3, 1, 2, 0, 1):  # shuffled, with one padding duplicate
        b.add(*items[i], key=i)
    ra, rb = a.result(), b.result()
    assert rb.pop("duplicates_dropped") == 1 and ra.pop("duplicates_dropped") == 0
    assert ra == rb


def test_best_and_worst_images_rank_the_rarest_class():
    ev = Evaluator(BCSS)
    for i, hit in enumerate([4, 16, 0, 9]):  # vessel pixels found per image (of 16)
        gt = np.ones((10, 10), np.int64)
        gt[:4, :4] = 4
        pred = np.ones_like(gt)
        pred.ravel()[np.flatnonzero(gt.ravel() == 4)[:hit]] = 4
        ev.add(pred, gt, meta={"index": i, "source": f"img{i}.png"})
    assert ev.rarest_class() == "blood_vessel"
    best, worst = ev.best_worst(n=2)
    assert [s.key for s in best] == [1, 3] and [s.key for s in worst] == [2, 0]
    assert best[0].dice == pytest.approx(1.0) and worst[0].dice == 0.0 and worst[0].meta["source"] == "img2.png"


def test_metrics_json_keys_and_report_files(tmp_path):
    rng = np.random.default_rng(3)
    classes = ClassSpec(("background", "vesicle"))
    ev = Evaluator(classes, instances=True)
    for i in range(3):
        inst = _blocks(rng, np.arange(0, 9), shape=(32, 32))
        pred_inst = np.roll(inst, 1, axis=0)
        probs = np.stack([1 - (pred_inst > 0) * 0.8, (pred_inst > 0) * 0.8]).astype(np.float32)
        ev.add(pred_inst > 0, inst > 0, probs, key=f"slice{i}", gt_instances=inst, pred_instances=pred_inst)
    m = ev.result(split="train", checkpoint="runs/v/best")
    best, worst = ev.best_worst("vesicle", n=1)
    items = lambda scores: [(None, np.zeros((32, 32), int), np.zeros((32, 32), int), s.key, s.dice)  # noqa
                            for s in scores]
    files = write_report(m, tmp_path, classes, items(best), items(worst), "vesicle")
    for name in ("metrics.json", "report.md", "confusion_matrix.png", "per_class.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(list(tmp_path.glob("overlay_best_*.png"))) == 1 and len(list(tmp_path.glob("overlay_worst_*.png"))) == 1

    def no_nan(text):
        raise AssertionError(f"metrics.json holds {text}")

    loaded = json.loads(files["metrics"].read_text(), parse_constant=no_nan)
    assert {"class_names", "ignore_index", "per_class", "macro", "micro", "confusion_matrix", "probability",
            "instances", "split", "checkpoint", "macro_over", "absent_classes", "image_level"} <= set(loaded)
    assert loaded["class_names"] == ["background", "vesicle"] and loaded["ignore_index"] is None
    assert all(tuple(v) == PER_CLASS_KEYS for v in loaded["per_class"].values())
    assert set(loaded["macro"]) == {"dice", "iou", "precision", "recall"}
    assert set(loaded["micro"]) == {"dice", "iou", "accuracy"}
    assert set(loaded["probability"]["vesicle"]) == {"mean", "max", "frac_above_0.3", "frac_above_0.5"}
    assert {"adapted_rand_error", "precision", "recall", "f1_at_0.5", "n_gt", "n_pred"} <= set(loaded["instances"])
    assert np.asarray(loaded["confusion_matrix"]).sum() == 3 * 32 * 32
    assert loaded["probability"]["vesicle"]["max"] == pytest.approx(0.8)
    text = (tmp_path / "report.md").read_text()
    for needle in ("split `train`", "runs/v/best", "Probability on each class's true pixels", "adapted Rand error",
                   "Rand recall (splits lower it)", "pixels predicted as", "confusion_matrix.png"):
        assert needle in text


def test_instances_need_instance_maps():
    ev = Evaluator(ClassSpec(("background", "vesicle")), instances=True)
    with pytest.raises(ValueError, match="needs gt_instances and pred_instances"):
        ev.add(np.zeros((4, 4), int), np.zeros((4, 4), int))
