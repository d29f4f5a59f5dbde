"""Zero-shot evaluation: known masks and classifier give known scores; the CLI end to end on synthetic BCSS
with tiny random models; checkpoint loading; the clear error when SAM2 gives no masks."""
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clip_fakes import ColourClip
from sam_histo.config import PROJECT_ROOT, ClipConfig, Config, ModelConfig
from sam_histo.data.types import ClassSpec, Sample
from sam_histo.zeroshot.classify import ClipHead, MaskClassifier
from sam_histo.zeroshot.run import ZeroShotError, load_sam, run_zeroshot
from sam_histo.models.load import resolve_model_file

SPEC = ClassSpec(("outside", "a", "b", "c", "d"), ignore_index=0)
# a red, b green, c blue, d navy: the hand-made head below sends navy to c, so d is never predicted.
COLOURS = {1: (210, 40, 40), 2: (40, 190, 50), 3: (40, 50, 200), 4: (30, 40, 160)}
CONTRACT = ("class_names", "ignore_index", "per_class", "macro", "micro", "confusion_matrix")  # DESIGN.md 3
PER_CLASS = ("dice", "iou", "precision", "recall", "f1", "support_pixels", "pred_pixels", "images_present")



class Split(list):
    """A list of Samples that looks like a dataset adapter."""

    def __init__(self, samples, classes=SPEC, split="val"):
        super().__init__(samples)
        self.classes, self.split = classes, split


