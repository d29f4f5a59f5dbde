"""Physically rendered synthetic microscopy: H&E by Beer-Lambert stain mixing, EM vesicles in a volume.

H&E: each pixel holds hematoxylin and eosin amounts (optical densities, log10 units); the transmitted
light is ``I = 255 * 10 ** -(h * H + e * E)`` per RGB channel, with the stain vectors of Ruifrok &
Johnston, "Quantification of histochemical staining by color deconvolution", Anal. Quant. Cytol.
Histol. 23 (2001), as tabulated in ``skimage.color.rgb_from_hed``. Tissue classes differ in stain amounts,
texture (smoothed noise, anisotropic for fibrous stroma) and nuclei (density, size, elongation, darkness).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


def stain_vectors() -> np.ndarray:
    """(2, 3) unit optical-density vectors of hematoxylin and eosin (Ruifrok & Johnston 2001)."""
    from skimage.color import rgb_from_hed

    he = np.asarray(rgb_from_hed[:2], np.float64)
    return he / np.linalg.norm(he, axis=1, keepdims=True)


@dataclass(frozen=True)
class Style:
    """How one tissue class looks: stain amounts, texture and nuclei (radius in pixels, density per px)."""

    h: float  # background hematoxylin OD
    e: float  # background eosin OD
    texture: float = 0.25  # relative amplitude of the stain texture
    fibres: float = 1.0  # > 1: texture stretched along one direction (stroma fibres)
    nuclei: float = 0.0  # nuclei per pixel of the region
    radius: tuple[float, float] = (3.0, 4.0)
    aspect: float = 1.0  # nucleus length / width
    dark: float = 0.8  # hematoxylin OD added inside a nucleus
    fat: bool = False  # adipocytes: empty cells with thin eosin membranes


def smooth_noise(rng: np.random.Generator, shape, sigma, angle: float = 0.0) -> np.ndarray:
    """Gaussian-smoothed white noise, zero mean and unit std; ``sigma`` a number or (along, across) pair
    for texture stretched at ``angle`` radians."""
    if np.isscalar(sigma) and sigma > 6:
        # Large blobs: smooth a coarse grid and interpolate up (same look, a fraction of the cost).
        f = int(sigma // 3)
        coarse = smooth_noise(rng, tuple(s // f + 2 for s in shape), sigma / f)
        fine = ndi.zoom(coarse, f, order=1)[tuple(slice(0, s) for s in shape)]
        return (fine - fine.mean()) / (fine.std() + 1e-8)
    white = rng.standard_normal(shape).astype(np.float32)
    if np.isscalar(sigma):
        out = ndi.gaussian_filter(white, sigma, mode="wrap")
    else:
        out = ndi.gaussian_filter(white, (sigma[1], sigma[0]), mode="wrap")
        if angle:
            out = ndi.rotate(out, np.degrees(angle), reshape=False, mode="reflect", order=1)
    out -= out.mean()
    return out / (out.std() + 1e-8)


def partition(rng: np.random.Generator, shape, fractions: dict[int, float], sigma: float) -> np.ndarray:
    """A label map whose regions are blobs of smoothed noise with the given area fractions.

    Codes are assigned in order: each takes the pixels where its own noise field is highest among
    those still free, so every region is smooth and its share is exact up to rounding. (H, W) int64.
    """
    out = np.full(shape, -1, np.int64)
    free = np.ones(shape, bool)
    total = float(sum(fractions.values()))
    codes = list(fractions)
    for code in codes[:-1]:
        want = int(round(fractions[code] / total * out.size))
        if want <= 0:
            continue
        field = smooth_noise(rng, shape, sigma)
        field[~free] = -np.inf
        take = np.argpartition(field.ravel(), -want)[-want:]
        out.ravel()[take] = code
        free.ravel()[take] = False
    out[free] = codes[-1]
    return out


def draw_nuclei(rng, h_od: np.ndarray, region: np.ndarray, style: Style, angle: float) -> None:
    """Add hematoxylin-dense ellipses, centred inside ``region`` (bool (H, W)), to ``h_od`` in place."""
    from skimage.draw import ellipse

    idx = np.flatnonzero(region)
    count = rng.poisson(style.nuclei * idx.size)
    if count == 0 or idx.size == 0:
        return
    centres = rng.choice(idx, size=count)
    ys, xs = np.unravel_index(centres, region.shape)
    for y, x in zip(ys, xs):
        r = rng.uniform(*style.radius)
        a = style.aspect * rng.uniform(0.85, 1.2)
        rot = angle + rng.normal(0, 0.2) if style.aspect > 1.5 else rng.uniform(0, np.pi)
        rr, cc = ellipse(y, x, r / np.sqrt(a), r * np.sqrt(a), shape=region.shape, rotation=rot)
        h_od[rr, cc] = np.maximum(h_od[rr, cc], style.dark * rng.uniform(0.75, 1.15))


def fat_membranes(rng, shape, cell: float) -> np.ndarray:
    """Adipocyte membranes: the boundaries of a random Voronoi tessellation, bool (H, W)."""
    from skimage.segmentation import find_boundaries

    n = max(int(shape[0] * shape[1] / cell ** 2), 1)
    seeds = np.zeros(shape, np.int32)
    seeds[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = np.arange(1, n + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    return find_boundaries(seeds[iy, ix], mode="thick")


def paint_class(rng, h_od, e_od, region: np.ndarray, style: Style, angle: float) -> None:
    """Fill ``region`` of the stain maps with ``style``'s textured stain and its nuclei (in place)."""
    shape = region.shape
    sig = 3.0 if style.fibres <= 1 else (3.0 * style.fibres, 1.2)
    tex = smooth_noise(rng, shape, sig, angle)
    fine = smooth_noise(rng, shape, 1.0)
    if style.fat:
        wall = fat_membranes(rng, shape, cell=rng.uniform(28, 40))
        e_od[region] = np.where(wall[region], 0.45, 0.02)
        h_od[region] = 0.01
    else:
        h_od[region] = style.h * np.clip(1 + style.texture * (0.6 * tex + 0.4 * fine), 0.1, None)[region]
        e_od[region] = style.e * np.clip(1 + style.texture * (tex + 0.5 * fine), 0.1, None)[region]
    if style.nuclei:
        draw_nuclei(rng, h_od, region, style, angle)


