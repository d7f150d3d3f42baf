"""The retriever of every global-descriptor method (mac, spoc, gem, crow, rmac and learned descriptors such as
regional attention): extract -> (whitening, learned on another dataset) -> search -> (average / α QE) -> (a
subclass's stages: AML re-ranking for MAC / R-MAC, ``lit_retrieval.methods.aml.retriever``)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..backbones import Backbone
from ..data import RetrievalDataset, load_dataset, whitening_pairs
from ..data.provenance import LearnedSets, is_transductive
from . import build_method, expand_queries, search
from .extractor import DescriptorExtractor
from .interface import PictureContext, Rankings, check_stages
from ..whitening import Whitening

log = logging.getLogger(__name__)


def whitening_set(cfg: DictConfig, learned: LearnedSets) -> tuple[RetrievalDataset | None, dict[str, Any]]:
    """The dataset ``cfg.whitening`` is learned on (``None``: the evaluated database, transductive) and its record,
    checked by content against the evaluated images before any descriptor is extracted."""
    wcfg = cfg.whitening
    if wcfg.kind == "none":
        return None, {"kind": "none"}
    head = {"kind": str(wcfg.kind), "dims": wcfg.dims}
    if is_transductive(wcfg.dataset):
        if wcfg.kind == "lw":
            raise ValueError("whitening=lw learns from the matching pairs of another dataset's ground truth: set "
                             "whitening.dataset to a training dataset (learning it on the evaluated one is cheating)")
        return None, {**head, **learned.transductive("whitening", "whitening.dataset")}
    wdata = load_dataset(wcfg.dataset)
    return wdata, {**head, **learned.check_dataset("whitening", wdata, "whitening.dataset",
                                                   parts=("db",) if wcfg.kind == "pca" else ("db", "query"))}


def learn_whitening(cfg: DictConfig, db_desc: np.ndarray, extractor: DescriptorExtractor,
                    wdata: RetrievalDataset | None) -> Whitening | None:
    """Learn PCA (database descriptors) or Lw (query/positive pairs) whitening on ``wdata`` (from
    :func:`whitening_set`; ``None``: PCA on the evaluated database ``db_desc``)."""
    wcfg = cfg.whitening
    if wcfg.kind == "none":
        return None
    if wdata is None:
        log.info("learning %s whitening on the evaluated database (%d images: transductive)", wcfg.kind, len(db_desc))
        return Whitening.learn(db_desc, "pca", dims=wcfg.dims)
    X, _ = extractor(wdata, "db")
    if wcfg.kind == "pca":
        log.info("learning PCA whitening on %s (%d images)", wdata.name, len(X))
        return Whitening.learn(X, "pca", dims=wcfg.dims)
    Q, _ = extractor(wdata, "query")
    qi, pi = whitening_pairs(wdata)
    log.info("learning Lw whitening on %s (%d pairs)", wdata.name, len(qi))
    return Whitening.learn(np.concatenate([X, Q]), "lw", pairs=(len(X) + qi, pi), dims=wcfg.dims)


def check_method_learned(method: torch.nn.Module, learned: LearnedSets, allow_overlap: bool = False) -> None:
    """A trained method (e.g. regional attention from its checkpoint) says what its learned parts saw
    (``learned_content()``: component -> ContentSet); each is checked against the evaluated images (refused, or
    warned with ``allow_overlap``)."""
    for component, content in getattr(method, "learned_content", lambda: {})().items():
        learned.check(component, content, "the checkpoint's training configuration (retrain with a set disjoint "
                      "from the evaluated one)", transductive=allow_overlap, opt_in="allow_overlap=true")


class GlobalRetriever:
    """Global-descriptor methods (every name of the descriptor registry): extract -> (whitening) -> search -> (QE).
    Subclasses add stages after the search (:meth:`after_search`) and settings of the descriptor
    (:meth:`method_params`), and list them in ``offers``."""

    offers: dict[str, tuple[str, ...]] = {"qe": ("none", "avg", "alpha"), "rerank": ("none",)}

    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, cfg: DictConfig) -> None:
        check_stages(cfg, self.name, self.offers)

    def method_params(self, cfg: DictConfig, backbone: Backbone, learned: LearnedSets) -> dict[str, Any]:
        """The descriptor's parameters: ``method.*`` but its name (and the checkpoint of a learned method)."""
        params = {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k != "name"}
        if cfg.get("ckpt_path"):  # learned methods (e.g. method=regional_attention) read their checkpoint
            params["ckpt_path"] = str(cfg.ckpt_path)
        return params

    def after_search(self, cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, method: torch.nn.Module,
                     extractor: DescriptorExtractor, q: np.ndarray, ranks: np.ndarray,
                     white: Whitening | None) -> tuple[dict[str, np.ndarray], dict[str, Any], Any]:
        """Stages after the search: ``(stages, results.json sections, what the pictures need)``; none here."""
        return {}, {}, None

    def rank(self, cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, learned: LearnedSets,
             out_dir: Path, t0: float) -> Rankings:
        method = build_method(self.name, backbone, **self.method_params(cfg, backbone, learned)).to(cfg.device).eval()
        check_method_learned(method, learned, bool(cfg.get("allow_overlap", False)))
        wdata, whitening = whitening_set(cfg, learned)  # checked before any work
        extractor = DescriptorExtractor(cfg, backbone, method)
        db, db_skipped = extractor(dataset, "db")
        q, q_skipped = extractor(dataset, "query")
        t_extract = time.perf_counter() - t0

        white = learn_whitening(cfg, db, extractor, wdata)
        if white is not None:
            white.save(out_dir / "whitening.npz")
            db, q = white(db), white(q)
            db[db_skipped], q[q_skipped] = 0, 0  # unreadable images stay zero (they rank by similarity 0)

        t1 = time.perf_counter()
        k = None if cfg.topk is None else int(cfg.topk)
        scores, ranks = search(q, db, k=k)
        if cfg.qe.kind in ("avg", "alpha"):
            q = expand_queries(q, db, ranks, scores, k=int(cfg.qe.k), alpha=float(cfg.qe.alpha))
            scores, ranks = search(q, db, k=k)
        t_search = time.perf_counter() - t1

        stages, info, pictures = self.after_search(cfg, dataset, backbone, method, extractor, q, ranks, white)
        if stages:
            ranks = list(stages.values())[-1]
        return Rankings(ranks, stages, info, db_skipped, q_skipped, {"extract": t_extract, "search_qe": t_search},
                        whitening, pictures=pictures)

    def pictures(self, cfg: DictConfig, rankings: Rankings, ctx: PictureContext) -> None:
        """None here (the PR curve and top-k grid are drawn for every method)."""
