"""Fast global k-means and power-set convex-hull candidate regions (Jeong et al., Sec. 2)."""
from __future__ import annotations

import numpy as np
import pytest

from lit_retrieval.methods.salient_regions import regions as R
from lit_retrieval.methods.salient_regions.regions import candidate_regions, global_kmeans

# Power-set order for L = 3 (bitmask 1..7), then the whole image.
SUBSETS3 = [(0,), (1,), (0, 1), (2,), (0, 2), (1, 2), (0, 1, 2), (0, 1, 2)]


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = np.array([[120.0, 100.0], [500.0, 120.0], [320.0, 380.0]])
    truth = np.repeat(np.arange(3), [150, 100, 120])
    pts = means[truth] + rng.normal(0, 15, (len(truth), 2))
    perm = rng.permutation(len(truth))
    return pts[perm], truth[perm]


def _line(x: list[float]) -> np.ndarray:
    return np.stack([np.asarray(x, float), np.zeros(len(x))], 1)


# --------------------------------------------------------------------------------------------- global k-means

def test_global_kmeans_recovers_blobs_and_is_deterministic():
    pts, truth = _blobs()
    labels, centres = global_kmeans(pts, 3)
    assert labels.dtype == np.int64 and labels.shape == (len(pts),) and centres.shape == (3, 2)
    # Bijection between true blobs and labels (agreement up to permutation).
    pairs = {(int(t), int(lab)) for t, lab in zip(truth, labels)}
    assert len(pairs) == 3 and len({t for t, _ in pairs}) == 3 and len({lab for _, lab in pairs}) == 3
    for t, lab in pairs:
        np.testing.assert_allclose(centres[lab], pts[truth == t].mean(0), atol=1e-3)
    labels2, centres2 = global_kmeans(pts, 3)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(centres, centres2)


def test_global_kmeans_k1_is_the_mean():
    pts, _ = _blobs()
    labels, centres = global_kmeans(pts, 1)
    assert (labels == 0).all()
    np.testing.assert_allclose(centres[0], pts.mean(0))


def test_fast_global_gain_hand_computed():
    # x = [-5, -5, 0, 4, 6] on a line, one centre at the mean 0: d = [25, 25, 0, 16, 36].
    # b(-5) = 25 + 25 = 50; b(0) = 0; b(4) = 16 + (36 − 4) = 48; b(6) = 36 + (16 − 4) = 48.
    x = _line([-5, -5, 0, 4, 6])
    d = (x ** 2).sum(1)
    np.testing.assert_allclose(R._gains(x, d), [50, 50, 0, 48, 48])
    # Row blocks give the same gains as one block.
    old = R._BLOCK_ELEMS
    try:
        R._BLOCK_ELEMS = 7  # 1 row per block
        np.testing.assert_allclose(R._gains(x, d), [50, 50, 0, 48, 48])
    finally:
        R._BLOCK_ELEMS = old
    # So the 2nd centre starts at -5 (not at the farthest point 6): Lloyd from {0, -5} splits {-5, -5} | {0, 4, 6}
    # (starting from {0, 6} it would give the equally good {-5, -5, 0} | {4, 6}).
    labels, centres = global_kmeans(x, 2)
    assert labels[0] == labels[1] != labels[2] == labels[3] == labels[4]
    np.testing.assert_allclose(np.sort(centres[:, 0]), [-5, 10 / 3], atol=1e-5)


def test_gains_match_bruteforce_on_random_points():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 100, (50, 2))
    c = x[:2]
    d = ((x[:, None] - c[None]) ** 2).sum(-1).min(1)
    brute = [sum(max(d[j] - ((x[n] - x[j]) ** 2).sum(), 0) for j in range(len(x))) for n in range(len(x))]
    np.testing.assert_allclose(R._gains(x, d), brute, rtol=1e-12)


