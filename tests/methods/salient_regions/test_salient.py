"""Jeong et al.: weights (eqs. 1-2), region descriptors (eqs. 3, 5, 9), region matching (eq. 7) and regional
QE (eq. 8) on hand-computed inputs."""
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch

from lit_retrieval.methods.salient_regions.descriptors import (first_order, logm_spd, project_local, second_order,
                                                               upper_triangle)
from lit_retrieval.methods.salient_regions.matching import (RegionSet, rank, region_similarity,
                                                            regional_query_expansion)
from lit_retrieval.methods.salient_regions.pipeline import (Settings, fallback_summary, pad_regions, propose,
                                                            report_fallback)
from lit_retrieval.methods.salient_regions.weights import channel_weights, spatial_weights

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
                                               ("eig_floor", 0.0, "eig_floor"),
                                               ("n_min_fraction", 0.0, "n_min_fraction"),
                                               ("n_min_fraction", 1.5, "n_min_fraction")])
def test_bad_settings_name_the_key(field, value, match):
    with pytest.raises(ValueError, match=match):
        Settings(**{field: value})


# ------------------------------------------------------------------------- the N_min fallback on a stride-32 map

def _peaked_map(centres, h=12, w=16, K=4):
    """A ``K×h×w`` non-negative map whose channel sum (alpha) peaks at the given ``(row, col)`` centres."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    bump = sum(torch.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 4.0) for r, c in centres)
    return (0.05 + bump)[None].repeat(K, 1, 1) * torch.linspace(0.5, 1.5, K)[:, None, None]


IMAGE = torch.zeros(3, 384, 512)  # 12x16 cells at stride 32


def test_fallback_regions_depend_on_alpha_on_a_stride_32_map():
    s = Settings(detector="none")  # no keypoints: the fallback, with the default N_min = 300 > 192 cells
    a = propose(IMAGE, _peaked_map([(2, 3), (3, 12), (9, 7)]), s, True)
    b = propose(IMAGE, _peaked_map([(8, 2), (9, 13), (2, 8)]), s, True)
    assert a.fallback and b.fallback and a.masks.shape[1:] == (12, 16) and len(a.masks) > 1
    # the regions follow alpha: other regions (not only other ties of the same grid partition), around the peaks
    assert not np.array_equal(a.masks, b.masks) and sorted(a.masks.sum((1, 2))) != sorted(b.masks.sum((1, 2)))
    for p, peaks in ((a, [(2, 3), (3, 12), (9, 7)]), (b, [(8, 2), (9, 13), (2, 8)])):
        covered = p.masks[:-1].any(0)  # every region but the whole image
        assert not covered.all() and all(covered[r, c] for r, c in peaks)
    assert len(a.points) == 19 and a.cells_kept == pytest.approx(19 / 192)  # the top tenth, not all 192 cells
    # taken literally (uncapped), N_min selects every cell: both maps give the same point set, and regions that
    # differ only by how the k-means ties of the full grid are broken (the same region sizes), whatever alpha is
    lit = Settings(detector="none", n_min_fraction=None)
    a_all, b_all = propose(IMAGE, _peaked_map([(2, 3)]), lit, True), propose(IMAGE, _peaked_map([(9, 13)]), lit, True)
    assert a_all.cells_kept == 1.0 and b_all.cells_kept == 1.0
    np.testing.assert_array_equal(np.unique(a_all.points, axis=0), np.unique(b_all.points, axis=0))
    assert sorted(a_all.masks.sum((1, 2))) == sorted(b_all.masks.sum((1, 2)))


def test_fallback_summary_and_the_every_cell_warning(caplog):
    fine = propose(IMAGE, _peaked_map([(2, 3), (9, 12)]), Settings(detector="none"), True)
    every = propose(IMAGE, _peaked_map([(2, 3)]), Settings(detector="none", n_min_fraction=None), True)
    whole = propose(IMAGE, _peaked_map([(2, 3)]), Settings(), False)
    f = fallback_summary([fine, None, every])
    assert f == {"images": 2, "fallback": 2, "fraction": 1.0, "cells_kept_mean": round((19 / 192 + 1) / 2, 4),
                 "cells_mean": (19 + 192) / 2, "all_cells": 1}
    assert fallback_summary([whole, None]) is None  # no salient points were computed: nothing to report
    d = SimpleNamespace(db_props=[fine, fine], q_props=[whole], pca_props=None)
    with caplog.at_level(logging.INFO, logger="lit_retrieval.methods.salient_regions.pipeline"):
        out = report_fallback(d, Settings())
    assert out["db"]["cells_kept_mean"] == round(19 / 192, 4) and out["query"] is None and out["pca"] is None
    assert "took the largest alpha cells" in caplog.text and "every cell" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lit_retrieval.methods.salient_regions.pipeline"):
        out = report_fallback(SimpleNamespace(db_props=[every], q_props=[], pca_props=[fine]),
                              Settings(n_min_fraction=None))
    assert out["db"]["all_cells"] == 1 and out["pca"]["all_cells"] == 0
    assert "selected every cell of alpha" in caplog.text and "n_min_fraction=None" in caplog.text
