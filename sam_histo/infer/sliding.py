"""Sliding-window inference for images larger (or smaller) than the model input, with blended seams.

Model-agnostic: the model enters as ``predict_fn(tiles) -> probabilities`` where ``tiles`` is uint8
(B, window, window, ...) exactly as cut from the image and the result is (B, C, window, window) class
probabilities, a numpy array or a torch tensor (converted with ``.detach().cpu()``; torch is never imported
here).

Options of :func:`sliding_window`:

- ``window``: side of the square model input in pixels; ``overlap`` in [0, 1): the fraction of a window
  shared with its neighbour (stride = round(window * (1 - overlap)), at least 1). Along each axis the last
  window sits flush with the border, so every pixel is covered and no window reaches past the image.
- ``pad_mode``: an image smaller than ``window`` along an axis is padded at the bottom/right to ``window``.
  ``reflect`` (default) mirrors the tissue so the model sees plausible context instead of an artificial
  edge; ``constant`` fills with ``pad_value`` (255 = white, like glass in H&E). The model sees the padding
  as context, but its predictions there are cut off again: only the input's own (H, W) is returned.
- ``weight_floor``: blending weight at a window's edge relative to its centre (see below); 0 < floor <= 1,
  1 = plain averaging.
- ``batch_size``: windows per ``predict_fn`` call. ``progress``: a tqdm bar over the batches; None = shown
  when there are more than 64 windows.

Why blend rather than average. A window's prediction is least reliable near its own border, where the model
sees the least context (the receptive field is cut by the tile edge). With a plain average every pixel of
an overlap gets the same share from each window, so the output jumps wherever the set of covering windows
changes: the seams show up as straight lines in the label map. Here each window's probabilities are
weighted by a separable Hann ramp, w(i) = floor + (1 - floor) * sin^2(pi * (i + 0.5) / window), and the sum
is divided by the summed weights at each pixel. The window whose centre is nearest a pixel dominates it and
the hand-over between windows is continuous, so seams vanish; the floor keeps edge pixels counting, which
matters at the image border where only window edges cover a pixel. Because the weights are normalised, a
model whose output depends only on absolute position is reproduced exactly (the tests use that).

:func:`sliding_window_rows` streams: it reads one window-high strip of rows at a time and yields finished
row bands, so memory is bounded by the window batch, not the image (`sam-histo predict` uses it for large
images); :func:`sliding_window` collects those bands into one float32 (C, H, W) array.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Literal, Optional

import numpy as np
from tqdm import tqdm

PadMode = Literal["reflect", "constant"]


def _axis_starts(size: int, window: int, stride: int) -> list[int]:
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    starts.append(size - window)  # flush with the border; never past it
    return starts


def _stride(window: int, overlap: float) -> int:
    if window < 1:
        raise ValueError(f"window={window} must be a positive number of pixels")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap} must be in [0, 1) (a fraction of the window shared by neighbours)")
    return max(1, int(round(window * (1.0 - overlap))))


def window_positions(h: int, w: int, window: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of the windows covering an (h, w) image, row-major.

    Along each axis starts are 0, stride, 2 * stride, ... and a last one at ``size - window`` flush with the
    border; an axis no longer than ``window`` has the single start 0 (the image is padded to the window).
    """
    stride = _stride(window, overlap)
    if h < 1 or w < 1:
        raise ValueError(f"image size ({h}, {w}) must be at least 1 x 1")
    return [(y, x) for y in _axis_starts(h, window, stride) for x in _axis_starts(w, window, stride)]


def blend_weights(window: int, floor: float = 0.1) -> np.ndarray:
    """(window, window) float32 separable Hann ramp: 1 near the centre, ``floor`` at the edges."""
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"weight_floor={floor} must be in (0, 1]; 1 = plain averaging")
    i = np.arange(window, dtype=np.float64)
    ramp = floor + (1.0 - floor) * np.sin(math.pi * (i + 0.5) / window) ** 2
    return np.outer(ramp, ramp).astype(np.float32)


def _pad(image: np.ndarray, window: int, mode: PadMode, value: int) -> np.ndarray:
    h, w = image.shape[:2]
    pad = [(0, max(0, window - h)), (0, max(0, window - w))] + [(0, 0)] * (image.ndim - 2)
    if not any(p[1] for p in pad):
        return image
    if mode == "reflect":
        # numpy reflects repeatedly when the pad is longer than the axis; a 1-pixel axis has nothing to
        # reflect, so it is repeated instead.
        return np.pad(image, pad, mode="reflect" if min(h, w) > 1 else "edge")
    if mode == "constant":
        return np.pad(image, pad, mode="constant", constant_values=value)
    raise ValueError(f"pad_mode={mode!r} must be 'reflect' or 'constant'")


