"""Global pooling of activation maps ``N×C×H×W -> N×C`` (functional, vectorised).

``mac``, ``spoc`` and ``gem`` reproduce cirtorch's ``layers/functional.py`` (un-normalised outputs);
``crow`` follows Kalantidis et al.'s reference aggregation; ``rmac`` offers three named variants:

- ``cirtorch``: whole map + grid regions, sum of L2-normalised (norm + eps) region MACs (cirtorch's ``rmac``;
  returned un-normalised, exactly as cirtorch).
- ``tolias``: grid regions only; each region MAC -> L2 -> PCA-whitening (learned on region vectors of another
  dataset, passed as ``region_whitening``) -> L2; summed and L2-normalised (Tolias et al., ICLR 2016).
- ``kimyoon``: the pixel-space grid of Kim & Yoon projected at the backbone stride (needs ``image_hw`` and
  ``stride``); sum of L2-normalised region MACs, L2-normalised.
"""
from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from .regions import kimyoon_feature_grid, rmac_grid

RmacVariant = Literal["cirtorch", "tolias", "kimyoon"]


def l2n(x: Tensor, eps: float = 1e-6, dim: int = -1) -> Tensor:
    """L2-normalise along ``dim`` with cirtorch's ``norm + eps`` denominator."""
    return x / (torch.linalg.vector_norm(x, dim=dim, keepdim=True) + eps)


def mac(x: Tensor) -> Tensor:
    """Maximum activations of convolutions: global max per channel."""
    return x.amax(dim=(-2, -1))


def spoc(x: Tensor) -> Tensor:
    """Sum-pooled convolutional features (cirtorch's mean)."""
    return x.mean(dim=(-2, -1))


def gem(x: Tensor, p: float | Tensor = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalized mean: ``mean(clamp(x, eps)^p)^(1/p)``."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def crow(x: Tensor, a: float = 2.0, b: float = 2.0) -> Tensor:
    """Cross-dimensional weighting (CroW): spatial weights from channel sums, sparsity-based channel weights.

    Spatial ``S = (Σ_c x / ||Σ_c x||_a)^(1/b)``; channel ``Ω_k = log(Σ_h Q_h / Q_k)`` with ``Q_k`` the fraction
    of non-zero activations of channel ``k`` (0 for an all-zero channel), as in the reference code.
    """
    s = x.sum(dim=1, keepdim=True)
    z = s.pow(a).sum(dim=(-2, -1), keepdim=True).pow(1.0 / a)
    s = (s / z.clamp_min(torch.finfo(x.dtype).tiny)).pow(1.0 / b)
    q = (x != 0).to(x.dtype).mean(dim=(-2, -1))
    omega = torch.where(q > 0, torch.log(q.sum(dim=1, keepdim=True) / q.clamp_min(1e-12)), torch.zeros_like(q))
    return (x * s).sum(dim=(-2, -1)) * omega


def _shift_max(flat: Tensor, k: int, step: int) -> Tensor:
    """``out[:, q] = max(flat[:, q + i·step] for i < k)`` by doubling: ``P×M -> P×(M - (k-1)·step)``."""
    out, span = flat, 1
    while 2 * span <= k:
        out = torch.maximum(out[:, : -span * step], out[:, span * step:])
        span *= 2
    if span < k:
        r = (k - span) * step
        out = torch.maximum(out[:, :-r], out[:, r:])
    return out


REGION_MAX_BACKENDS = ("auto", "compiled", "torch")


def region_max(x: Tensor, boxes: np.ndarray | Tensor, chunk: int = 1024, backend: str = "auto") -> Tensor:
    """Max-pool every ``[y0, x0, h, w]`` box of a feature map: ``N×C×H×W, R×4 -> N×R×C``.

    ``backend="auto"`` runs float32 CPU maps that need no gradient through the compiled kernel
    (:mod:`~lit_retrieval.compiled_pooling`: each plane read once, planes in parallel), everything else
    (autograd, GPU, other dtypes) through the torch code below; both give the same values.

    The torch code: separable sliding maxima computed as element-wise maxima of shifted views of the flattened ``H·W``
    planes (long contiguous runs; CPU ``max_pool2d`` and short strided reductions are far slower): maxima of
    width ``w`` along the rows from doubling levels shared by every width, kept at the boxes' ``x0`` columns
    only, then maxima of height ``h`` down those columns, read at the boxes' ``y0``. Boxes are grouped by
    size (no loop over regions) and planes go ``chunk`` at a time so that intermediates stay in cache.
    """
    b = np.asarray(boxes.cpu() if isinstance(boxes, Tensor) else boxes, dtype=np.int64).reshape(-1, 4)
    if backend not in REGION_MAX_BACKENDS:
        raise ValueError(f"region_max backend={backend!r}: choose one of {REGION_MAX_BACKENDS}")
    inference = not (torch.is_grad_enabled() and x.requires_grad)
    if backend == "compiled" or (backend == "auto" and inference and x.device.type == "cpu"
                                 and x.dtype == torch.float32 and len(b)):
        if not (inference and x.device.type == "cpu" and x.dtype == torch.float32):
            raise ValueError(f"region_max backend='compiled' takes float32 CPU maps without gradient, got "
                             f"{x.dtype} on {x.device}{' requiring grad' if not inference else ''}: use 'auto'")
        from .compiled_pooling import region_max_compiled  # numba: imported when used

        return region_max_compiled(x, b)
    N, C, H, W = x.shape
    flat = x.reshape(N * C, H * W)
    order = np.lexsort((b[:, 3], b[:, 2]))  # grouped by size: each size fills a contiguous output range
    out = x.new_empty(N * C, len(b))
    plan, start = [], 0
    for h, w in sorted({(int(h), int(w)) for h, w in b[:, 2:]}):
        sel = order[(b[order, 2] == h) & (b[order, 3] == w)]
        xs, xi = np.unique(b[sel, 1], return_inverse=True)
        cols = torch.as_tensor((np.arange(H)[:, None] * W + xs).ravel(), device=x.device)
        idx = torch.as_tensor(b[sel, 0] * len(xs) + xi.ravel(), device=x.device)
        plan.append((h, w, len(xs), cols, idx, start, start + len(sel)))
        start += len(sel)
    for p0 in range(0, N * C, chunk):
        f = flat[p0:p0 + chunk]
        P = f.shape[0]
        levels = {1: f}  # levels[s][:, q] = max(f[:, q:q+s]) along the flattened plane
        rows: dict[int, Tensor] = {}  # width -> row maxima, shared by the sizes of equal width
        for h, w, nx, cols, idx, c0, c1 in plan:
            if w not in rows:
                s = 1 << (w.bit_length() - 1)
                while s not in levels:
                    t = max(levels)
                    levels[2 * t] = torch.maximum(levels[t][:, :-t], levels[t][:, t:])
                rows[w] = levels[s] if s == w else torch.maximum(levels[s][:, : s - w], levels[s][:, w - s:])
            col = torch.gather(rows[w], 1, cols.expand(P, -1))  # P×(H·nx): row maxima at the x0 columns
            v = _shift_max(col, h, nx)  # P×((H-h+1)·nx)
            out[p0:p0 + P, c0:c1] = torch.gather(v, 1, idx.expand(P, -1))
    out = out[:, torch.as_tensor(np.argsort(order), device=x.device)]
    return out.view(N, C, -1).transpose(1, 2)


def region_mean(x: Tensor, boxes: np.ndarray | Tensor) -> Tensor:
    """Mean-pool every ``[y0, x0, h, w]`` box of a feature map: ``N×C×H×W, R×4 -> N×R×C``.

    Four look-ups per box and channel in a summed-area table (accumulated in float64, so that the
    differences of large sums stay exact enough at any map size). Differentiable with respect to ``x``.
    """
    b = torch.as_tensor(np.array(boxes.cpu() if isinstance(boxes, Tensor) else boxes, dtype=np.int64)
                        .reshape(-1, 4), device=x.device)
    N, C, H, W = x.shape
    sat = torch.nn.functional.pad(x.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0)).reshape(N, C, -1)
    y0, x0, y1, x1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    at = lambda yy, xx: sat[:, :, yy * (W + 1) + xx]  # noqa: E731
    total = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
    return (total / (b[:, 2] * b[:, 3])).to(x.dtype).transpose(1, 2)


