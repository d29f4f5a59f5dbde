"""`predict` memory is bounded by the window batch: the size is refused from the header before decoding,
TIFFs are read by region a window-high strip at a time, and the streamed outputs (tissue mask included)
equal the whole-image path."""
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
    """With the tissue mask on (H&E's default): every output file, the overlay's legend band included, equals
    the whole-image path's."""
    from sam_histo.infer import predict_io
    from sam_histo.release.predict import make_predictor, write_outputs
    from sam_histo.stain import tissue as tissue_mod

    release = sam_histo.load_release(bundle)
    image = np.random.default_rng(4).integers(0, 256, (300, 210, 3), dtype=np.uint8)
    image[40:90, 30:120] = 247  # glass, which the mask gives the ignore id
    tifffile.imwrite(tmp_path / "big.tif", image, photometric="rgb", tile=(32, 32), compression="zlib")
    bands = []
    real_rows = predict_io.ImageRows.rows
    monkeypatch.setattr(predict_io.ImageRows, "rows", lambda self, a, b: bands.append(b - a) or real_rows(self, a, b))
    monkeypatch.setattr(tissue_mod, "BAND", 48)  # the tissue mask in several bands, each with its context
    whole = tifffile.imread
    # the heatmap view (a picture of the heatmap over the tile, test_predict) reads the whole tile; the data
    # outputs compared below must not
    from sam_histo.release import predict_maps

    monkeypatch.setattr(predict_maps, "draw_heatmap", lambda *a, **k: None)
    monkeypatch.setattr(tifffile, "imread", lambda p, *a, **k: whole(p, *a, **k) if k.get("aszarr")
                        else pytest.fail("the whole TIFF was decoded"))
    out = tmp_path / "s"
    args = ["--release", str(bundle), "--input", str(tmp_path / "big.tif"), "--out", str(out), "--probs",
            "--heatmap-class", "tumor", "--threshold", "0.5"]
    assert sam_histo.release.predict.main(args) == 0
    assert bands and max(bands) <= max(release.model.image_size, 256) + 2 < image.shape[0]  # bands, never all
    monkeypatch.setattr(tifffile, "imread", whole)
    ref = Outputs(tmp_path / "w", "big", release.classes.names, overlay=True, rle=True, probs=True,
                  heatmap_class="tumor")
    label, probs = make_predictor(release)(image)
    tissue = tissue_mod.tissue_mask(image, release.config.data.tissue)
    assert 0 < tissue.sum() < tissue.size
    label = np.where(tissue, label, release.classes.ignore_index)
    write_outputs(ref, image, label, probs, release.classes, release.classes.trained_ids, "big.tif")
    mine = Outputs(out, "big", release.classes.names, overlay=True, rle=True, probs=True, heatmap_class="tumor")
    png = lambda p: np.asarray(Image.open(p))  # noqa: E731
    np.testing.assert_array_equal(png(out / "tissue" / "big.png") > 0, tissue)
    for a, b in [(mine.label, ref.label), (mine.overlay_png, ref.overlay_png)] + \
            [(mine.prob_png(c), ref.prob_png(c)) for c in release.classes.trained_ids]:
        np.testing.assert_array_equal(png(a), png(b))
    np.testing.assert_array_equal(np.load(mine.score_npy), np.load(ref.score_npy))
    got, want = json.loads(mine.rle_json.read_text()), json.loads(ref.rle_json.read_text())
    assert [r["segmentation"] for r in got] == [r["segmentation"] for r in want]
    assert [r["image_id"] for r in got] == [r["image_id"] for r in want] == [0] * len(want)
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], rel=1e-5)


@pytest.mark.parametrize("kernel", [0, 2, 5, 8])
def test_tissue_mask_in_bands_equals_the_whole_image_mask(kernel):
    from sam_histo.config.schema import TissueConfig
    from sam_histo.stain.tissue import tissue_mask, tissue_mask_rows

    rng = np.random.default_rng(kernel)
    image = rng.integers(0, 256, (97, 61, 3), dtype=np.uint8)
    image[rng.random((97, 61)) < 0.4] = 250  # glass specks and gaps for the close and the open to change
    cfg = TissueConfig(kernel=kernel)
    want = tissue_mask(image, cfg)
    for band in (1, 7, 16, 97, 200):
        got, grey = tissue_mask_rows(lambda a, b: image[a:b], 97, 61, cfg, band=band)
        np.testing.assert_array_equal(got, want)
        assert not grey
    flat = np.repeat(rng.integers(0, 256, (97, 61, 1), dtype=np.uint8), 3, axis=-1)
    assert tissue_mask_rows(lambda a, b: flat[a:b], 97, 61, cfg, band=10)[1]  # grey: R = G = B everywhere