def _to_numpy(out, expected: tuple[int, ...]) -> np.ndarray:
    if hasattr(out, "detach"):  # a torch tensor, without importing torch here
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.shape != expected:
        raise ValueError(
            f"predict_fn returned shape {out.shape}; expected {expected} (batch, num_classes, window, window) "
            "class probabilities"
        )
    return out


def sliding_window_rows(
    rows: Callable[[int, int], np.ndarray],
    h: int,
    w: int,
    predict_fn: Callable[[np.ndarray], object],
    window: int,
    overlap: float = 0.25,
    batch_size: int = 4,
    num_classes: int = 2,
    *,
    weight_floor: float = 0.1,
    progress: Optional[bool] = None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """The blended probabilities of an (h, w) image (both >= ``window``) as finished row bands, top to bottom.

    ``rows(y0, y1)`` returns the image rows y0..y1 (all columns): the image is read one window-high strip at a
    time and never held whole. Yields ``(y0, y1, probs float32 (C, y1 - y0, w), image rows (y1 - y0, w, ...))``;
    the bands tile 0..h. Memory: one strip of pixels plus a (C, window, w) accumulator, whatever h is. Each
    strip's windows go to ``predict_fn`` left to right, ``batch_size`` at a time; the sums per pixel are
    taken in the same order as a whole-image pass, so the result equals it exactly.
    """
    if h < window or w < window:
        raise ValueError(f"image ({h}, {w}) is smaller than the window {window}; pad it (sliding_window does)")
    stride = _stride(window, overlap)
    ys, xs = _axis_starts(h, window, stride), _axis_starts(w, window, stride)
    weight = blend_weights(window, weight_floor)
    acc = np.zeros((num_classes, window, w), np.float32)
    norm = np.zeros((window, w), np.float32)
    show = len(ys) * len(xs) > 64 if progress is None else progress
    for k, y in enumerate(tqdm(ys, desc="sliding window", unit="row", disable=not show, leave=False)):
        strip = np.asarray(rows(y, y + window))
        for i in range(0, len(xs), batch_size):
            batch = xs[i:i + batch_size]
            tiles = np.stack([strip[:, x:x + window] for x in batch])
            probs = _to_numpy(predict_fn(tiles), (len(batch), num_classes, window, window))
            for x, p in zip(batch, probs):
                acc[:, :, x:x + window] += p * weight
                norm[:, x:x + window] += weight
        done = (ys[k + 1] if k + 1 < len(ys) else y + window) - y  # rows no later window touches
        yield y, y + done, acc[:, :done] / norm[:done], strip[:done]
        acc = np.concatenate([acc[:, done:], np.zeros((num_classes, done, w), np.float32)], axis=1)
        norm = np.concatenate([norm[done:], np.zeros((done, w), np.float32)], axis=0)


def sliding_window(
    image: np.ndarray,
    predict_fn: Callable[[np.ndarray], object],
    window: int,
    overlap: float = 0.25,
    batch_size: int = 4,
    num_classes: int = 2,
    *,
    pad_mode: PadMode = "reflect",
    pad_value: int = 255,
    weight_floor: float = 0.1,
    progress: Optional[bool] = None,
) -> np.ndarray:
    """Blended class probabilities of a whole image from windowed model calls.

    image: (H, W, 3) uint8 RGB (any trailing channel layout, or (H, W), is passed through to ``predict_fn``).
    predict_fn: uint8 (B, window, window, ...) with B <= batch_size -> (B, num_classes, window, window)
    probabilities in [0, 1] (numpy or torch). Returns float32 (num_classes, H, W), the weighted mean of the
    covering windows' probabilities (so each pixel still sums to 1 when every window's output does).
    Computed by :func:`sliding_window_rows` over the (padded) image.
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"image has shape {image.shape}; expected (H, W, 3) or (H, W)")
    if batch_size < 1 or num_classes < 1:
        raise ValueError(f"batch_size={batch_size} and num_classes={num_classes} must be >= 1")
    h, w = image.shape[:2]
    window_positions(h, w, window, overlap)  # checks the sizes and the overlap
    padded = _pad(image, window, pad_mode, pad_value)
    ph, pw = padded.shape[:2]
    out = np.empty((num_classes, ph, pw), np.float32)
    for y0, y1, probs, _ in sliding_window_rows(lambda a, b: padded[a:b], ph, pw, predict_fn, window, overlap,
                                                batch_size, num_classes, weight_floor=weight_floor,
                                                progress=progress):
        out[:, y0:y1] = probs
    return out[:, :h, :w]