def rmac(
    x: Tensor,
    L: int = 3,
    variant: RmacVariant = "cirtorch",
    eps: float = 1e-6,
    region_whitening: Callable[[Tensor], Tensor] | None = None,
    image_hw: tuple[int, int] | None = None,
    stride: int | None = None,
) -> Tensor:
    """Regional MAC, ``N×C×H×W -> N×C``; see the module docstring for the variants."""
    H, W = x.shape[-2:]
    if variant == "cirtorch":
        boxes = np.concatenate([[[0, 0, H, W]], rmac_grid(H, W, L)])
        return l2n(region_max(x, boxes), eps).sum(dim=1)
    if variant == "tolias":
        if region_whitening is None:
            raise ValueError(
                "rmac variant 'tolias' whitens every regional vector: pass region_whitening (a PCA-whitening "
                "learned on region vectors of another dataset, see lit_retrieval.whitening), or use "
                "variant='cirtorch'"
            )
        v = l2n(region_max(x, rmac_grid(H, W, L)), eps)
        return l2n(l2n(region_whitening(v), eps).sum(dim=1), eps)
    if variant == "kimyoon":
        if image_hw is None or stride is None:
            raise ValueError("rmac variant 'kimyoon' needs image_hw=(H, W) in pixels and the backbone stride")
        boxes = kimyoon_feature_grid(image_hw, (H, W), stride, L)
        return l2n(l2n(region_max(x, boxes), eps).sum(dim=1), eps)
    raise ValueError(f"unknown rmac variant {variant!r}: choose 'cirtorch', 'tolias' or 'kimyoon'")


POOLINGS: dict[str, Callable[..., Tensor]] = {"mac": mac, "spoc": spoc, "gem": gem, "crow": crow, "rmac": rmac}
