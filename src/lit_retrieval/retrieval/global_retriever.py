"""The retriever of every global-descriptor method (mac, spoc, gem, crow, rmac and learned descriptors such as
regional attention): extract -> (whitening, learned on another dataset) -> search -> (average / α QE) -> (a
subclass's stages: AML re-ranking for MAC / R-MAC, ``lit_retrieval.methods.aml.retriever``)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..backbones import Backbone
from ..data import RetrievalDataset, load_dataset, whitening_pairs
from ..data.provenance import LearnedSets, is_transductive
from . import build_method
from .extractor import DescriptorExtractor
from .interface import PictureContext, Rankings, Reranker, check_stages, rerank
from .index import ANNIndex, IndexSettings, build_index, measure_recall
from .qe import DescriptorIndex, QueryExpansion
from .store import DescriptorStore
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


TRANSDUCTIVE_TRAIN_ROWS = 100_000  # database rows an ivfpq index asked to learn on the evaluated database samples


def index_training_set(cfg: DictConfig, settings: IndexSettings,
                       learned: LearnedSets) -> RetrievalDataset | str | None:
    """The dataset ``search.index=ivfpq`` learns its quantizers on (``search.train.dataset``), checked by content
    against the evaluated images before any descriptor is extracted; ``"transductive"`` when the user asks for the
    evaluated database itself (``search.train.dataset.kind=transductive``: recorded, and warned); ``None`` for
    flat / hnsw (nothing learned)."""
    settings.check()
    if settings.index != "ivfpq":
        return None
    source = OmegaConf.select(cfg, "search.train.dataset")
    if source is None:
        raise ValueError("search.index=ivfpq learns its coarse quantizer and product codes on search.train.dataset, "
                         "another dataset's database: set it (e.g. search.train.dataset='{kind: revisited, root: "
                         "data, name: rparis6k}' when evaluating ROxford5k)")
    if is_transductive(source):
        learned.transductive("search_index", "search.train.dataset")
        return "transductive"
    tdata = load_dataset(source)
    learned.check_dataset("search_index", tdata, "search.train.dataset")
    return tdata


def learn_whitening(cfg: DictConfig, db_desc: np.ndarray, extractor: DescriptorExtractor,
                    wdata: RetrievalDataset | None) -> Whitening | None:
    """Learn PCA (database descriptors) or Lw (query/positive pairs) whitening on ``wdata`` (from
    :func:`whitening_set`; ``None``: PCA on the evaluated database ``db_desc``)."""
    wcfg = cfg.whitening
    if wcfg.kind == "none":
        return None
    if wdata is None:
        log.info("learning %s whitening on the evaluated database (%d images: transductive)", wcfg.kind, len(db_desc))
        return Whitening.learn(np.asarray(db_desc), "pca", dims=wcfg.dims)
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


@dataclass
class GlobalIndex:
    """A database indexed by a global descriptor: the method, its extractor, the (whitened) database descriptors,
    the whitening and its record, the unreadable images, the seconds it took."""

    method: torch.nn.Module
    extractor: DescriptorExtractor
    database: DescriptorStore
    white: Whitening | None
    whitening: dict[str, Any]
    db_skipped: list[int]
    seconds: float
    ann: ANNIndex | None = None


class GlobalRetriever:
    """Global-descriptor methods (every name of the descriptor registry): :meth:`index` (extract the database,
    learn the whitening on another dataset) -> :meth:`search` (the queries against it) -> the post-processing
    stages of :meth:`rerankers` (average / α QE here; a subclass adds its own, e.g. AML re-ranking). Subclasses
    also set the descriptor's settings (:meth:`method_params`) and list the stages they offer (``offers``)."""

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

    def index(self, cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, learned: LearnedSets,
              out_dir: Path) -> GlobalIndex:
        """The database's descriptors, whitened by a whitening learned on ``cfg.whitening.dataset`` (checked by
        content before any descriptor is extracted; saved as ``whitening.npz``)."""
        t0 = time.perf_counter()
        method = build_method(self.name, backbone, **self.method_params(cfg, backbone, learned)).to(cfg.device).eval()
        check_method_learned(method, learned, bool(cfg.get("allow_overlap", False)))
        wdata, whitening = whitening_set(cfg, learned)  # checked before any work
        settings = IndexSettings.from_cfg(cfg)
        tdata = index_training_set(cfg, settings, learned)  # checked before any work
        extractor = DescriptorExtractor(cfg, backbone, method)
        db, db_skipped = extractor.store(dataset, "db")  # on disk with the cache: read block by block
        white = learn_whitening(cfg, db, extractor, wdata)
        if white is not None:
            white.save(out_dir / "whitening.npz")
            db = db.map(white)  # applied as blocks are read; unreadable images stay zero (similarity 0)
        train = None
        if tdata == "transductive":  # asked for: a sample of the evaluated database itself
            rows = np.random.default_rng(int(cfg.seed)).permutation(len(db))[:TRANSDUCTIVE_TRAIN_ROWS]
            train = db[np.sort(rows)]
        elif tdata is not None:  # the index's training vectors, described and whitened as the database
            train, _ = extractor(tdata, "db")
            train = white(train) if white is not None else train
        ann = build_index(settings, db, train)
        return GlobalIndex(method, extractor, db, white, whitening, db_skipped, time.perf_counter() - t0, ann)

    def search(self, cfg: DictConfig, index: GlobalIndex, dataset: RetrievalDataset) -> Rankings:
        """``dataset``'s queries (described and whitened as the database) against ``index``, best first."""
        t0 = time.perf_counter()
        q, q_skipped = index.extractor(dataset, "query")
        if index.white is not None:
            q = index.white(q)
            q[q_skipped] = 0
        t_extract = time.perf_counter() - t0
        k = None if cfg.topk is None else int(cfg.topk)
        t1 = time.perf_counter()
        found = DescriptorIndex(q, index.database, index.ann)
        scores, ranks = found.search(q, k)
        t_search = time.perf_counter() - t1
        info = {}
        if index.ann is not None:
            info["search"] = dict(index.ann.info)
            if index.ann.settings.recall_vs_exact:
                info["search"].update(measure_recall(index.ann, q, index.database, ranks, t_search))
        return Rankings(ranks, {}, info, index.db_skipped, q_skipped,
                        {"extract": index.seconds + t_extract, "search_qe": t_search},
                        index.whitening, scores=scores, index=found)

    def rerankers(self, cfg: DictConfig, index: GlobalIndex, dataset: RetrievalDataset,
                  backbone: Backbone) -> list[Reranker]:
        """The post-processing stages after the search: average / α QE (``qe=avg|alpha``)."""
        if cfg.qe.kind in ("avg", "alpha"):
            return [QueryExpansion(int(cfg.qe.k), float(cfg.qe.alpha), None if cfg.topk is None else int(cfg.topk))]
        return []

    def rank(self, cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, learned: LearnedSets,
             out_dir: Path, t0: float) -> Rankings:
        return self.rank_queries(cfg, self.index(cfg, dataset, backbone, learned, out_dir), dataset, backbone)

    def rank_queries(self, cfg: DictConfig, index: GlobalIndex, dataset: RetrievalDataset,
                     backbone: Backbone) -> Rankings:
        """``dataset``'s queries against an index built once (:meth:`index`): the search, then the stages."""
        rankings = self.search(cfg, index, dataset)
        for stage in self.rerankers(cfg, index, dataset, backbone):
            t1 = time.perf_counter()
            rankings = rerank(rankings, [stage])
            if not stage.record:  # e.g. QE: part of the search's time (a recorded stage times itself)
                rankings.time_s["search_qe"] += time.perf_counter() - t1
        return rankings

    def pictures(self, cfg: DictConfig, rankings: Rankings, ctx: PictureContext) -> None:
        """None here (the PR curve and top-k grid are drawn for every method)."""
