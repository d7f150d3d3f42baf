"""Spatial and channel weights of a feature map (Jeong et al., Sec. 2 eq. 1 and Sec. 3 eq. 2; after CroW).

``F`` is one image's ``K×H×W`` map of non-negative activations (a ReLU layer).
"""
from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_EPS = 1e-6


def _check(fmap: Tensor, name: str) -> None:
    if fmap.dim() != 3:
        raise ValueError(f"{name}: expected one K×H×W feature map, got shape {tuple(fmap.shape)}")


def spatial_weights(fmap: Tensor) -> Tensor:
    """Eq. 1: ``α_p = f̄_p / sqrt(Σ_p f̄_p²)`` with ``f̄_p = Σ_k f_{p,k}``: ``K×H×W -> H×W``. An all-zero map
    gives all-zero weights."""
    _check(fmap, "spatial_weights")
    s = fmap.sum(0)
    return s / s.norm().clamp_min(torch.finfo(s.dtype).tiny)


def channel_weights(fmap: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Eq. 2: ``Q_k = (1/WH) Σ_p 1[f_{p,k} > 0]``, ``β_k = log((Kε + Σ_k Q_k) / (ε + Q_k))``: ``K×H×W -> K``.
    Sparse channels weigh more; ``ε > 0`` keeps an all-zero channel finite (``β = log(K + ΣQ/ε)``)."""
    _check(fmap, "channel_weights")
    if eps <= 0:
        raise ValueError(f"channel_weights: eps must be > 0 (eq. 2's small positive constant), got {eps}")
    q = (fmap > 0).to(fmap.dtype).mean(dim=(1, 2))
    K = fmap.shape[0]
    return torch.log((K * eps + q.sum()) / (eps + q))
