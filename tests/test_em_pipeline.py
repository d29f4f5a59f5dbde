"""The 3-D pipeline end to end: views, oracle-model evaluation (perfect, merge, split), the sweep's single network
pass, the video linker on the tiny model, the `sam-histo em` commands and `score --instances` on their output."""
import json

import h5py
import numpy as np
import pytest
import torch
from em_fakes import OracleModel
from skimage.metrics import adapted_rand_error

from sam_histo.config import ConfigError, DataConfig, EmConfig, EmSweepConfig, ModelConfig, load_config
from sam_histo.data.synth.layouts import write_vesicle
from sam_histo.data.vesicle import Vesicle
from sam_histo.em.decode import Candidates, DecodeParams, decode
from sam_histo.em.infer import VIEWS, Bounds, _cut, bounds, point_grid
from sam_histo.em.volume import evaluate_volume, link, predict_volume, sweep_volume

# Every pixel of a 48 x 48 slice is a grid point, so the oracle finds every cross-section, however small.
ORACLE_EM = EmConfig(points_per_side=48, points_per_batch=512, min_size=1)


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """(root, labels) of a 12 x 48 x 48 synthetic volume with 5 vesicles."""
    root = write_vesicle(tmp_path_factory.mktemp("em_truth"), n=5, seed=3, size=48, depth=12)
    with h5py.File(root / "labels.h5") as f:
        return root, f["main"][()].astype(np.int64)


def _adapter_showing(tmp_path, labels_shown: np.ndarray, truth_labels: np.ndarray) -> Vesicle:
    """A vesicle data set whose image volume *is* ``labels_shown`` (the oracle model segments those ids)."""
    for name, arr in (("volume.h5", labels_shown.astype(np.uint8)), ("labels.h5", truth_labels.astype(np.uint16))):
        with h5py.File(tmp_path / name, "w") as f:
            f["main"] = arr
    return Vesicle(DataConfig(dataset="vesicle", root=str(tmp_path), split="z", val_fraction=0), "all")


def test_views_move_points_with_the_image():
    h, w = 5, 7
    for name, view in VIEWS.items():
        for y, x in ((0, 0), (1, 5), (4, 2)):
            img = np.zeros((h, w), np.int64)
            img[y, x] = 1
            moved = np.ascontiguousarray(view.image(img))
            (y2,), (x2,) = np.nonzero(moved)
            point = view.point(np.array([[x + 0.5, y + 0.5]], np.float32), h, w)
            assert np.allclose(point, [[x2 + 0.5, y2 + 0.5]]), name
            assert torch.equal(view.back(torch.from_numpy(moved)), torch.from_numpy(img)), name


def test_point_grid_is_cell_centres():
    g = point_grid(4, 8, 12)
    assert g.shape == (16, 2) and np.allclose(g[0], [1.5, 1.0]) and np.allclose(g[-1], [10.5, 7.0])


def test_cutting_on_the_device_equals_cutting_in_numpy_and_bounds_lose_nothing():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(5)
    logits = np.stack([gaussian_filter(rng.normal(0, 1, (40, 48)), 3) * 40 for _ in range(16)]).astype(np.float32)
    iou, obj = rng.uniform(0, 1, 16).astype(np.float32), np.ones(16, np.float32)
    ref = Candidates.from_logits(logits, iou, obj, floor=-1.5)
    got = _cut(torch.from_numpy(logits), torch.from_numpy(iou), torch.from_numpy(obj), Bounds(-1.5), (40, 48))
    assert np.array_equal(got.boxes, ref.boxes) and np.array_equal(got.flat, ref.flat)
    assert np.array_equal(got.offsets, ref.offsets) and np.array_equal(got.iou_pred, ref.iou_pred)
    # Bounds of a sweep drop only candidates no setting keeps: the decoded maps are unchanged.
    em = EmConfig(max_size=120, iou_thresh=0.3, stability_thresh=0.0, min_size=2,
                  sweep=EmSweepConfig(mask_threshold=[-0.5, 0.5], iou_thresh=[0.4]))
    b = bounds(em, sweep=True)
    assert b == Bounds(-1.5, 0.3, 0.5, 120)
    pruned = _cut(torch.from_numpy(logits), torch.from_numpy(iou), torch.from_numpy(obj), b, (40, 48))
    assert len(pruned) < len(ref)
    for t in (-0.5, 0.0, 0.5):
        for iou_t in (0.3, 0.4):
            p = DecodeParams.from_config(em, mask_threshold=t, iou_thresh=iou_t)
            assert np.array_equal(decode(pruned, p)[0], decode(ref, p)[0])


