"""One interface for every retrieval method ``eval.py`` runs: a :class:`Retriever` gives :class:`Rankings`.

A retriever is built from the run's configuration by name (:func:`build_retriever`, ``method.name``); it checks
the settings it needs before any work (:meth:`Retriever.check`, so nothing else validates them), ranks a
dataset's database for each of its queries (:meth:`Retriever.rank`) and may draw its own pictures
(:meth:`Retriever.pictures`). Everything the orchestrator reports — metrics, ``results.json``, the printed table,
the generic pictures — reads the one :class:`Rankings` it returns, so the orchestrator names no method.

Registering a method is one line in :data:`RETRIEVERS` (``name -> "module:attribute"``, imported on first use,
so the engine never imports a paper's package), or :func:`register_retriever` at run time. Every name of the
global-descriptor registry (:data:`lit_retrieval.retrieval.methods.METHODS`: mac, spoc, gem, crow, rmac and
learned descriptors such as regional attention) runs through the global-descriptor retriever.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from .methods import METHODS, resolve

# name -> "module:attribute" of a Retriever class; the global-descriptor methods are listed in METHODS
RETRIEVERS: dict[str, str | type] = {
    "mac": "lit_retrieval.methods.aml.retriever:AMLRetriever",  # Tolias et al.: MAC / R-MAC filtering + AML
    "rmac": "lit_retrieval.methods.aml.retriever:AMLRetriever",
    "salient_regions": "lit_retrieval.methods.salient_regions.pipeline:SalientRetriever",
    "local_similarity": "lit_retrieval.methods.local_similarity.pipeline:LocalSimilarityRetriever",
    "d2r": "lit_retrieval.methods.detect_to_retrieve.pipeline:D2RRetriever",
}
GLOBAL_RETRIEVER = "lit_retrieval.retrieval.global_retriever:GlobalRetriever"

# the post-processing stages a retriever does not offer: what to use instead (``check_stages``)
STAGE_HINTS: dict[tuple[str, str], str] = {
    ("qe", "aml"): "qe=aml expands the query with AML-localized windows: add rerank=aml with method=mac or "
                   "method=rmac (or pick qe=avg|alpha)",
    ("rerank", "aml"): "rerank=aml re-scores localized windows with the filtering's own descriptor, MAC or R-MAC "
                       "(Tolias et al. Sec. 6): use method=mac or method=rmac (variant cirtorch or tolias)",
    ("qe", "regional"): "qe=regional is the region-descriptor QE of method=salient_regions (eq. 8): use "
                        "qe=avg|alpha with other methods",
}


@dataclass
class Rankings:
    """What a retriever returns for a dataset.

    Attributes:
        ranks: ``Nq×K`` database indices per query, best first (``K`` = the database size, or ``topk``).
        stages: the rankings of the method's stages, its baseline first (``results.json`` ``stages`` and the paired
            differences to that first stage); empty for a single-stage method.
        info: the sections the method adds to ``results.json`` (``{"rerank": {...}}``, ``{"d2r": {...}}``).
        db_skipped, q_skipped: database / query indices skipped as unreadable (``skip_bad_images=true``).
        time_s: ``{"extract": ..., "search_qe": ...}`` seconds.
        whitening: ``results.json`` ``whitening`` (kind and what it was learned on), ``None``: the configured kind.
        pictures: what the method's own pictures need (passed back to :meth:`Retriever.pictures`).
        scores: ``Nq×K`` similarities of ``ranks`` where the method has them (``None``: not kept).
        index: what the post-processing stages read (e.g. the query and database descriptors), ``None``: nothing.
    """

    ranks: np.ndarray
    stages: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    db_skipped: list[int] = field(default_factory=list)
    q_skipped: list[int] = field(default_factory=list)
    time_s: dict[str, float] = field(default_factory=dict)
    whitening: dict[str, Any] | None = None
    pictures: Any = None
    scores: np.ndarray | None = None
    index: Any = None


@runtime_checkable
class Reranker(Protocol):
    """A post-processing stage (as OML's post-processors): the rankings of the stage before in, new rankings out.
    ``name``: the stage's name in ``results.json`` ``stages``; ``record``: whether it is one of them (and gets its
    paired difference to the first stage) or only changes the rankings (e.g. average QE)."""

    name: str
    record: bool

    def __call__(self, rankings: Rankings) -> Rankings:
        """New rankings (the fields the stage changes replaced, e.g. with ``dataclasses.replace``)."""


def rerank(rankings: Rankings, rerankers: list[Reranker], baseline: str = "initial") -> Rankings:
    """``rankings`` through each reranker in turn; a recorded stage adds its rankings to ``stages`` (the first one
    also adds the input's, as ``baseline``)."""
    for reranker in rerankers:
        out = reranker(rankings)
        if reranker.record:
            out.stages = {**(rankings.stages or {baseline: rankings.ranks}), reranker.name: out.ranks}
        rankings = out
    return rankings


@dataclass
class PictureContext:
    """What a retriever's pictures get: the dataset, the medium (or only) protocol's ground truth, the queries
    to show, the run folder, the image size and ``draw(file name, fn, *args)``, which never fails the run."""

    dataset: Any
    gnd: list[dict]
    shown: list[int]
    out_dir: Path
    image_size: int
    draw: Callable[..., None]


@runtime_checkable
class Retriever(Protocol):
    """A retrieval method as ``eval.py`` runs it (see the module docstring)."""

    name: str

    def check(self, cfg: Any) -> None:
        """Refuse, before any work, settings this method cannot run with (its own section and the run's options)."""

    def rank(self, cfg: Any, dataset: Any, backbone: Any, learned: Any, out_dir: Path, t0: float) -> Rankings:
        """Describe / index ``dataset``'s database and rank it for each query (``learned``: the run's
        :class:`~lit_retrieval.data.provenance.LearnedSets`, which checks every set the method learns on). The
        project's retrievers do it in two steps, ``index(cfg, dataset, backbone, learned, out_dir)`` (the
        database) and ``search(cfg, index, dataset)`` (its queries), then their post-processing stages."""

    def pictures(self, cfg: Any, rankings: Rankings, ctx: PictureContext) -> None:
        """The method's own pictures (optional: the generic PR curve and top-k grid are drawn for every method)."""


class PipelineRetriever:
    """Base of the retrievers that run a paper's own pipeline in two steps, ``index(cfg, dataset, backbone,
    learned, out_dir)`` (the database) and ``search(cfg, index, dataset)`` (its queries), and turn its output into
    :class:`Rankings`; ``check_config(cfg)`` validates the method's settings."""

    check_config: Callable[[Any], None]

    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, cfg: Any) -> None:
        type(self).check_config(cfg)

    def pictures(self, cfg: Any, rankings: Rankings, ctx: PictureContext) -> None:
        """None by default."""


