"""`sam-histo score`: saved label maps scored against ground truth, its files and its error messages."""
import json

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.metrics import adapted_rand_error
from sklearn.metrics import precision_recall_fscore_support

from sam_histo.cli import main as cli

CLASSES = "outside_roi,tumor,stroma,lymphocytes,vessel"


def _write_pngs(root, n=4, seed=0):
    rng = np.random.default_rng(seed)
    (root / "gt").mkdir()
    (root / "pred").mkdir()
    maps = {}
    for i in range(n):
        gt = np.kron(rng.integers(0, 5, (6, 6)), np.ones((8, 8), int)).astype(np.uint8)
        pred = np.where(rng.random(gt.shape) < 0.75, gt, rng.integers(0, 5, gt.shape)).astype(np.uint8)
        Image.fromarray(gt).save(root / "gt" / f"tile_{i}.png")
        Image.fromarray(pred).save(root / "pred" / f"tile_{i}.png")
        maps[f"tile_{i}"] = (pred, gt)
    return maps


def _score(root, *extra):
    return cli(["score", "--pred", str(root / "pred"), "--gt", str(root / "gt"), "--out", str(root / "out"),
                *extra])


def test_png_maps_scored_like_sklearn_and_report_written(tmp_path):
    maps = _write_pngs(tmp_path)
    (tmp_path / "images").mkdir()
    for name in maps:  # RGB tiles under the overlays
        Image.fromarray(np.full((48, 48, 3), 180, np.uint8)).save(tmp_path / "images" / f"{name}.png")
    assert _score(tmp_path, "--classes", CLASSES, "--ignore-index", "0", "--split", "test",
                  "--images", str(tmp_path / "images")) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    t = np.concatenate([g.ravel() for _, g in maps.values()])
    p = np.concatenate([q.ravel() for q, _ in maps.values()])
    keep = t != 0
    prec, rec, f1, _ = precision_recall_fscore_support(t[keep], p[keep], labels=[1, 2, 3, 4], zero_division=0)
    assert [m["per_class"][n]["dice"] for n in ("tumor", "stroma", "lymphocytes", "vessel")] == \
        pytest.approx(f1, abs=1e-6)
    assert m["macro"]["recall"] == pytest.approx(rec.mean(), abs=1e-6)
    assert m["split"] == "test" and m["n_images"] == 4 and "pred" in m["checkpoint"]
    out = tmp_path / "out"
    assert (out / "report.md").exists() and (out / "confusion_matrix.png").exists()
    assert len(list(out.glob("overlay_*.png"))) == 4  # 3 best + 1 worst of 4 images (never the same image)


def test_instance_volumes_tiff_and_hdf5(tmp_path):
    rng = np.random.default_rng(1)
    gt = np.kron(rng.integers(0, 20, (2, 4, 4)), np.ones((3, 6, 6), int)).astype(np.uint16)
    pred = np.roll(gt, 2, axis=2)
    for sub, arr in (("gt", gt), ("pred", pred)):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "gt" / "vol.tif", gt)
    with h5py.File(tmp_path / "pred" / "vol.h5", "w") as f:  # matched by name without extension
        f["seg"] = pred
    assert _score(tmp_path, "--classes", "background,vesicle", "--instances", "--key", "seg") == 0
    inst = json.loads((tmp_path / "out" / "metrics.json").read_text())["instances"]
    are, sk_prec, sk_rec = adapted_rand_error(gt, pred)
    assert inst["adapted_rand_error"] == pytest.approx(are, abs=1e-6)
    assert inst["recall"] == pytest.approx(sk_prec, abs=1e-6)  # scikit-image swaps the names
    assert inst["n_gt"] == len(np.unique(gt[gt > 0]))


def _error(capsys, rc):
    assert rc == 2
    return capsys.readouterr().err


def test_missing_prediction_names_the_file(tmp_path, capsys):
    _write_pngs(tmp_path)
    (tmp_path / "pred" / "tile_2.png").unlink()
    err = _error(capsys, _score(tmp_path, "--classes", CLASSES))
    assert "1 file(s) have no prediction in" in err and "tile_2.png" in err


