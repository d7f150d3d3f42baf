"""Tolias, Sicre & Jégou's methods as ``eval.py`` runs them: MAC / R-MAC filtering (R-MAC's ``variant=tolias``
with its regional whitening, learned on another dataset), then AML re-ranking and AML query expansion
(``rerank=aml``, ``qe=aml``) as stages after the search."""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from ... import pooling
from ...backbones import Backbone
from ...data import RetrievalDataset, load_dataset
from ...data.provenance import LearnedSets
from ...regions import rmac_grid
from ...retrieval.global_retriever import GlobalIndex, GlobalRetriever
from ...retrieval.interface import PictureContext, Rankings, Reranker
from ...retrieval.regional import collect_regional_vectors, learn_regional_whitening
from ...whitening import Whitening
from .pipeline import AMLQueryExpansion, AMLReranking, check_config, qe_alpha


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


class AMLRetriever(GlobalRetriever):
    """``method=mac|rmac``: the global retriever plus the Tolias R-MAC's regional whitening and the AML stages."""

    offers = {"qe": ("none", "avg", "alpha", "aml"), "rerank": ("none", "aml")}

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        check_config(cfg)

    def method_params(self, cfg: DictConfig, backbone: Backbone, learned: LearnedSets) -> dict[str, Any]:
        params = super().method_params(cfg, backbone, learned)
        params.pop("region_whitening", None)
        if self.name == "rmac" and cfg.method.get("variant") == "tolias":
            params["region_whitening"], params["region_whitening_key"] = learn_region_whitening(
                cfg, backbone, int(cfg.method.L), learned)
        return params

    def rerankers(self, cfg: DictConfig, index: GlobalIndex, dataset: RetrievalDataset,
                  backbone: Backbone) -> list[Reranker]:
        """The global stages (average / α QE), then AML re-ranking (``rerank=aml``) and AML QE (``qe=aml``)."""
        stages = super().rerankers(cfg, index, dataset, backbone)
        if cfg.rerank.kind == "aml":
            stages.append(AMLReranking(cfg, dataset, backbone, index.method, index.white))
            if cfg.qe.kind == "aml":
                stages.append(AMLQueryExpansion(int(cfg.qe.k), qe_alpha(cfg.qe)))
        return stages

    def pictures(self, cfg: DictConfig, rankings: Rankings, ctx: PictureContext) -> None:
        if rankings.pictures is not None:  # AML: the localized windows (the paper's Fig. 5)
            from .viz import save_localizations

            ctx.draw("aml_localization.png", save_localizations, rankings.pictures, ctx.dataset, ctx.gnd, ctx.shown,
                     ctx.out_dir / "aml_localization.png", image_size=ctx.image_size)
