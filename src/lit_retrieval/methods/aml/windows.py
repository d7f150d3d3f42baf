"""Candidate windows on a feature map for AML (Tolias et al., Sec. 5), as the reference code ``aml.c`` makes them.

Windows are ``[y0, x0, y1, x1]`` in cells with exclusive ends. The reference enumerates, with step ``t``,
top edges ``y0 = 0, t, 2t, ... ≤ H-2`` and bottom edges ``y1 = y0+2, y0+2+t, ... ≤ H`` (likewise for x), i.e.
windows of at least 2×2 cells, and drops those whose aspect ratio (height / width, in cells) differs from the
query's (height / width, in pixels) by more than a factor ``s``: ``|log(q_ratio / (h / w))| > log(s)``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def _edges(n: int, step: int, min_size: int) -> np.ndarray:
    """All ``(start, end)`` pairs: ``start = 0, step, ... ≤ n - min_size``, ``end = start + min_size + k·step ≤ n``."""
    starts = np.arange(0, n - min_size + 1, step)
    ends = np.arange(min_size, n + 1)
    s, e = np.meshgrid(starts, ends, indexing="ij")
    keep = (e - s >= min_size) & ((e - s - min_size) % step == 0)
    return np.stack([s[keep], e[keep]], 1)


@lru_cache(maxsize=256)
def grid_windows(H: int, W: int, step: int = 1, min_size: int = 2) -> np.ndarray:
    """Every window of the step-``step`` enumeration (``step=1``, ``min_size=1``: all ``O(H²W²)`` windows)."""
    ys, xs = _edges(H, step, min_size), _edges(W, step, min_size)
    yy = np.repeat(ys, len(xs), axis=0)
    xx = np.tile(xs, (len(ys), 1))
    out = np.stack([yy[:, 0], xx[:, 0], yy[:, 1], xx[:, 1]], 1).astype(np.int64)
    out.setflags(write=False)
    return out


def candidate_windows(H: int, W: int, q_ratio: float | None, step: int = 3, max_ratio: float = 1.1,
                      min_size: int = 2) -> np.ndarray:
    """AML's sampled candidates: the step-``step`` windows whose aspect ratio is within a factor ``max_ratio``
    of ``q_ratio`` (query height / width). ``q_ratio=None`` keeps every aspect ratio."""
    w = grid_windows(H, W, step, min_size)
    if q_ratio is None or q_ratio <= 0:
        return w
    sizes, inverse = np.unique(np.stack([w[:, 2] - w[:, 0], w[:, 3] - w[:, 1]], 1), axis=0, return_inverse=True)
    # the reference's own floating-point test (C ``log``, which Python's ``math.log`` is), per distinct size
    limit = math.log(max_ratio)
    keep = np.array([abs(math.log(q_ratio / (h / wd))) <= limit for h, wd in sizes.tolist()], dtype=bool)
    return w[keep[inverse.ravel()]]


def count_all_windows(H: int, W: int, min_size: int = 1) -> int:
    """How many windows exhaustive search evaluates (the denominator of the paper's %W)."""
    ny = (H - min_size + 1) * (H - min_size + 2) // 2
    nx = (W - min_size + 1) * (W - min_size + 2) // 2
    return ny * nx
