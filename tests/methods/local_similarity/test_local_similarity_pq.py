"""eval.py method=local_similarity with product-quantized gallery grids: the checkpoint's quantizer (the one the
subnet was fine-tuned on) by default, relearning only on request and never silently on the evaluated database."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import eval_cfg
from lit_retrieval.backbones import build_backbone
from lit_retrieval.data import load_dataset
from lit_retrieval.methods.local_similarity import (GalleryGrids, GridQuantizer, Settings, describe, local_scores,
                                                    run_local)
from lit_retrieval.methods.local_similarity.pipeline import check_config
from lit_retrieval.retrieval import Loading
from lit_retrieval.methods.local_similarity.network import CKPT_KEY, LocalSimilarityNet, load_local_similarity

GRID, QGRID = 6, 3  # small grids keep the subnet and k-means cheap


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("efficientnet_lite0", weights="random").eval()


def _bench(tmp_path_factory, name: str, seed: int, n_queries: int) -> Path:
    from lit_retrieval.data.synthetic import build_embedded

    root = tmp_path_factory.mktemp(name)
    build_embedded(root, seed=seed, name=name, n_queries=n_queries, n_distractors=2, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The evaluated benchmark (2 queries, 24 database images)."""
    return _bench(tmp_path_factory, "tiny", 3, 2)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Another procedural benchmark (another seed): a database disjoint from the evaluated one."""
    return _bench(tmp_path_factory, "other", 5, 1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One descriptor cache for the module: every test describes the same images with the same backbone."""
    return tmp_path_factory.mktemp("cache")


