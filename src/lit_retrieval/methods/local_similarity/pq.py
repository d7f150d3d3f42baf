"""Product quantization of the gallery's per-location features (Chen et al., Sec. 3.5 "Scalable storage").

Each ``D``-dimensional location vector is split into ``M`` sub-vectors; faiss's ``ProductQuantizer`` learns
``2^nbits`` (256) k-means centres per sub-space and stores every sub-vector as the index of its nearest centre:
``M·nbits/8`` bytes per location instead of ``4·D`` (``D = 2048, M = 128``: 64× smaller, the paper's setting).
Scoring decodes the codes back to the centres (:meth:`GridQuantizer.decode_grids`).
"""
from __future__ import annotations

import logging

import faiss
import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)


class GridQuantizer:
    """faiss product quantizer for ``N×D×h×w`` feature grids (one code per location)."""

    def __init__(self, dim: int, M: int, nbits: int = 8) -> None:
        if M < 1 or dim % M:
            raise ValueError(f"product quantization: M={M} sub-vectors must divide the feature dimension {dim} "
                             f"(choose M among {[m for m in (8, 16, 32, 64, 128, 256) if dim % m == 0]})")
        if not 1 <= nbits <= 8:
            raise ValueError(f"product quantization: nbits={nbits} must lie in 1..8 (codes are stored as bytes)")
        self.dim, self.M, self.nbits = int(dim), int(M), int(nbits)
        self.pq = faiss.ProductQuantizer(self.dim, self.M, self.nbits)
        self.trained = False

    # -- learning and state -------------------------------------------------------------------------
    @classmethod
    def learn(cls, vectors: np.ndarray, M: int, nbits: int = 8, seed: int = 0,
              max_train: int = 100_000) -> GridQuantizer:
        """k-means per sub-space on (at most ``max_train``, a seeded sample of) the ``n×D`` location vectors."""
        X = np.ascontiguousarray(vectors, dtype=np.float32)
        q = cls(X.shape[1], M, nbits)
        if len(X) > max_train:
            X = X[np.sort(np.random.default_rng(seed).choice(len(X), max_train, replace=False))]
        if len(X) < q.pq.ksub:
            raise ValueError(f"product quantization: {len(X)} training vectors for {q.pq.ksub} centres per "
                             "sub-space; use more gallery images (or fewer bits)")
        if len(X) < 39 * q.pq.ksub:
            log.warning("product quantization learned from %d vectors (faiss wants >= %d for %d centres)",
                        len(X), 39 * q.pq.ksub, q.pq.ksub)
        q.pq.cp.seed = int(seed)
        q.pq.cp.verbose = False
        q.pq.train(X)
        q.trained = True
        return q

    @property
    def centroids(self) -> np.ndarray:
        """``M × 2^nbits × D/M`` centres."""
        return faiss.vector_to_array(self.pq.centroids).reshape(self.M, self.pq.ksub, self.pq.dsub)

    def state_dict(self) -> dict[str, Tensor]:
        return {"dim": torch.tensor(self.dim), "M": torch.tensor(self.M), "nbits": torch.tensor(self.nbits),
                "centroids": torch.from_numpy(self.centroids.copy())}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> GridQuantizer:
        q = cls(int(state["dim"]), int(state["M"]), int(state["nbits"]))
        faiss.copy_array_to_vector(np.ascontiguousarray(state["centroids"].numpy(), np.float32).ravel(),
                                   q.pq.centroids)
        q.trained = True
        return q

    # -- codes --------------------------------------------------------------------------------------
    def bytes_per_vector(self) -> int:
        return int(self.pq.code_size)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """``n×D`` float -> ``n×code_size`` uint8 (nearest centre per sub-vector)."""
        self._check()
        return self.pq.compute_codes(np.ascontiguousarray(vectors, dtype=np.float32))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """``n×code_size`` uint8 -> ``n×D`` float32 (the centres)."""
        self._check()
        return self.pq.decode(np.ascontiguousarray(codes, dtype=np.uint8))

    def encode_grids(self, grids: Tensor) -> np.ndarray:
        """``N×D×h×w`` -> ``N×(h·w)×code_size`` codes (row-major locations)."""
        N, D, h, w = grids.shape
        flat = grids.detach().float().cpu().permute(0, 2, 3, 1).reshape(-1, D).numpy()
        return self.encode(flat).reshape(N, h * w, -1)

    def decode_grids(self, codes: np.ndarray, hw: tuple[int, int]) -> Tensor:
        """``N×(h·w)×code_size`` codes -> ``N×D×h×w`` decoded grids."""
        N = codes.shape[0]
        flat = self.decode(codes.reshape(-1, codes.shape[-1]))
        return torch.from_numpy(flat).view(N, hw[0], hw[1], self.dim).permute(0, 3, 1, 2).contiguous()

    def roundtrip(self, grids: Tensor) -> Tensor:
        """Quantize and decode (what scoring sees from a stored gallery), on the grids' device and dtype."""
        out = self.decode_grids(self.encode_grids(grids), tuple(grids.shape[-2:]))
        return out.to(device=grids.device, dtype=grids.dtype)

    def _check(self) -> None:
        if not self.trained:
            raise RuntimeError("GridQuantizer used before it was learned: call GridQuantizer.learn(vectors, M)")
