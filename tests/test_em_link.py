"""The overlap linker and the video linker's logic (with an oracle predictor)."""
import numpy as np
import pytest
from em_fakes import OracleVideoPredictor
from scipy.ndimage import binary_dilation
from skimage.measure import label as cc_label

from sam_histo.em.link import drop_small, link_overlap, pair_overlap, relabel_sequential_3d
from sam_histo.em.video import link_video
from sam_histo.scoring.instances import contingency


def _ball(shape, centre, radius):
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    return ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) < radius ** 2


def _per_slice(labels3d: np.ndarray, rng) -> np.ndarray:
    """Per-slice instance maps: each slice's objects renumbered 1..n in a random order (ids mean nothing
    across slices, as the per-slice decoder returns them)."""
    out = np.zeros_like(labels3d)
    for z in range(len(labels3d)):
        ids = np.unique(labels3d[z][labels3d[z] > 0])
        for new, old in enumerate(rng.permutation(ids), 1):
            out[z][labels3d[z] == old] = new
    return out


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    rows, cols, _, _, _ = contingency(a, b)
    fg = (rows > 0) | (cols > 0)
    pairs = list(zip(rows[fg], cols[fg]))
    return len(pairs) == len({r for r, _ in pairs}) == len({c for _, c in pairs}) and all(r > 0 and c > 0 for r, c in pairs)


def test_pair_overlap_against_direct_counts():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, (20, 20)), rng.integers(0, 3, (20, 20))
    ia, ib, overlap, iou = pair_overlap(a, b)
    for i, j, o, v in zip(ia, ib, overlap, iou):
        inter = ((a == i) & (b == j)).sum()
        assert v == pytest.approx(inter / ((a == i) | (b == j)).sum())
        assert o == pytest.approx(inter / min((a == i).sum(), (b == j).sum()))
    assert len(ia) == sum(((a == i) & (b == j)).any() for i in range(1, 4) for j in range(1, 3))


def test_overlap_linker_equals_3d_components_on_random_separate_vesicles():
    """Oracle: for vesicles that never touch, the 3-D connected components of the foreground are the truth."""
    rng = np.random.default_rng(1)
    for trial in range(3):
        shape = (14, 48, 48)
        truth = np.zeros(shape, np.int64)
        for k in range(1, 7):
            c = (rng.integers(3, 11), rng.integers(6, 42), rng.integers(6, 42))
            ball = _ball(shape, c, rng.uniform(2.5, 5))
            if not (truth > 0)[binary_dilation(ball, iterations=2)].any():  # a gap of at least one voxel
                truth[ball] = k
        expect = cc_label(truth > 0, connectivity=1)
        got = link_overlap(_per_slice(truth, rng), link_overlap=0.5, link_gap=0)
        assert got.dtype == np.int32 and got.max() == expect.max()
        assert _same_partition(got, expect), f"trial {trial}"


def test_overlap_linker_one_vesicle_one_id_and_neighbours_apart():
    shape = (8, 32, 32)
    a = _ball(shape, (4, 10, 10), 3.5)
    b = _ball(shape, (4, 10, 18), 3.5)  # touching a in-plane on some slices
    truth = np.where(a, 1, np.where(b, 2, 0))
    got = link_overlap(_per_slice(truth, np.random.default_rng(2)), link_overlap=0.5)
    assert len(np.unique(got[a])) == 1 and len(np.unique(got[b])) == 1 and got[a][0] != got[b][0]
    # One above the other with three empty slices between: two objects even with a gap of one slice.
    c = _ball((14, 32, 32), (2, 16, 16), 2.5)
    d = _ball((14, 32, 32), (10, 16, 16), 2.5)
    got = link_overlap(np.where(c | d, 1, 0), link_overlap=0.5, link_gap=1)
    assert got.max() == 2 and got[c].min() != got[d].min()


def test_link_gap_bridges_a_missed_slice():
    shape = (9, 24, 24)
    ball = _ball(shape, (4, 12, 12), 4.2)
    slices = ball.astype(np.int64)
    slices[4] = 0  # the per-slice detector missed the middle slice
    assert link_overlap(slices, 0.5, link_gap=0).max() == 2
    bridged = link_overlap(slices, 0.5, link_gap=1)
    assert bridged.max() == 1 and (bridged > 0).sum() == ball.sum() - ball[4].sum()


def test_links_are_one_to_one_so_a_blob_cannot_chain_two_vesicles():
    a = np.zeros((4, 20, 20), np.int64)
    a[0, 4:16, 2:18] = 1  # one blob over both
    a[1:, 4:16, 2:9] = 1  # left vesicle, larger overlap with the blob
    a[1:, 4:16, 11:18] = 2
    got = link_overlap(a, link_overlap=0.5)
    assert got.max() == 2 and got[0, 8, 3] == got[2, 8, 3] != got[2, 8, 15]


def test_relabel_and_drop_small():
    x = np.array([[[0, 7, 7], [3, 0, 9]]])
    assert relabel_sequential_3d(x).tolist() == [[[0, 1, 1], [2, 0, 3]]]
    assert drop_small(relabel_sequential_3d(x), 2).tolist() == [[[0, 1, 1], [0, 0, 0]]]


# ------------------------------------------------------------------ video linker logic, oracle predictor
def test_video_linker_recovers_objects_and_skips_covered_seeds():
    shape = (16, 32, 32)  # objects within z 1..9: tracking to the ends would visit frames 0 and 15
    truth = np.zeros(shape, np.int64)
    for k, (c, r) in enumerate((((3, 8, 8), 3.2), ((5, 20, 20), 4.5), ((6, 8, 24), 3.0)), 1):
        truth[_ball(shape, c, r)] = k
    slices = _per_slice(truth, np.random.default_rng(3))
    scores = [np.full(int(s.max()), 0.9, np.float32) for s in slices]
    predictor = OracleVideoPredictor(truth)
    got = link_video(predictor, np.zeros(shape, np.uint8), slices, scores, merge_iou=0.5, progress=False)
    assert got.shape == shape and got.dtype == np.int32 and _same_partition(got, truth)
    # Every object is seeded once: its instances on other slices are covered by its first track.
    assert sorted(predictor.seeded) == [1, 2, 3] and predictor.rounds <= 3
    # Tracking stops at the first empty frame in each direction, never running to the volume's ends.
    z_extent = {k: np.flatnonzero((truth == k).any((1, 2))) for k in (1, 2, 3)}
    visited = {f for f, _ in predictor.visited}
    assert max(visited) <= max(e.max() for e in z_extent.values()) + 1
    assert min(visited) >= min(e.min() for e in z_extent.values()) - 1


def test_video_linker_merges_duplicate_tracks_and_drops_small():
    shape = (6, 24, 24)
    truth = np.zeros(shape, np.int64)
    truth[_ball(shape, (3, 12, 12), 3.5)] = 1
    # Two instances of one vesicle on its middle slice (a split seed): both tracks follow the same vesicle.
    slices = (truth > 0).astype(np.int64)
    slices[3][:, 12:] *= 2
    scores = [np.full(int(s.max()), 0.5, np.float32) for s in slices]
    got = link_video(OracleVideoPredictor(truth), np.zeros(shape, np.uint8), slices, scores, merge_iou=0.5,
                     progress=False)
    assert got.max() == 1 and np.array_equal(got > 0, truth > 0)
    assert link_video(OracleVideoPredictor(truth), np.zeros(shape, np.uint8), slices, scores, merge_iou=0.5,
                      min_voxels=int((truth > 0).sum()) + 1, progress=False).max() == 0
