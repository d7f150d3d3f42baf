"""Scalable search with local similarity (Chen et al., Sec. 3.5, 4.4) and the R-Match baseline (eq. 2).

- :class:`GalleryGrids`: the stored gallery grids, raw float32 or product-quantized (:mod:`.pq`).
- :func:`shortlist`: the top ``K`` gallery images of every query by the global (R-MAC) similarity.
- :func:`local_scores`: ``S_local`` (the "present" probability) and the predicted boxes of one query against
  its shortlist, in batches of gallery images.
- :func:`fused_ranks`: ``S = (1 − w)·S_global + w·S_local`` over the shortlist; the rest of the database follows
  in global order.
- :func:`rmatch_scores`: ``Σ_{x_q} max_{x_g} f_g(x_g)ᵀ f_q(x_q)`` on the same grids.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ...retrieval.interface import Rankings
from .network import LocalSimilarityNet, present_probability
from .pq import GridQuantizer


class GalleryGrids:
    """``N`` gallery grids stored as ``N×L×D`` location vectors (``L = h·w``, row-major), raw or as PQ codes."""

    def __init__(self, vectors: np.ndarray, hw: tuple[int, int], quantizer: GridQuantizer | None = None) -> None:
        N, L, D = vectors.shape
        if L != hw[0] * hw[1]:
            raise ValueError(f"gallery grids of {L} locations do not match the {hw[0]}×{hw[1]} grid")
        self.hw, self.dim, self.n, self.quantizer = tuple(hw), D, N, quantizer
        if quantizer is None:
            self.raw, self.codes = np.ascontiguousarray(vectors, dtype=np.float32), None
        else:
            self.raw, self.codes = None, quantizer.encode(vectors.reshape(-1, D)).reshape(N, L, -1)

    @classmethod
    def from_codes(cls, codes: np.ndarray, hw: tuple[int, int], quantizer: GridQuantizer) -> GalleryGrids:
        """A quantized store from stored ``N×L×code_size`` codes (no float grids needed)."""
        store = cls.__new__(cls)
        store.hw, store.dim, store.n, store.quantizer = tuple(hw), quantizer.dim, len(codes), quantizer
        store.raw, store.codes = None, np.ascontiguousarray(codes, dtype=np.uint8)
        return store

    def __len__(self) -> int:
        return self.n

    @property
    def bytes_per_image(self) -> int:
        return int(self.codes[0].nbytes if self.codes is not None else self.raw[0].nbytes)

    def take(self, indices: Sequence[int] | np.ndarray) -> Tensor:
        """Grids of the given images, ``K×D×h×w`` float32 (decoded when quantized)."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.codes is not None:
            return self.quantizer.decode_grids(self.codes[idx], self.hw)
        g = torch.from_numpy(self.raw[idx])  # K×L×D
        return g.view(len(idx), self.hw[0], self.hw[1], self.dim).permute(0, 3, 1, 2)


def shortlist(s_global: np.ndarray, K: int) -> np.ndarray:
    """``Nq×N`` similarities -> ``Nq×K`` indices of the ``K`` most similar images, best first."""
    K = min(int(K), s_global.shape[1])
    part = np.argpartition(-s_global, K - 1, axis=1)[:, :K] if K < s_global.shape[1] else \
        np.tile(np.arange(s_global.shape[1]), (len(s_global), 1))
    order = np.argsort(-np.take_along_axis(s_global, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


@torch.inference_mode()
def local_scores(net: LocalSimilarityNet, query: Tensor, gallery: GalleryGrids, indices: np.ndarray,
                 batch: int = 64, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """One query grid ``D×q×q`` against ``gallery[indices]``: ``(S_local (K,), box codes K×4)``."""
    probs, codes = [], []
    q = query.to(device)[None]
    for s in range(0, len(indices), batch):
        g = gallery.take(indices[s:s + batch]).to(device)
        logits, c = net(q, g)  # one query broadcast against the batch of galleries
        probs.append(present_probability(logits).float().cpu())
        codes.append(c.float().cpu())
    if not probs:
        return np.zeros(0, np.float32), np.zeros((0, 4), np.float32)
    return torch.cat(probs).numpy(), torch.cat(codes).numpy()


def fused_ranks(s_global: np.ndarray, short: np.ndarray, s_local: np.ndarray, w: float) -> np.ndarray:
    """Full rankings ``Nq×N``: the shortlist ``short`` (``Nq×K``) ordered by ``(1 − w)·S_global + w·S_local``,
    then every other image in global order."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"fusion weight w={w} must lie in [0, 1] (1: local similarity only)")
    fused = (1.0 - w) * np.take_along_axis(s_global, short, 1) + w * s_local
    score = s_global.astype(np.float64) - 4.0  # both similarities lie in [-1, 1]: shortlisted images come first
    np.put_along_axis(score, short, fused.astype(np.float64) + 4.0, 1)
    return np.argsort(-score, axis=1, kind="stable")


@dataclass
class LocalScores:
    """What :class:`Fusion` reads from a :class:`~lit_retrieval.retrieval.interface.Rankings` (its ``index``): the
    global similarities (``Nq×N``), the shortlist (``Nq×K``) and the shortlist's ``S_local`` (``Nq×K``)."""

    s_global: np.ndarray
    short: np.ndarray
    s_local: np.ndarray


@dataclass
class Fusion:
    """The fusion of Sec. 4.4 as a post-processing stage on the global rankings: the shortlist re-ordered by
    ``(1 − w)·S_global + w·S_local`` (:func:`fused_ranks`; ``w = 1``: local similarity alone)."""

    w: float = 0.9
    name: str = "local_global"
    record: bool = True

    def __call__(self, rankings: Rankings) -> Rankings:
        s: LocalScores = rankings.index
        return replace(rankings, ranks=fused_ranks(s.s_global, s.short, s.s_local, self.w), scores=None)


@torch.inference_mode()
def rmatch_scores(queries: Tensor, gallery: GalleryGrids, batch: int = 64,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """R-Match (eq. 2) of ``Nq×D×q×q`` query grids against every gallery grid: ``Nq×N``."""
    Q = queries.to(device).flatten(2)  # Nq×D×Lq
    out = []
    for s in range(0, len(gallery), batch):
        G = gallery.take(np.arange(s, min(s + batch, len(gallery)))).to(device).flatten(2)  # n×D×Lg
        sims = torch.einsum("qda,ndb->qnab", Q, G)  # Nq×n×Lq×Lg
        out.append(sims.amax(3).sum(2).float().cpu())
    return torch.cat(out, 1).numpy() if out else np.zeros((len(Q), 0), np.float32)
