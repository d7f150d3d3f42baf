"""Region max-pooling compiled with numba: every region of a feature-map plane from one read of the plane.

:func:`~lit_retrieval.pooling.region_max` on CPU inference tensors runs here (the torch code stays for autograd
and other devices, and gives the same values: a maximum is exact). For each ``H×W`` plane (one channel of one
image, 3 KB at 24×32), the maxima over each distinct ``[y0, y0 + h)`` row band are element-wise maxima of its
contiguous rows (vectorised along ``W``, in a per-thread buffer), and each region's maximum is its band's maximum
over ``[x0, x0 + w)``. Planes run in parallel over the cores (``prange``), so the map is read from memory once and
nothing but the ``P×R`` output is written. A NaN in a region gives NaN, as ``torch.maximum`` does (explicit
comparisons: numba's parallel ufuncs drop NaNs).
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

_PLANES_PER_TASK = 64


@njit(cache=True, parallel=True, boundscheck=False)
def _region_max_planes(x, H, W, band_y0, band_h, reg_band, reg_x0, reg_w, out):  # pragma: no cover - compiled
    P = x.shape[0]
    nb = band_y0.shape[0]
    R = reg_band.shape[0]
    tasks = (P + _PLANES_PER_TASK - 1) // _PLANES_PER_TASK
    for task in prange(tasks):
        acc = np.empty((nb, W), np.float32)  # row-band maxima of the current plane
        for p in range(task * _PLANES_PER_TASK, min(P, (task + 1) * _PLANES_PER_TASK)):
            plane = x[p]
            for b in range(nb):
                y0 = band_y0[b]
                for c in range(W):
                    acc[b, c] = plane[y0 * W + c]
                for y in range(y0 + 1, y0 + band_h[b]):
                    base = y * W
                    for c in range(W):
                        v = plane[base + c]
                        m = acc[b, c]
                        acc[b, c] = v if (v > m or v != v) else m
            for r in range(R):
                b = reg_band[r]
                m = acc[b, reg_x0[r]]
                for c in range(reg_x0[r] + 1, reg_x0[r] + reg_w[r]):
                    v = acc[b, c]
                    m = v if (v > m or v != v) else m
                out[p, r] = m


def region_max_compiled(x: Tensor, boxes: np.ndarray) -> Tensor:
    """``N×C×H×W`` float32 CPU tensor, ``R×4`` integer ``[y0, x0, h, w]`` boxes inside the map -> ``N×R×C``."""
    N, C, H, W = x.shape
    b = np.ascontiguousarray(boxes, dtype=np.int64).reshape(-1, 4)
    if len(b) and ((b[:, 2:] < 1).any() or (b[:, :2] < 0).any() or (b[:, 0] + b[:, 2] > H).any()
                   or (b[:, 1] + b[:, 3] > W).any()):
        bad = b[(b[:, 2:] < 1).any(1) | (b[:, :2] < 0).any(1) | (b[:, 0] + b[:, 2] > H) | (b[:, 1] + b[:, 3] > W)]
        raise ValueError(f"region_max: boxes [y0, x0, h, w] {bad[:3].tolist()} are empty or leave the {H}×{W} map")
    bands, reg_band = np.unique(b[:, [0, 2]], axis=0, return_inverse=True)
    flat = x.detach().contiguous().reshape(N * C, H * W).numpy()
    out = np.empty((N * C, len(b)), np.float32)
    _region_max_planes(flat, H, W, np.ascontiguousarray(bands[:, 0]), np.ascontiguousarray(bands[:, 1]),
                       np.ascontiguousarray(reg_band.reshape(-1), dtype=np.int64), np.ascontiguousarray(b[:, 1]),
                       np.ascontiguousarray(b[:, 3]), out)
    return torch.from_numpy(out).view(N, C, -1).transpose(1, 2)


__all__ = ["region_max_compiled"]