def test_global_kmeans_fewer_distinct_points_than_k():
    pts = np.array([[3.0, 4.0], [1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [3.0, 4.0]])
    labels, centres = global_kmeans(pts, 4)
    assert labels.tolist() == [1, 0, 1, 0, 1]  # np.unique row order: (1, 2) then (3, 4)
    np.testing.assert_array_equal(centres[:2], [[1, 2], [3, 4]])
    assert np.isnan(centres[2:]).all()
    # Fewer points than k, and exactly k distinct points.
    labels, centres = global_kmeans(pts[:2], 5)
    assert sorted(labels.tolist()) == [0, 1] and np.isnan(centres[2:]).all()
    labels, centres = global_kmeans(pts, 2)
    assert len(set(labels.tolist())) == 2 and not np.isnan(centres).any()
    labels, centres = global_kmeans(np.zeros((0, 2)), 3)
    assert labels.shape == (0,) and np.isnan(centres).all()
    # The clusters then feed candidate_regions: empty clusters add no regions.
    masks, subsets = candidate_regions(pts, labels=global_kmeans(pts, 4)[0], n_clusters=4,
                                       image_hw=(10, 10), feature_hw=(5, 5))
    assert subsets == [(0, 1, 2, 3)] and masks.shape == (1, 5, 5)


def test_global_kmeans_rejects_bad_input():
    with pytest.raises(ValueError):
        global_kmeans(np.zeros((5, 2)), 0)
    with pytest.raises(ValueError):
        global_kmeans(np.zeros(5), 2)


# ------------------------------------------------------------------------------------------- candidate regions

def _triangle(cx: float, cy: float, r: float) -> np.ndarray:
    return np.array([[cx - r, cy + r], [cx + r, cy + r], [cx, cy - r]])


def test_power_set_gives_2_to_the_L_regions_whole_image_last():
    pts, _ = _blobs()
    labels, _ = global_kmeans(pts, 3)
    masks, subsets = candidate_regions(pts, labels, 3, image_hw=(480, 640), feature_hw=(15, 20))
    assert masks.shape == (8, 15, 20) and masks.dtype == bool
    assert len(subsets) == 2 ** 3 and subsets == SUBSETS3
    assert masks[-1].all() and not masks[:-1].all(axis=(1, 2)).any()
    assert masks[:-1].any(axis=(1, 2)).all()
    # Monotone: a subset's region contains each of its clusters' regions.
    for m, s in zip(masks[:-1], subsets[:-1]):
        for c in s:
            assert not (masks[subsets.index((c,))] & ~m).any()


def test_tiny_triangle_inside_one_cell_vanishes():
    # 480×640 image on a 15×20 map: cells are 32×32 px, centres at 16 + 32k.
    pts = np.concatenate([_triangle(100, 100, 60), _triangle(500, 120, 60), _triangle(300, 300, 3)])
    labels = np.repeat([0, 1, 2], 3)
    masks, subsets = candidate_regions(pts, labels, 3, (480, 640), (15, 20))
    assert (2,) not in subsets and len(subsets) == 7
    assert subsets == [s for s in SUBSETS3 if s != (2,)]
    assert masks[-1].all()


def test_degenerate_sets_vanish_but_whole_image_is_kept():
    pts = np.array([[16.0, 16.0], [48.0, 48.0], [80.0, 80.0], [16.0, 80.0]])  # collinear + a single point
    labels = np.array([0, 0, 0, 1])
    masks, subsets = candidate_regions(pts, labels, 2, (160, 160), (5, 5))
    assert subsets == [(0, 1), (0, 1)]  # cluster 0 is collinear (QhullError), cluster 1 a point
    assert masks.shape == (2, 5, 5) and masks[-1].all()
    # Union triangle (16,16)-(80,80)-(16,80): cell centres 16, 48, 80 px → cells on or below the diagonal.
    np.testing.assert_array_equal(masks[0][:3, :3], np.tril(np.ones((3, 3), bool)))
    assert not masks[0][3:].any() and not masks[0][:, 3:].any()


def test_square_hull_covers_exactly_its_cells_closed():
    # 160×160 image, 16×16 map: 10-px cells with centres at 5, 15, ..., 155. Square x ∈ [25, 65], y ∈ [35, 75]:
    # its corners are cell centres, so the closed hull holds columns 2..6 and rows 3..7 exactly.
    xs, ys = np.meshgrid(np.linspace(25, 65, 5), np.linspace(35, 75, 7))
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    masks, subsets = candidate_regions(pts, np.zeros(len(pts), int), 1, (160, 160), (16, 16))
    expected = np.zeros((16, 16), bool)
    expected[3:8, 2:7] = True
    assert subsets == [(0,), (0,)]
    np.testing.assert_array_equal(masks[0], expected)


def test_union_is_one_convex_hull_covering_the_gap():
    # Two 3×3-cell squares far apart on one row band: the (0, 1) region also holds the cells between them.
    sq = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    pts = np.concatenate([sq + [25, 25], sq + [105, 25]])
    labels = np.repeat([0, 1], 4)
    masks, subsets = candidate_regions(pts, labels, 2, (160, 160), (16, 16))
    assert subsets == [(0,), (1,), (0, 1), (0, 1)]
    a, b, ab = masks[:3]
    assert a[2:5, 2:5].all() and a.sum() == 9 and b[2:5, 10:13].all() and b.sum() == 9
    expected = np.zeros((16, 16), bool)
    expected[2:5, 2:13] = True
    np.testing.assert_array_equal(ab, expected)
    assert ab.sum() > (a | b).sum()


def test_duplicate_masks_are_dropped_keeping_the_first():
    big = np.array([[20.0, 20.0], [140.0, 20.0], [20.0, 140.0], [140.0, 140.0]])
    inner = _triangle(80, 80, 30)  # inside cluster 0's hull → hull(0 ∪ 1) == hull(0)
    far = np.array([[300.0, 20.0], [380.0, 20.0], [340.0, 100.0]])
    pts = np.concatenate([big, inner, far])
    labels = np.array([0] * 4 + [1] * 3 + [3] * 3)  # cluster 2 is empty
    masks, subsets = candidate_regions(pts, labels, 4, (160, 400), (16, 40))
    # Bitmask order: (0,) (1,) [(0,1) = (0,)] [(2,) empty] [(0,2) (1,2) (0,1,2) duplicates] (3,) (0,3) (1,3)
    # [(0,1,3) = (0,3)] [every subset with 2 duplicates one without], then the whole image.
    assert subsets == [(0,), (1,), (3,), (0, 3), (1, 3), (0, 1, 2, 3)]
    flat = masks.reshape(len(masks), -1)
    assert len({m.tobytes() for m in flat}) == len(flat)


def test_hull_covering_every_cell_duplicates_the_whole_image():
    pts = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])
    masks, subsets = candidate_regions(pts, np.zeros(4, int), 1, (100, 100), (4, 4))
    assert subsets == [(0,)] and masks.shape == (1, 4, 4) and masks[0].all()