def vessel_rings(rng, shape, n: int, radius=(10, 26)) -> tuple[np.ndarray, np.ndarray]:
    """``n`` blood vessels as (vessel bool (H, W), lumen bool (H, W)); the wall is vessel minus lumen."""
    from skimage.draw import ellipse

    vessel = np.zeros(shape, bool)
    lumen = np.zeros(shape, bool)
    for _ in range(n):
        r = rng.uniform(*radius)
        y, x = rng.uniform(r, shape[0] - r), rng.uniform(r, shape[1] - r)
        a, rot = rng.uniform(1.0, 2.2), rng.uniform(0, np.pi)
        vessel[ellipse(y, x, r / np.sqrt(a), r * np.sqrt(a), shape=shape, rotation=rot)] = True
        inner = max(r - rng.uniform(3, 6), 2)
        lumen[ellipse(y, x, inner / np.sqrt(a), inner * np.sqrt(a), shape=shape, rotation=rot)] = True
    return vessel, lumen


def paint_vessels(rng, h_od, e_od, vessel, lumen) -> None:
    """Vessel wall: eosin with flat endothelial nuclei; lumen: pale with red blood cells (eosin discs)."""
    from skimage.draw import disk

    wall = vessel & ~lumen
    e_od[wall] = 0.55
    h_od[wall] = 0.08
    draw_nuclei(rng, h_od, wall, Style(h=0, e=0, nuclei=0.01, radius=(3, 4), aspect=3.0, dark=0.7), 0.0)
    e_od[lumen] = 0.06
    h_od[lumen] = 0.02
    idx = np.flatnonzero(lumen)
    for c in rng.choice(idx, size=min(idx.size // 40, 400), replace=False) if idx.size else []:
        y, x = np.unravel_index(c, lumen.shape)
        rr, cc = disk((y, x), rng.uniform(2.5, 3.5), shape=lumen.shape)
        e_od[rr, cc] = 0.9


def he_to_rgb(rng, h_od: np.ndarray, e_od: np.ndarray, strength=(1.0, 1.0), noise: float = 2.0) -> np.ndarray:
    """Beer-Lambert: (H, W) stain ODs -> RGB uint8 (H, W, 3); ``strength`` scales H and E (slide-level
    staining variation); optics blur the stain slightly and the sensor adds Gaussian noise."""
    vecs = stain_vectors()
    h = ndi.gaussian_filter(h_od * strength[0], 0.7)
    e = ndi.gaussian_filter(e_od * strength[1], 0.7)
    od = h[..., None] * vecs[0] + e[..., None] * vecs[1]
    rgb = 255.0 * np.power(10.0, -od) + rng.normal(0, noise, od.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def em_volume(rng, shape, n_vesicles: int, voxels=(200, 1500)) -> tuple[np.ndarray, np.ndarray]:
    """A (Z, Y, X) uint8 EM-like volume with ``n_vesicles`` dark-membraned vesicles, and their
    instance labels (Z, Y, X) uint16 (0 background; every vesicle holds 200-1500 voxels)."""
    tex = 0.6 * smooth_noise(rng, shape, 1.5) + 0.4 * smooth_noise(rng, shape, 5.0)
    vol = 150.0 + 18.0 * tex
    labels = np.zeros(shape, np.uint16)
    placed: list[tuple[np.ndarray, float]] = []
    tries = 0
    while len(placed) < n_vesicles and tries < 200 * n_vesicles:
        tries += 1
        r = (3.0 * rng.uniform(*voxels) / (4.0 * np.pi)) ** (1 / 3)
        radii = r * rng.uniform(0.85, 1.15, 3)
        radii *= r / np.cbrt(radii.prod())  # keep the volume while varying the shape
        if any(2 * radii[k] + 2 >= shape[k] for k in range(3)):
            continue
        centre = np.array([rng.uniform(radii[k] + 1, shape[k] - radii[k] - 1) for k in range(3)])
        if any(np.linalg.norm(centre - c) < r + rc + 3 for c, rc in placed):
            continue
        box = tuple(slice(max(int(centre[k] - radii[k]) - 1, 0), min(int(centre[k] + radii[k]) + 2, shape[k]))
                    for k in range(3))
        grid = np.indices([b.stop - b.start for b in box], dtype=np.float32)
        d = np.sqrt(sum(((grid[k] + box[k].start - centre[k]) / radii[k]) ** 2 for k in range(3)))
        inside = d <= 1.0
        if not voxels[0] <= inside.sum() <= voxels[1]:
            continue
        labels[box][inside] = len(placed) + 1
        vol[box][inside & (d > 0.7)] = 55.0  # membrane
        vol[box][d <= 0.7] = 175.0  # lumen
        placed.append((centre, r))
    vol = ndi.gaussian_filter(vol, 0.6) + rng.normal(0, 9.0, shape)
    return np.clip(np.round(vol), 0, 255).astype(np.uint8), labels
