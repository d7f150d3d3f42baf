"""The compiled AML pass against the torch reference: bit-identical integral images, a root exact to float tolerance,
and the same boxes, scores and rankings on random maps and on real activation maps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import eval_cfg
from lit_retrieval.evaluate import run_eval
from lit_retrieval.methods.aml import compiled as cp
from lit_retrieval.methods.aml.aml import AMLSettings
from lit_retrieval.methods.aml.integral import power_integral
from lit_retrieval.methods.aml.rerank import AMLQuery, WindowDescriptor, rerank_queries, rerank_shortlist
from lit_retrieval.methods.aml.storage import encode


def _levels(n, C, H, W, seed=0, density=0.3):
    rng = np.random.default_rng(seed)
    lv = np.minimum(rng.geometric(0.5, size=(n, C, H, W)), 8).astype(np.uint8)
    lv[rng.random(lv.shape) > density] = 0
    return lv


@pytest.mark.parametrize("root", ["exact", "aml_c"])
def test_integral_images_are_bit_identical_to_the_reference(root):
    lv = _levels(3, 16, 7, 9)
    table = cp.power_table(10.0, root)
    C, H, W = lv.shape[1:]
    flat, col, S = np.zeros(H * W * C, np.uint8), np.zeros(W * C), np.zeros((H + 1) * (W + 1) * C)
    ref = power_integral(torch.from_numpy(lv.astype(np.float32)), 10.0,
                         power_dtype=torch.float64 if root == "aml_c" else torch.float32).numpy()
    for i in range(len(lv)):
        cp._decode(encode(lv[i]), flat, H * W, C)
        assert np.array_equal(flat.reshape(H, W, C), lv[i].transpose(1, 2, 0))
        cp._integral_levels(flat, table, H, W, C, col, S)
        assert np.array_equal(S.reshape(H + 1, W + 1, C), ref[i])  # the same sums in the same order


def test_tenth_root_is_exact_to_float_tolerance():
    rng = np.random.default_rng(0)
    v = np.concatenate([[0.0, 1e-300, 1.0, 7.0 ** 10, 8.0 ** 10 * 768], rng.uniform(0, 10, 500),
                        10 ** rng.uniform(-30, 30, 3000)])
    C = v.size
    S = np.zeros(4 * C)
    S[3 * C:] = v  # a 1×1 map whose only window sums to v
    f, rb = np.zeros(C), np.zeros(C, np.int64)
    cp._window_max(S, 2 * C, C, np.array([0, 0, 1, 1]), f, rb, (None, None, 0, 0, 0, 10.0, np.zeros(1)))
    want = v ** 0.1
    assert f[0] == 0.0 and np.all(np.abs(f - want) <= 1e-14 * want)


def _compare(payloads, shape, spec, aml, q, whiten=None):
    out = {}
    for backend in ("torch", "compiled"):
        out[backend] = rerank_shortlist([shape if p is not None else None for p in payloads],
                                        lambda i: payloads[i], q, spec,
                                        AMLSettings(**{**aml, "backend": backend}), whiten)
    a, b = out["torch"], out["compiled"]
    np.testing.assert_array_equal(b.boxes, a.boxes)
    np.testing.assert_array_equal(b.order, a.order)
    np.testing.assert_allclose(b.aml_scores, a.aml_scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(b.descriptors, a.descriptors, rtol=0, atol=1e-6)
    np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=1e-6)
    return a, b


@pytest.mark.parametrize("kind", ["mac", "cirtorch", "tolias"])
@pytest.mark.parametrize("root", ["exact", "aml_c"])
def test_same_boxes_and_rankings_as_the_reference_on_random_maps(kind, root):
    C, H, W = 48, 11, 15
    lv = _levels(12, C, H, W, seed=1)
    payloads = [encode(m) for m in lv]
    payloads[4] = None  # an image without a stored map sinks, as in the reference
    rng = np.random.default_rng(2)
    proj = torch.from_numpy(rng.normal(size=(C, C)).astype(np.float32))
    spec = {"mac": WindowDescriptor("mac"), "cirtorch": WindowDescriptor("rmac", 3, "cirtorch"),
            "tolias": WindowDescriptor("rmac", 2, "tolias", region_whitening=lambda v: v @ proj)}[kind]
    q_desc = rng.normal(size=C).astype(np.float32)
    q = AMLQuery(torch.from_numpy(rng.random(C).astype(np.float32)), q_desc / np.linalg.norm(q_desc), 0.8)
    a, _ = _compare(payloads, (C, H, W), spec, {"root": root}, q)
    assert a.boxes[4, 0] == -1 and a.order[-1] == 4
    # no aspect ratio, other steps and no refinement take the same paths in both
    _compare(payloads, (C, H, W), spec, {"root": root, "step": 2, "refine_iter": 0}, AMLQuery(q.mac, q.descriptor))


def test_dense_raw_maps_and_decoded_levels_give_the_same_result():
    C, H, W = 32, 9, 12
    rng = np.random.default_rng(3)
    raw = (rng.random((6, C, H, W)) * (rng.random((6, C, H, W)) < 0.3) * 3).astype(np.float32)
    q = AMLQuery(torch.from_numpy(rng.random(C).astype(np.float32)), rng.normal(size=C).astype(np.float32), 1.0)
    for root, alpha in (("exact", 10.0), ("exact", 3.5)):
        _compare(list(raw), (C, H, W), WindowDescriptor("rmac", 3, "cirtorch"), {"root": root, "alpha": alpha}, q)
    lv = _levels(6, C, H, W, seed=4)
    _compare(list(lv), (C, H, W), WindowDescriptor("mac"), {"root": "aml_c"}, q)


def test_all_queries_at_once_equal_query_by_query():
    """rerank_queries builds each image's integral image once for every query holding it (maps of two sizes,
    interleaved in the database; a missing map; queries of different aspect ratios)."""
    rng = np.random.default_rng(5)
    C = 24
    shapes = [None if i == 7 else (C, 9, 12) if i % 3 else (C, 7, 13) for i in range(20)]
    codes = [None if s is None else encode(_levels(1, *s, seed=i)[0]) for i, s in enumerate(shapes)]
    queries = [AMLQuery(torch.from_numpy(rng.random(C).astype(np.float32)), rng.normal(size=C).astype(np.float32), r)
               for r in (0.7, 1.3, None)]
    shortlists = [rng.permutation(20)[:k] for k in (12, 20, 5)]
    spec = WindowDescriptor("rmac", 3, "cirtorch")
    together = rerank_queries(shortlists, lambda i: shapes[i], lambda i: codes[i], queries, spec, AMLSettings())
    for s, q, got in zip(shortlists, queries, together):
        want = rerank_shortlist([shapes[i] for i in s], lambda j, s=s: codes[s[j]], q, spec,
                                AMLSettings(backend="torch"))
        _same_reranking(got, want)


def _same_reranking(got, want):
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.order, want.order)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.aml_scores, want.aml_scores, rtol=0, atol=1e-6)


def test_a_whitening_that_reduces_the_dimension_re_scores_in_the_query_space():
    """With whitening=pca (the windows' C-D descriptors whitened to D' < C, the query's space) both backends
    re-rank alike and every window descriptor has the query's dimension."""
    rng = np.random.default_rng(6)
    C, D = 24, 10
    proj = rng.normal(size=(C, D)).astype(np.float32)
    whiten = lambda v: v @ proj / np.linalg.norm(v @ proj, axis=1, keepdims=True)
    shapes = [None if i == 3 else (C, 9, 12) for i in range(8)]
    codes = [None if sh is None else encode(_levels(1, *sh, seed=i)[0]) for i, sh in enumerate(shapes)]
    queries = [AMLQuery(torch.from_numpy(rng.random(C).astype(np.float32)), rng.normal(size=D).astype(np.float32),
                        None) for _ in range(2)]
    shortlists = [np.arange(8), rng.permutation(8)[:5]]
    spec = WindowDescriptor("mac")
    together = rerank_queries(shortlists, lambda i: shapes[i], lambda i: codes[i], queries, spec, AMLSettings(),
                              whiten)
    for s, q, got in zip(shortlists, queries, together):
        want = rerank_shortlist([shapes[i] for i in s], lambda j, s=s: codes[s[j]], q, spec,
                                AMLSettings(backend="torch"), whiten)
        _same_reranking(got, want)
        assert got.descriptors.shape == (len(s), D)
        np.testing.assert_allclose(got.scores[got.boxes[:, 0] >= 0],
                                   (got.descriptors @ q.descriptor)[got.boxes[:, 0] >= 0], atol=1e-6)


def test_bad_backend_is_named():
    with pytest.raises(ValueError, match="rerank.backend='gpu'"):
        AMLSettings(backend="gpu").check()


def test_eval_compiled_and_torch_backends_rank_real_maps_alike(tiny, tmp_path):
    base = ["method=rmac", "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny", "image_size=224",
            "rerank=aml", "qe=aml", "plots.enabled=false"]
    torch_run = run_eval(eval_cfg(tmp_path, *base, "rerank.backend=torch"), tmp_path / "torch")
    compiled = run_eval(eval_cfg(tmp_path, *base), tmp_path / "compiled")
    assert compiled["rerank"]["backend"] == "compiled" and torch_run["rerank"]["backend"] == "torch"
    assert compiled["stages"] == torch_run["stages"] and compiled["ap_per_query"] == torch_run["ap_per_query"]