def test_perfect_labels_give_error_zero(truth, tmp_path):
    root, gt = truth
    adapter = _adapter_showing(tmp_path, gt, gt)
    m = evaluate_volume(OracleModel(), adapter, ORACLE_EM, checkpoint="oracle", progress=False)
    inst = m["instances"]
    assert inst["adapted_rand_error"] == 0.0 and inst["precision"] == 1.0 and inst["recall"] == 1.0
    assert inst["f1_at_0.5"] == 1.0 and inst["n_pred"] == inst["n_gt"] == len(np.unique(gt)) - 1
    assert m["per_class"]["vesicle"]["dice"] == 1.0 and m["split"] == "all" and m["checkpoint"] == "oracle"
    assert m["em"]["linker"] == "overlap" and m["em"]["min_size"] == 1


def _pair_of_neighbours(gt):
    ids = np.unique(gt[gt > 0])
    centres = {i: np.argwhere(gt == i).mean(0) for i in ids}
    return min(((a, b) for a in ids for b in ids if a < b), key=lambda p: np.linalg.norm(centres[p[0]] - centres[p[1]]))


def test_a_merge_lowers_precision_a_split_lowers_recall(truth, tmp_path):
    """Through evaluate_volume: the oracle segments a merged / a split label volume; the scores move the named
    way and equal scikit-image's on the same volumes (its precision and recall are swapped, DESIGN.md 5)."""
    root, gt = truth
    a, b = _pair_of_neighbours(gt)
    merged = np.where(gt == b, a, gt)
    split = gt.copy()
    big = int(np.bincount(gt.ravel())[1:].argmax()) + 1
    cx = int(np.argwhere(gt == big)[:, 2].mean())
    split[(gt == big) & (np.arange(gt.shape[2]) >= cx)] = gt.max() + 1
    results = {}
    for name, shown in (("merge", merged), ("split", split)):
        (tmp_path / name).mkdir()
        m = evaluate_volume(OracleModel(), _adapter_showing(tmp_path / name, shown, gt), ORACLE_EM, progress=False)
        results[name] = m["instances"]
        are, sk_prec, sk_rec = adapted_rand_error(gt, shown)
        assert results[name]["adapted_rand_error"] == pytest.approx(are, abs=1e-9)
        assert results[name]["precision"] == pytest.approx(sk_rec, abs=1e-9)
        assert results[name]["recall"] == pytest.approx(sk_prec, abs=1e-9)
    assert results["merge"]["precision"] < 0.95 and results["merge"]["recall"] == 1.0
    assert results["merge"]["n_pred"] == results["merge"]["n_gt"] - 1
    assert results["split"]["recall"] < 0.95 and results["split"]["precision"] == 1.0
    assert results["split"]["n_pred"] == results["split"]["n_gt"] + 1


def test_tta_views_average_back_to_the_same_answer(truth):
    root, gt = truth
    gt = gt[3:8]  # five slices are enough here
    plain, tta_model = OracleModel(), OracleModel()
    without = predict_volume(plain, gt.astype(np.uint8), ORACLE_EM, progress=False)
    em = EmConfig(**{**vars(ORACLE_EM), "tta": True, "tta_views": list(VIEWS)})
    with_tta = predict_volume(tta_model, gt.astype(np.uint8), em, progress=False)
    assert np.array_equal(without, with_tta)
    assert tta_model.encodes == len(VIEWS) * plain.encodes == len(VIEWS) * len(gt)


