"""One interface for every method: a new method is a Retriever class, one YAML and one registry line, and eval.py
runs it (metrics, stages, results sections, pictures) without naming it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from lit_retrieval.evaluate import run_eval
from lit_retrieval.metrics import evaluate_ranks
from lit_retrieval.retrieval.interface import (RETRIEVERS, PictureContext, Rankings, Retriever, build_retriever,
                                               method_names, register_retriever)

CONF = Path(__file__).resolve().parents[2] / "conf"


def _mean_colour(path: Path, box=None) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    if box is not None:
        img = img.crop(tuple(int(v) for v in box))
    v = np.asarray(img, np.float64).reshape(-1, 3).mean(0)
    return v / np.linalg.norm(v)


class MeanColour:
    """A toy method: images ranked by the cosine of their mean colours (two stages: reversed, then right)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, cfg) -> None:
        if cfg.method.get("flip") not in (True, False):
            raise ValueError("method.flip must be true or false")

    def rank(self, cfg, dataset, backbone, learned, out_dir, t0) -> Rankings:
        db = np.stack([_mean_colour(p) for p in dataset.db_paths])
        q = np.stack([_mean_colour(p, b) for p, b in zip(dataset.query_paths, dataset.query_bbx)])
        ranks = np.argsort(-(q @ db.T), axis=1, kind="stable")
        return Rankings(ranks, {"reversed": ranks[:, ::-1].copy(), "colour": ranks}, {"mean_colour": {"dims": 3}},
                        time_s={"extract": 0.0, "search_qe": 0.0}, pictures=db)

    def pictures(self, cfg, rankings: Rankings, ctx: PictureContext) -> None:
        ctx.draw("colours.png", lambda: Image.fromarray((rankings.pictures[None] * 255).astype(np.uint8)).save(
            ctx.out_dir / "colours.png"))


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """The three steps of adding a method: its class (above), its YAML (in a config folder Hydra searches) and its
    registry line."""
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "mean_colour.yaml").write_text("name: mean_colour\nflip: false\n")
    monkeypatch.setitem(RETRIEVERS, "mean_colour", MeanColour)
    return tmp_path / "conf"


def _cfg(tmp_path, conf, *extra):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("eval", overrides=[f"paths.root_dir={tmp_path}", f"paths.log_dir={tmp_path}/logs",
                                          f"hydra.searchpath=[file://{conf}]", "method=mean_colour", "num_workers=0",
                                          *extra])


def test_a_registered_toy_method_runs_through_eval(tiny, tmp_path, toy_method):
    assert "mean_colour" in method_names() and isinstance(build_retriever("mean_colour"), Retriever)
    cfg = _cfg(tmp_path, toy_method, "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny",
               "backbone=efficientnet_lite0")
    res = run_eval(cfg, tmp_path / "run")
    assert res["method"] == "mean_colour" and res["mean_colour"] == {"dims": 3}
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == res
    # the orchestrator's metrics of the retriever's ranking, with stages and their paired difference
    from lit_retrieval.data import load_revisited

    ds = load_revisited(tiny, "tiny")
    db = np.stack([_mean_colour(p) for p in ds.db_paths])
    q = np.stack([_mean_colour(p, b) for p, b in zip(ds.query_paths, ds.query_bbx)])
    expect = evaluate_ranks(np.argsort(-(q @ db.T), axis=1, kind="stable").T, ds.gnd, ds.protocol)
    assert res["map"]["medium"] == pytest.approx(expect["medium"]["map"], abs=1e-3)
    assert list(res["stages"]) == ["reversed", "colour"] and "colour - reversed" in res["stage_differences"]
    for f in ("pr_curve.png", "topk.png", "colours.png"):
        assert (tmp_path / "run" / f).stat().st_size > 0
    # its own check runs before any work
    with pytest.raises(ValueError, match="method.flip"):
        run_eval(_cfg(tmp_path, toy_method, "method.flip=3"), tmp_path / "bad")


def test_unknown_methods_and_incomplete_retrievers_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown method 'nope'.*gem"):
        build_retriever("nope")
    register = RETRIEVERS.copy()
    monkeypatch.setattr("lit_retrieval.retrieval.interface.RETRIEVERS", register)
    register_retriever("half", type("Half", (), {"__init__": lambda self, name: None}))
    with pytest.raises(TypeError, match="lacks check / rank / pictures"):
        build_retriever("half")


def test_every_registered_method_builds_its_retriever():
    for name in method_names():
        r = build_retriever(name)
        assert r.name == name and isinstance(r, Retriever)
