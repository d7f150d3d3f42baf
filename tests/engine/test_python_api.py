"""The Python API (``lit_retrieval.build``): docs/python.md's examples run as doctests, and the objects are the ones
``eval.py`` uses (same rankings, same settings, the same errors)."""
from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest

import lit_retrieval
from conftest import eval_cfg
from lit_retrieval.api import _override, image_files

ROOT = Path(__file__).resolve().parents[2]


def test_docs_python_md_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIT_RETRIEVAL_ROOT", str(tmp_path))  # the descriptor cache of the examples stays here
    (tmp_path / "conf").symlink_to(ROOT / "conf")
    failed, attempted = doctest.testfile(str(ROOT / "docs" / "python.md"), module_relative=False, verbose=False,
                                         optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 20 and failed == 0


def test_overrides_are_hydra_strings():
    assert _override("image_size", 512) == "image_size=512"
    assert _override("method__p", 4.5) == "method.p=4.5"
    assert _override("scales", [1.0, 0.7071]) == "scales=[1.0,0.7071]"
    assert _override("cache__enabled", False) == "cache.enabled=false"
    assert _override("ckpt_path", None) == "ckpt_path=null"
    assert _override("dataset__root", "/data/my photos") == "dataset.root='/data/my photos'"


def test_build_composes_what_eval_py_composes(tmp_path, tiny):
    m = lit_retrieval.build("rmac", "method.L=2", backbone="efficientnet_lite0", image_size=64, qe="avg")
    plain = eval_cfg(tmp_path, "method=rmac", "method.L=2", "backbone=efficientnet_lite0", "image_size=64", "qe=avg")
    from omegaconf import OmegaConf

    same = lambda a, b: OmegaConf.to_container(a) == OmegaConf.to_container(b)  # (interpolations as written)
    assert same(m.cfg.method, plain.method) and same(m.cfg.qe, plain.qe) and m.cfg.image_size == 64
    assert m.is_global and m.retriever.name == "rmac"


def test_search_equals_the_eval_run_ranking(tmp_path, tiny):
    """Indexing a benchmark's database and searching with its (cropped) queries ranks as eval.py does."""
    from lit_retrieval.data import load_dataset
    from lit_retrieval.evaluate import run_eval

    settings = dict(backbone="efficientnet_lite0", image_size=64, qe="avg", cache__dir=str(tmp_path / "cache"))
    m = lit_retrieval.build("gem", out_dir=tmp_path / "api", **settings)
    data = load_dataset(eval_cfg(tmp_path, "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny").dataset)
    hits = m.index(data.db_paths).search(data.query_paths, k=data.n_db, boxes=data.query_bbx)
    run = run_eval(eval_cfg(tmp_path, "method=gem", "backbone=efficientnet_lite0", "image_size=64", "qe=avg",
                            f"cache.dir={tmp_path}/cache", "dataset=revisited", f"dataset.root={tiny}",
                            "dataset.name=tiny", "plots.enabled=false"), tmp_path / "run")
    import json

    assert json.loads((tmp_path / "run" / "results.json").read_text())["map"] == run["map"]
    assert hits.ranks.shape == (data.n_queries, data.n_db)
    # the eval run's first stage is the same ranking: compare the mAP recomputed from the API's ranks
    from lit_retrieval.metrics import evaluate_ranks

    ours = evaluate_ranks(hits.ranks.T, data.gnd, data.protocol)
    assert {p: round(float(v["map"]), 4) for p, v in ours.items()} == run["map"]
    assert [p.name for p in hits.paths(0)][:1] == [Path(data.db_paths[hits.ranks[0, 0]]).name]


def test_a_method_without_global_descriptor_indexes_and_searches(tmp_path, tiny):
    m = lit_retrieval.build("salient_regions", image_size=96, backbone="efficientnet_lite0", method__reduced_dim=8,
                            method__dim=8, method__pca_dataset__kind="transductive", cache__dir=str(tmp_path / "c"))
    assert not m.is_global
    with pytest.raises(ValueError, match="has no global descriptor"):
        m.describe(tiny / "tiny" / "jpg")
    db = sorted((tiny / "tiny" / "jpg").glob("db_*.jpg"))
    hits = m.index(db).search(db[:2], k=4)
    assert hits.ranks.shape == (2, 4) and len(set(hits.ranks[0])) == 4
    assert hits.paths(0)[0] == db[0] and hits.paths(1)[0] == db[1]


def test_bad_inputs_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image files"):
        image_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="1 image files do not exist"):
        image_files([tmp_path / "nope.jpg"])
    with pytest.raises(ValueError, match="did you mean backbone=resnet101"):
        lit_retrieval.build("gem", backbone="resnet10")
    with pytest.raises(ValueError, match="method=gem does not offer rerank=aml"):
        lit_retrieval.build("gem", rerank="aml")
    m = lit_retrieval.build("gem", backbone="efficientnet_lite0", image_size=32)
    index_dir = tmp_path / "imgs"
    index_dir.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(index_dir / f"{i}.png")
    with pytest.raises(ValueError, match="2 boxes for 1 queries"):
        m.index(index_dir).search([index_dir / "0.png"], boxes=[None, None])


def test_without_the_checkout_s_configs_the_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_RETRIEVAL_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="install the checkout editable"):
        lit_retrieval.build("gem")
