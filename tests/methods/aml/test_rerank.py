"""AML re-ranking of a short-list, window descriptors, window QE, and ``eval.py rerank=aml qe=aml``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import eval_cfg
from lit_retrieval import pooling
from lit_retrieval.evaluate import run_eval
from lit_retrieval.methods.aml import (AMLQuery, AMLSettings, Reranked, WindowDescriptor, Workspace, generalized_max,
                                      power_integral, rerank_shortlist, window_descriptors, window_query_expansion,
                                      window_scores, window_sums)
from lit_retrieval.methods.aml.rerank import _window_regions

def _levels(B=4, C=32, H=12, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 9, (B, C, H, W), generator=g).float() * (torch.rand(B, C, H, W, generator=g) > 0.6)


@pytest.mark.parametrize("variant", ["mac", "cirtorch"])
def test_window_descriptors_match_exact_pooling_of_the_crop(variant):
    x = _levels()
    boxes = torch.tensor([[0, 0, 12, 16], [2, 3, 9, 14], [4, 1, 12, 7], [0, 8, 5, 16]])
    spec = WindowDescriptor("mac") if variant == "mac" else WindowDescriptor("rmac", 3, "cirtorch")
    got = window_descriptors(power_integral(x), boxes, spec)
    for b, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        crop = x[b:b + 1, :, y0:y1, x0:x1]
        want = pooling.mac(crop) if variant == "mac" else pooling.rmac(crop, L=3, variant="cirtorch")
        cos = torch.nn.functional.cosine_similarity(got[b:b + 1], pooling.l2n(want)).item()
        assert cos > 0.99, (b, cos)  # the generalized mean (α = 10) against the exact max of the crop
    assert torch.allclose(got.norm(dim=1), torch.ones(4), atol=1e-5)


def test_tolias_window_descriptor_applies_the_region_whitening():
    x = _levels(B=2)
    boxes = torch.tensor([[0, 0, 12, 16], [3, 3, 11, 13]])
    flip = lambda v: v.flip(-1)  # noqa: E731  (any map on region vectors: it must be applied per region)
    a = window_descriptors(power_integral(x), boxes, WindowDescriptor("rmac", 2, "tolias", flip))
    b = window_descriptors(power_integral(x), boxes, WindowDescriptor("rmac", 2, "tolias", lambda v: v))
    torch.testing.assert_close(a, b.flip(-1))
    with pytest.raises(ValueError, match="regional whitening"):
        window_descriptors(power_integral(x), boxes, WindowDescriptor("rmac", 2, "tolias", None))
    with pytest.raises(ValueError, match="mac or rmac"):
        window_descriptors(power_integral(x), boxes, WindowDescriptor("gem"))


def _scene(has_object: bool, seed: int, C=48, H=14, W=18):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(C, H, W, generator=g) * 2) * (torch.rand(C, H, W, generator=g) > 0.8)
    if has_object:
        x[:8, 4:9, 5:12] = 8.0 * (torch.rand(8, 5, 7, generator=g) > 0.5)
    return x.floor().numpy()


def test_rerank_shortlist_brings_the_object_images_first_and_sinks_missing_maps():
    has = [False, False, True, None, False, True, False]
    maps = [None if h is None else _scene(h, i) for i, h in enumerate(has)]
    maps[6] = maps[6][:, :10, :]  # another map size: its own batch
    q = torch.zeros(48)
    q[:8] = 8.0
    q_desc = pooling.l2n(q).numpy()
    loaded = []
    ws = Workspace()
    r = rerank_shortlist([None if m is None else m.shape for m in maps], lambda i: loaded.append(i) or maps[i],
                         AMLQuery(q, q_desc, 5 / 7), WindowDescriptor("mac"), AMLSettings(backend="torch"),
                         workspace=ws)
    timer = ws.timer
    assert sorted(loaded) == [0, 1, 2, 4, 5, 6] and set(timer) == {"load", "integral", "localize", "describe"}
    assert sorted(r.order.tolist()) == list(range(7))
    assert set(r.order[:2].tolist()) == {2, 5}
    assert r.order[-1] == 3 and r.scores[3] == -1 and r.boxes[3, 0] == -1
    assert r.feature_hw[6].tolist() == [10, 18] and r.feature_hw[0].tolist() == [14, 18]
    for i in (2, 5):  # the localized window sits on the object (rows 4..9, columns 5..12)
        y0, x0, y1, x1 = r.boxes[i]
        assert 4 <= (y0 + y1) / 2 <= 9 and 5 <= (x0 + x1) / 2 <= 12 and (y1 - y0) * (x1 - x0) < 0.5 * 14 * 18
    np.testing.assert_allclose(r.scores[[0, 1, 2, 4, 5, 6]], r.descriptors[[0, 1, 2, 4, 5, 6]] @ q_desc, rtol=1e-5)


def test_window_query_expansion_is_the_mean_of_query_and_top_windows():
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(6, 5)).astype(np.float32)
    q = rng.normal(size=5).astype(np.float32)
    boxes = np.zeros((6, 4), np.int64)
    boxes[4] = -1  # no map
    r = Reranked(order=np.array([4, 2, 0, 1, 3, 5]), scores=desc @ q, boxes=boxes, feature_hw=np.zeros((6, 2)),
                 aml_scores=np.zeros(6), descriptors=desc)
    order, scores = window_query_expansion(q, r, k=2)
    mean = (desc[2] + q) / 2  # the top 2 are 4 (no map: left out) and 2
    mean /= np.linalg.norm(mean)  # the expanded query is L2-normalised: the order is the mean's
    np.testing.assert_allclose(scores[[0, 1, 2, 3, 5]], desc[[0, 1, 2, 3, 5]] @ mean, rtol=1e-5)
    assert order[-1] == 4 and scores[4] == -np.inf


def _test_m_qe(q, windows, order, k):
    """``test.m``: ``mean([vecs_bestbox{idx(1:nqe)}, qvecs(:, q)]') * cell2mat(vecs_bestbox')``, sorted."""
    scores = np.mean(np.concatenate([windows[order[:k]], q[None]]), 0) @ windows.T
    return np.argsort(-scores, kind="stable")


def test_window_query_expansion_follows_test_m_step_by_step():
    # the query's own descriptor is averaged in, with the top-k re-ranked windows' descriptors (not the database
    # images' global descriptors), uniform weights, and the re-ranked short-list's windows are what gets re-scored
    rng = np.random.default_rng(1)
    windows = rng.normal(size=(40, 16)).astype(np.float32)
    windows /= np.linalg.norm(windows, axis=1, keepdims=True)
    q = windows[:8].mean(0) + rng.normal(size=16).astype(np.float32)
    q /= np.linalg.norm(q)
    s = windows @ q
    order = np.argsort(-s, kind="stable")
    r = Reranked(order=order, scores=s, boxes=np.zeros((40, 4), np.int64), feature_hw=np.zeros((40, 2)),
                 aml_scores=np.zeros(40), descriptors=windows)
    for k in (1, 5, 10):
        np.testing.assert_array_equal(window_query_expansion(q, r, k)[0], _test_m_qe(q, windows, order, k))


def test_alpha_weighted_window_qe_moves_the_query_less_when_the_lower_windows_are_dissimilar():
    q = np.array([1.0, 0.0], np.float32)
    c, t = np.cos(np.pi / 3), np.sin(np.pi / 3)
    desc = np.array([[1.0, 0.0], [c, t], [c, t], [0.0, 1.0]], np.float32)  # similarities 1, 0.5, 0.5, 0
    r = Reranked(order=np.arange(4), scores=desc @ q, boxes=np.zeros((4, 4), np.int64), feature_hw=np.zeros((4, 2)),
                 aml_scores=np.zeros(4), descriptors=desc)
    # by hand: uniform, q + Σ d = (1 + 1 + 0.5 + 0.5 + 0, 0 + 0 + t + t + 1) = (3, 1 + 2t);
    # α = 3: weights 1, 0.125, 0.125, 0 -> q + d0 + 0.125 (d1 + d2) = (2.125, 0.25 t)
    uniform = np.array([3.0, 1 + 2 * t])
    weighted = np.array([2.125, 0.25 * t])
    for alpha, want in ((0.0, uniform), (3.0, weighted)):
        _, scores = window_query_expansion(q, r, k=4, alpha=alpha)
        np.testing.assert_allclose(scores, desc @ (want / np.linalg.norm(want)), rtol=1e-5)
    angle = lambda v: np.degrees(np.arctan2(v[1], v[0]))  # noqa: E731  (how far the expanded query moved from q)
    assert angle(weighted) < 6 < 40 < angle(uniform)
    # negative similarities weigh nothing (no sign flip for odd α)
    r.scores = np.array([1.0, 0.5, -0.5, 0.0], np.float32)
    _, scores = window_query_expansion(q, r, k=4, alpha=3.0)
    want = q + desc[0] + 0.125 * desc[1]
    np.testing.assert_allclose(scores, desc @ (want / np.linalg.norm(want)), rtol=1e-5)


def test_window_power_is_a_power_law_before_the_l2():
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 1, 1], x[0, 1, 2, 2] = 3.0, 4.0  # one cell per channel: the generalized mean is the exact max
    box = torch.tensor([[0, 0, 4, 4]])
    sat = power_integral(x)
    plain = window_descriptors(sat, box, WindowDescriptor("mac"))
    squared = window_descriptors(sat, box, WindowDescriptor("mac", power=2.0))
    torch.testing.assert_close(plain, torch.tensor([[3.0, 4.0]]) / 5)
    torch.testing.assert_close(squared, torch.tensor([[9.0, 16.0]]) / 337 ** 0.5)  # (3², 4²) / ‖(3², 4²)‖
    # R-MAC windows: each region's MAC is raised before its own L2 (then summed, L2)
    x = _levels(B=2)
    boxes = torch.tensor([[0, 0, 12, 16], [2, 3, 9, 14]])
    sat = power_integral(x)
    got = window_descriptors(sat, boxes, WindowDescriptor("rmac", 2, "cirtorch", power=2.0))
    for b, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        regions = torch.from_numpy(_window_regions(y1 - y0, x1 - x0, 2, whole=True)) + torch.tensor([y0, x0, y0, x0])
        f = generalized_max(window_sums(sat[b:b + 1], regions), 10.0)[0] ** 2
        torch.testing.assert_close(got[b], pooling.l2n(pooling.l2n(f).sum(0, keepdim=True))[0])
    with pytest.raises(ValueError, match="exponent must be > 0"):
        window_descriptors(sat, boxes, WindowDescriptor("mac", power=0.0))


def test_rerank_shortlist_options_change_only_their_stage():
    has = [True, False, True, False]
    maps = [_scene(h, 10 + i) for i, h in enumerate(has)]
    q = torch.zeros(48)
    q[:8] = 8.0
    q_desc = pooling.l2n(q).numpy()
    shapes = [m.shape for m in maps]

    def run(power=None, **aml):
        return rerank_shortlist(shapes, lambda i: maps[i], AMLQuery(q, q_desc, 5 / 7),
                                WindowDescriptor("mac", power=power), AMLSettings(**aml),
                                whiten=lambda v: v[:, ::-1].copy())

    base, powered, rooted = run(), run(power=2.0), run(root="aml_c")
    # window_power: same windows, descriptors power-law'd before the L2 and the whitening (here a flip)
    np.testing.assert_array_equal(powered.boxes, base.boxes)
    for i in range(4):
        y0, x0, y1, x1 = base.boxes[i]
        f = torch.from_numpy(maps[i][:, y0:y1, x0:x1]).flatten(1).double().pow(10).sum(1).pow(0.1).float()
        np.testing.assert_allclose(powered.descriptors[i], pooling.l2n(f ** 2).numpy()[::-1], rtol=1e-5)
    # root: the localization scores are aml.c's (even integers), the window descriptors still use the exact root
    sat = power_integral(torch.from_numpy(np.stack(maps)).float(), power_dtype=torch.float64)
    want = window_scores(sat, torch.from_numpy(rooted.boxes).unsqueeze(1), q, root="aml_c")[:, 0]
    np.testing.assert_allclose(rooted.aml_scores, want.numpy(), rtol=1e-6)
    exact = window_descriptors(sat, torch.from_numpy(rooted.boxes), WindowDescriptor("mac")).numpy()[:, ::-1]
    np.testing.assert_allclose(rooted.descriptors, exact, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="alpha=10"):
        run(root="aml_c", alpha=8.0)


def test_eval_rmac_aml_qe_end_to_end(tiny, tiny_test, tmp_path):
    base = ["method=rmac", "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny", "image_size=224"]
    plain = run_eval(eval_cfg(tmp_path, *base, "plots.enabled=false"), tmp_path / "plain")
    res = run_eval(eval_cfg(tmp_path, *base, "rerank=aml", "qe=aml", f"results_file={tmp_path}/out.json"),
                   tmp_path / "aml")
    assert json.loads((tmp_path / "out.json").read_text()) == res
    assert list(res["stages"]) == ["initial", "aml", "aml_qe"]
    assert res["stages"]["initial"] == plain["map"]  # filtering is untouched
    assert res["map"] == res["stages"]["aml_qe"]
    info = res["rerank"]
    assert info["n"] == plain["n_db"] and info["window_descriptor"] == "rmac/cirtorch/L3"
    assert 0 < info["bytes_per_image"]["stored"] < info["bytes_per_image"]["raw_float32"] / 4
    assert (tmp_path / "aml" / "aml_localization.png").stat().st_size > 10_000
    store_files = sorted((tmp_path / ".cache" / "activations").rglob("chunk_*.npz"))
    assert store_files
    mtimes = [f.stat().st_mtime_ns for f in store_files]
    again = run_eval(eval_cfg(tmp_path, *base, "rerank=aml", "rerank.n=3", "plots.enabled=false"), tmp_path / "n3")
    assert [f.stat().st_mtime_ns for f in store_files] == mtimes  # the stored maps are reused
    assert again["rerank"]["n"] == 3 and "aml_qe" not in again["stages"]
    raw = run_eval(eval_cfg(tmp_path, *base, "method=mac", "rerank=aml", "rerank.store.quantize=false",
                        "plots.enabled=false"), tmp_path / "raw")
    assert raw["rerank"]["bytes_per_image"]["stored"] == raw["rerank"]["bytes_per_image"]["raw_float32"]
    assert raw["rerank"]["window_descriptor"] == "mac"
    tolias = run_eval(eval_cfg(tmp_path, *base, "method.variant=tolias", "rerank=aml", "rerank.n=4",
                           "~method.region_whitening.dataset",
                           f"+method.region_whitening.dataset={{kind:revisited,root:{tiny_test},name:tinytest}}",
                           "method.region_whitening.dims=64", "plots.enabled=false"), tmp_path / "tolias")
    assert tolias["rerank"]["window_descriptor"] == "rmac/tolias/L3" and tolias["rerank"]["n"] == 4
    assert tolias["stages"]["initial"] != plain["map"]  # the tolias filtering (regional whitening) is in use
    assert tolias["stages"]["aml"] != tolias["stages"]["initial"]
    ref = run_eval(eval_cfg(tmp_path, *base, "rerank=aml", "rerank.n=4", "rerank.root=aml_c", "rerank.window_power=2",
                            "qe=aml", "qe.weighting=alpha", "plots.enabled=false"), tmp_path / "reference_options")
    assert ref["rerank"]["root"] == "aml_c" and ref["rerank"]["window_power"] == 2
    assert ref["qe"]["weighting"] == "alpha" and ref["qe"]["alpha"] == 3.0
    assert list(ref["stages"]) == ["initial", "aml", "aml_qe"] and ref["stages"]["initial"] == plain["map"]


@pytest.mark.parametrize("overrides,match", [
    (["qe=aml"], "add rerank=aml"),
    (["method=gem", "rerank=aml"], "method=mac or method=rmac"),
    (["method=rmac", "rerank=aml", "topk=5"], "raise topk"),
    (["method=rmac", "rerank=aml", "rerank.root=nearest"], "choose exact"),
    (["method=rmac", "rerank=aml", "rerank.root=aml_c", "rerank.alpha=8"], "alpha=10"),
    (["method=rmac", "rerank=aml", "rerank.window_power=0"], "window_power"),
    (["method=rmac", "rerank=aml", "rerank.backend=gpu"], "rerank.backend='gpu'"),
    (["method=rmac", "rerank=aml", "qe=aml", "qe.weighting=softmax"], "qe.weighting"),
    (["method=rmac", "rerank=aml", "qe=aml", "qe.weighting=alpha", "qe.alpha=0"], "qe.alpha must be > 0"),
])
def test_eval_rerank_bad_configs_fail_before_work(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        run_eval(eval_cfg(tmp_path, "dataset=revisited", f"dataset.root={tmp_path}/nowhere", "dataset.name=x",
                      *overrides), tmp_path / "run")
