"""AML re-ranking compiled with numba: one fused pass per database image, images in parallel over the cores.

Per image, in one thread and its reused buffers: the stored 1-byte codes are decoded into channels-last levels,
the levels' ``α``-th powers (a 9-entry table) are prefix-summed into the float64 integral image, the AML
candidates are scored and the best one refined by ``aml.c``'s coordinate descent, and the best window's
descriptor regions (the whole window for MAC, its R-MAC grid otherwise) are max-pooled from the same integral
image. Nothing of an image is written to memory twice and no integral image outlives its image.

It computes exactly what the torch reference does (:func:`~.integral.power_integral`,
:func:`~.aml.localize`, :func:`~.rerank.window_descriptors`): the same float32 powers, the same float64 prefix
sums added in the same order (bit-identical integral images), the same candidates, moves, acceptance rule and
counts. Two things differ within float tolerance: the ``α``-th root is an integer-exponent seed plus Newton
steps (relative error 3e-15 against ``pow``'s last-bit rounding; the float32 values it rounds to are the same
but for one in ~10^7), and the float64 cosine sums in another order than ``bmm``'s. The tests check boxes, scores
and rankings against the reference on random and on real maps.

An integral image lives only while its image is processed: one is ``8·(H+1)·(W+1)·C`` bytes (13.5 MB for
2048×24×32), so a run's thousand would hold 13.5 GB. It is shared instead by every query whose short-list holds the
image (:func:`localize_shared`: the queries are localized while it is in cache, each pair exactly as alone).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import numba
import numpy as np
import torch
from numba import njit, prange
from numba.typed import List

from .integral import _AML_C_POWERS, _ipow_
from .rerank import _window_regions
from .windows import candidate_windows

# v^(-1/10) from the bits of v read as a number (~ 2^52 (log2 v + 1023)): 1.1·bits(1.0) − bits(v) / 10, shifted by
# 0.0515·2^52 to centre the error of reading bits as a logarithm (seed within 3%: 5 Newton steps reach 3e-15)
_SEED = 1.1 * float(0x3FF0000000000000) - 0.0515 * 2.0 ** 52
ROOT_CODES = {"exact": 0, "aml_c": 1}
NEWTON_STEPS = 5  # relative error of v^(1/10): 30% -> 5% -> 1.4e-3 -> 1.3e-6 -> 1e-12 -> 3e-15
# (edge index, direction) in aml.c's order: top edge up, top down, bottom up, bottom down, left ..., right ...
_MOVES = np.array([(0, -1), (0, 1), (2, -1), (2, 1), (1, -1), (1, 1), (3, -1), (3, 1)], np.int64)


def power_table(alpha: float, root: str) -> np.ndarray:
    """``level^α`` for the stored levels 0..8 as the reference takes them: float32 powers (binary
    exponentiation for an integer α), float64 for ``root="aml_c"`` (exact for integer levels)."""
    dtype = torch.float64 if root == "aml_c" else torch.float32
    x = torch.arange(9, dtype=dtype)
    if float(alpha).is_integer() and alpha >= 1:
        _ipow_(x, int(alpha), torch.empty_like(x))
    else:
        x.pow_(alpha)
    return x.double().numpy()


@functools.lru_cache(maxsize=64)
def region_table(H: int, W: int, L: int, whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """The window descriptor's regions for every window size ``h×w`` of an ``H×W`` map, relative to the window:
    ``(regions R×4 [y0, x0, y1, x1], index (H+1)×(W+1)×2 [start, count])``. ``L = 0``: the whole window only
    (MAC)."""
    rows, index = [], np.zeros((H + 1, W + 1, 2), np.int64)
    start = 0
    for h in range(1, H + 1):
        for w in range(1, W + 1):
            g = np.array([[0, 0, h, w]], np.int64) if L == 0 else _window_regions(h, w, L, whole)
            rows.append(g)
            index[h, w] = (start, len(g))
            start += len(g)
    return np.ascontiguousarray(np.concatenate(rows).astype(np.int64)), index


# ------------------------------------------------------------------------------------------------ kernels

@njit(cache=True, nogil=True)
def _decode(codes, lv, HW, C):
    """1-byte codes of a ``C×H×W`` level array (C order) -> ``lv`` channels-last (``H·W·C``), zeros elsewhere."""
    lv[:] = 0
    pos = -1
    for k in range(codes.size):
        b = codes[k]
        run = b >> 3
        if run == 31:
            pos += 31
        else:
            pos += run + 1
            c = pos // HW
            lv[(pos - c * HW) * C + c] = (b & 7) + 1


@njit(cache=True, nogil=True)
def _add_row(S, col, y, W, C, levels, table, values):
    """Row ``y`` of the integral image, added as the reference adds it (down the rows into ``col``, then along the
    row): the row's channels-last values are ``table[levels]`` or, with an empty ``table``, ``values``."""
    W1C = (W + 1) * C
    base = (y + 1) * W1C
    S[base:base + C] = 0.0
    lookup = table.size > 0
    for x in range(W):
        t0, o = x * C, base + (x + 1) * C
        acc, out, left = col[t0:t0 + C], S[o:o + C], S[o - C:o]
        for c in range(C):
            t = acc[c] + (table[levels[t0 + c]] if lookup else values[t0 + c])
            acc[c] = t
            out[c] = left[c] + t