def test_sweep_runs_the_network_once_and_finds_the_perfect_setting(truth, tmp_path):
    root, gt = truth
    model = OracleModel()
    em = EmConfig(**{**vars(ORACLE_EM), "sweep": EmSweepConfig(mask_threshold=[-9.0, 0.0], iou_thresh=[0.0, 0.95],
                                                              stability_thresh=[0.0, 0.9], min_size=[1, 400])})
    result = sweep_volume(model, _adapter_showing(tmp_path, gt, gt), em, progress=False)
    assert model.encodes == len(gt) and len(result.rows) == 16
    best = result.rows[result.best]
    assert best["adapted_rand_error"] == 0.0 and result.best_setting["iou_thresh"] == 0.0
    assert result.best_setting["min_size"] == 1 and result.best_setting["mask_threshold"] == 0.0
    # -9 is below the oracle's background logit (-8): every mask covers the whole slice.
    assert all(r["adapted_rand_error"] > 0.5 for r in result.rows if r["mask_threshold"] == -9.0 and r["n_pred"])


def test_video_linker_end_to_end_on_the_tiny_model(truth):
    """A random-init tiny SAM2 video predictor (its tracks mean nothing yet, so only the structure is checked):
    the volume's shape, consecutive ids, every id on one unbroken run of slices (a track stops at its first
    empty frame; merged tracks overlap), and the seeds of the first seeded slice (the largest instance area,
    its masks are the tracks' conditioning outputs) labelled there."""
    from sam_histo.em.video import video_predictor_for
    from sam_histo.models.sam import build_sam

    root, gt = truth
    gt = gt[:, :32, :32]  # a smaller crop keeps the propagation short
    cfg = ModelConfig(arch="tiny", image_size=64)
    model = build_sam(cfg)
    slices = np.stack([np.unique(s, return_inverse=True)[1].reshape(s.shape) for s in gt])  # per-slice ids
    scores = [np.full(int(s.max()), 0.9, np.float32) for s in slices]
    volume = np.full(gt.shape, 120, np.uint8)
    volume[gt > 0] = 40
    em = EmConfig(linker="video")
    with pytest.raises(ValueError, match="model_cfg"):
        link(volume, slices, scores, em, model=model)
    out = link(volume, slices, scores, em, model=model, model_cfg=cfg, progress=False)
    assert out.shape == gt.shape and out.dtype == np.int32
    ids = np.unique(out[out > 0])
    assert len(ids) and np.array_equal(ids, np.arange(1, len(ids) + 1))
    for i in ids:
        zs = np.flatnonzero((out == i).any((1, 2)))
        assert np.array_equal(zs, np.arange(zs[0], zs[-1] + 1)), f"id {i} on slices {zs}"
    z = int(np.argmax((slices > 0).sum((1, 2))))
    assert (out[z][slices[z] > 0] > 0).mean() > 0.8
    predictor = video_predictor_for(model, cfg)
    assert torch.equal(predictor.sam_mask_decoder.iou_token.weight, model.sam.sam_mask_decoder.iou_token.weight)


def test_em_config_rules():
    cfg = load_config("configs/vesicle.yaml")
    assert cfg.model.mode == "prompted" and cfg.em.sweep.mask_threshold and cfg.augment.hed == 0
    for override, text in (("em.tta_views=[hflp]", "did you mean 'hflip'"),
                           ("em.iou_thresh=1.5", "em.iou_thresh=1.5 must be in [0, 1]"),
                           ("em.max_size=3", "em.max_size=3 is below em.min_size"),
                           ("em.sweep.min_size=[]", "em.sweep.min_size is empty"),
                           ("em.linker=track", "'track' is not one of ['overlap', 'video']")):
        with pytest.raises(ConfigError, match=None) as e:
            load_config("configs/vesicle.yaml", [override])
        assert text in str(e.value), override


