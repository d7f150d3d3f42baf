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
import torch.nn.functional as F
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


def region_max(x: Tensor, boxes: np.ndarray | Tensor) -> Tensor:
    """Max-pool every ``[y0, x0, h, w]`` box of a feature map: ``N×C×H×W, R×4 -> N×R×C``.

    Boxes of equal size are pooled together: one sliding-window max (separable) per distinct size, then a
    gather at the boxes' corners — no loop over regions.
    """
    b = torch.as_tensor(np.asarray(boxes), dtype=torch.long).reshape(-1, 4)
    N, C, H, W = x.shape
    out = x.new_empty(N, b.shape[0], C)
    sizes, inverse = torch.unique(b[:, 2:], dim=0, return_inverse=True)
    for k, (h, w) in enumerate(sizes.tolist()):
        sel = (inverse == k).nonzero(as_tuple=True)[0]
        win = F.max_pool2d(x, kernel_size=(h, 1), stride=1) if h > 1 else x
        win = F.max_pool2d(win, kernel_size=(1, w), stride=1) if w > 1 else win
        flat = win.flatten(2)  # N×C×(H-h+1)(W-w+1)
        idx = b[sel, 0] * win.shape[-1] + b[sel, 1]
        out[:, sel, :] = flat[:, :, idx].transpose(1, 2)
    return out


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
