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
    from sam_histo.data.synthetic import write_bcss

    return write_bcss(tmp_path_factory.mktemp("bcss"), n=6, seed=0, size=256)


@pytest.fixture(scope="session")
def lgg_root(tmp_path_factory):
    """Three full LGG images with masks and three crops (CT, LE, IT) without."""
    from sam_histo.data.synthetic import write_lgg

    return write_lgg(tmp_path_factory.mktemp("lgg"), n=6, seed=0, size=128)


@pytest.fixture(scope="session")
def vesicle_root(tmp_path_factory):
    """One 12 x 64 x 64 EM volume with 8 vesicles, HDF5 and TIFF copies."""
    from sam_histo.data.synthetic import write_vesicle

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