# ----------------------------------------------------------------------------------- commands
def test_em_predict_and_sweep_commands_and_score_on_the_volume(tmp_path):
    from sam_histo.cli import main
    from sam_histo.models.weights import save_state_dict
    from sam_histo.models.sam import build_sam

    root = write_vesicle(tmp_path / "data", n=4, seed=1, size=32, depth=12)
    ckpt = save_state_dict(build_sam(ModelConfig(arch="tiny", image_size=32)), tmp_path / "tiny.safetensors")
    common = ["--config", "configs/vesicle.yaml", "--checkpoint", str(ckpt), "--split", "val",
              f"data.root={root}", "model.arch=tiny", "model.image_size=32", "em.points_per_side=4",
              "em.iou_thresh=0", "em.stability_thresh=0", "em.obj_score_thresh=-100", "em.min_size=1"]
    assert main(["em", "predict", "--out", str(tmp_path / "pred"), *common]) == 0
    metrics = json.loads((tmp_path / "pred" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["checkpoint"] == str(ckpt) and "instances" in metrics
    with h5py.File(tmp_path / "pred" / "instances" / "labels.h5") as f:
        pred = f["main"][()]
    val = Vesicle(load_config("configs/vesicle.yaml", [f"data.root={root}"]).data, "val")
    assert pred.shape == val.label_volume().shape
    # `score --instances` takes the predicted HDF5 volume and the TIFF ground truth and agrees.
    import tifffile

    (tmp_path / "gt").mkdir()
    tifffile.imwrite(tmp_path / "gt" / "labels.tif", val.label_volume().astype(np.uint16))
    assert main(["score", "--pred", str(tmp_path / "pred" / "instances"), "--gt", str(tmp_path / "gt"), "--instances",
                 "--classes", "background,vesicle", "--out", str(tmp_path / "scored")]) == 0
    scored = json.loads((tmp_path / "scored" / "metrics.json").read_text())["instances"]
    for key in ("adapted_rand_error", "precision", "recall", "f1_at_0.5", "n_gt", "n_pred"):
        assert scored[key] == pytest.approx(metrics["instances"][key], nan_ok=True), key
    sweep = ["em.sweep.mask_threshold=[0.0]", "em.sweep.iou_thresh=[0.0]", "em.sweep.stability_thresh=[0.0]",
             "em.sweep.min_size=[1,2]"]
    assert main(["em", "sweep", "--out", str(tmp_path / "sweep"), *common, *sweep]) == 0
    table = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert len(table["rows"]) == 2 and table["split"] == "val" and (tmp_path / "sweep" / "sweep.md").exists()
    assert main(["em", "predict", "--out", str(tmp_path / "vol"), "--volume", str(root / "volume.h5"), *common]) == 0
    with h5py.File(tmp_path / "vol" / "instances" / "labels.h5") as f:
        assert f["main"].shape == (12, 32, 32)


def test_em_command_errors(tmp_path, capsys):
    from sam_histo.cli import main

    rc = main(["em", "predict", "--config", "configs/bcss.yaml", "--out", str(tmp_path), "model.arch=tiny",
               "model.image_size=32", f"data.root={tmp_path}"])
    assert rc == 2 and "sam-histo em works on vesicle volumes" in capsys.readouterr().err
    rc = main(["em", "predict", "--config", "configs/vesicle.yaml", "--out", str(tmp_path), "model.arch=tiny",
               "model.image_size=32", f"data.root={write_vesicle(tmp_path / 'd', n=2, size=32, depth=8)}",
               "data.val_fraction=0"])
    assert rc == 2 and "split val has no slices" in capsys.readouterr().err
    (tmp_path / "ck").mkdir()
    rc = main(["em", "sweep", "--config", "configs/vesicle.yaml", "--checkpoint", str(tmp_path / "ck"),
               "--out", str(tmp_path), "model.arch=tiny", "model.image_size=32"])
    assert rc == 2 and "a folder without weights" in capsys.readouterr().err