def test_extra_prediction_names_the_file(tmp_path, capsys):
    _write_pngs(tmp_path)
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "pred" / "stray.png")
    err = _error(capsys, _score(tmp_path, "--classes", CLASSES))
    assert "have no ground truth in" in err and "stray.png" in err


def test_size_mismatch_names_both_files(tmp_path, capsys):
    _write_pngs(tmp_path)
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "pred" / "tile_1.png")
    err = _error(capsys, _score(tmp_path, "--classes", CLASSES))
    assert "tile_1.png: shape (40, 48) differs from the ground truth" in err and "(48, 48)" in err


def test_label_outside_the_class_list(tmp_path, capsys):
    _write_pngs(tmp_path)
    bad = np.zeros((48, 48), np.uint8)
    bad[0, 0] = 9
    Image.fromarray(bad).save(tmp_path / "gt" / "tile_3.png")
    err = _error(capsys, _score(tmp_path, "--classes", CLASSES))
    assert "tile_3.png: label value 9 is not a class id" in err and "ids 0..4" in err


def test_rgb_png_and_missing_hdf5_key(tmp_path, capsys):
    _write_pngs(tmp_path, n=1)
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(tmp_path / "pred" / "tile_0.png")
    err = _error(capsys, _score(tmp_path, "--classes", CLASSES))
    assert "tile_0.png: a colour image (mode RGB); save label maps as single-channel PNGs" in err
    (tmp_path / "pred" / "tile_0.png").unlink()
    with h5py.File(tmp_path / "pred" / "tile_0.h5", "w") as f:
        f["labels"] = np.zeros((48, 48), np.uint8)
    err = _error(capsys, _score(tmp_path, "--classes", CLASSES))
    assert "tile_0.h5: no dataset 'main' (it has ['labels']); pass --key" in err


def test_score_codes_groups_raw_bcss_masks_and_ignores_exclude(tmp_path):
    """--codes + --grouping bcss: raw codes become class ids as in training; exclude (7) and undetermined
    (15) are ignored, so a model's tumour call on an excluded region is no false positive."""
    import json

    from PIL import Image

    from sam_histo.data.bcss import write_code_table
    from sam_histo.eval.score import main

    gt = np.zeros((8, 8), np.uint8)
    gt[:, :2], gt[:, 2:4], gt[:, 4:6], gt[:, 6:] = 1, 7, 18, 9  # tumor, exclude, blood_vessel, fat (-> other)
    gt[0, :] = 15  # undetermined
    pred = np.zeros((8, 8), np.uint8)
    pred[:, :4] = 1  # tumour over tumour and over the excluded columns
    pred[:, 4:6], pred[:, 6:] = 5, 6
    for folder, arr in (("gt", gt), ("pred", pred)):
        (tmp_path / folder).mkdir()
        Image.fromarray(arr).save(tmp_path / folder / "a.png")
    codes = write_code_table(tmp_path)
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--codes", str(codes),
                 "--grouping", "bcss", "--out", str(tmp_path / "out")]) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["class_names"][0] == "outside_roi" and m["ignore_index"] == 0
    tumor = m["per_class"]["tumor"]
    assert tumor["pred_pixels"] == 7 * 2 and tumor["precision"] == 1.0  # rows 1-7 of the two tumour columns
    assert m["per_class"]["blood_vessel"]["support_pixels"] == 14 and m["per_class"]["other"]["dice"] == 1.0


def test_score_codes_refuses_a_code_outside_the_table(tmp_path):
    from PIL import Image

    from sam_histo.data.bcss import write_code_table
    from sam_histo.data.types import DataError
    from sam_histo.eval.score import main

    for folder in ("gt", "pred"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((4, 4), 40 if folder == "gt" else 1, np.uint8)).save(tmp_path / folder / "a.png")
    with pytest.raises(DataError, match=r"a.png: codes \[40\] are not in --codes"):
        main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--codes",
              str(write_code_table(tmp_path)), "--out", str(tmp_path / "out")])
