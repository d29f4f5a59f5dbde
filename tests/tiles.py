"""Hand-made BCSS-layout tiles for learning tests: flat textured blocks of known classes.

Block layouts make the target unambiguous (each block is one connected component), so a learning test
measures the trainer, not the difficulty of the picture.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sam_histo.data.bcss import BCSS_CODES, write_code_table

# Mean RGB of each class's texture (H&E-like: tumour dark purple, stroma pink, lymphocytes dark blue ...).
COLORS = {
    "tumor": (120, 60, 160),
    "stroma": (230, 150, 190),
    "lymphocytic_infiltrate": (60, 40, 130),
    "necrosis_or_debris": (200, 180, 200),
    "blood_vessel": (180, 30, 40),
    "other": (245, 235, 225),
}


def write_blocks(root, layouts: list[list[tuple[str, tuple[int, int, int, int]]]], size: int = 64, seed: int = 0):
    """One ROI per layout; a layout is a list of (class, (y0, x0, y1, x1)) painted in order over 'other'.
    ROIs belong to different slides so the split code sees several; returns ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    write_code_table(root)
    rng = np.random.default_rng(seed)
    for i, layout in enumerate(layouts):
        codes = np.full((size, size), BCSS_CODES["other"], np.uint8)
        img = np.empty((size, size, 3), np.float32)
        img[:] = COLORS["other"]
        for name, (y0, x0, y1, x1) in layout:
            codes[y0:y1, x0:x1] = BCSS_CODES[name]
            img[y0:y1, x0:x1] = COLORS[name]
        img += rng.normal(0, 10, img.shape)
        name = f"TCGA-A{i}-B{i:03d}-DX1_xmin{100 * i}_ymin200_MPP-0.2500.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / name)
        Image.fromarray(codes).save(root / "masks" / name)
    return root


def quadrants(size: int = 64) -> list[tuple[str, tuple[int, int, int, int]]]:
    h = size // 2
    return [("tumor", (0, 0, h, h)), ("stroma", (0, h, h, size)), ("lymphocytic_infiltrate", (h, 0, size, h)),
            ("necrosis_or_debris", (h, h, size, size))]