@njit(cache=True, nogil=True)
def _integral_levels(lv, table, H, W, C, col, S):
    """Integral image of ``table[levels]`` (channels-last levels ``lv``), bit-identical to the reference's."""
    S[:(W + 1) * C] = 0.0
    col[:] = 0.0
    empty = np.zeros(0)
    for y in range(H):
        _add_row(S, col, y, W, C, lv[y * W * C:(y + 1) * W * C], table, empty)


@njit(cache=True, nogil=True)
def _power(v, alpha, alpha_int, bits):
    """``v^α`` as the reference's ``_ipow_`` takes it (binary exponentiation in ``v``'s type for an integer α)."""
    if alpha_int == 0:
        return v ** alpha
    p = v
    for b in range(bits - 1, -1, -1):  # the bits of α after the leading one
        p = p * p
        if (alpha_int >> b) & 1:
            p = p * v
    return p


@njit(cache=True, nogil=True)
def _integral_dense(xmap, power, H, W, C, col, S):
    """The same from a ``C×H×W`` float32 map: the powers taken per value in float32 (``power = (α, integer α or 0,
    float64)``: float64 powers, as the reference for ``root="aml_c"``), one row at a time."""
    alpha, alpha_int, f64 = power
    bits = 0
    n = alpha_int
    while n > 1:
        bits += 1
        n >>= 1
    a32 = np.float32(alpha)
    S[:(W + 1) * C] = 0.0
    col[:] = 0.0
    row = np.empty(W * C)
    none_levels, no_table = np.zeros(0, np.uint8), np.zeros(0)
    for y in range(H):
        for x in range(W):
            for c in range(C):
                v = xmap[c, y, x]
                row[x * C + c] = _power(np.float64(v), alpha, alpha_int, bits) if f64 else \
                    np.float64(_power(v, a32, alpha_int, bits))
        _add_row(S, col, y, W, C, none_levels, no_table, row)


