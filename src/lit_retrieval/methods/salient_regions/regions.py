"""Candidate regions from salient points (Jeong et al., ICIP, Sec. 2, last paragraph).

The salient points ``P`` (``N×2`` pixel ``(x, y)``) are grouped into ``L`` clusters with the fast global k-means
of [17] (Likas, Vlassis & Verbeek, "The global k-means clustering algorithm", Pattern Recognition 2003); every
non-empty subset of the clusters plus the whole image gives ``M = 2^L`` candidate regions, each the (closed)
convex hull of its points, mapped onto the ``h×w`` feature map by the ratio ``[w/W_I, h/H_I]``. A region that
covers no feature cell (its mapped size is zero) is discarded.
"""
from __future__ import annotations

import faiss
import numpy as np
from scipy.spatial import ConvexHull, QhullError

# Pairwise-distance blocks of at most this many float64 entries (16 MiB); two such blocks are alive at once.
_BLOCK_ELEMS = 1 << 21
# Point-in-hull tolerance, relative to the image's longer side (in pixels: 1e-6·max(H_I, W_I)).
_HULL_TOL = 1e-6


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``D[n, j] = ||x_n − c_j||²`` in float64 (small ``c``)."""
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)


def _gains(x: np.ndarray, d_min: np.ndarray) -> np.ndarray:
    """``b_n = Σ_j max(d_j − ||x_n − x_j||², 0)`` for every ``n`` (Likas et al. Sec. 2.2), in row blocks."""
    n, d = x.shape
    rows = max(1, _BLOCK_ELEMS // max(n, 1))
    b = np.empty(n)
    for s in range(0, n, rows):
        blk = x[s:s + rows]
        dist = np.zeros((len(blk), n))
        for a in range(d):
            diff = blk[:, a, None] - x[None, :, a]
            dist += np.square(diff, out=diff)
        np.subtract(d_min[None, :], dist, out=dist)
        np.maximum(dist, 0.0, out=dist)
        b[s:s + rows] = dist.sum(1)
    return b


def global_kmeans(points: np.ndarray, k: int, niter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Fast global k-means of Likas et al. [17] (their Sec. 2.2), the clustering used by Jeong et al.

    Start with one centre, the mean. From ``k−1`` to ``k`` centres: keep the ``k−1``-means solution and add as
    initial ``k``-th centre the data point maximising the guaranteed error reduction
    ``b_n = Σ_j max(d^j_{k−1} − ||x_n − x_j||², 0)`` (``d^j_{k−1}``: squared distance of ``x_j`` to its closest
    current centre), then run ``niter`` Lloyd iterations (faiss, no subsampling) from these ``k`` centres.
    Labels are the nearest final centre (float64 distances, ties → lowest id). Deterministic.

    With fewer distinct points ``m`` than ``k`` (``m ≤ k``) the optimum is exact: each distinct point is its own
    cluster (ids ``0..m−1`` in ``np.unique`` row order), clusters ``m..k−1`` are empty and their centre rows are
    NaN. The same holds with no points at all (empty labels, all-NaN centres).

    Returns ``(labels (N,) int64, centres (k, d) float64)``.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"points must be N×d, got shape {x.shape}")
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    n, d = x.shape
    centres = np.full((k, d), np.nan)
    uniq, inverse = np.unique(x, axis=0, return_inverse=True)
    if len(uniq) <= k:
        centres[:len(uniq)] = uniq
        return inverse.reshape(-1).astype(np.int64), centres

    c = x.mean(0, keepdims=True)
    d_min = _sq_dists(x, c)[:, 0]
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    for kk in range(2, k + 1):
        init = np.vstack([c, x[np.argmax(_gains(x, d_min))]])  # ties → lowest index
        km = faiss.Kmeans(d, kk, niter=niter, seed=1234, nredo=1, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=max(n, 1))
        km.train(x32, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
        c = km.centroids.astype(np.float64)
        d_min = _sq_dists(x, c).min(1)
    centres[:] = c
    return _sq_dists(x, c).argmin(1).astype(np.int64), centres


def _unique_rows(p: np.ndarray) -> np.ndarray:
    return np.unique(p, axis=0) if len(p) else p.reshape(0, 2)


def _hull_equations(p: np.ndarray) -> np.ndarray | None:
    """Qhull facets ``[n_x, n_y, c]`` (inside: ``n·p + c ≤ 0``) or ``None`` for < 3 points / collinear sets."""
    if len(_unique_rows(p)) < 3:
        return None
    try:
        return ConvexHull(p).equations
    except QhullError:
        return None


def candidate_regions(points: np.ndarray, labels: np.ndarray, n_clusters: int, image_hw: tuple[int, int],
                      feature_hw: tuple[int, int]) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Power-set convex-hull regions ``R'_m`` on the ``h×w`` feature map.

    Subsets are visited by bitmask ``1 .. 2^L−1`` (subset = sorted tuple of the cluster ids whose bit is set);
    region = closed convex hull of the union of the subset's points. Feature cell ``(i, j)`` belongs to it iff
    its centre ``((j + 0.5)·W_I/w, (i + 0.5)·H_I/h)`` satisfies every hull facet ``n·p + c ≤ tol``
    (``tol = 1e-6·max(H_I, W_I)`` px). Sets with < 3 distinct points or collinear points (QhullError) have zero
    area and vanish, as does any region that covers no cell centre. The whole image ``R_M`` (all cells) is always
    kept, always last, and its subset is written as ``tuple(range(L))`` — the same tuple as the hull of all
    clusters; the two are told apart by position only. Exact duplicate masks (e.g. subsets differing only by
    empty clusters) are dropped, keeping the first; an earlier mask covering every cell is dropped as a duplicate
    of the whole image. Hulls of unions are computed on the union of the per-cluster hull vertices (same hull).

    Returns ``(masks (M', h, w) bool, subsets)`` with ``M' ≤ 2^L``.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lab = np.asarray(labels).reshape(-1)
    if len(lab) != len(p):
        raise ValueError(f"{len(p)} points but {len(lab)} labels")
    if len(lab) and (lab.min() < 0 or lab.max() >= n_clusters):
        raise ValueError(f"labels must lie in [0, {n_clusters}), got [{lab.min()}, {lab.max()}]")
    H_I, W_I = image_hw
    h, w = feature_hw
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cells = np.stack([(jj.ravel() + 0.5) * W_I / w, (ii.ravel() + 0.5) * H_I / h], 1)  # (h·w, 2) as (x, y)
    tol = _HULL_TOL * max(H_I, W_I)

    reps = []  # per cluster: its hull vertices, or its distinct points when degenerate
    for c in range(n_clusters):
        pc = _unique_rows(p[lab == c])
        if len(pc) >= 3:
            try:
                pc = pc[ConvexHull(pc).vertices]
            except QhullError:
                pass
        reps.append(pc)

    full = np.ones((h, w), dtype=bool)
    seen = {full.tobytes()}
    masks: list[np.ndarray] = []
    subsets: list[tuple[int, ...]] = []
    for bits in range(1, 1 << n_clusters):
        subset = tuple(c for c in range(n_clusters) if bits >> c & 1)
        eq = _hull_equations(np.concatenate([reps[c] for c in subset]))
        if eq is None:
            continue
        mask = ((cells @ eq[:, :2].T + eq[:, 2]) <= tol).all(1).reshape(h, w)
        key = mask.tobytes()
        if not mask.any() or key in seen:
            continue
        seen.add(key)
        masks.append(mask)
        subsets.append(subset)
    masks.append(full)
    subsets.append(tuple(range(n_clusters)))
    return np.stack(masks), subsets

