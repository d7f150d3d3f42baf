"""faiss indexes over descriptor stores: IVF-PQ trained on a disjoint set, HNSW, recall against exact search."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import eval_cfg
from lit_retrieval.retrieval.index import IndexSettings, build_index, ivfpq_shape, measure_recall, recall_at
from lit_retrieval.retrieval.store import DescriptorStore


def _low_rank(n, d=64, rank=6, seed=0):
    """Unit vectors near a ``rank``-dimensional subspace (shared by every call): neighbours well defined."""
    basis = np.random.default_rng(123).standard_normal((rank, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, rank)).astype(np.float32) @ basis + 0.05 * rng.standard_normal((n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ivfpq_shape_defaults():
    s = IndexSettings(index="ivfpq")
    assert ivfpq_shape(s, 1_000_000, 200_000, 2048) == (4000, 256, 8)  # 4·√N cells, 8-D sub-vectors, 8 bits
    assert ivfpq_shape(s, 10_000, 162, 1280) == (4, 160, 2)  # a small training set: fewer cells and bits
    with pytest.raises(ValueError, match="multiple"):
        ivfpq_shape(IndexSettings(index="ivfpq", M=7), 100, 10_000, 64)


def test_recall_at_counts_the_exact_top_k_found():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    approx = np.array([[1, 0, 9, 8], [4, 5, 6, -1]])
    assert recall_at(approx, exact, k=4) == pytest.approx((2 / 4 + 3 / 4) / 2)


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_indexes_find_the_exact_neighbours(kind):
    db, train, q = _low_rank(4000), _low_rank(12000, seed=1), _low_rank(20, seed=2)
    settings = IndexSettings(index=kind, k=100, nprobe=64, ef_search=256)
    ann = build_index(settings, DescriptorStore.from_array(db), train if kind == "ivfpq" else None)
    rec = measure_recall(ann, q, db)
    assert rec["recall_at_100_vs_exact"] > (0.5 if kind == "ivfpq" else 0.95), rec
    assert ann.info["index"] == kind and ann.index.ntotal == 4000
    if kind == "ivfpq":
        assert ann.info["n_train"] == 12000 and ann.info["bytes_per_image"] == ann.info["M"] + 8
    scores, ranks = ann.search(q, None)
    assert ranks.shape == (20, 100) and (np.diff(scores, axis=1) <= 1e-6).all()
    assert build_index(IndexSettings(), db) is None  # flat: the exact search
    with pytest.raises(ValueError, match="training set"):
        build_index(IndexSettings(index="ivfpq"), db, None)


def test_eval_ivfpq_reports_recall_and_what_it_learned_on(tiny, tmp_path):
    from lit_retrieval.data.provenance import LeakageError
    from lit_retrieval.evaluate import run_eval
    from lit_retrieval.options import OptionError

    base = ["method=gem", "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny", "image_size=128",
            "plots.enabled=false"]
    exact = run_eval(eval_cfg(tmp_path, *base), tmp_path / "exact")
    r = run_eval(eval_cfg(tmp_path, *base, "search.index=ivfpq"), tmp_path / "ivfpq")
    assert 0 <= r["search"]["recall_at_100_vs_exact"] <= 1 and r["search"]["index"] == "ivfpq"
    assert r["learned"]["search_index"]["overlap"] == 0 and r["learned"]["search_index"]["dataset"] == "embedded-s1"
    assert "search" not in exact
    hnsw = run_eval(eval_cfg(tmp_path, *base, "search.index=hnsw"), tmp_path / "hnsw")
    assert hnsw["search"]["recall_at_100_vs_exact"] == 1.0 and hnsw["map"] == exact["map"]  # a tiny graph: exact
    t = run_eval(eval_cfg(tmp_path, *base, "search.index=ivfpq", "search.train.dataset.kind=transductive"),
                 tmp_path / "t")
    assert t["learned"]["search_index"]["transductive"] is True
    same = ["~search.train.dataset", f"+search.train.dataset={{kind: revisited, root: {tiny}, name: tiny}}"]
    with pytest.raises(LeakageError, match="search_index"):
        run_eval(eval_cfg(tmp_path, *base, "search.index=ivfpq", *same), tmp_path / "leak")
    with pytest.raises(OptionError, match="search.index"):
        run_eval(eval_cfg(tmp_path, *base, "search.index=lsh"), tmp_path / "bad")
    with pytest.raises(OptionError, match="search.nprobe"):
        run_eval(eval_cfg(tmp_path, *base, "search.index=ivfpq", "search.nprobe=0"), tmp_path / "bad")
    with pytest.raises(ValueError, match="search.train.dataset"):
        run_eval(eval_cfg(tmp_path, *base, "search.index=ivfpq", "search.train.dataset=null"), tmp_path / "bad")