@njit(cache=True, nogil=True)
def _window_max(S, W1C, C, box, f, rb, search):
    """``f ← (Σ_window x^α)^(1/α)`` per channel of window ``box`` (float64). ``search``'s root: 0 exact (for α = 10
    an integer seed from the exponent bits and Newton steps on ``v^(-1/10)``, no division), 1 aml.c's table."""
    root, alpha, pow_table = search[4], search[5], search[6]
    y0, x0, y1, x1 = box[0], box[1], box[2], box[3]
    a, b, c_, d = y1 * W1C + x1 * C, y0 * W1C + x1 * C, y1 * W1C + x0 * C, y0 * W1C + x0 * C
    A, B, Cc, D = S[a:a + C], S[b:b + C], S[c_:c_ + C], S[d:d + C]  # slices: the loops below vectorise
    for c in range(C):
        f[c] = max(A[c] - B[c] - Cc[c] + D[c], 0.0)
    if root == 1:
        for c in range(C):
            v = f[c]
            j = np.searchsorted(pow_table, v)
            f[c] = 0.0 if v <= 0.0 else (255.0 if j >= 255 else float(j - j % 2))
    elif alpha == 10.0:
        fb = f.view(np.int64)
        for c in range(C):
            rb[c] = np.int64(_SEED - np.float64(fb[c]) * 0.1)
        r0 = rb.view(np.float64)
        for c in range(C):
            v, r = f[c], r0[c]
            for _ in range(NEWTON_STEPS):
                r2 = r * r
                r4 = r2 * r2
                r = r * (11.0 - v * (r4 * r4 * r2)) * 0.1
            r2 = r * r
            r4 = r2 * r2
            f[c] = v * (r4 * r4 * r) if v > 0.0 else 0.0
    else:
        inv = 1.0 / alpha
        for c in range(C):
            f[c] = f[c] ** inv


@njit(cache=True, nogil=True)
def _score(S, W1C, C, box, f, rb, search):
    """Cosine similarity between the unit query (float32 values) and the window's approximate MAC (float32
    values, as the reference's), accumulated in float64; an all-zero window scores 0."""
    _window_max(S, W1C, C, box, f, rb, search)
    dot, n2 = _dot_norm(f, search[1], C)
    n = math.sqrt(n2)
    return dot / (n if n > 1e-12 else 1e-12)


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _dot_norm(f, q, C):
    """``(Σ g·q, Σ g²)`` over the float32 values ``g`` of ``f`` (reassociated: vectorised sums)."""
    dot = 0.0
    n2 = 0.0
    for c in range(C):
        g = np.float64(np.float32(f[c]))
        dot += g * q[c]
        n2 += g * g
    return dot, n2


@njit(cache=True, nogil=True)
def _localize(S, geom, search, f, rb, box, new):
    """AML on one integral image: the best candidate (the first of equals), then aml.c's refinement (each of the
    eight edge moves accepted at once when it scores strictly better; a step's rounds stop when none is).
    Returns ``(score, evaluated)``; the window is left in ``box``."""
    H, W, C = geom
    cands, refine_step, refine_iter = search[0], search[2], search[3]
    W1C = (W + 1) * C
    best = -np.inf
    for k in range(cands.shape[0]):
        s = _score(S, W1C, C, cands[k], f, rb, search)
        if s > best:
            best = s
            box[:] = cands[k]
    evaluated = cands.shape[0]
    limit = (H, W, H, W)
    for step in range(refine_step, 0, -1):
        for _ in range(refine_iter):
            changed = False
            evaluated += 8
            for m in range(8):
                edge, sign = _MOVES[m, 0], _MOVES[m, 1]
                new[:] = box
                new[edge] += sign * step
                if edge < 2:  # a start edge: stays >= 0 and 2 cells before the end
                    ok = new[edge] >= 0 and new[edge + 2] - new[edge] >= 2
                else:  # an end edge: stays <= the map size and 2 cells after the start
                    ok = new[edge] <= limit[edge] and new[edge] - new[edge - 2] >= 2
                if ok:
                    s = _score(S, W1C, C, new, f, rb, search)
                    if s > best:
                        best = s
                        box[:] = new
                        changed = True
            if not changed:
                break
    return best, evaluated


@njit(cache=True, nogil=True)
def _finish(i, S, geom, search, desc, f, rb, outs):
    """Localize image ``i`` on its integral image, then max-pool its best window's descriptor regions (exact
    root, as the reference's window descriptors) into ``outs``."""
    H, W, C = geom
    regions, index = desc
    boxes, scores, evaluated, pooled, count = outs
    box, new = np.zeros(4, np.int64), np.zeros(4, np.int64)
    s, e = _localize(S, geom, search, f, rb, box, new)
    boxes[i], scores[i], evaluated[i] = box, s, e
    exact = (search[0], search[1], search[2], search[3], 0, search[5], search[6])
    h, w = box[2] - box[0], box[3] - box[1]
    start, n = index[h, w, 0], index[h, w, 1]
    region = np.zeros(4, np.int64)
    for r in range(n):
        region[0], region[1] = box[0] + regions[start + r, 0], box[1] + regions[start + r, 1]
        region[2], region[3] = box[0] + regions[start + r, 2], box[1] + regions[start + r, 3]
        _window_max(S, (W + 1) * C, C, region, f, rb, exact)
        for c in range(C):
            pooled[i, r, c] = np.float32(f[c])
    count[i] = n