def check_stages(cfg: Any, name: str, offers: dict[str, tuple[str, ...]]) -> None:
    """Refuse a ``qe`` / ``rerank`` kind that method ``name`` does not offer (``offers``: group -> kinds), saying
    which method offers it."""
    for group, kinds in offers.items():
        kind = str(cfg[group].kind)
        if kind not in kinds:
            hint = STAGE_HINTS.get((group, kind), f"unknown {group} kind {kind!r}: use {group}={'|'.join(kinds)}")
            raise ValueError(f"method={name} does not offer {group}={kind}. {hint}")


def register_retriever(name: str, retriever: str | type) -> None:
    """Register a retriever class (or ``"module:attribute"``) under ``name`` (``eval.py method=<name>``)."""
    RETRIEVERS[name] = retriever


def method_names() -> list[str]:
    """Every name ``eval.py method=...`` accepts."""
    return sorted(set(METHODS) | set(RETRIEVERS))


def build_retriever(name: str) -> Retriever:
    """The retriever of ``method.name``: a registered one, or the global-descriptor retriever for a name of the
    descriptor registry."""
    if name in RETRIEVERS:
        target = RETRIEVERS[name]
    elif name in METHODS:
        target = GLOBAL_RETRIEVER
    else:
        raise ValueError(f"unknown method {name!r}: choose one of {method_names()} (eval.py method=...)")
    retriever = resolve(target)(name)
    if not isinstance(retriever, Retriever):
        raise TypeError(f"the retriever registered as {name!r} ({target}) lacks check / rank / pictures")
    return retriever


__all__ = ["GLOBAL_RETRIEVER", "STAGE_HINTS", "PictureContext", "PipelineRetriever", "RETRIEVERS", "Rankings",
           "Reranker", "Retriever", "build_retriever", "check_stages", "method_names", "register_retriever",
           "rerank"]
