"""The overlap linker: per-slice instance maps -> one 3-D instance volume (pure numpy).

Instances of slice z and slice z + d (d = 1, then up to ``link_gap`` + 1 for objects still unlinked) are joined
when their overlap |A & B| / min(|A|, |B|) reaches ``link_overlap``: the overlap, not the IoU, so the small
end cap of a vesicle joins the much larger cross-section next to it. Links are one-to-one, made greedily
from the highest overlap down (IoU breaks ties), so one blob overlapping two vesicles on the next slice
cannot chain them together; the joined instances (connected components of the link graph, through a
union-find) become one 3-D id. Adjacent EM slices of a vesicle are
nearly identical, so 2-D overlap is a reliable cue; skipping ``link_gap`` slices bridges a slice where the
per-slice detector missed the vesicle.

Also here: ``relabel_sequential_3d`` (ids 1..n ordered by first voxel) and ``drop_small`` (``min_voxels``),
shared with the video linker.
"""
from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving."""

    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], np.int64)


def pair_overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every overlapping pair of instances of two 2-D maps of one shape (ids >= 0, 0 background): (ids in a,
    ids in b, overlap = |A & B| / min(|A|, |B|), IoU); int64, int64, float64, float64, one entry per pair."""
    a, b = np.asarray(a, np.int64).ravel(), np.asarray(b, np.int64).ravel()
    na, nb = int(a.max(initial=0)) + 1, int(b.max(initial=0)) + 1
    both = (a > 0) & (b > 0)
    key, inter = np.unique(a[both] * nb + b[both], return_counts=True)
    ia, ib = key // nb, key % nb
    size_a, size_b = np.bincount(a, minlength=na)[ia], np.bincount(b, minlength=nb)[ib]
    return ia, ib, inter / np.minimum(size_a, size_b), inter / (size_a + size_b - inter)


def link_overlap(slices: np.ndarray, link_overlap: float = 0.5, link_gap: int = 1, min_voxels: int = 0) -> np.ndarray:
    """(Z, H, W) per-slice instance maps (ids need only be unique within a slice) -> (Z, H, W) int32 3-D ids
    1..n (0 background); objects with fewer than ``min_voxels`` voxels are dropped."""
    slices = np.asarray(slices)
    if slices.ndim != 3:
        raise ValueError(f"slices must be a (Z, H, W) stack of instance maps, got shape {slices.shape}")
    depth = slices.shape[0]
    # Node of (z, id): base[z] + id; id 0 of each slice is a background node that is never linked.
    sizes = [int(slices[z].max(initial=0)) + 1 for z in range(depth)]
    base = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    uf = UnionFind(int(base[-1]))
    has_next = np.zeros(int(base[-1]), bool)
    has_prev = np.zeros(int(base[-1]), bool)
    for z in range(depth):
        for d in range(1, link_gap + 2):
            if z + d >= depth:
                break
            ia, ib, overlap, iou = pair_overlap(slices[z], slices[z + d])
            for k in np.lexsort((-iou, -overlap)):
                u, v = base[z] + ia[k], base[z + d] + ib[k]
                if overlap[k] < link_overlap or has_next[u] or has_prev[v]:
                    continue
                has_next[u] = has_prev[v] = True
                uf.union(u, v)
    roots = uf.roots()
    out = np.zeros(slices.shape, np.int64)
    for z in range(depth):
        out[z] = roots[base[z] + slices[z].astype(np.int64)]
        out[z][slices[z] == 0] = 0
    return drop_small(relabel_sequential_3d(out), min_voxels)


def relabel_sequential_3d(labels: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..n in order of each object's first voxel (raster order), 0 kept; int32."""
    flat = np.asarray(labels).ravel()
    ids, first = np.unique(flat, return_index=True)
    order = ids[np.argsort(first)]
    order = order[order != 0]
    lut = np.zeros(int(ids.max(initial=0)) + 1, np.int64)
    lut[order] = np.arange(1, len(order) + 1)
    return lut[flat].reshape(np.shape(labels)).astype(np.int32)


def drop_small(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """Objects with fewer than ``min_voxels`` voxels set to 0, the rest renumbered 1..n; int32."""
    if min_voxels <= 0:
        return labels.astype(np.int32, copy=False)
    counts = np.bincount(labels.ravel())
    small = np.flatnonzero(counts < min_voxels)
    small = small[small > 0]
    if not len(small):
        return labels.astype(np.int32, copy=False)
    out = np.where(np.isin(labels, small), 0, labels)
    return relabel_sequential_3d(out)
