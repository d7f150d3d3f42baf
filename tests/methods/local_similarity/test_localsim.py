"""Local-similarity search: PQ round trips and their error bounds, gallery storage, shortlist, fusion, R-Match."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_retrieval.methods.local_similarity import (GalleryGrids, GridQuantizer, Settings, fused_ranks, local_scores,
                                                    rmatch_scores)
from lit_retrieval.methods.local_similarity import shortlist
from lit_retrieval.methods.local_similarity.network import LocalSimilarityNet, present_probability


def _clustered(n: int = 6000, dim: int = 32, k: int = 16, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)).astype(np.float32)
    return centres[rng.integers(k, size=n)] + noise * rng.normal(size=(n, dim)).astype(np.float32)


def test_pq_decodes_every_subvector_to_its_nearest_centre():
    X = np.random.default_rng(1).normal(size=(4000, 32)).astype(np.float32)
    q = GridQuantizer.learn(X, M=8, nbits=6)
    codes = q.encode(X)
    assert codes.shape == (4000, 6) and codes.dtype == np.uint8 and q.bytes_per_vector() == 6  # 8 × 6 bits
    Y = q.decode(codes)
    C = q.centroids  # M × 64 × 4
    sub = X.reshape(len(X), 8, 1, 4)
    best = ((sub - C[None]) ** 2).sum(-1).min(-1).sum(-1)  # the optimal assignment's squared error
    np.testing.assert_allclose(((X - Y) ** 2).sum(1), best, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(q.encode(Y), codes)  # decoding then encoding is the identity on codes


def test_pq_error_is_small_on_clustered_data_and_falls_with_m():
    X = _clustered()
    errs = {}
    for M in (4, 16):
        q = GridQuantizer.learn(X, M=M, nbits=8)
        errs[M] = float(((X - q.decode(q.encode(X))) ** 2).sum(1).mean() / (X ** 2).sum(1).mean())
    assert errs[16] < 1e-3  # 16 clusters per sub-space are found exactly, only the noise is lost
    assert errs[16] <= errs[4] + 1e-6


def test_pq_state_round_trip_and_grid_layout():
    X = _clustered(dim=16)
    q = GridQuantizer.learn(X, M=4)
    r = GridQuantizer.from_state(q.state_dict())
    grids = torch.from_numpy(X[:2 * 5 * 5].reshape(2, 5, 5, 16)).permute(0, 3, 1, 2)  # N×D×h×w
    codes = q.encode_grids(grids)
    assert codes.shape == (2, 25, 4)
    np.testing.assert_array_equal(codes, r.encode_grids(grids))
    dec = r.decode_grids(codes, (5, 5))
    assert dec.shape == grids.shape
    np.testing.assert_allclose(dec[:, :, 1, 3].numpy(), q.decode(q.encode(grids[:, :, 1, 3].numpy())), atol=1e-6)
    torch.testing.assert_close(q.roundtrip(grids), dec)


def test_pq_rejects_bad_settings():
    with pytest.raises(ValueError, match="must divide"):
        GridQuantizer(30, 8)
    with pytest.raises(ValueError, match="training vectors"):
        GridQuantizer.learn(np.zeros((10, 16), np.float32), M=4)
    with pytest.raises(RuntimeError, match="before it was learned"):
        GridQuantizer(16, 4).encode(np.zeros((1, 16), np.float32))


def test_gallery_grids_raw_and_quantized():
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(5, 9, 16)).astype(np.float32)  # 5 images, 3×3 locations, D = 16
    g = GalleryGrids(vec, (3, 3))
    t = g.take([3, 1])
    assert t.shape == (2, 16, 3, 3) and g.bytes_per_image == 9 * 16 * 4
    np.testing.assert_array_equal(t[0, :, 2, 1].numpy(), vec[3, 2 * 3 + 1])  # row-major locations
    q = GridQuantizer.learn(_clustered(dim=16), M=4)
    gq = GalleryGrids(vec, (3, 3), q)
    assert gq.bytes_per_image == 9 * 4
    torch.testing.assert_close(gq.take([3, 1]), q.roundtrip(t))


def test_shortlist_is_the_top_k_best_first_and_capped():
    s = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    np.testing.assert_array_equal(shortlist(s, 2), [[1, 3], [0, 1]])
    np.testing.assert_array_equal(shortlist(s, 99), [[1, 3, 2, 0], [0, 1, 2, 3]])


def test_fusion_orders_the_shortlist_by_the_weighted_sum_and_the_rest_by_global():
    s_global = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    short = np.array([[0, 1, 2]])
    s_local = np.array([[0.1, 0.2, 1.0]])
    np.testing.assert_array_equal(fused_ranks(s_global, short, s_local, 0.9), [[2, 1, 0, 3, 4]])
    np.testing.assert_array_equal(fused_ranks(s_global, short, s_local, 0.0), [[0, 1, 2, 3, 4]])
    # w = 0.5: 0.5·(0.9 + 0.1) = 0.5, 0.5·(0.8 + 0.2) = 0.5, 0.5·(0.7 + 1.0) = 0.85
    np.testing.assert_array_equal(fused_ranks(s_global, short, s_local, 0.5)[0, 0], 2)
    # a non-shortlisted image never overtakes a shortlisted one, however high its global score
    np.testing.assert_array_equal(fused_ranks(s_global, np.array([[4]]), np.array([[0.0]]), 1.0),
                                  [[4, 0, 1, 2, 3]])
    with pytest.raises(ValueError, match="w=1.5"):
        fused_ranks(s_global, short, s_local, 1.5)


def test_rmatch_is_the_sum_over_query_cells_of_the_best_gallery_cell():
    rng = np.random.default_rng(0)
    q = torch.from_numpy(rng.normal(size=(2, 8, 2, 2)).astype(np.float32))
    vec = rng.normal(size=(3, 9, 8)).astype(np.float32)
    got = rmatch_scores(q, GalleryGrids(vec, (3, 3)), batch=2)
    want = np.zeros((2, 3))
    for i in range(2):
        for n in range(3):
            for a in range(4):
                fq = q[i].flatten(1)[:, a].numpy()
                want[i, n] += max(float(vec[n, b] @ fq) for b in range(9))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class _Stub(torch.nn.Module):
    name = "stub"
    out_channels = 8


def test_local_scores_match_the_subnet_pair_by_pair_whatever_the_batch():
    torch.manual_seed(0)
    net = LocalSimilarityNet(_Stub(), gallery_grid=5, query_grid=2).eval()
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(7, 25, 8)).astype(np.float32)
    gallery = GalleryGrids(vec, (5, 5))
    query = torch.from_numpy(rng.normal(size=(8, 2, 2)).astype(np.float32))
    idx = np.array([6, 0, 3])
    p1, c1 = local_scores(net, query, gallery, idx, batch=1)
    p3, c3 = local_scores(net, query, gallery, idx, batch=3)
    with torch.no_grad():
        logits, codes = net(query[None].expand(3, -1, -1, -1), gallery.take(idx))
    np.testing.assert_allclose(p1, present_probability(logits).numpy(), atol=1e-5)
    np.testing.assert_allclose(p3, p1, atol=1e-5)
    np.testing.assert_allclose(c3, codes.numpy(), atol=1e-5)
    np.testing.assert_allclose(c1, c3, atol=1e-5)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="method.mode"):
        Settings(mode="both")
    with pytest.raises(ValueError, match="method.w"):
        Settings(w=-0.1)
    assert Settings.from_cfg({"pq": {"M": 32}}).pq == 32
