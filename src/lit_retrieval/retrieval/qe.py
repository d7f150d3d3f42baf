"""Query expansion on global descriptors: average QE (top-k) and α-QE (Radenović et al.)."""
from __future__ import annotations

import numpy as np


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
    expanded = queries + np.einsum("qk,qkd->qd", w.astype(np.float32), db[top])
    return expanded / (np.linalg.norm(expanded, axis=1, keepdims=True) + 1e-6)
