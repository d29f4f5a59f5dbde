"""Images that pass the header read but do not decode, and LGG crops without tissue: found when the data is
indexed (and by `sam-histo stats`), skipped under data.on_error=skip, never hours later at a training step."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sam_histo import cli
from sam_histo.config import load_config
from sam_histo.data import base
from sam_histo.data.dataset import build_dataset
from sam_histo.data.types import DataError


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header survives: size reads, decoding fails
    with Image.open(path) as im:
        assert im.size  # what the index checked before


@pytest.fixture()
def bcss(bcss_root, tmp_path):
    root = tmp_path / "bcss"
    shutil.copytree(bcss_root, root, ignore=shutil.ignore_patterns(".sam_histo_cache"))
    bad = sorted((root / "images").iterdir())[1]
    _truncate(bad)
    return root, bad


def _cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.tile_size=128", "data.tile_stride=128", *extra]).data


def test_a_truncated_bcss_tile_is_refused_at_indexing_or_skipped(bcss, monkeypatch):
    root, bad = bcss
    with pytest.raises(DataError, match=f"{bad.name}: cannot read the image"):
        build_dataset(_cfg(root), "all")
    ds = build_dataset(_cfg(root, "data.on_error=skip"), "all")
    sources = {ds.meta(i)["source"] for i in range(len(ds))}
    assert str(bad) not in sources and len(sources) == 5
    for i in range(len(ds)):
        assert ds[i].image.shape == (128, 128, 3)  # every kept tile decodes
    index = json.loads(next((root / ".sam_histo_cache").glob("bcss_index_*.json")).read_text())
    assert all(rec["decoded"] for rec in index.values())
    calls = []
    monkeypatch.setattr("sam_histo.data.bcss.check_decodes", lambda p: calls.append(p))
    build_dataset(_cfg(root, "data.on_error=skip"), "all")
    assert calls == [bad]  # the good ones decoded once, cached in the index; the bad one is reported again


def test_stats_reports_the_bad_tile_in_one_line_and_takes_overrides_after_options(bcss, tmp_path, capsys):
    root, bad = bcss
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 0\n")
    rc = cli.main(["stats", "--config", str(cfg), "--split", "all", f"data.root={root}", "data.tile_size=128",
                   "data.tile_stride=128"])
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert rc == 2 and err.startswith("sam-histo stats: error:") and bad.name in err and "cannot read" in err


def test_lgg_truncated_image_and_empty_tissue_crop(lgg_root, tmp_path, monkeypatch):
    root = tmp_path / "lgg"
    shutil.copytree(lgg_root, root, ignore=shutil.ignore_patterns(".sam_histo_cache"))
    full = sorted((root / "images").iterdir())[0]
    _truncate(full)
    with pytest.raises(DataError, match=f"{full.name}: cannot read the image"):
        build_dataset(load_config(None, [f"data.root={root}", "data.dataset=lgg"]).data, "all")
    full.unlink()
    (root / "masks" / full.name).unlink()
    crop = sorted((root / "crops").iterdir())[0]
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(crop)  # white: no tissue at all
    cfg = load_config(None, [f"data.root={root}", "data.dataset=lgg"]).data
    with pytest.raises(DataError, match=f"{crop.name}: its tissue mask is empty"):
        build_dataset(cfg, "all")
    ds = build_dataset(load_config(None, [f"data.root={root}", "data.dataset=lgg", "data.on_error=skip"]).data, "all")
    assert str(crop) not in {ds.meta(i)["source"] for i in range(len(ds))} and len(ds) > 0
    calls = []
    monkeypatch.setattr(base, "check_decodes", lambda p: calls.append(p))
    build_dataset(load_config(None, [f"data.root={root}", "data.dataset=lgg", "data.on_error=skip"]).data, "all")
    assert calls == []  # the full images' decodes are cached
