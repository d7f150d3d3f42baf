"""The retriever of every global-descriptor method (mac, spoc, gem, crow, rmac and learned descriptors such as
regional attention): extract -> (whitening, learned on another dataset) -> search -> (average / α QE) -> (AML
re-ranking and AML QE, Tolias et al.)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import pooling
from .backbones import Backbone
from .data import RetrievalDataset, load_dataset, whitening_pairs
from .data.provenance import LearnedSets, is_transductive
from .regions import rmac_grid
from .rerank.pipeline import check_config as check_rerank_config
from .retrieval import build_method, expand_queries, search
from .retrieval.extractor import DescriptorExtractor, loader_workers
from .retrieval.interface import PictureContext, Rankings
from .retrieval.regional import collect_regional_vectors, learn_regional_whitening
from .whitening import Whitening

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


def learn_region_whitening(cfg: DictConfig, backbone: Backbone, L: int,
                           learned: LearnedSets | None = None) -> tuple[Whitening, dict[str, Any]]:
    """PCA-whitening of L2-normalised R-MAC regional vectors of ``method.region_whitening.dataset``'s database
    (Tolias et al.: learned on another dataset than the evaluated one, checked by content when ``learned`` is
    given). Returns it and its cache-key entry."""
    data = load_dataset(cfg.method.region_whitening.dataset)
    if learned is not None:
        learned.check_dataset("region_whitening", data, "method.region_whitening.dataset")

    def vectors(x: torch.Tensor) -> torch.Tensor:
        fmap = backbone(x)
        return pooling.l2n(pooling.region_max(fmap, rmac_grid(fmap.shape[-2], fmap.shape[-1], L)))

    X = collect_regional_vectors(data.db_paths, vectors, backbone.normalize, cfg.image_size, cfg.device,
                                 desc=f"{data.name}/region-whitening")
    dims = cfg.method.region_whitening.get("dims")
    key = {"region_whitening": {"dataset": data.name, "root": str(data.root), "n": data.n_db, "dims": dims}}
    white = learn_regional_whitening(X, dims, data.name, "learn it on a larger method.region_whitening.dataset or "
                                     "reduce with method.region_whitening.dims")
    return white, key


def check_method_learned(method: torch.nn.Module, learned: LearnedSets, allow_overlap: bool = False) -> None:
    """A trained method (e.g. regional attention from its checkpoint) says what its learned parts saw
    (``learned_content()``: component -> ContentSet); each is checked against the evaluated images (refused, or
    warned with ``allow_overlap``)."""
    for component, content in getattr(method, "learned_content", lambda: {})().items():
        learned.check(component, content, "the checkpoint's training configuration (retrain with a set disjoint "
                      "from the evaluated one)", transductive=allow_overlap, opt_in="allow_overlap=true")


class GlobalRetriever:
    """Global-descriptor methods (every name of the descriptor registry): extract -> (whitening) -> search -> (QE)
    -> (AML re-ranking)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, cfg: DictConfig) -> None:
        if cfg.qe.kind == "regional":
            raise ValueError("qe=regional is the region-descriptor QE of method=salient_regions (eq. 8): use "
                             "qe=avg|alpha with other methods")
        check_rerank_config(cfg)

    def rank(self, cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, learned: LearnedSets,
             out_dir: Path, t0: float) -> Rankings:
        params = {k: v for k, v in OmegaConf.to_container(cfg.method).items()
                  if k not in ("name", "region_whitening")}
        if self.name == "rmac" and cfg.method.get("variant") == "tolias":
            params["region_whitening"], params["region_whitening_key"] = learn_region_whitening(
                cfg, backbone, int(cfg.method.L), learned)
        if cfg.get("ckpt_path"):  # learned methods (e.g. method=regional_attention) read their checkpoint
            params["ckpt_path"] = str(cfg.ckpt_path)
        method = build_method(self.name, backbone, **params).to(cfg.device).eval()
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

        stages, rerank = {}, None
        if cfg.rerank.kind == "aml":
            from .rerank.pipeline import run_aml

            rerank = run_aml(cfg, dataset, backbone, method,
                             lambda m: DescriptorExtractor(cfg, backbone, m)(dataset, "query")[0], extractor.base_key,
                             q, ranks, white, loader_workers(cfg.num_workers, cfg.device))
            stages = {"initial": ranks, "aml": rerank["ranks_rerank"]}
            if rerank["ranks_qe"] is not None:
                stages["aml_qe"] = rerank["ranks_qe"]
            ranks = list(stages.values())[-1]

        info = {"rerank": rerank["info"]} if rerank is not None else {}
        return Rankings(ranks, stages, info, db_skipped, q_skipped, {"extract": t_extract, "search_qe": t_search},
                        whitening, pictures=rerank)

    def pictures(self, cfg: DictConfig, rankings: Rankings, ctx: PictureContext) -> None:
        if rankings.pictures is not None:  # AML: the localized windows (the paper's Fig. 5)
            from .rerank.viz import save_localizations

            ctx.draw("aml_localization.png", save_localizations, rankings.pictures, ctx.dataset, ctx.gnd, ctx.shown,
                     ctx.out_dir / "aml_localization.png", image_size=ctx.image_size)