def square_samples(n=3, seed=0):
    """48 px tiles with four 14 px squares of random class (the first tile has one of each) on ignored grey."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = np.full((48, 48, 3), 128, np.uint8)
        mask = np.zeros((48, 48), np.int64)
        classes = [1, 2, 3, 4] if i == 0 else rng.integers(1, 5, 4).tolist()
        for cls, (y, x) in zip(classes, [(4, 4), (4, 28), (28, 4), (28, 28)]):
            image[y:y + 14, x:x + 14] = COLOURS[cls]
            mask[y:y + 14, x:x + 14] = cls
        out.append(Sample(image, mask, meta={"source": f"tile{i}.png", "index": i}))
    return out


class FakeGenerator:
    """Returns, for each known image, one record per ground-truth square (score 0.9) plus one whole-image mask
    with a low score, which the squares must win over."""

    def __init__(self, samples, empty=False):
        self.records = {}
        for s in samples:
            recs = [] if empty else [{"segmentation": np.ones(s.mask.shape, bool), "predicted_iou": 0.1}]
            for y, x in [(4, 4), (4, 28), (28, 4), (28, 28)]:
                seg = np.zeros(s.mask.shape, bool)
                seg[y:y + 14, x:x + 14] = True
                recs += [] if empty else [{"segmentation": seg, "predicted_iou": 0.9}]
            self.records[s.image.tobytes()] = recs

    def generate(self, image):
        return self.records[image.tobytes()]


class FakeSam:
    arch, image_size = "fake", 48

    def __init__(self, generator):
        self.generator, self.kwargs = generator, None

    def automatic_mask_generator(self, **kw):
        self.kwargs = kw
        return self.generator


def colour_classifier():
    rows = torch.tensor([[1.0, -1, -1, 0], [-1, 1, -1, 0], [-1, -1, 1, 0], [0, 0, 0, 1]])
    head = ClipHead(torch.nn.functional.normalize(rows, dim=-1), ["a", "b", "c", "d"], 50.0, "colour-clip",
                    "hand-made-prompts")
    return MaskClassifier(ColourClip(), head, ClipConfig(cache_dir="", crop_min_side=8, batch_size=8))


def oracle_scores(gts, preds, c):
    """Dice, recall and predicted pixels of class c over pixels whose ground truth is not 0 (numpy only)."""
    g = np.concatenate([x.ravel() for x in gts])
    p = np.concatenate([x.ravel() for x in preds])
    p, g = p[g != 0], g[g != 0]
    tp, fp, fn = np.sum((p == c) & (g == c)), np.sum((p == c) & (g != c)), np.sum((p != c) & (g == c))
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fn), int(tp + fp)


def read_predictions(folder):
    return [np.array(Image.open(p)).astype(np.int64) for p in sorted(folder.glob("*.png"))]


def test_known_masks_and_classifier_give_expected_class_map_and_scores(tmp_path):
    samples = square_samples()
    cfg = Config()
    cfg.zeroshot.points_per_side = 5
    sam = FakeSam(FakeGenerator(samples))
    m = run_zeroshot(cfg, tmp_path, sam_model=sam, classifier=colour_classifier(), dataset=Split(samples))
    assert sam.kwargs["points_per_side"] == 5 and sam.kwargs["pred_iou_thresh"] == cfg.zeroshot.pred_iou_thresh
    gts = [s.mask for s in samples]
    expected = [np.where(g == 4, 3, g) for g in gts]  # d squares go to c; everything else is right
    preds = read_predictions(tmp_path / "predictions")
    assert len(preds) == 3
    for g, e, p in zip(gts, expected, preds):
        np.testing.assert_array_equal(p[g > 0], e[g > 0])
    for name, c in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        dice, recall, pred_px = oracle_scores(gts, expected, c)
        row = m["per_class"][name]
        assert row["dice"] == pytest.approx(dice) and row["recall"] == pytest.approx(recall)
        assert row["pred_pixels"] == pred_px
    assert m["per_class"]["a"]["dice"] == 1.0 and m["per_class"]["b"]["dice"] == 1.0
    assert m["per_class"]["d"]["recall"] == 0.0 and m["per_class"]["d"]["pred_pixels"] == 0
    assert "d" in m["macro_over"]  # never predicted, still counted in the macro mean
    assert m["macro"]["dice"] == pytest.approx(np.mean([oracle_scores(gts, expected, c)[0] for c in (1, 2, 3, 4)]))
    # CLIP accuracy on the ground-truth squares: a, b, c right, every d square called c.
    labels = np.concatenate([[g[y, x] for y, x in [(4, 4), (4, 28), (28, 4), (28, 28)]] for g in gts])
    acc = m["clip_accuracy"]["alpha"]["0"]
    assert acc["n_masks"] == len(labels)
    assert acc["accuracy"] == pytest.approx(np.mean(labels != 4))
    assert acc["per_class_recall"] == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0}
    assert acc["balanced_accuracy"] == pytest.approx(0.75)
    z = m["zeroshot"]
    assert z["masks_per_image"]["mean"] == 5 and z["masks_per_image"]["total"] == 15
    assert z["prompts_sha256"] == "hand-made-prompts" and z["sam"]["arch"] == "fake"


def test_generator_without_masks_is_a_clear_error(tmp_path):
    samples = square_samples(2)
    with pytest.raises(ZeroShotError, match="no masks on 2 image.*pred_iou_thresh"):
        run_zeroshot(Config(), tmp_path, sam_model=FakeSam(FakeGenerator(samples, empty=True)),
                     classifier=colour_classifier(), dataset=Split(samples))


def test_random_init_sam_at_default_thresholds_fails_naming_the_fix(bcss_root, tmp_path, capsys):
    from sam_histo.cli import main

    rc = main(["zeroshot", "--config", "demo", "--out", str(tmp_path), f"data.root={bcss_root}", "clip.cache_dir=",
               "zeroshot.pred_iou_thresh=0.8", "zeroshot.stability_score_thresh=0.95"])
    assert rc == 2
    assert "random-init model: set zeroshot.pred_iou_thresh=0" in capsys.readouterr().err


def _save_run_checkpoint(folder, model_cfg, seed):
    from safetensors.torch import save_file

    from sam_histo.models.sam import build_sam
    from sam_histo.training.checkpoint import state_dict_for_save

    torch.manual_seed(seed)
    model = build_sam(model_cfg, num_classes=4)  # the class-token head is in the file and must be skipped
    folder.mkdir(parents=True)
    save_file(state_dict_for_save(model), str(folder / "model.safetensors"))
    return model


def test_load_sam_reads_a_run_checkpoint(tmp_path):
    cfg = ModelConfig(arch="tiny", image_size=64)
    saved = _save_run_checkpoint(tmp_path / "run" / "checkpoints" / "best", cfg, seed=3)
    for where in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "best"):
        assert resolve_model_file(where) == tmp_path / "run" / "checkpoints" / "best" / "model.safetensors"
        loaded = load_sam(cfg, where).sam.state_dict()
        assert all(torch.equal(v, loaded[k]) for k, v in saved.sam.state_dict().items())
    with pytest.raises(FileNotFoundError, match="model.checkpoint"):
        resolve_model_file(tmp_path / "nowhere")


def test_cli_on_demo_data_writes_metrics_report_and_predictions(bcss_root, tmp_path):
    from sam_histo.cli import main
    from sam_histo.config import load_config
    from sam_histo.data.dataset import build_dataset
    from sam_histo.scoring.metrics_json import EXTRA_KEYS

    overrides = [f"data.root={bcss_root}", "clip.cache_dir=", "eval.overlays=1"]
    ckpt = tmp_path / "ckpt"
    _save_run_checkpoint(ckpt, load_config("demo").model, seed=5)
    out = tmp_path / "zs"
    assert main(["zeroshot", "--config", "demo", "--out", str(out), "--checkpoint", str(ckpt), *overrides]) == 0
    m = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert set(CONTRACT) <= set(m) and set(m) <= set(CONTRACT) | {"probability"} | set(EXTRA_KEYS)
    assert all(set(PER_CLASS) <= set(row) for row in m["per_class"].values())
    assert m["split"] == "val" and str(ckpt) in m["checkpoint"]
    # The confusion matrix is the one of the saved class maps against the ground truth.
    val = build_dataset(load_config("demo", overrides).data, "val")
    preds = read_predictions(out / "predictions")
    assert len(preds) == len(val) == m["n_images"]
    c = len(m["class_names"])
    cm = sum(np.bincount(val[i].mask.ravel() * c + preds[i].ravel(), minlength=c * c).reshape(c, c)
             for i in range(len(val)))
    cm[0] = 0  # ground-truth outside_roi pixels are not counted
    assert m["confusion_matrix"] == cm.tolist()
    # Prompt hash: sha256 of the canonical JSON of prompts/bcss.json.
    tree = json.loads((PROJECT_ROOT / "prompts" / "bcss.json").read_text())
    sha = hashlib.sha256(json.dumps(tree, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                         .encode()).hexdigest()
    z = m["zeroshot"]
    assert z["prompts_sha256"] == sha and z["prompt_set"] == "bcss"
    assert z["clip"]["model"].startswith("open_clip:tiny:") and z["sam"]["arch"] == "tiny"
    assert z["sam"]["checkpoint"] == str(ckpt / "model.safetensors")
    assert z["masks_per_image"]["total"] >= 1 and len(z["images"]) == len(val)
    acc = m["clip_accuracy"]["alpha"]["0"]
    assert {"accuracy", "balanced_accuracy", "per_class_recall"} <= set(acc)
    report = (out / "report.md").read_text()
    assert sha in report and "## CLIP accuracy on ground-truth masks" in report and "## Zero-shot setup" in report
    assert (out / "confusion_matrix.png").is_file() and (out / "per_class.png").is_file()
    assert list(out.glob("overlay_*.png")) and (out / "config.yaml").is_file()
