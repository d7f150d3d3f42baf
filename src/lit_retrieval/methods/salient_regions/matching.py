"""Region-to-region matching (Jeong et al., Sec. 4): image similarity is the best cosine similarity over all
pairs of their region descriptors (eq. 7); regional query expansion averages the best-matching region of the
top results (eq. 8).

Every image keeps its regions in a padded ``N×M×D`` array with an ``N×M`` validity mask (M = 2^L at most),
so scoring a query set against a database is one batched product over all region vectors — ``M_q × M_t``
similarities per pair — followed by a masked max; nothing loops over images or regions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...pooling import l2n


@dataclass
class RegionSet:
    """Region descriptors of ``N`` images: ``vectors`` ``N×M×D`` (L2-normalised rows), ``valid`` ``N×M``."""

    vectors: np.ndarray
    valid: np.ndarray

    def __post_init__(self) -> None:
        if self.vectors.ndim != 3 or self.valid.shape != self.vectors.shape[:2]:
            raise ValueError(f"RegionSet: vectors must be N×M×D and valid N×M, got {self.vectors.shape} and "
                             f"{self.valid.shape}")

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def counts(self) -> np.ndarray:
        return self.valid.sum(1)

    def select(self, slots: np.ndarray) -> "RegionSet":
        """One region per image: ``slots`` ``N`` (region index per image, ``-1``: none) -> ``N×1×D``."""
        s = np.maximum(slots, 0)
        rows = np.arange(len(self))
        return RegionSet(self.vectors[rows, s][:, None], (self.valid[rows, s] & (slots >= 0))[:, None])


def region_similarity(q: RegionSet, db: RegionSet, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 7 for every (query, database image): ``max_{m, m'} <q_m, t_m'>`` over valid regions.

    Returns ``(scores, best)``, both ``n_q × n_db``: ``best`` is the database region (slot) of the best pair.
    An image without any valid region scores ``-inf``."""
    if q.vectors.shape[2] != db.vectors.shape[2]:
        raise ValueError(f"region_similarity: query regions are {q.vectors.shape[2]}-D, database regions "
                         f"{db.vectors.shape[2]}-D: describe both with the same method settings")
    Q = torch.from_numpy(np.ascontiguousarray(q.vectors, np.float32))
    qv = torch.from_numpy(q.valid)
    nq, Mq, D = Q.shape
    n, Mt = len(db), db.vectors.shape[1]
    scores = np.empty((nq, n), np.float32)
    best = np.empty((nq, n), np.int64)
    for s in range(0, n, chunk):
        T = torch.from_numpy(np.ascontiguousarray(db.vectors[s:s + chunk], np.float32))
        tv = torch.from_numpy(db.valid[s:s + chunk])
        sim = (Q.reshape(-1, D) @ T.reshape(-1, D).T).view(nq, Mq, len(T), Mt).permute(0, 2, 1, 3)
        ok = qv[:, None, :, None] & tv[None, :, None, :]
        sim = sim.masked_fill(~ok, float("-inf")).reshape(nq, len(T), Mq * Mt)
        v, i = sim.max(2)
        scores[:, s:s + chunk], best[:, s:s + chunk] = v.numpy(), (i % Mt).numpy()
    return scores, best


def rank(scores: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ranks)`` of the top ``k`` (all when ``None``) per query, best first (stable on ties)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def regional_query_expansion(db: RegionSet, ranks: np.ndarray, best: np.ndarray, n_qe: int = 10) -> RegionSet:
    """Eq. 8's new query: the mean of the best-matching region descriptors of the top ``n_qe`` results,
    L2-normalised, as a single region per query (``ranks`` and ``best`` from the first search)."""
    if n_qe < 1:
        raise ValueError(f"regional QE: qe.k must be >= 1, got {n_qe}")
    top = ranks[:, :n_qe]
    slots = np.take_along_axis(best, top, 1)
    v = db.vectors[top, slots]  # nq × n_qe × D
    ok = db.valid[top, slots][..., None]
    mean = l2n(torch.from_numpy((v * ok).sum(1).astype(np.float32))).numpy()
    return RegionSet(mean[:, None], ok.any(1))
