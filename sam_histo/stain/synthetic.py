"""Synthetic H&E tiles rendered by Beer-Lambert from a known stain matrix (tests and the benchmark's
stand-in when no real tiles are available)."""
from __future__ import annotations

import numpy as np

# Typical H&E OD directions (unit columns: hematoxylin, eosin), close to published Macenko references.
DEFAULT_HE = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])


def render(he: np.ndarray, conc: np.ndarray, io: float = 240.0) -> np.ndarray:
    """(H, W, 2) non-negative concentrations and a (3, 2) stain matrix -> (H, W, 3) uint8 RGB,
    ``I = Io * exp(-conc @ he.T) - 1`` rounded (the inverse of OD = -ln((I + 1) / Io))."""
    od = conc.astype(np.float64) @ np.asarray(he, np.float64).T
    return np.clip(np.rint(io * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


def blob_concentrations(size: int, rng: np.random.Generator, n_nuclei: int = 40,
                        max_h: float = 1.4, max_e: float = 0.9) -> np.ndarray:
    """(size, size, 2) float concentrations: eosin-rich stroma patches, hematoxylin nuclei, background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    stroma = np.zeros((size, size), np.float32)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.15, 0.4)
        stroma = np.maximum(stroma, np.clip(1.2 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2, 0, 1))
    nuclei = np.zeros((size, size), np.float32)
    for _ in range(n_nuclei):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.01, 0.04)
        nuclei = np.maximum(nuclei, np.clip(1.5 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2, 0, 1))
    noise = rng.normal(1.0, 0.08, (size, size, 2)).astype(np.float32)
    conc = np.stack([max_h * nuclei + 0.1 * stroma, max_e * stroma * (1 - 0.5 * nuclei)], axis=-1) * noise
    return np.clip(conc, 0, None)


def synthetic_tiles(n: int, size: int = 1000, seed: int = 0, he: np.ndarray = DEFAULT_HE) -> list[np.ndarray]:
    """``n`` (size, size, 3) uint8 H&E-like tiles whose stain vectors are ``he`` jittered per tile."""
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(n):
        tile_he = np.clip(he + rng.normal(0, 0.03, he.shape), 0.01, None)
        tile_he /= np.linalg.norm(tile_he, axis=0, keepdims=True)
        tiles.append(render(tile_he, blob_concentrations(size, rng)))
    return tiles
