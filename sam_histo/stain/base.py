"""What every stain module shares: errors, the fallback counter, input checks, and the optical-density map.

Optical density (Beer-Lambert): ``OD = -ln((I + 1) / Io)`` for a uint8 intensity ``I`` and background
intensity ``Io``; the ``+ 1`` keeps ``ln`` finite at ``I = 0`` (same convention as Macenko's reference code
and torchstain). Because ``I`` has only 256 levels, OD comes from a 256-entry table instead of a ``log`` per
pixel, and any map that is affine in OD, ``OD' = OD @ M + b``, turns into a product of three gathered
256x3 tables: ``exp(-OD') = exp(-b) * E_r[r] * E_g[g] * E_b[b]`` with ``E_k[v] = exp(-OD(v) * M[k])``.
That is how Macenko, HED jitter and the Macenko augmentation avoid a per-pixel ``exp`` and matmul.
"""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np

from sam_histo.errors import DataError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


class StainError(DataError):
    """A stain-normalisation problem (e.g. a reference tile without stain); the message says the fix.

    A DataError, so the CLI and training report it like any other bad input."""


class InsufficientStain(StainError):
    """A tile has too little stain for a stain-matrix estimate; callers fall back (and count it).

    ``reason`` is a short category (the key in FallbackCounter.reasons); ``detail`` the numbers.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail


class FallbackCounter:
    """Counts tiles processed and tiles that needed a fallback, readable from training and CLI logs.

    The counts live in shared memory (``multiprocessing.Value``), so increments made inside forked
    DataLoader workers are visible in the main process. Under a ``spawn`` start method each process
    unpickles its own counter and only that process's counts are seen (``__setstate__`` below).
    ``reasons`` (why each fallback happened) is kept per process; the totals are shared.
    """

    def __init__(self):
        self._calls = multiprocessing.Value("q", 0)
        self._fallbacks = multiprocessing.Value("q", 0)
        self.reasons: dict[str, int] = {}

    def record(self, fallback: bool, reason: str = "") -> None:
        with self._calls.get_lock():
            self._calls.value += 1
        if fallback:
            with self._fallbacks.get_lock():
                self._fallbacks.value += 1
            key = reason or "unknown"
            self.reasons[key] = self.reasons.get(key, 0) + 1

    @property
    def calls(self) -> int:
        return int(self._calls.value)

    @property
    def fallbacks(self) -> int:
        return int(self._fallbacks.value)

    def snapshot(self) -> dict:
        """``{"calls", "fallbacks", "rate", "reasons"}`` for a log line or a JSON report."""
        calls, falls = self.calls, self.fallbacks
        return {"calls": calls, "fallbacks": falls, "rate": falls / calls if calls else 0.0,
                "reasons": dict(self.reasons)}

    def reset(self) -> None:
        with self._calls.get_lock():
            self._calls.value = 0
        with self._fallbacks.get_lock():
            self._fallbacks.value = 0
        self.reasons.clear()

    def __copy__(self):
        return self  # a counter is a shared handle: copies of a pipeline keep counting into it

    def __deepcopy__(self, memo):
        return self

    def __getstate__(self):
        return {"calls": self.calls, "fallbacks": self.fallbacks, "reasons": dict(self.reasons)}

    def __setstate__(self, state):
        self.__init__()
        self._calls.value = state["calls"]
        self._fallbacks.value = state["fallbacks"]
        self.reasons = dict(state["reasons"])

    def __repr__(self) -> str:
        return f"FallbackCounter(calls={self.calls}, fallbacks={self.fallbacks})"


def check_rgb(img, what: str = "image") -> np.ndarray:
    """Return ``img`` as a C-contiguous (H, W, 3) uint8 array or raise StainError naming ``what``."""
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise StainError(f"{what}: expected an RGB array of shape (H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise StainError(f"{what}: expected dtype uint8 (0-255), got {arr.dtype}; convert with "
                         "np.clip(x, 0, 255).astype(np.uint8) or skimage.util.img_as_ubyte")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise StainError(f"{what}: empty image of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def od_table(io: float) -> np.ndarray:
    """(256,) float32 optical density of each uint8 level for background intensity ``io``."""
    levels = np.arange(256, dtype=np.float64)
    return (-np.log((levels + 1.0) / float(io))).astype(np.float32)


def channels(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The R, G, B planes of an (H, W, 3) uint8 image as (H*W,) strided views (no copy)."""
    flat = img.reshape(-1, 3)
    return flat[:, 0], flat[:, 1], flat[:, 2]