@pytest.mark.parametrize("feature_hw,expected_rows,expected_cols", [
    ((15, 20), slice(1, 6), slice(2, 8)),   # 32×32-px cells: y+.5 ∈ [1.5, 5.5], x+.5 ∈ [2.5, 7.5]
    ((30, 20), slice(3, 11), slice(2, 8)),  # 16×32-px cells: (i+.5)·16 ∈ [48, 176] → i = 3..10
    ((15, 40), slice(1, 6), slice(5, 15)),  # 32×16-px cells: (j+.5)·16 ∈ [80, 240] → j = 5..14
])
def test_scale_mapping_non_square(feature_hw, expected_rows, expected_cols):
    # 480×640 (H×W) image; rectangle x ∈ [80, 240], y ∈ [48, 176] px.
    pts = np.array([[80.0, 48.0], [240.0, 48.0], [80.0, 176.0], [240.0, 176.0], [150.0, 100.0]])
    masks, subsets = candidate_regions(pts, np.zeros(5, int), 1, (480, 640), feature_hw)
    expected = np.zeros(feature_hw, bool)
    expected[expected_rows, expected_cols] = True
    assert masks.shape == (2, *feature_hw)
    np.testing.assert_array_equal(masks[0], expected)
    assert masks[1].all()


def test_candidate_regions_rejects_bad_labels():
    pts = np.zeros((3, 2))
    with pytest.raises(ValueError):
        candidate_regions(pts, np.array([0, 1, 2]), 2, (10, 10), (2, 2))
    with pytest.raises(ValueError):
        candidate_regions(pts, np.array([0, 1]), 2, (10, 10), (2, 2))
