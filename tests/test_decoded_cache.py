"""data.decode_cache: a tile costs a crop, not a decode of its whole image (BCSS and folder adapters)."""
import os

import numpy as np
import pytest
from PIL import Image

from sam_histo.config import load_config
from sam_histo.data.dataset import build_dataset
from sam_histo.data.io.decoded import DecodedCache


def _bcss(root, mode, cache):
    return load_config("bcss", [f"data.root={root}", "data.tile_size=64", "data.tile_stride=64",
                                f"data.decode_cache={mode}", f"data.cache_dir={cache}"]).data


@pytest.mark.parametrize("mode", ["memmap", "memory"])
def test_each_image_is_decoded_once_however_the_tiles_are_ordered(bcss_root, tmp_path, mode):
    plain = build_dataset(_bcss(bcss_root, "none", tmp_path / "plain"), "all")
    ds = build_dataset(_bcss(bcss_root, mode, tmp_path / "c"), "all")
    n_files = len({ds.meta(i)["source"] for i in range(len(ds))})
    assert len(ds) > 2 * n_files  # several tiles per ROI
    order = np.random.default_rng(0).permutation(len(ds))
    for _ in range(2):  # two epochs in random order
        for i in order:
            s, ref = ds[int(i)], plain[int(i)]
            np.testing.assert_array_equal(s.image, ref.image)
            np.testing.assert_array_equal(s.mask, ref.mask)
            assert s.image.flags.writeable and s.mask.flags.writeable  # the sample's own arrays
    assert ds.decoded.decodes == 2 * n_files  # RGB and codes, once each
    assert plain.decoded.decodes == 2 * 2 * len(ds)  # the uncached path decodes both at every sample
    if mode == "memmap":  # a later run (a new adapter, another process) reuses the decoded files
        again = build_dataset(_bcss(bcss_root, mode, tmp_path / "c"), "all")
        for i in order:
            again[int(i)]
        assert again.decoded.decodes == 0


def test_memmap_follows_a_changed_source_and_memory_keeps_its_budget(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(src)
    read = lambda p: np.asarray(Image.open(p))  # noqa: E731
    cache = DecodedCache(tmp_path / "cache", "memmap")
    assert cache.get("codes", src, read).max() == 0
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(src)
    os.utime(src, ns=(1, 1))  # a different modification time, as a rewrite would give
    fresh = DecodedCache(tmp_path / "cache", "memmap")
    assert fresh.get("codes", src, read).max() == 7 and fresh.decodes == 1
    small = DecodedCache(None, "memory", max_mb=0)  # budget 0: only the newest array stays
    for k in range(3):
        small.get("codes", src, read)
    assert small.decodes == 1
    other = tmp_path / "b.png"
    Image.fromarray(np.ones((32, 32), np.uint8)).save(other)
    small.get("codes", other, read)
    small.get("codes", src, read)
    assert small.decodes == 3 and len(small._lru) == 1


def test_a_read_only_data_root_is_never_written_into(bcss_root, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "ro"
    shutil.copytree(bcss_root, root, ignore=shutil.ignore_patterns(".sam_histo_cache"))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    monkeypatch.setenv("SAM_HISTO_CACHE", str(tmp_path / "home_cache"))
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        d.chmod(0o555)  # marked read-only (root could still write: the mode bits decide)
    try:
        ds = build_dataset(load_config("bcss", [f"data.root={root}", "data.tile_size=64", "data.tile_stride=64"]).data,
                           "all")
        ds[0]
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
        assert any((tmp_path / "home_cache" / "data").rglob("*.npy"))  # the decoded cache went there
    finally:
        for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
            d.chmod(0o755)
