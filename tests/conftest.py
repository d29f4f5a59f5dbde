"""Shared fixtures. Tests are CPU-only, offline, and never read ../shared."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed_everything():
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    yield


# ------------------------------------------------------------------ synthetic data sets (data layer)
@pytest.fixture(scope="session")
def bcss_root(tmp_path_factory):
    """Six 256 px BCSS ROIs over three slides / three TCGA sites (written once per test session)."""
    from sam_histo.data.synth.layouts import write_bcss

    return write_bcss(tmp_path_factory.mktemp("bcss"), n=6, seed=0, size=256)


@pytest.fixture(scope="session")
def lgg_root(tmp_path_factory):
    """Three full LGG images with masks and three crops (CT, LE, IT) without."""
    from sam_histo.data.synth.layouts import write_lgg

    return write_lgg(tmp_path_factory.mktemp("lgg"), n=6, seed=0, size=128)


@pytest.fixture(scope="session")
def vesicle_root(tmp_path_factory):
    """One 12 x 64 x 64 EM volume with 8 vesicles, HDF5 and TIFF copies."""
    from sam_histo.data.synth.layouts import write_vesicle

    root = tmp_path_factory.mktemp("vesicle")
    write_vesicle(root, n=8, seed=0, size=64, depth=12, fmt="h5")
    write_vesicle(root, n=8, seed=0, size=64, depth=12, fmt="tif")
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ a tiny trained run (release, predict)
TINY_RUN_OVERRIDES = [
    "model.image_size=64", "data.tile_size=128", "data.tile_stride=128", "data.val_fraction=0.34",
    "data.test_fraction=0.34", "sampling.iter_per_epoch=4", "train.epochs=1", "train.batch_size=2",
    "train.num_workers=0", "train.log_with=[]", "train.checkpoint_every_steps=0", "eval.overlays=0",
    "train.phases=[{start_epoch: 0, stages: all, lr: 1.0e-3}]",
    "heatmap.class_name=tumor", "heatmap.average=slide", "heatmap.min_size=4",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder of the tiny semantic model at 64 px trained for 2 steps on six 128 px BCSS ROIs (three
    slides: train / val / test), with the final evaluation of checkpoints/best and a tumour heatmap block."""
    import torch

    from sam_histo.config import load_config
    from sam_histo.data.synth.layouts import write_bcss
    from sam_histo.training.loop import train

    root = tmp_path_factory.mktemp("tiny_run")
    data = write_bcss(root / "data", n=6, seed=0, size=128)
    cfg = load_config("demo", [f"data.root={data}", f"output_dir={root}", "name=run", *TINY_RUN_OVERRIDES])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert result["status"] == "finished", result
    return root / "run"
