"""faiss indexes over a descriptor store: exact (``search.index=flat``), IVF-PQ and HNSW (approximate).

``flat`` is :func:`~.search.search` (exact inner products, the store read block by block). ``ivfpq`` is faiss's
``IndexIVFPQ`` (inner product): a coarse k-means quantizer of ``nlist`` cells and product quantization of each
vector into ``M`` codes of ``nbits`` bits, both learned on a *training set disjoint from the evaluated images*
(``search.train.dataset``, checked by content like every learned piece; the evaluated database is only added to
it, block by block); ``nprobe`` cells are visited per query. ``hnsw`` is faiss's ``IndexHNSWFlat`` (inner
product, ``hnsw_M`` links per node, ``ef_search`` at query time): nothing learned, the full vectors in memory.
An approximate index returns the top ``search.k`` per query (the rest of the ranking is not computed, so that
positives beyond it count as missed) and the run reports its recall@100 against the exact search.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from .search import search as exact_search
from .store import DescriptorStore, as_store

INDEXES = ("flat", "ivfpq", "hnsw")
RECALL_AT = 100


@dataclass
class IndexSettings:
    """``search.*`` of ``eval.py`` (``conf/eval.yaml``)."""

    index: str = "flat"
    k: int = 1000
    nlist: int | str = "auto"
    M: int | str = "auto"
    nbits: int | str = "auto"
    nprobe: int = 16
    hnsw_M: int = 32
    ef_search: int = 128
    recall_vs_exact: bool = True

    @classmethod
    def from_cfg(cls, cfg: Any) -> IndexSettings:
        s = cfg.get("search") if cfg is not None else None
        if s is None:
            return cls()
        keys = cls.__dataclass_fields__
        return cls(**{k: s[k] for k in keys if k in s})

    def check(self) -> None:
        from ..options import OptionError

        if self.index not in INDEXES:
            raise OptionError("search.index", self.index, "not an index", f"pass one of {'|'.join(INDEXES)}")
        for name in ("k", "nprobe", "hnsw_M", "ef_search"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise OptionError(f"search.{name}", v, "expected a positive integer", f"pass e.g. search.{name}="
                                  f"{IndexSettings.__dataclass_fields__[name].default}")
        for name in ("nlist", "M", "nbits"):
            v = getattr(self, name)
            if v != "auto" and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise OptionError(f"search.{name}", v, "expected a positive integer or auto",
                                  f"pass search.{name}=auto")


def ivfpq_shape(s: IndexSettings, n_db: int, n_train: int, dim: int) -> tuple[int, int, int]:
    """``(nlist, M, nbits)``: the set values, else ``nlist = 4·√N`` (at most one cell per 39 training vectors,
    faiss's minimum), ``M`` the largest divisor of ``D`` up to ``D / 8`` (8-dimensional sub-vectors, e.g. 64 codes
    of 2048-D), ``nbits = 8`` (fewer when the training set has under 256·39 vectors: ``2^nbits`` centroids per
    sub-quantizer need that many)."""
    nlist = s.nlist if s.nlist != "auto" else int(max(1, min(round(4 * math.sqrt(max(n_db, 1))), n_train // 39)))
    if s.M != "auto":
        M = int(s.M)
    else:
        M = max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)
    nbits = s.nbits if s.nbits != "auto" else int(max(1, min(8, math.floor(math.log2(max(2, n_train // 39))))))
    if dim % M:
        from ..options import OptionError

        raise OptionError("search.M", M, f"the descriptor width {dim} is not a multiple of it",
                          f"pass a divisor of {dim}, or search.M=auto")
    return int(nlist), int(M), int(nbits)


@dataclass
class ANNIndex:
    """An approximate faiss index over a store: ``search(queries, k)`` -> ``(scores, ranks)`` (``nq × k``, best
    first; ``-1`` where fewer than ``k`` were found), and what ``results.json`` reports of it."""

    index: Any
    settings: IndexSettings
    info: dict[str, Any] = field(default_factory=dict)

    def search(self, queries: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
        k = min(int(k or self.settings.k), self.index.ntotal)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def build_index(settings: IndexSettings, database: np.ndarray | DescriptorStore,
                train: np.ndarray | None = None) -> ANNIndex | None:
    """The approximate index of ``settings.index`` over ``database`` (``None`` for ``flat``), the database added
    block by block; IVF-PQ is first trained on ``train`` (never the database)."""
    if settings.index == "flat":
        return None
    db = as_store(database)
    n, dim = db.shape
    t0 = time.perf_counter()
    if settings.index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = settings.ef_search
        info = {"hnsw_M": settings.hnsw_M, "ef_search": settings.ef_search, "bytes_per_image": dim * 4}
    else:
        if train is None or len(train) == 0:
            raise ValueError("search.index=ivfpq learns its quantizers on a training set: none was given")
        nlist, M, nbits = ivfpq_shape(settings, n, len(train), dim)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, M, nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        index.nprobe = min(settings.nprobe, nlist)
        info = {"nlist": nlist, "M": M, "nbits": nbits, "nprobe": int(index.nprobe),
                "n_train": int(len(train)), "bytes_per_image": int(math.ceil(M * nbits / 8)) + 8}
    for _, block in db.blocks():
        index.add(block)
    info["build_s"] = round(time.perf_counter() - t0, 3)
    return ANNIndex(index, settings, {"index": settings.index, "k": settings.k, **info})


def recall_at(approx: np.ndarray, exact: np.ndarray, k: int = RECALL_AT) -> float:
    """Mean over queries of the share of the exact top-``k`` found in the approximate top-``k``."""
    k = min(k, approx.shape[1], exact.shape[1])
    hits = [len(np.intersect1d(a[:k][a[:k] >= 0], e[:k])) / k for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else float("nan")


def search_with(ann: ANNIndex | None, queries: np.ndarray, database: np.ndarray | DescriptorStore,
                k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``ann``'s search, else the exact one."""
    if ann is None:
        return exact_search(queries, database, k=k)
    return ann.search(queries, k)


def measure_recall(ann: ANNIndex, queries: np.ndarray, database: np.ndarray | DescriptorStore,
                   approx: np.ndarray | None = None, seconds: float | None = None) -> dict[str, Any]:
    """recall@100 of ``ann`` against the exact search of the same queries, and both searches' time per query.
    ``approx`` / ``seconds``: the run's own ranking by ``ann`` (at least 100 per query where the database has them)
    and its time, so that it is not searched twice."""
    if approx is None or approx.shape[1] < min(RECALL_AT, ann.index.ntotal):
        t0 = time.perf_counter()
        _, approx = ann.search(queries, RECALL_AT)
        seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, exact = exact_search(queries, database, k=RECALL_AT)
    t_exact = time.perf_counter() - t0
    nq = max(1, len(queries))
    return {f"recall_at_{RECALL_AT}_vs_exact": round(recall_at(approx, exact), 4),
            "ms_per_query": round(1e3 * float(seconds) / nq, 3), "exact_ms_per_query": round(1e3 * t_exact / nq, 3)}


__all__ = ["ANNIndex", "INDEXES", "IndexSettings", "build_index", "ivfpq_shape", "measure_recall",
           "recall_at", "search_with"]
