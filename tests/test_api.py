"""The Python API: sam_histo.train on in-memory Datasets of Sample learns; sam_histo.evaluate scores a run
folder and a release on a Dataset; bad items fail naming the item."""
import importlib

import numpy as np
import pytest
import torch

import sam_histo
from sam_histo.data.types import DataError, Sample

SIZE = 64
COLOURS = [(235, 170, 200), (60, 30, 130), (200, 60, 50)]  # background, cell, vessel


class Blocks(torch.utils.data.Dataset):
    """Three-class tiles: flat colour blocks, one connected region per class, built in memory."""

    def __init__(self, n):
        self.items = []
        for k in range(n):
            mask = np.zeros((SIZE, SIZE), np.int64)
            y = 8 + 6 * k
            mask[y:y + 24, 8:32] = 1
            mask[36:56, 30 + 3 * k:58] = 2
            img = np.array(COLOURS, np.uint8)[mask]
            self.items.append(Sample(image=img, mask=mask, meta={"source": f"blocks_{k}"}))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


OVERRIDES = ["model.arch=tiny", f"model.image_size={SIZE}", "sampling.iter_per_epoch=8", "train.batch_size=1",
             "train.epochs=20", "augment.flip=0", "augment.rot90=0",
             "train.phases=[{start_epoch: 0, stages: all, lr: 3.0e-3, min_lr: 3.0e-3}]", "train.log_with=[]",
             "train.num_workers=0", "train.checkpoint_every_steps=0"]


def test_train_on_in_memory_datasets_learns_and_evaluate_scores_run_and_release(tmp_path):
    from sam_histo.release.build import make_release

    data = Blocks(3)
    result = sam_histo.train(None, train=data, val=data, classes=["background", "cell", "vessel"],
                             overrides=[*OVERRIDES, f"output_dir={tmp_path}", "name=api"])
    assert result["status"] == "finished" and result["val"]["class_names"] == ["background", "cell", "vessel"]
    metrics = sam_histo.evaluate(result["run_dir"], data, out_dir=tmp_path / "eval")
    dice = {k: v["dice"] for k, v in metrics["per_class"].items()}
    assert min(dice.values()) >= 0.9, dice
    assert (tmp_path / "eval" / "metrics.json").is_file() and (tmp_path / "eval" / "report.md").is_file()
    bundle, _, _ = make_release(result["run_dir"], tmp_path / "rel")
    again = sam_histo.evaluate(sam_histo.load_release(bundle), data, progress=False)
    assert again["per_class"] == metrics["per_class"]  # best == the weights released


def test_bad_items_are_named(tmp_path):
    from sam_histo.data.dataset import SampleDataset
    from sam_histo.data.types import ClassSpec

    spec = ClassSpec(("background", "cell"))
    with pytest.raises(DataError, match=r"train dataset item 0: got tuple; items must be sam_histo.data.types.Sample"):
        SampleDataset.wrap([(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)))], spec, "train")[0]
    bad = Sample(image=np.zeros((8, 8, 3), np.uint8), mask=np.full((8, 8), 2))
    with pytest.raises(DataError, match=r"val dataset item 0: mask values \[2\] are not class ids"):
        SampleDataset.wrap([bad], spec, "val")[0]
    with pytest.raises(DataError, match=r"image float64 \(8, 8, 3\); expected \(H, W, 3\) uint8"):
        SampleDataset.wrap([Sample(image=np.zeros((8, 8, 3)), mask=np.zeros((8, 8), np.int64))], spec, "val")[0]
    with pytest.raises(sam_histo.config.ConfigError, match="give the class names in id order"):
        sam_histo.train(None, train=[bad], overrides=[f"output_dir={tmp_path}"])


def test_importing_the_script_module_keeps_sam_histo_train_callable():
    importlib.import_module("sam_histo.train")
    assert callable(sam_histo.train)
