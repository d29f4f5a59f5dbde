"""Files written through sam_histo.files get the user's normal permissions, not mkstemp's 0600."""
import os
import stat

import numpy as np
import pytest

from sam_histo.files import atomic_path, current_umask, write_json
from sam_histo.infer.overlay import save_png


@pytest.fixture()
def umask():
    def set_mask(mask):
        os.umask(mask)
        return mask

    old = os.umask(0o022)
    os.umask(old)
    yield set_mask
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    with atomic_path(tmp_path / "weights.bin") as tmp:
        tmp.write_bytes(b"x")
    write_json(tmp_path / "state.json", {"step": 1})
    save_png(tmp_path / "labels" / "a.png", np.zeros((4, 4), np.uint8))
    open(tmp_path / "plain.txt", "w").close()  # what open() gives, for comparison
    assert _mode(tmp_path / "plain.txt") == expected
    assert {p.name: _mode(p) for p in [tmp_path / "weights.bin", tmp_path / "state.json", tmp_path / "labels" / "a.png"]} \
        == {"weights.bin": expected, "state.json": expected, "a.png": expected}


def test_decoded_cache_files_are_0644(tmp_path, umask):
    from sam_histo.data.io.decoded import DecodedCache

    umask(0o022)
    src = tmp_path / "img.npy"
    np.save(src, np.arange(12).reshape(3, 4))
    cache = DecodedCache(tmp_path / "cache", "memmap")
    arr = cache.get("rgb", src, np.load)
    assert isinstance(arr, np.memmap) and arr.tolist() == np.arange(12).reshape(3, 4).tolist()
    (written,) = (tmp_path / "cache" / "decoded").iterdir()
    assert _mode(written) == 0o644