def pair_index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) intp index ``a * 256 + b`` of two uint8 planes into a 256x256 (= 65536-row) table."""
    idx = a.astype(np.intp)
    idx <<= 8
    idx |= b
    return idx


def od_affine_to_rgb(img: np.ndarray, od_in: np.ndarray, matrix: np.ndarray, offset: np.ndarray,
                     io_out: float, rg: np.ndarray | None = None) -> np.ndarray:
    """Apply ``OD' = OD @ matrix + offset`` to a uint8 RGB image and return uint8 RGB.

    img: (H, W, 3) uint8; od_in: (256,) OD table of the input; matrix: (3, 3); offset: (3,);
    rg: optional precomputed ``pair_index(R, G)``. Output intensity ``io_out * exp(-OD') - 1``
    rounded and clipped to 0..255 (the exact inverse of ``od_table``, so ``matrix = I, offset = 0``
    with equal ``io`` returns the input). R and G share one 65536x3 table (fits in L2 cache), B has
    its own 256x3 table: two gathers and one multiply per pixel.
    """
    matrix = np.asarray(matrix, np.float64)
    offset = np.asarray(offset, np.float64)
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(offset))):
        raise InsufficientStain("non-finite optical-density transform")
    od = od_in.astype(np.float64)[:, None]
    # exp(-OD(v) * M[k]) per level and output channel; exponents clipped so float32 stays finite.
    e = [np.exp(np.clip(-od * matrix[k][None, :], -80.0, 80.0)) for k in range(3)]
    e_rg = (e[0][:, None, :] * e[1][None, :, :]).reshape(65536, 3)
    e_rg *= io_out * np.exp(np.clip(-offset, -80.0, 80.0))[None, :]
    r, g, b = channels(img)
    if rg is None:
        rg = pair_index(r, g)
    acc = np.take(e_rg.astype(np.float32), rg, axis=0)
    acc *= np.take(e[2].astype(np.float32), b, axis=0)
    # round(acc - 1) == floor(acc - 0.5); after clipping to [0, 255] the uint8 cast is that floor.
    acc -= 0.5
    np.clip(acc, 0.0, 255.0, out=acc)
    return acc.astype(np.uint8).reshape(img.shape)


def percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) of a 1-D array, exact, in O(n).

    For a tail percentile only the candidates beyond a threshold taken from a 1/16 subsample are
    partitioned (about 2 % of the values); if the subsample guess misses, it partitions everything.
    """
    values = np.ravel(values)
    n = values.shape[0]
    pos = q / 100.0 * (n - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    a, b = _order_stats(values, lo, hi)
    return float(a) + (float(b) - float(a)) * (pos - lo)


def _order_stats(values: np.ndarray, lo: int, hi: int) -> tuple[float, float]:
    """The ``lo``-th and ``hi``-th smallest values (0-based) of a 1-D array; ``values`` is untouched."""
    n = values.shape[0]
    if n >= 4096:
        sub = values[::16]
        frac = (lo + 0.5) / n
        if frac > 0.5:  # upper tail: keep values >= a guess a little below the wanted rank
            k = int(max(0.0, frac - 0.01) * (sub.shape[0] - 1))
            cand = values[values >= np.partition(sub, k)[k]]
            below = n - cand.shape[0]
            if below <= lo:
                part = np.partition(cand, [lo - below, hi - below])
                return part[lo - below], part[hi - below]
        else:  # lower tail: keep values <= a guess a little above the wanted rank
            k = int(min(1.0, frac + 0.01) * (sub.shape[0] - 1))
            cand = values[values <= np.partition(sub, k)[k]]
            if cand.shape[0] > hi:
                part = np.partition(cand, [lo, hi])
                return part[lo], part[hi]
    part = np.partition(values, [lo, hi])
    return part[lo], part[hi]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted), by suffix."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_rgb(path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (grey is repeated, alpha dropped); StainError if unreadable."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise StainError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several types; any of them means "not an image we can read"
        try:
            import tifffile

            arr = tifffile.imread(path)
        except Exception:
            raise StainError(f"{path}: cannot read as an image ({e})") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] < 3 or arr.dtype != np.uint8:
        raise StainError(f"{path}: expected an 8-bit RGB image, got shape {arr.shape} dtype {arr.dtype}")
    return np.ascontiguousarray(arr[..., :3])


def load_references(spec) -> list[np.ndarray]:
    """Reference tiles from a path to an image, a folder of images, or a list of paths/arrays."""
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    out: list[np.ndarray] = []
    for item in items:
        if isinstance(item, np.ndarray):
            out.append(check_rgb(item, "reference"))
            continue
        p = Path(item)
        if p.is_dir():
            files = list_images(p)
            if not files:
                raise StainError(f"stain reference folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(read_rgb(f) for f in files)
        else:
            out.append(read_rgb(p))
    if not out:
        raise StainError("no stain reference given: set stain.reference to an RGB tile or a folder of tiles")
    return out
