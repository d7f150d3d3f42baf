"""Exact inner-product search with faiss, chunked over the database so memory stays bounded.

``faiss.knn`` scores one database chunk at a time directly from the caller's array (no index copy) and a
``faiss.ResultHeap`` keeps the running top-k: peak extra memory is one chunk of scores, not a copy of the
database.
"""
from __future__ import annotations

import faiss
import numpy as np

from .store import DescriptorStore

# faiss switches its exact search to BLAS only from 128000 queries on (faiss >= 1.8): with a few hundred
# queries the fallback loop is ~7× slower (benchmarks/search_scale.py). BLAS from 20 queries on.
faiss.cvar.distance_compute_blas_threshold = min(faiss.cvar.distance_compute_blas_threshold, 20)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def search(queries: np.ndarray, db: np.ndarray | DescriptorStore, k: int | None = None,
           chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database rows by inner product for every query (``k=None``: the full ranking).

    Returns ``(scores, ranks)``, both ``nq × k``, best first. ``db`` is an array (a read-only memory map is read
    ``chunk_size`` rows at a time, 65536 by default) or a :class:`~.store.DescriptorStore` (read block by block:
    the memory in use is one block of rows, its scores and the running top-``k``).
    """
    if queries.ndim != 2 or db.ndim != 2 or queries.shape[1] != db.shape[1]:
        raise ValueError(f"search: queries {queries.shape} and database {db.shape} must be 2-D with equal widths")
    n = db.shape[0]
    k = n if k is None else min(int(k), n)
    q = _f32(queries)
    if isinstance(db, DescriptorStore):
        blocks = db.blocks(chunk_size)
    else:
        step = chunk_size or 65536
        if n <= step:
            return faiss.knn(q, _f32(db), k, metric=faiss.METRIC_INNER_PRODUCT)
        blocks = ((s, _f32(db[s:s + step])) for s in range(0, n, step))
    heap = faiss.ResultHeap(q.shape[0], k, keep_max=True)
    for start, block in blocks:
        s, i = faiss.knn(q, block, min(k, block.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(s, i + start)
        del block
    heap.finalize()
    return heap.D, heap.I
