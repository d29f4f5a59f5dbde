"""One image's confusion matrix, at memory speed: input conversion, id range checks, counting (pure: numpy, torch).

``confusion_counts`` is the entry point (``scoring.confusion`` re-exports it); the conventions it follows
(rows = ground truth, the ignore id's row zeroed) are in ``scoring.confusion``'s docstring.
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]


# ------------------------------------------------------------------------------------ input handling
def _as_tensor(x: Array, name: str) -> torch.Tensor:
    """numpy or torch integer/bool map -> torch tensor without a copy where possible."""
    if isinstance(x, np.ndarray):
        if x.dtype == np.bool_:
            x = x.view(np.uint8)
        elif x.dtype.kind == "u" and x.dtype != np.uint8:
            x = x.astype(np.int64)  # torch has few kernels for uint16/32/64
        with warnings.catch_warnings():  # read-only arrays are never written to
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} has dtype {x.dtype}; pass integer class ids (argmax the logits first)")
    return x


def _as_numpy(x: Array, name: str) -> np.ndarray:
    """CPU numpy or torch integer/bool map -> numpy array without a copy."""
    if isinstance(x, torch.Tensor):
        x = x.detach().numpy()
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype == np.bool_:
        x = x.view(np.uint8)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {x.dtype}; pass integer class ids (argmax the logits first)")
    return x


def _range_error(lo: int, hi: int, num_classes: int, name: str) -> None:
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds id {bad}, outside 0..{num_classes - 1} (num_classes={num_classes})")


def _check_range(x: Array, num_classes: int, name: str) -> None:
    if isinstance(x, np.ndarray):
        lo = 0 if x.dtype.kind == "u" else int(x.min())
        _range_error(lo, int(x.max()), num_classes, name)
    elif x.dtype == torch.uint8:
        _range_error(0, int(x.max()), num_classes, name)
    else:
        _range_error(*(int(v) for v in torch.aminmax(x)), num_classes, name)


def _index_dtype(c2: int):
    return "uint8" if c2 <= 256 else "int32" if c2 < 2**31 else "int64"


# Pixels per pass of the CPU path: a chunk of both maps (int64: 2 x 2 MiB) is read once from memory and
# its narrowed copies and codes stay in cache for the passes that follow.
_CHUNK = 1 << 18
_PAIRED_MAX_CODES = 128  # pair counting needs 256 * C * C < 2**15 (int16 indices): C <= 11
# Below this many pixels one increment per pixel is cheaper: pair counting's fixed cost (a 256*C*C-bin
# histogram to clear and fold) outweighs its saving per pixel. Measured (update of uint8 maps, 6 ids, one
# thread): 16^2 21.5 vs 31.2 us, 64^2 24.5 vs 32.8, 96^2 28.6 vs 34.9, 127^2 39.2 vs 37.4: even near 14k.
_PAIRED_MIN_PIXELS = 12_000


def _checked_cast(x: np.ndarray, dtype: np.dtype, num_classes: int, name: str) -> np.ndarray:
    """``x`` as ``dtype`` after checking every id is in 0..num_classes-1 (ValueError naming the bad id).

    One bitwise-OR pass proves the cast lossless (no negative value, no bit above the dtype's range) at half
    the cost of min + max on int64; the exact bound is then checked on the narrow copy.
    """
    if x.dtype.kind == "i" or x.dtype.itemsize > dtype.itemsize:
        bits = int(np.bitwise_or.reduce(x, axis=None))
        if bits < 0 or bits > np.iinfo(dtype).max:
            _check_range(x, num_classes, name)  # raises, with the offending id
    y = x.astype(dtype, copy=False)
    _range_error(0, int(y.max()), num_classes, name)
    return y


def _narrow(x: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """``x`` as uint8 after checking every id is in 0..num_classes-1 (ValueError naming the bad id).

    One bitwise-OR pass proves the cast lossless (no negative value, no bit above 255); the OR is also an
    upper bound of the ids, so the exact max pass on the narrow copy runs only when the OR reaches
    ``num_classes``. uint8 input needs the max pass alone.
    """
    bound = 255
    if x.dtype != np.uint8:
        bound = int(np.bitwise_or.reduce(x, axis=None))
        if bound < 0 or bound > 255:
            _check_range(x, num_classes, name)  # raises, with the offending id
        x = x.astype(np.uint8)
    if bound >= num_classes:
        _range_error(0, int(x.max()), num_classes, name)
    return x


def counts_pairs(n_pixels: int, num_classes: int) -> bool:
    """Whether the CPU path counts two pixels per increment for maps of this size and class count."""
    return num_classes * num_classes <= _PAIRED_MAX_CODES and n_pixels >= _PAIRED_MIN_PIXELS


def _paired_counts(p: np.ndarray, t: np.ndarray, num_classes: int) -> np.ndarray:
    """(C*C,) int64 counts of the codes ``t * C + p`` for C*C <= 128, counting two pixels per increment.

    Chunk by chunk: narrow both maps to uint8 (checked), write the uint8 codes into one buffer, and read
    that buffer as int16, so each element holds the codes of two neighbouring pixels (``even + 256 * odd``
    on little-endian machines, swapped on big-endian ones; the fold below is symmetric). ``torch.bincount``
    of those pair indices then does half the increments of a per-pixel count, and the fold adds each pair
    bin to both of its pixels' codes. An odd chunk is padded with code 0, which is subtracted again.
    """
    k = num_classes * num_classes
    t, p = t.reshape(-1), p.reshape(-1)  # a copy only for non-contiguous maps
    n = t.size
    buf = np.empty(min(n, _CHUNK) + 2, np.uint8)
    hist, pads = None, 0
    for s in range(0, n, _CHUNK):
        tc = _narrow(t[s:s + _CHUNK], num_classes, "target")
        pc = _narrow(p[s:s + _CHUNK], num_classes, "pred")
        m = tc.size
        code = buf[:m + (m & 1)]
        np.multiply(tc, np.uint8(num_classes), out=code[:m])
        np.add(code[:m], pc, out=code[:m])
        if m & 1:
            code[m] = 0
            pads += 1
        h = torch.bincount(torch.from_numpy(code.view(np.int16)), minlength=256 * k)
        hist = h if hist is None else hist.add_(h)
    pair = hist.numpy().reshape(k, 256)[:, :k]  # [odd code, even code] (little-endian); columns >= k are 0
    counts = pair.sum(1) + pair.sum(0)
    counts[0] -= pads
    return counts


def _counts_cpu(p: np.ndarray, t: np.ndarray, num_classes: int) -> np.ndarray:
    """(C*C,) int64 counts of ``t * C + p`` on the CPU, ids checked.

    numpy for the checks and the codes (single-threaded SIMD: robust when the CPU is shared, where torch's
    threaded element-wise ops stall), torch.bincount for the counting (about 2x numpy's, which first copies
    its input to int64).
    """
    if counts_pairs(t.size, num_classes):
        return _paired_counts(p, t, num_classes)
    dtype = np.dtype(_index_dtype(num_classes * num_classes))
    idx = _checked_cast(t, dtype, num_classes, "target")
    if idx is t:  # no copy was made: never write into the caller's array
        idx = idx * dtype.type(num_classes)
    else:
        idx *= dtype.type(num_classes)
    idx += _checked_cast(p, dtype, num_classes, "pred")  # exact: values <= C*C-1 fit the dtype
    return torch.bincount(torch.from_numpy(idx.reshape(-1)), minlength=num_classes * num_classes).numpy()


def _counts_torch(p: torch.Tensor, t: torch.Tensor, num_classes: int) -> torch.Tensor:
    dtype = getattr(torch, _index_dtype(num_classes * num_classes))
    p = p.to(t.device)
    idx = t.to(dtype) * num_classes + p.to(dtype)
    return torch.bincount(idx.reshape(-1), minlength=num_classes * num_classes)


def confusion_counts(pred: Array, target: Array, num_classes: int, ignore_index: Optional[int] = None) -> np.ndarray:
    """One image's confusion matrix.

    pred, target: integer (or bool) maps of the same shape, any number of dims, values in 0..num_classes-1;
    numpy or torch on any device. Returns int64 numpy (C, C), rows = ground truth, cols = prediction, with
    the ignore id's row zero (those pixels dropped from both sides). Ids out of range raise ValueError.

    Speed: one ``target * C + pred`` and one ``bincount``; ignore pixels need no boolean mask because they
    all land in row ``ignore_index``, which is zeroed afterwards. On the CPU the maps are narrowed to uint8
    (range checked) chunk by chunk so each chunk is read from memory once, and for C <= 11 on maps of 12 k
    pixels or more two pixels' codes are counted per increment (see ``_paired_counts``). For C <= 16 the
    index fits in uint8.
    """
    if ignore_index is not None and not 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index {ignore_index} is not an id in 0..{num_classes - 1}")
    on_device = any(isinstance(x, torch.Tensor) and x.device.type != "cpu" for x in (pred, target))
    convert = _as_tensor if on_device else _as_numpy
    t, p = convert(target, "target"), convert(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(f"pred shape {tuple(p.shape)} differs from target shape {tuple(t.shape)}")
    if t.size == 0 if isinstance(t, np.ndarray) else t.numel() == 0:
        return np.zeros((num_classes, num_classes), np.int64)
    if on_device:
        _check_range(t, num_classes, "target")
        _check_range(p, num_classes, "pred")
    if on_device:
        counts = _counts_torch(p, t, num_classes).cpu().numpy()
    else:
        counts = _counts_cpu(p, t, num_classes)
    counts = counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)
    if ignore_index is not None:
        counts[ignore_index, :] = 0
    return counts
