"""Region descriptors (Jeong et al., Sec. 3): 1st-order (eqs. 3, 9) and 2nd-order (eqs. 4-5) pooling over
candidate regions, all regions of an image at once.

Inputs for one image: its ``K×h×w`` map ``F``, region masks ``M×h×w`` (bool, on the feature map), the spatial
weights ``α`` (``h×w``, eq. 1) and channel weights ``β`` (``K``, eq. 2). Every region is a row of a weight
matrix over the ``h·w`` positions, so each order of pooling is one matrix product over all regions.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...pooling import l2n

DEFAULT_EIG_FLOOR = 1e-2


def _weights(masks: Tensor, alpha: Tensor | None) -> Tensor:
    w = masks.reshape(masks.shape[0], -1).to(torch.float32)
    return w if alpha is None else w * alpha.reshape(1, -1).to(torch.float32)


def first_order(fmap: Tensor, masks: Tensor, beta: Tensor, alpha: Tensor | None = None) -> Tensor:
    """Eq. 3 ``β ∘ Σ_{p∈R'} f_p`` (``alpha=None``) or eq. 9 ``β ∘ Σ_{p∈R'} α_p f_p``, each L2-normalised:
    ``K×h×w`` map, ``M×h×w`` masks -> ``M×K``."""
    K = fmap.shape[0]
    return l2n((_weights(masks, alpha) @ fmap.reshape(K, -1).T.to(torch.float32)) * beta)


def project_local(fmap: Tensor, beta: Tensor, basis: Tensor) -> Tensor:
    """Eq. 4: ``f̃_p = U¹ᵀ (β ∘ f_p)`` for every position: ``K×h×w`` map, ``K×K'`` basis -> ``(h·w)×K'``."""
    K = fmap.shape[0]
    return (fmap.reshape(K, -1).T.to(torch.float32) * beta) @ basis.to(torch.float32)


def logm_spd(G: Tensor, floor: float = DEFAULT_EIG_FLOOR) -> Tensor:
    """Matrix logarithm of symmetric positive semi-definite matrices ``…×n×n`` by eigendecomposition (float64),
    eigenvalues floored at ``floor × (mean eigenvalue)`` first: a region with fewer positions than ``n`` has a
    rank-deficient ``G`` (log 0 = −∞); the floor is relative so that it does not depend on the features' scale.
    An all-zero matrix maps to the zero matrix."""
    G64 = G.to(torch.float64)
    G64 = (G64 + G64.transpose(-1, -2)) / 2
    lam, V = torch.linalg.eigh(G64)
    mean = lam.clamp_min(0).mean(-1, keepdim=True)
    lam = torch.maximum(lam, floor * mean).clamp_min(torch.finfo(torch.float64).tiny)
    out = (V * lam.log().unsqueeze(-2)) @ V.transpose(-1, -2)
    return torch.where(mean.unsqueeze(-1) > 0, out, torch.zeros_like(out))


def upper_triangle(S: Tensor) -> Tensor:
    """``vec(·)`` of eq. 5: the upper triangle (diagonal included) of ``…×n×n`` -> ``…×n(n+1)/2``."""
    n = S.shape[-1]
    i, j = torch.triu_indices(n, n, device=S.device)
    return S[..., i, j]


def second_order(local: Tensor, masks: Tensor, alpha: Tensor, floor: float = DEFAULT_EIG_FLOOR) -> Tensor:
    """Eq. 5: ``G = Σ_{p∈R'} α_p f̃_p f̃_pᵀ / Σ_{p∈R'} α_p``, ``f² = vec(log G)``, L2-normalised: local
    descriptors ``(h·w)×K'`` (eq. 4), ``M×h×w`` masks, ``h×w`` α -> ``M×K'(K'+1)/2`` (float32)."""
    w = _weights(masks, alpha).to(torch.float64)
    w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    X = local.to(torch.float64)
    G = (X.T.unsqueeze(0) * w.unsqueeze(1)) @ X  # M×K'×K': Σ_p w_mp x_p x_pᵀ as one batched product
    return l2n(upper_triangle(logm_spd(G, floor))).to(torch.float32)
