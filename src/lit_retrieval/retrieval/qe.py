"""Query expansion on global descriptors: average QE (top-k) and α-QE (Radenović et al.), and the stage that
applies it to a :class:`~.interface.Rankings`."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .index import ANNIndex, search_with
from .interface import Rankings
from .store import DescriptorStore


def expand_queries(queries: np.ndarray, db: np.ndarray, ranks: np.ndarray, scores: np.ndarray,
                   k: int = 5, alpha: float = 0.0) -> np.ndarray:
    """New L2-normalised queries ``q + Σ_{i<k} w_i d_{r_i}``.

    ``alpha = 0``: average QE (all weights 1). ``alpha > 0``: α-QE, ``w_i = max(s_i, 0)^α`` with ``s_i`` the
    similarity of the i-th result. ``ranks``/``scores`` are ``nq × ≥k`` search outputs, best first.
    """
    if k < 1:
        return queries
    top = ranks[:, :k]
    w = np.ones(top.shape, np.float32) if alpha == 0 else np.clip(scores[:, :k], 0, None) ** alpha
    w = np.where(top >= 0, w, 0)  # -1: an approximate index found fewer than k results
    expanded = queries + np.einsum("qk,qkd->qd", w.astype(np.float32), db[np.maximum(top, 0)])
    return expanded / (np.linalg.norm(expanded, axis=1, keepdims=True) + 1e-6)


@dataclass
class DescriptorIndex:
    """What the global-descriptor stages read from a :class:`~.interface.Rankings`: the (whitened) query and
    database descriptors the rankings were searched with, and the approximate index they were searched in
    (``None``: exact search)."""

    queries: np.ndarray
    database: np.ndarray | DescriptorStore
    ann: ANNIndex | None = None

    def search(self, queries: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
        return search_with(self.ann, queries, self.database, k)


@dataclass
class QueryExpansion:
    """``qe=avg|alpha`` as a post-processing stage: the expanded queries (:func:`expand_queries`) searched again
    (``topk``: as the first search). Not a recorded stage: ``results.json`` reports the expanded ranking."""

    k: int = 5
    alpha: float = 0.0
    topk: int | None = None
    name: str = "qe"
    record: bool = False

    def __call__(self, rankings: Rankings) -> Rankings:
        index: DescriptorIndex = rankings.index
        q = expand_queries(index.queries, index.database, rankings.ranks, rankings.scores, k=self.k, alpha=self.alpha)
        scores, ranks = index.search(q, self.topk)
        return replace(rankings, ranks=ranks, scores=scores, index=DescriptorIndex(q, index.database, index.ann))
