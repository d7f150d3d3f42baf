"""Kim & Yoon's regional attention Φ (eq. 2) and its context-aware input (eq. 3).

``Φ(k) = softplus(W_c · tanh(W_r·k + b_r) + b_c)``: one positive weight per region, from the region's
mean-pooled vector ``k = J(R)``, or, context-aware, from ``k ⊕ J(V_I)`` (the region's mean concatenated with
the mean of the whole map).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attention_input(region_mean: Tensor, global_mean: Tensor | None) -> Tensor:
    """``N×R×C`` region means (and ``N×C`` whole-map means, context-aware) -> ``N×R×C`` or ``N×R×2C``."""
    if global_mean is None:
        return region_mean
    return torch.cat([region_mean, global_mean[:, None, :].expand_as(region_mean)], dim=-1)


HIDDEN_ACTIVATIONS = {"tanh": torch.tanh, "softplus": F.softplus}


class RegionalAttention(nn.Module):
    """``Φ``: ``N×R×in_dim -> N×R`` positive weights (``W_r ∈ R^{d×in_dim}``, ``W_c ∈ R^{1×d}``).

    ``hidden_activation``: ``tanh`` (eq. 2, the paper) or ``softplus`` (the hidden layer of the authors' training
    code)."""

    def __init__(self, in_dim: int, hidden: int = 64, hidden_activation: str = "tanh") -> None:
        super().__init__()
        if hidden_activation not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"model.hidden_activation={hidden_activation!r}: choose 'tanh' (eq. 2) or 'softplus' "
                             "(the reference training code)")
        self.reduce = nn.Linear(in_dim, hidden)  # W_r, b_r
        self.score = nn.Linear(hidden, 1)  # W_c, b_c
        self.act = HIDDEN_ACTIVATIONS[hidden_activation]

    def forward(self, k: Tensor) -> Tensor:
        return F.softplus(self.score(self.act(self.reduce(k)))).squeeze(-1)


def weight_contrast(w: Tensor) -> Tensor:
    """Within-image contrast of region weights ``N×R``: the coefficient of variation (std / mean over the regions)
    of each image, ``N``. 0 is uniform weighting (``Φ ≡ 1``); it is what training must move away from."""
    return w.std(dim=1, unbiased=False) / w.mean(dim=1).clamp_min(1e-12)