@njit(cache=True, parallel=True)
def _run_dense(payloads, geom, power, search, desc, bufs, outs):
    """Images in parallel (thread ``t`` takes images ``t, t + T, ...``) from raw float32 ``C×H×W`` maps (powers
    taken per value): integral image, localize, pool."""
    H, W, C = geom
    _, col, S, f, rb = bufs
    T = S.shape[0]
    for t in prange(T):
        for i in range(t, len(payloads), T):
            _integral_dense(payloads[i], power, H, W, C, col[t], S[t])
            _finish(i, S[t], geom, search, desc, f[t], rb[t], outs)


@njit(cache=True, parallel=True)
def _run_shared(payloads, geom, table, shared, desc, bufs, outs):
    """Images in parallel; each image is decoded and its integral image built once, then localized and pooled for
    every query whose short-list holds it (pairs ``ptr[i]:ptr[i + 1]``, written at the pair's index)."""
    H, W, C = geom
    ptr, pair_query, cand_ptr, cands, Q, refine_step, refine_iter, root, alpha, pow_table = shared
    lv, col, S, f, rb = bufs
    T = lv.shape[0]
    for t in prange(T):
        for i in range(t, len(payloads), T):
            _decode(payloads[i], lv[t], H * W, C)
            _integral_levels(lv[t], table, H, W, C, col[t], S[t])
            for p in range(ptr[i], ptr[i + 1]):
                qi = pair_query[p]
                search = (cands[cand_ptr[qi]:cand_ptr[qi + 1]], Q[qi], refine_step, refine_iter, root, alpha,
                          pow_table)
                _finish(p, S[t], geom, search, desc, f[t], rb[t], outs)


# ------------------------------------------------------------------------------------------------ driver

class Buffers:
    """Per-thread buffers of the compiled pass, kept for all the queries of a run."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.arrays: tuple[np.ndarray, ...] = ()

    def get(self, T: int, C: int, H: int, W: int) -> tuple[np.ndarray, ...]:
        if self.shape != (T, C, H, W):
            self.arrays = (np.zeros((T, H * W * C), np.uint8), np.zeros((T, W * C), np.float64),
                           np.zeros((T, (H + 1) * (W + 1) * C), np.float64), np.zeros((T, C), np.float64),
                           np.zeros((T, C), np.int64))
            self.shape = (T, C, H, W)
        return self.arrays


def localize_and_pool(payloads: Sequence[Any], shape: tuple[int, int, int], q_mac: torch.Tensor,
                      q_ratio: float | None, aml: Any, regions: tuple[np.ndarray, np.ndarray],
                      buffers: Buffers) -> dict[str, np.ndarray]:
    """AML for images of one ``(C, H, W)``: ``payloads`` are 1-D uint8 codes (:func:`~.storage.encode`) or
    ``C×H×W`` maps (levels or raw values; all of one kind). ``regions``: :func:`region_table`. Returns ``boxes``
    (``n×4`` cells ``[y0, x0, y1, x1]``), ``scores`` (the localization cosine), ``evaluated``, ``pooled``
    (``n×R×C`` float32 max-pooled descriptor regions) and ``count`` (regions per image)."""
    n = len(payloads)
    if n and np.asarray(payloads[0]).ndim == 1:  # stored codes: the shared pass with one query
        return localize_shared(payloads, shape, [(q_mac, q_ratio)], (np.arange(n + 1), np.zeros(n, np.int64)), aml,
                               regions, buffers)
    C, H, W = (int(v) for v in shape)
    alpha, root = float(aml.alpha), str(aml.root)
    outs = _outputs(n, int(regions[1][..., 1].max()), C)
    if n == 0:
        return dict(zip(_KEYS, outs))
    cands = _candidates(H, W, q_ratio, aml)
    refine = _refine(aml)
    search = (cands, _unit(q_mac), refine[0], refine[1], ROOT_CODES[root], alpha, _AML_C_POWERS.numpy())
    bufs = buffers.get(max(1, min(numba.get_num_threads(), n)), C, H, W)
    typed = List()
    for p in payloads:
        typed.append(np.ascontiguousarray(p, dtype=np.float32))
    power = (alpha, int(alpha) if alpha.is_integer() and alpha >= 1 else 0, root == "aml_c")
    _run_dense(typed, (H, W, C), power, search, regions, bufs, outs)
    return dict(zip(_KEYS, outs))


def _candidates(H: int, W: int, ratio: float | None, aml: Any) -> np.ndarray:
    """AML's candidate windows (the whole map where none fits the aspect ratio), int64."""
    c = candidate_windows(H, W, ratio, aml.step, aml.max_ratio)
    return np.ascontiguousarray(c if len(c) else np.array([[0, 0, H, W]]), dtype=np.int64)


