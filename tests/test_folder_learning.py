"""The issue's done-when on written fixtures: `sam-histo train --config folder` on .tif images with 0/255 .png
masks learns (per-class Dice), and `sam-histo score` of its predictions needs no dummy class."""
import json

import numpy as np
import tifffile
from PIL import Image

from sam_histo.cli import main

SIZE = 64


def _write_nuclei(root, n=3):
    """Dark discs (nuclei, 255) on pink (0): one colour per class, so a tiny model can overfit."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for k in range(n):
        rng = np.random.default_rng(k)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for _ in range(3):
            cy, cx = rng.integers(14, SIZE - 14, 2)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = 255
        img = np.where(mask[..., None] > 0, [60, 30, 130], [235, 170, 200]).astype(np.uint8)
        tifffile.imwrite(root / "images" / f"tile_{k}.tif", img)
        Image.fromarray(mask).save(root / "masks" / f"tile_{k}.png")
    return root


def test_folder_training_learns_and_score_needs_no_dummy_class(tmp_path, capsys):
    root = _write_nuclei(tmp_path / "data")
    args = [f"data.root={root}", "data.classes=[background,nucleus]", f"data.tile_size={SIZE}",
            f"data.tile_stride={SIZE}", "data.val_fraction=0", "model.arch=tiny", f"model.image_size={SIZE}",
            "sampling.iter_per_epoch=8", "train.batch_size=1", "train.epochs=20", "augment.hed=0",
            "augment.blur=0", "train.phases=[{start_epoch: 0, stages: all, lr: 3.0e-3, min_lr: 3.0e-3}]",
            "train.log_with=[]", "train.num_workers=0", "train.checkpoint_every_steps=0",
            f"output_dir={tmp_path / 'runs'}", "name=nuclei"]
    assert main(["train", "--config", "configs/folder.yaml", *args]) == 0
    run = tmp_path / "runs" / "nuclei"
    assert main(["release", "--run", str(run), "--out", str(tmp_path / "rel"), "--checkpoint", "last"]) == 0
    assert main(["predict", "--release", str(tmp_path / "rel"), "--input", str(root / "images"),
                 "--out", str(tmp_path / "pred")]) == 0
    capsys.readouterr()
    assert main(["score", "--pred", str(tmp_path / "pred" / "labels"), "--gt", str(root / "masks"),
                 "--classes", "background,nucleus", "--out", str(tmp_path / "score")]) == 0
    assert "value 255 is 'nucleus'" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "score" / "metrics.json").read_text())
    assert metrics["class_names"] == ["background", "nucleus"] and metrics["ignore_index"] is None
    dice = {k: v["dice"] for k, v in metrics["per_class"].items()}
    assert dice["nucleus"] >= 0.85 and dice["background"] >= 0.95, dice