def _stored(dim: int, M: int = 4, nbits: int = 4) -> GridQuantizer:
    """A quantizer as quantized fine-tuning stores it (random centres: only their identity matters here)."""
    centroids = torch.from_numpy(np.random.default_rng(0).normal(size=(M, 2 ** nbits, dim // M)).astype(np.float32))
    return GridQuantizer.from_state({"dim": torch.tensor(dim), "M": torch.tensor(M), "nbits": torch.tensor(nbits),
                                     "centroids": centroids})


def _checkpoint(path: Path, backbone, quantizer: GridQuantizer | None) -> Path:
    """What LocalSimilarityModule.on_save_checkpoint writes, for an untrained subnet on a frozen backbone."""
    torch.manual_seed(0)
    net = LocalSimilarityNet(backbone, gallery_grid=GRID, query_grid=QGRID)
    torch.save({CKPT_KEY: {"config": net.config(), "backbone": {"name": backbone.name},
                           "state_dict": {k: v for k, v in net.state_dict().items() if not k.startswith("backbone.")},
                           "quantizer": None if quantizer is None else quantizer.state_dict()}}, path)
    return path


def _cfg(cache: Path, tiny: Path, ckpt: Path, *extra: str):
    return eval_cfg(ckpt.parent, f"paths.cache_dir={cache}", "method=local_similarity", "dataset=revisited",
                    f"dataset.root={tiny}", "dataset.name=tiny", "backbone=efficientnet_lite0",
                    "backbone.weights=random", "image_size=64", f"ckpt_path={ckpt}", *extra)


@pytest.fixture
def learned(monkeypatch):
    """Every GridQuantizer.learn call's (vectors, M, nbits)."""
    calls = []
    original = GridQuantizer.learn.__func__

    def spy(cls, vectors, M, nbits=8, seed=0, max_train=100_000):
        calls.append((np.array(vectors), M, nbits))
        return original(cls, vectors, M, nbits, seed, max_train)

    monkeypatch.setattr(GridQuantizer, "learn", classmethod(spy))
    return calls


KEY = {"backbone": "efficientnet_lite0", "weights": "random"}


def _run(cfg, backbone):
    return run_local(cfg, load_dataset(cfg.dataset), backbone, 0, KEY)


def _db_grids(cfg, backbone, data) -> np.ndarray:
    """The raw gallery grids of ``data`` (from the run's descriptor cache)."""
    return describe(load_local_similarity(str(cfg.ckpt_path), backbone), data, "db", Loading(64, progress=False),
                    cache_root=str(cfg.cache.dir), base_key=KEY).grids


def test_eval_uses_the_quantizer_stored_in_the_checkpoint(tmp_path, cache, tiny, backbone, learned):
    stored = _stored(backbone.out_channels)
    ckpt = _checkpoint(tmp_path / "pq.ckpt", backbone, stored)
    cfg = _cfg(cache, tiny, ckpt)
    out = _run(cfg, backbone)
    assert learned == []  # no product quantizer is learned at evaluation
    ref = GridQuantizer.from_state(torch.load(ckpt, weights_only=True)[CKPT_KEY]["quantizer"])
    data = load_dataset(cfg.dataset)
    grids = _db_grids(cfg, backbone, data)
    N, L, D = grids.shape
    assert out["info"]["bytes_per_image"]["stored"] == L * 2  # 4 sub-vectors × 4 bits per location
    # S_local is the subnet's on the stored quantizer's reconstructions of the gallery grids
    net = load_local_similarity(str(ckpt), backbone)
    q = describe(net, data, "query", Loading(64, progress=False), cache_root=str(cfg.cache.dir), base_key=KEY).grids
    store = GalleryGrids(grids, (GRID, GRID), ref)
    for i in range(len(q)):
        q_grid = torch.from_numpy(q[i]).view(QGRID, QGRID, D).permute(2, 0, 1)
        s_local, _ = local_scores(net, q_grid, store, out["short"][i], batch=64)
        np.testing.assert_allclose(out["s_local"][i], s_local, atol=1e-6)
    gallery = out["gallery"]
    np.testing.assert_array_equal(gallery.quantizer.centroids, ref.centroids)
    np.testing.assert_array_equal(gallery.codes, ref.encode(grids.reshape(-1, D)).reshape(N, L, -1))
    raw = torch.from_numpy(grids[:3]).view(3, GRID, GRID, D).permute(0, 3, 1, 2)
    torch.testing.assert_close(gallery.take([0, 1, 2]), ref.roundtrip(raw))  # what the subnet scores
    info = out["info"]
    assert info["pq"] == {"source": "checkpoint", "M": 4, "nbits": 4, "relearn": False, "ckpt_path": str(ckpt),
                          "learned_on": None}
    assert out["pq_train_paths"] is None
    # the matching explicit M (and nbits) also select the checkpoint's quantizer
    again = _run(_cfg(cache, tiny, ckpt, "method.pq.M=4", "method.pq.nbits=4"), backbone)
    assert learned == [] and again["info"]["pq"]["source"] == "checkpoint"
    np.testing.assert_array_equal(again["gallery"].codes, gallery.codes)


def test_relearning_on_the_evaluated_database_is_transductive_and_warned(tmp_path, cache, tiny, backbone, learned,
                                                                          caplog):
    ckpt = _checkpoint(tmp_path / "pq.ckpt", backbone, _stored(backbone.out_channels))
    cfg = _cfg(cache, tiny, ckpt, "method.pq.relearn=true", "method.pq.M=8",
               "method.pq.dataset={kind: transductive}")
    data = load_dataset(cfg.dataset)
    with caplog.at_level(logging.WARNING, logger="lit_retrieval.methods.local_similarity.pipeline"):
        out = _run(cfg, backbone)
    assert any("transductive" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert len(learned) == 1
    vectors, M, nbits = learned[0]
    assert (M, nbits) == (8, 4)  # nbits null: the checkpoint's
    grids = _db_grids(cfg, backbone, data)
    np.testing.assert_array_equal(vectors, grids.reshape(-1, grids.shape[-1]))  # the evaluated database
    pq = out["info"]["pq"]
    assert pq["source"] == "learned" and pq["M"] == 8 and pq["relearn"] is True
    assert pq["learned_on"] == {"dataset": "tiny", "root": str(data.root), "n_images": data.n_db,
                                "transductive": True}
    assert out["pq_train_paths"] == [Path(p) for p in data.db_paths]
    assert out["gallery"].quantizer.M == 8


def test_an_explicit_m_other_than_the_checkpoints_is_an_error(tmp_path, cache, tiny, backbone, learned):
    ckpt = _checkpoint(tmp_path / "pq.ckpt", backbone, _stored(backbone.out_channels))
    cfg = _cfg(cache, tiny, ckpt, "method.pq.M=8")
    for call in (lambda: check_config(cfg), lambda: _run(cfg, backbone)):
        with pytest.raises(ValueError, match=r"method.pq.M=8 disagrees with the product quantizer stored in "
                                             r"ckpt_path=.*M=4, nbits=4.*Fix: drop method.pq.M.*"
                                             r"method.pq.relearn=true"):
            call()
    with pytest.raises(ValueError, match="method.pq.nbits=8 disagrees"):
        check_config(_cfg(cache, tiny, ckpt, "method.pq.nbits=8"))
    assert learned == []


def test_m_without_a_stored_quantizer_learns_on_the_configured_other_dataset(tmp_path, cache, tiny, other, backbone,
                                                                               learned, caplog):
    ckpt = _checkpoint(tmp_path / "raw.ckpt", backbone, None)
    plain = _run(_cfg(cache, tiny, ckpt), backbone)
    assert plain["info"]["pq"]["source"] == "none" and plain["gallery"].quantizer is None and learned == []
    cfg = _cfg(cache, tiny, ckpt, "method.pq.M=4", "method.pq.nbits=4", "~method.pq.dataset",
               f"+method.pq.dataset={{kind: revisited, root: '{other}', name: other}}")
    with caplog.at_level(logging.WARNING, logger="lit_retrieval.methods.local_similarity.pipeline"):
        out = _run(cfg, backbone)
    assert not any("transductive" in r.getMessage() for r in caplog.records)
    odata = load_dataset(cfg.method.pq.dataset)
    grids = _db_grids(cfg, backbone, odata)
    assert len(learned) == 1
    np.testing.assert_array_equal(learned[0][0], grids.reshape(-1, grids.shape[-1]))  # not the evaluated grids
    pq = out["info"]["pq"]
    assert pq["source"] == "learned" and pq["relearn"] is False
    assert pq["learned_on"]["dataset"] == "other" and pq["learned_on"]["n_images"] == odata.n_db
    assert out["pq_train_paths"] == [Path(p) for p in odata.db_paths]
    assert not set(out["pq_train_paths"]) & set(load_dataset(cfg.dataset).db_paths)


def test_pq_plan():
    from lit_retrieval.methods.local_similarity.pipeline import pq_plan

    stored = _stored(16, M=4, nbits=4)
    assert pq_plan(Settings(), None, "c") == ("none", None, None)
    assert pq_plan(Settings(), stored, "c") == ("checkpoint", 4, 4)
    assert pq_plan(Settings(pq=8), None, "c") == ("learned", 8, 8)
    assert pq_plan(Settings(pq_relearn=True), stored, "c") == ("learned", 4, 4)
    assert pq_plan(Settings(pq=8, pq_nbits=6, pq_relearn=True), stored, "c") == ("learned", 8, 6)
    with pytest.raises(ValueError, match="relearn=true needs method.pq.M"):
        pq_plan(Settings(pq_relearn=True), None, "c")
