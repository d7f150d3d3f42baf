"""Jeong et al.: weights (eqs. 1-2), region descriptors (eqs. 3, 5, 9), region matching (eq. 7) and regional
QE (eq. 8) on hand-computed inputs."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from lit_retrieval.salient.descriptors import first_order, logm_spd, project_local, second_order, upper_triangle
from lit_retrieval.salient.matching import RegionSet, rank, region_similarity, regional_query_expansion
from lit_retrieval.salient.pipeline import Settings, pad_regions
from lit_retrieval.salient.weights import channel_weights, spatial_weights

# K = 2 channels on a 2×2 map
FMAP = torch.tensor([[[1.0, 0.0], [0.0, 3.0]],
                     [[1.0, 2.0], [0.0, 1.0]]])


def test_spatial_weights_eq1():
    # channel sums [[2, 2], [0, 4]], L2 norm sqrt(24)
    expected = torch.tensor([[2.0, 2.0], [0.0, 4.0]]) / math.sqrt(24)
    torch.testing.assert_close(spatial_weights(FMAP), expected)
    assert torch.equal(spatial_weights(torch.zeros(3, 2, 2)), torch.zeros(2, 2))


def test_channel_weights_eq2():
    eps = 1e-6
    # Q = [2/4, 3/4]; sum 1.25; K = 2
    expected = torch.tensor([math.log((2 * eps + 1.25) / (eps + 0.5)), math.log((2 * eps + 1.25) / (eps + 0.75))])
    torch.testing.assert_close(channel_weights(FMAP, eps), expected)
    dead = channel_weights(torch.cat([FMAP, torch.zeros(1, 2, 2)]), eps)  # an all-zero channel stays finite
    assert torch.isfinite(dead).all() and dead[2] == dead.max()
    with pytest.raises(ValueError, match="eps must be > 0"):
        channel_weights(FMAP, 0.0)
    with pytest.raises(ValueError, match="K×H×W"):
        spatial_weights(FMAP[None])


def test_first_order_eq3_and_eq9():
    beta = torch.tensor([2.0, 0.5])
    masks = torch.tensor([[[True, True], [False, False]], [[True, True], [True, True]]])
    alpha = spatial_weights(FMAP)
    v3 = first_order(FMAP, masks, beta)
    top = torch.tensor([1.0 + 0.0, 1.0 + 2.0]) * beta  # Σ over the top row
    torch.testing.assert_close(v3[0], top / top.norm())
    v9 = first_order(FMAP, masks, beta, alpha)
    whole = (FMAP * alpha).sum((1, 2)) * beta
    torch.testing.assert_close(v9[1], whole / whole.norm())


def test_second_order_eq5_hand_computed():
    # two positions with 2-D local descriptors x1 = [1, 0], x2 = [0, 2] and alpha = [1, 3]
    local = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    alpha = torch.tensor([[1.0, 3.0]])
    masks = torch.tensor([[[True, True]], [[True, False]]])
    out = second_order(local, masks, alpha, floor=1e-3)
    # region 0: G = (1·diag(1, 0) + 3·diag(0, 4)) / 4 = diag(0.25, 3); vec(log G) = [log .25, 0, log 3]
    v = torch.tensor([math.log(0.25), 0.0, math.log(3.0)])
    torch.testing.assert_close(out[0], v / v.norm())
    # region 1: G = diag(1, 0), rank-deficient: the 0 eigenvalue is floored at 1e-3 × mean(1, 0) = 5e-4
    v = torch.tensor([0.0, 0.0, math.log(5e-4)])
    torch.testing.assert_close(out[1], v / v.norm())
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_logm_matches_scipy_and_is_batched():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 6, 6))
    G = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(6)
    got = logm_spd(torch.from_numpy(G), floor=1e-9).numpy()
    for g, ref in zip(got, G):
        np.testing.assert_allclose(g, scipy.linalg.logm(ref).real, atol=1e-8)
    assert torch.equal(logm_spd(torch.zeros(2, 3, 3)), torch.zeros(2, 3, 3, dtype=torch.float64))
    assert upper_triangle(torch.arange(9.0).view(3, 3)).tolist() == [0, 1, 2, 4, 5, 8]


def test_project_local_eq4():
    basis = torch.tensor([[1.0], [1.0]])
    beta = torch.tensor([2.0, 1.0])
    # positions in row-major order: (0,0) f=[1,1], (0,1) f=[0,2], (1,0) f=[0,0], (1,1) f=[3,1]
    torch.testing.assert_close(project_local(FMAP, beta, basis)[:, 0], torch.tensor([3.0, 2.0, 0.0, 7.0]))


def _unit(*v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_region_similarity_is_the_best_valid_pair():
    rng = np.random.default_rng(1)
    db = RegionSet(rng.normal(size=(5, 3, 4)).astype(np.float32), np.ones((5, 3), bool))
    db.vectors /= np.linalg.norm(db.vectors, axis=2, keepdims=True)
    db.valid[2, 1:] = False
    db.valid[4] = False  # an unreadable image: no region
    q = RegionSet(rng.normal(size=(2, 2, 4)).astype(np.float32), np.array([[True, True], [True, False]]))
    db.vectors[2, 2] = q.vectors[0, 0] * 10  # an invalid slot that would win: must be ignored
    scores, best = region_similarity(q, db, chunk=2)
    for i in range(2):
        for j in range(4):
            pairs = [(q.vectors[i, a] @ db.vectors[j, b], b) for a in range(2) for b in range(3)
                     if q.valid[i, a] and db.valid[j, b]]
            s, b = max(pairs, key=lambda t: t[0])
            assert scores[i, j] == pytest.approx(s, abs=1e-5) and best[i, j] == b
    assert np.isneginf(scores[:, 4]).all()
    s, r = rank(scores, k=3)
    assert r.shape == (2, 3) and (np.diff(s, axis=1) <= 0).all() and 4 not in r


def test_regional_qe_averages_the_best_matching_regions_of_the_top_results():
    db = RegionSet(np.stack([[_unit(1, 0, 0), _unit(0, 1, 0)],
                             [_unit(0, 0, 1), _unit(1, 1, 0)],
                             [_unit(1, 0, 1), _unit(0, 1, 1)]]), np.ones((3, 2), bool))
    q = RegionSet(_unit(1, 0.2, 0)[None, None], np.ones((1, 1), bool))
    scores, best = region_similarity(q, db)
    _, ranks = rank(scores)
    assert ranks[0].tolist() == [0, 1, 2] and best[0].tolist() == [0, 1, 0]
    new = regional_query_expansion(db, ranks, best, n_qe=2)
    mean = _unit(1, 0, 0) + _unit(1, 1, 0)
    np.testing.assert_allclose(new.vectors[0, 0], mean / np.linalg.norm(mean), atol=1e-5)
    assert new.vectors.shape == (1, 1, 3) and new.valid.all()
    with pytest.raises(ValueError, match="qe.k"):
        regional_query_expansion(db, ranks, best, n_qe=0)


def test_pad_regions_and_whole_region_selection():
    rs = pad_regions([np.ones((3, 2)), None, 2 * np.ones((1, 2))], 2)
    assert rs.vectors.shape == (3, 3, 2) and rs.counts.tolist() == [3, 0, 1]
    whole = rs.select(rs.counts - 1)
    assert whole.valid[:, 0].tolist() == [True, False, True] and whole.vectors[2, 0, 0] == 2


@pytest.mark.parametrize("field,value,match", [("order", 3, "order"), ("regions", "some", "regions"),
                                               ("n_min", 5000, "n_min"), ("clusters", 9, "clusters"),
                                               ("eig_floor", 0.0, "eig_floor")])
def test_bad_settings_name_the_key(field, value, match):
    with pytest.raises(ValueError, match=match):
        Settings(**{field: value})