def _refine(aml: Any) -> tuple[int, int]:
    return (int(aml.refine_step), int(aml.refine_iter)) if aml.refine_iter > 0 and aml.refine_step > 0 else (0, 0)


def _unit(q_mac: torch.Tensor) -> np.ndarray:
    """The query as the reference scores with it: L2-normalised in float32, then float64."""
    q = q_mac.to(torch.float32)
    return (q / q.norm().clamp_min(1e-12)).double().numpy()


def _outputs(n: int, R: int, C: int) -> tuple[np.ndarray, ...]:
    return (np.zeros((n, 4), np.int64), np.zeros(n, np.float64), np.zeros(n, np.int64),
            np.zeros((n, R, C), np.float32), np.zeros(n, np.int64))


_KEYS = ("boxes", "scores", "evaluated", "pooled", "count")


def localize_shared(codes: Sequence[np.ndarray], shape: tuple[int, int, int], queries: Sequence[tuple[torch.Tensor,
                    float | None]], pairs: tuple[np.ndarray, np.ndarray], aml: Any,
                    regions: tuple[np.ndarray, np.ndarray], buffers: Buffers) -> dict[str, np.ndarray]:
    """AML for several queries over images of one ``(C, H, W)`` given as 1-byte codes, each image's integral image
    built once: ``queries`` are ``(MAC vector, aspect ratio)``, ``pairs = (ptr, query)`` lists the queries of image
    ``i`` as ``query[ptr[i]:ptr[i + 1]]``. Returns the arrays of :func:`localize_and_pool`, one row per pair."""
    C, H, W = (int(v) for v in shape)
    alpha, root = float(aml.alpha), str(aml.root)
    ptr, pair_query = (np.ascontiguousarray(a, dtype=np.int64) for a in pairs)
    outs = _outputs(len(pair_query), int(regions[1][..., 1].max()), C)
    if len(pair_query) == 0:
        return dict(zip(_KEYS, outs))
    cands = [_candidates(H, W, ratio, aml) for _, ratio in queries]
    cand_ptr = np.concatenate([[0], np.cumsum([len(c) for c in cands])]).astype(np.int64)
    Q = np.ascontiguousarray(np.stack([_unit(q) for q, _ in queries]))
    refine = _refine(aml)
    shared = (ptr, pair_query, cand_ptr, np.concatenate(cands), Q, refine[0],
              refine[1], ROOT_CODES[root], alpha, _AML_C_POWERS.numpy())
    typed = List()
    for p in codes:
        typed.append(np.ascontiguousarray(p, np.uint8))
    bufs = buffers.get(max(1, min(numba.get_num_threads(), len(codes))), C, H, W)
    _run_shared(typed, (H, W, C), power_table(alpha, root), shared, regions, bufs, outs)
    return dict(zip(_KEYS, outs))


__all__ = ["Buffers", "NEWTON_STEPS", "localize_and_pool", "localize_shared", "power_table", "region_table"]
