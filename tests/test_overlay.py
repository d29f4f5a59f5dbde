"""Overlays (blend, outlines, ignore, undrawn classes) and atomic PNG writing."""
import numpy as np
import pytest
from PIL import Image

from sam_histo.files import atomic_path
from sam_histo.infer.overlay import overlay, save_png

COLORS = [(0, 0, 0), (200, 0, 0), (0, 100, 250)]


def two_squares():
    lab = np.zeros((12, 12), np.int64)
    lab[2:8, 2:8] = 1
    lab[8:11, 5:11] = 2
    return lab


def test_blend_and_outline_colours():
    image = np.full((12, 12, 3), 100, np.uint8)
    lab = two_squares()
    out = overlay(image, lab, COLORS, alpha=0.5, ignore_index=0)
    assert out.dtype == np.uint8 and out.shape == (12, 12, 3)
    np.testing.assert_array_equal(out[4, 4], [150, 50, 50])  # interior: half image, half colour
    np.testing.assert_array_equal(out[2, 4], [200, 0, 0])  # top edge of square 1: full colour
    np.testing.assert_array_equal(out[10, 7], [0, 100, 250])  # bottom edge of square 2
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # ignore: untouched
    # Outlines lie inside their region: the ignore pixel next to square 1 stays untouched.
    np.testing.assert_array_equal(out[1, 4], [100, 100, 100])
    plain = overlay(image, lab, COLORS, alpha=0.5, ignore_index=0, outline=False)
    np.testing.assert_array_equal(plain[2, 4], [150, 50, 50])
    changed = (out != plain).any(-1)
    expected_edge = np.zeros_like(changed)
    for c in (1, 2):
        m = lab == c
        inner = m.copy()
        inner[1:-1, 1:-1] &= m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        expected_edge |= m & ~inner
    np.testing.assert_array_equal(changed, expected_edge)


def test_grey_image_undrawn_class_and_alpha_zero():
    grey = np.arange(144, dtype=np.uint8).reshape(12, 12)
    lab = two_squares()
    out = overlay(grey, lab, [None, (10, 20, 30), (40, 50, 60)], alpha=0.0, outline=False)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, 2))
    out = overlay(grey, lab, [None, (10, 20, 30), (40, 50, 60)], alpha=1.0, outline=False)
    np.testing.assert_array_equal(out[lab == 0], np.repeat(grey[lab == 0][:, None], 3, 1))
    assert (out[lab == 1] == [10, 20, 30]).all()


def test_overlay_errors():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"label ids span 0..5 but 3 colours"):
        overlay(image, np.array([[0, 5]] * 4).repeat(2, 1), COLORS)
    with pytest.raises(ValueError, match=r"must be integer ids of the image's size \(4, 4\)"):
        overlay(image, np.zeros((3, 4), int), COLORS)
    with pytest.raises(ValueError, match="expected uint8"):
        overlay(image.astype(np.float32), np.zeros((4, 4), int), COLORS)
    with pytest.raises(ValueError, match=r"colors\[1\]=\(300, 0, 0\) must be an \(R, G, B\) triple"):
        overlay(image, np.ones((4, 4), int), [None, (300, 0, 0)])


@pytest.mark.parametrize("array", [
    np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8),
    np.random.default_rng(1).integers(0, 256, (9, 7, 4), dtype=np.uint8),
    np.random.default_rng(2).integers(0, 256, (9, 7), dtype=np.uint8),
    np.random.default_rng(3).integers(0, 65536, (9, 7), dtype=np.uint16),
    np.random.default_rng(4).integers(0, 6, (9, 7)),  # an int64 label map
    np.random.default_rng(5).integers(0, 1000, (9, 7)),  # instance ids beyond 8 bits
])
def test_save_png_round_trip(tmp_path, array):
    path = save_png(tmp_path / "sub" / "x.png", array)
    back = np.array(Image.open(path))
    np.testing.assert_array_equal(back, array)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]


def test_save_png_errors():
    with pytest.raises(ValueError, match=r"mask.astype\(np.uint8\) \* 255"):
        save_png("never.png", np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="do not fit a 16-bit PNG"):
        save_png("never.png", np.full((3, 3), 70000))


def test_interrupted_write_keeps_the_old_file(tmp_path):
    path = save_png(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a png")
            raise RuntimeError("killed")
    np.testing.assert_array_equal(np.array(Image.open(path)), np.zeros((4, 4), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
