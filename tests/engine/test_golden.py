"""Parity with the reference implementations' outputs in ../shared/golden."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lit_retrieval import pooling
from lit_retrieval.metrics import compute_map, revisited_protocol
from lit_retrieval.regions import kimyoon_grid, rmac_grid
from lit_retrieval.whitening import lw_whiten_learn, pca_whiten_learn, whiten_apply

RTOL = 1e-5


def _close(a, b, rtol=RTOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(np.abs(b).max(), 1e-12))


def test_rmac_grid_cirtorch(golden):
    cases = json.loads(golden("rmac_grid_cirtorch.json").read_text())["cases"]
    assert any(c["H"] == 1 and c["W"] == 1 for c in cases)  # degenerate maps are part of the contract
    for c in cases:
        assert rmac_grid(c["H"], c["W"], c["L"]).tolist() == c["regions_yxhw"], (c["H"], c["W"], c["L"])


def test_rmac_grid_kimyoon(golden):
    for c in json.loads(golden("rmac_grid_kimyoon.json").read_text())["cases"]:
        assert kimyoon_grid(c["H"], c["W"], c["L"]).tolist() == c["regions_xywh"], (c["H"], c["W"], c["L"])


@pytest.mark.parametrize("n", range(5))
def test_pooling_cirtorch(golden, n):
    z = np.load(golden("pooling_cirtorch.npz"))
    x = torch.from_numpy(z[f"x{n}"])
    _close(pooling.mac(x), z[f"mac{n}"])
    _close(pooling.spoc(x), z[f"spoc{n}"])
    _close(pooling.gem(x, p=3), z[f"gem3_{n}"])
    _close(pooling.gem(x, p=4.5), z[f"gem45_{n}"])
    for L in (1, 2, 3):
        ref = torch.from_numpy(z[f"rmac_L{L}_{n}"])
        _close(pooling.l2n(pooling.rmac(x, L=L, variant="cirtorch")), pooling.l2n(ref))


def _sign_align(P, ref):
    return P * np.sign((P * ref).sum(axis=1, keepdims=True))


def test_whitening_cirtorch(golden):
    z = np.load(golden("whitening_cirtorch.npz"))
    X, Xt = z["X"].T, z["Xtest"].T  # the golden file stores descriptors as columns
    m, P = pca_whiten_learn(X)
    _close(m, z["pca_m"][:, 0])
    _close(_sign_align(P, z["pca_P"]), z["pca_P"])
    _close(np.abs(whiten_apply(Xt, m, P)), np.abs(z["pca_applied"].T))
    _close(np.abs(whiten_apply(Xt, m, P, 16)), np.abs(z["pca_applied_16"].T))
    m, P = lw_whiten_learn(X, z["qidxs"], z["pidxs"])
    _close(m, z["lw_m"][:, 0])
    _close(_sign_align(P, z["lw_P"]), z["lw_P"])
    _close(np.abs(whiten_apply(Xt, m, P)), np.abs(z["lw_applied"].T))


def _nan(v):
    return np.array([[np.nan if a is None else a for a in r] if isinstance(r, list) else
                     (np.nan if r is None else r) for r in v], dtype=np.float64)


def test_revisited_map(golden):
    cases = json.loads(golden("revisited_map.json").read_text())["cases"]
    for c in cases:
        ranks = np.asarray(c["ranks"])
        for proto in ("easy", "medium", "hard"):
            m, aps, mpk, prs = compute_map(ranks, revisited_protocol(c["gnd"], proto), c["kappas"])
            ref = c[proto]
            assert m == pytest.approx(ref["map"], rel=RTOL)
            np.testing.assert_allclose(aps, _nan(ref["aps"]), rtol=RTOL, equal_nan=True)
            np.testing.assert_allclose(mpk, ref["mpk"], rtol=RTOL)
            np.testing.assert_allclose(prs, _nan(ref["prs"]), rtol=RTOL, equal_nan=True)
