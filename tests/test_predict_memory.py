"""`predict` memory is bounded by the window batch: the size is refused from the header before decoding,
TIFFs are read by region a window-high strip at a time, and the streamed outputs equal the whole-image path."""
import json
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

import sam_histo
from sam_histo import cli
from sam_histo.infer.predict_io import Outputs


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    from sam_histo.release.build import make_release

    return make_release(tiny_run, tmp_path_factory.mktemp("mbundle") / "release")[0]


def _png_header_claiming(path, w, h):
    """A valid PNG signature and IHDR that claim w x h pixels, followed by one tiny IDAT and IEND."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def _err(capsys):
    return capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]


def test_a_huge_header_is_refused_in_one_line_before_decoding(bundle, tmp_path, capsys, monkeypatch):
    _png_header_claiming(tmp_path / "bomb.png", 20000, 20000)
    rc = cli.main(["predict", "--release", str(bundle), "--input", str(tmp_path / "bomb.png"),
                   "--out", str(tmp_path / "o")])
    err = _err(capsys)
    assert rc == 2 and "20000 x 20000 pixels is more than --max-pixels=200000000" in err
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((64, 80, 3), np.uint8), photometric="rgb")
    monkeypatch.setattr(tifffile, "imread", lambda *a, **k: pytest.fail("decoded before the size check"))
    rc = cli.main(["predict", "--release", str(bundle), "--input", str(tmp_path / "t.tif"),
                   "--out", str(tmp_path / "o"), "--max-pixels", "1000"])
    assert rc == 2 and "80 x 64 pixels is more than --max-pixels=1000" in _err(capsys)


def test_tiff_is_read_by_window_high_strips_and_equals_the_whole_image_path(bundle, tmp_path, monkeypatch):
    from sam_histo.infer import predict_io
    from sam_histo.release.predict import make_predictor, write_outputs

    release = sam_histo.load_release(bundle)
    image = np.random.default_rng(4).integers(0, 256, (150, 210, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image, photometric="rgb", tile=(32, 32), compression="zlib")
    bands = []
    real_rows = predict_io.ImageRows.rows
    monkeypatch.setattr(predict_io.ImageRows, "rows", lambda self, a, b: bands.append(b - a) or real_rows(self, a, b))
    whole = tifffile.imread
    # the heatmap view (a picture of the heatmap over the tile, test_predict) reads the whole tile; the data
    # outputs compared below must not
    from sam_histo.release import predict_maps

    monkeypatch.setattr(predict_maps, "draw_heatmap", lambda *a, **k: None)
    monkeypatch.setattr(tifffile, "imread", lambda p, *a, **k: whole(p, *a, **k) if k.get("aszarr")
                        else pytest.fail("the whole TIFF was decoded"))
    out = tmp_path / "s"
    args = ["--release", str(bundle), "--input", str(tmp_path / "big.tif"), "--out", str(out), "--probs",
            "--heatmap-class", "tumor", "--threshold", "0.5",
            "--no-tissue-mask"]  # the tissue mask needs the whole image: streaming runs without it
    assert sam_histo.release.predict.main(args) == 0
    assert bands and max(bands) <= max(release.model.image_size, 256) + 2  # a strip (or overlay band), never all
    monkeypatch.setattr(tifffile, "imread", whole)
    ref = Outputs(tmp_path / "w", "big", release.classes.names, overlay=True, rle=True, probs=True,
                  heatmap_class="tumor")
    label, probs = make_predictor(release)(image)
    write_outputs(ref, image, label, probs, release.classes, release.classes.trained_ids, "big.tif")
    mine = Outputs(out, "big", release.classes.names, overlay=True, rle=True, probs=True, heatmap_class="tumor")
    png = lambda p: np.asarray(Image.open(p))  # noqa: E731
    # (the streamed overlay has no legend band yet: its pixels are compared in test_predict's overlay tests)
    for a, b in [(mine.label, ref.label)] + \
            [(mine.prob_png(c), ref.prob_png(c)) for c in release.classes.trained_ids]:
        np.testing.assert_array_equal(png(a), png(b))
    np.testing.assert_array_equal(np.load(mine.score_npy), np.load(ref.score_npy))
    got, want = json.loads(mine.rle_json.read_text()), json.loads(ref.rle_json.read_text())
    assert [r["segmentation"] for r in got] == [r["segmentation"] for r in want]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], rel=1e-5)
