"""Sliding-window inference: coverage, exact reconstruction of position-dependent outputs, padding, blending."""
import numpy as np
import pytest

from sam_histo.infer.sliding import sliding_window, window_positions


def coord_image(h, w):
    """uint8 (h, w, 3) whose pixels spell their own coordinates (unique for h, w < 4096)."""
    y, x = np.mgrid[:h, :w]
    return np.stack([y % 256, x % 256, (y // 256) * 16 + x // 256], axis=-1).astype(np.uint8)


def identity_probs(tiles):
    """A fake model whose 'probabilities' are the tile's own pixels: a function of absolute position."""
    return tiles.astype(np.float32).transpose(0, 3, 1, 2) / 255.0


def expected(image):
    return image.astype(np.float32).transpose(2, 0, 1) / 255.0


@pytest.mark.parametrize("h, w, window, overlap", [
    (100, 64, 64, 0.5), (300, 517, 64, 0.25), (101, 77, 32, 0.3), (20, 150, 32, 0.5), (65, 65, 64, 0.0),
])
def test_positions_cover_the_image_and_end_flush(h, w, window, overlap):
    pos = window_positions(h, w, window, overlap)
    covered = np.zeros((max(h, window), max(w, window)), int)
    for y, x in pos:
        covered[y:y + window, x:x + window] += 1
    assert (covered[:h, :w] >= 1).all()
    ys, xs = sorted({p[0] for p in pos}), sorted({p[1] for p in pos})
    assert ys[0] == 0 and xs[0] == 0
    assert ys[-1] == max(0, h - window) and xs[-1] == max(0, w - window)
    stride = round(window * (1 - overlap))
    assert all(0 < b - a <= stride for a, b in zip(ys, ys[1:]))
    assert len(pos) == len(ys) * len(xs)


def test_positions_hand_computed():
    # stride 32: starts 0, 32 and the flush one at 100 - 64 = 36; the width fits one window.
    assert window_positions(100, 64, 64, 0.5) == [(0, 0), (32, 0), (36, 0)]


def test_image_of_window_size_gives_predict_fn_output():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 4, 48, 48)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    calls = []

    def predict(tiles):
        calls.append(tiles.shape)
        return probs

    image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    out = sliding_window(image, predict, window=48, overlap=0.5, batch_size=2, num_classes=4)
    assert calls == [(1, 48, 48, 3)]
    np.testing.assert_allclose(out, probs[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("h, w, window, overlap, batch", [
    (300, 517, 64, 0.25, 3), (101, 77, 32, 0.3, 4), (20, 150, 32, 0.5, 2), (97, 33, 32, 0.75, 5),
])
def test_position_dependent_output_is_reconstructed_exactly(h, w, window, overlap, batch):
    image = coord_image(h, w)
    out = sliding_window(image, identity_probs, window=window, overlap=overlap, batch_size=batch, num_classes=3)
    assert out.shape == (3, h, w) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected(image), atol=1e-6)


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_smaller_than_window_is_padded_and_cropped(mode):
    image = coord_image(20, 37)
    seen = []

    def predict(tiles):
        seen.append(tiles.copy())
        return identity_probs(tiles)

    out = sliding_window(image, predict, window=64, overlap=0.25, batch_size=4, num_classes=3, pad_mode=mode,
                         pad_value=255)
    assert out.shape == (3, 20, 37)
    np.testing.assert_allclose(out, expected(image), atol=1e-6)  # the padding never reaches the output
    (tile,) = seen[0]
    assert tile.shape == (64, 64, 3)
    np.testing.assert_array_equal(tile[:20, :37], image)
    if mode == "constant":
        assert (tile[20:] == 255).all() and (tile[:, 37:] == 255).all()
    else:  # mirrored about the last row / column
        np.testing.assert_array_equal(tile[20, :37], image[18])
        np.testing.assert_array_equal(tile[:20, 37], image[:, 35])


def test_one_pixel_axis_is_padded():
    image = coord_image(1, 40)
    out = sliding_window(image, identity_probs, window=16, overlap=0.5, num_classes=3)
    np.testing.assert_allclose(out, expected(image), atol=1e-6)


def test_blending_lets_the_nearest_window_centre_dominate():
    # Two windows along x (starts 0 and 16); the fake model answers 0 for the first, 1 for the second.
    calls = []

    def predict(tiles):
        calls.append(1)
        return np.full((1, 1, 32, 32), float(len(calls) - 1), np.float32)

    out = sliding_window(np.zeros((32, 48, 3), np.uint8), predict, window=32, overlap=0.5, batch_size=1,
                         num_classes=1)[0]
    assert len(calls) == 2
    row = out[5]
    assert (row[:16] == 0).all() and (row[32:] == 1).all()
    assert (np.diff(row) >= 0).all()  # a continuous hand-over, no step
    # At x = 16 the first window's centre meets the second's edge: plain averaging would give 0.5.
    assert row[16] < 0.1 and row[31] > 0.9
    np.testing.assert_allclose(row + row[::-1], 1.0, atol=1e-6)  # symmetric hand-over
    np.testing.assert_allclose(out, out[:1].repeat(32, 0), atol=1e-6)  # the rows agree: the y weights cancel


def test_torch_output_and_progress_bar(capsys):
    import torch

    image = coord_image(40, 70)
    out = sliding_window(image, lambda t: torch.from_numpy(identity_probs(t)), window=32, overlap=0.5,
                         batch_size=2, num_classes=3, progress=True)
    np.testing.assert_allclose(out, expected(image), atol=1e-6)
    assert "sliding window" in capsys.readouterr().err


def test_bad_inputs_are_named():
    image = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"predict_fn returned shape \(1, 2, 32, 32\); expected \(1, 3, 32, 32\)"):
        sliding_window(image, lambda t: np.zeros((len(t), 2, 32, 32)), window=32, batch_size=1, num_classes=3)
    with pytest.raises(ValueError, match=r"overlap=1.0 must be in \[0, 1\)"):
        sliding_window(image, identity_probs, window=32, overlap=1.0, num_classes=3)
    with pytest.raises(ValueError, match=r"pad_mode='wrap' must be 'reflect' or 'constant'"):
        sliding_window(image[:10], identity_probs, window=32, num_classes=3, pad_mode="wrap")
    with pytest.raises(ValueError, match=r"weight_floor=0 must be in \(0, 1\]"):
        sliding_window(image, identity_probs, window=32, num_classes=3, weight_floor=0)
