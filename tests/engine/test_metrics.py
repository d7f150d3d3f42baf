"""Metrics beyond the golden file: protocol builders, the classic protocol at real scale, edge cases."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_path
from lit_retrieval.metrics import compute_ap, compute_map, evaluate_ranks, revisited_protocol


def _plain_ap(ranking, ok, junk):
    """AP by definition on a junk-free list: trapezoid between successive precision values."""
    kept = [i for i in ranking if i not in set(junk)]
    hits = np.isin(kept, ok)
    ap, tp = 0.0, 0
    for r, h in enumerate(hits):
        if h:
            p0 = tp / r if r > 0 else 1.0
            tp += 1
            ap += (p0 + tp / (r + 1)) / 2 / len(ok)
    return ap


def test_classic_protocol_real_ground_truth():
    gt = json.loads(shared_path("data", "gnd-classic", "gnd_oxford5k.json").read_text())
    n_db, gnd = len(gt["imlist"]), gt["gnd"]
    rng = np.random.default_rng(0)
    ranks = np.stack([rng.permutation(n_db) for _ in gnd], axis=1)
    res = evaluate_ranks(ranks, gnd, protocol="classic")["all"]
    for i in (0, 17, 54):
        assert res["aps"][i] == pytest.approx(_plain_ap(ranks[:, i], gnd[i]["ok"], gnd[i]["junk"]))
    # a perfect ranking (positives first) is 100% mAP and 100% mP@1
    perfect = np.stack([np.concatenate([g["ok"], np.setdiff1d(np.arange(n_db), g["ok"])]) for g in gnd], axis=1)
    perf = evaluate_ranks(perfect, gnd, protocol="classic")["all"]
    assert perf["map"] == pytest.approx(100.0) and perf["mpk"][1] == pytest.approx(100.0)


def test_revisited_protocols_and_empty_queries():
    gnd = [{"easy": [0], "hard": [1], "junk": [2]}, {"easy": [], "hard": [3], "junk": []}]
    e = revisited_protocol(gnd, "easy")
    assert e[0]["ok"].tolist() == [0] and sorted(e[0]["junk"].tolist()) == [1, 2]
    ranks = np.array([[0, 3], [1, 0], [2, 1], [3, 2]])
    m, aps, mpk, prs = compute_map(ranks, e)
    assert np.isnan(aps[1]) and m == aps[0] == 1.0 and np.isnan(prs[1]).all()
    with pytest.raises(ValueError, match="unknown revisited protocol"):
        revisited_protocol(gnd, "extreme")
    with pytest.raises(ValueError, match="db × nq"):
        compute_map(ranks, gnd * 3)


def test_truncated_ranking_loses_missing_positives():
    assert compute_ap(np.array([0]), 2) == pytest.approx(0.5)
    m, aps, _, _ = compute_map(np.array([[5], [6]]), [{"ok": [0], "junk": []}])
    assert m == 0.0
