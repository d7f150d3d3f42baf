"""Exact inner-product search with faiss, chunked over the database so memory stays bounded.

``faiss.knn`` scores one database chunk at a time directly from the caller's array (no index copy) and a
``faiss.ResultHeap`` keeps the running top-k: peak extra memory is one chunk of scores, not a copy of the
database.
"""
from __future__ import annotations

import faiss
import numpy as np

# faiss switches its exact search to BLAS only from 128000 queries on (faiss >= 1.8): with a few hundred
# queries the fallback loop is ~7× slower (benchmarks/search_scale.py). BLAS from 20 queries on.
faiss.cvar.distance_compute_blas_threshold = min(faiss.cvar.distance_compute_blas_threshold, 20)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def search(queries: np.ndarray, db: np.ndarray, k: int | None = None,
           chunk_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database rows by inner product for every query (``k=None``: the full ranking).

    Returns ``(scores, ranks)``, both ``nq × k``, best first. ``db`` may be a read-only memory map: it is
    read chunk by chunk.
    """
    if queries.ndim != 2 or db.ndim != 2 or queries.shape[1] != db.shape[1]:
        raise ValueError(f"search: queries {queries.shape} and database {db.shape} must be 2-D with equal widths")
    n = db.shape[0]
    k = n if k is None else min(int(k), n)
    q = _f32(queries)
    if n <= chunk_size:
        scores, ranks = faiss.knn(q, _f32(db), k, metric=faiss.METRIC_INNER_PRODUCT)
        return scores, ranks
    heap = faiss.ResultHeap(q.shape[0], k, keep_max=True)
    for start in range(0, n, chunk_size):
        chunk = _f32(db[start:start + chunk_size])
        s, i = faiss.knn(q, chunk, min(k, chunk.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(s, i + start)
    heap.finalize()
    return heap.D, heap.I
