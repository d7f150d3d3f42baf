"""Local similarity with spatial relations (Chen, Kuang, Zhang & Wong, ACM MM 2019), the functional core: feature
grids, the correlation volume (eqs. 3-4), the localization subnet (Table 2), the multi-task loss (eq. 8) and the
Sec. 4.1 batch of pairs with hard negatives.

Shapes: feature grids are ``N×D×H×W`` (L2-normalised at every location); a correlation volume is
``N×(H_q·W_q)×H_g×W_g``. Depth ordering (eq. 4, 0-based): query cell ``(h_q, w_q)`` is channel
``d' = h_q·W_q + w_q`` (row-major), so a gallery equal to the query puts the maximum of gallery cell ``(h, w)`` on
channel ``h·W_q + w``: the "diagonal plane" of the paper's Fig. 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder

from ..pooling import l2n

#: Faster R-CNN box encoding (dx, dy, dw, dh) with unit weights; the reference box is the whole gallery image.
BOX_CODER = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))


def feature_grid(fmap: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Max RoI-pooling of the whole image to a fixed ``size`` grid, then L2 at every location:
    ``N×D×H×W -> N×D×h×w`` (gallery 15×15, query 7×7 in the paper)."""
    return l2n(F.adaptive_max_pool2d(fmap, size), dim=1)


def correlation_volume(gallery: Tensor, query: Tensor) -> Tensor:
    """Eq. 3 for aligned pairs: ``s(h_g, w_g, d') = f_g(h_g, w_g)ᵀ f_q(d')``, ``N×D×H_g×W_g`` and
    ``N×D×H_q×W_q`` -> ``N×(H_q·W_q)×H_g×W_g`` as one batched matrix product."""
    N, D, Hg, Wg = gallery.shape
    q = query.flatten(2)  # N×D×(Hq·Wq), row-major: channel h_q·W_q + w_q
    return torch.bmm(q.transpose(1, 2), gallery.flatten(2)).view(N, -1, Hg, Wg)


def correlation_all_pairs(gallery: Tensor, query: Tensor) -> Tensor:
    """Every query against every gallery: ``N_g×D×H_g×W_g`` and ``N_q×D×H_q×W_q`` ->
    ``N_q×N_g×(H_q·W_q)×H_g×W_g`` (one matrix product over all cells)."""
    Ng, D, Hg, Wg = gallery.shape
    Nq = query.shape[0]
    q = query.flatten(2).transpose(1, 2).reshape(-1, D)  # (Nq·Dq)×D
    g = gallery.permute(1, 0, 2, 3).reshape(D, -1)  # D×(Ng·Hg·Wg)
    return (q @ g).view(Nq, -1, Ng, Hg, Wg).transpose(1, 2)


def _block(c_in: int, c_out: int, n: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.InstanceNorm2d(c_out), nn.ReLU()]
    return layers


class LocalizationSubnet(nn.Module):
    """Table 2: ``[3×3, 128]×3`` -> max-pool 2×2 -> ``[3×3, 64]×2`` -> max-pool 2×2 (every conv followed by
    instance norm and ReLU), then two fully connected heads on the flattened map: 2-way "query present" logits
    and the 4-d box (Faster R-CNN encoding relative to the whole gallery image). For a 15×15×49 volume the
    flattened map is 3×3×64 = 576, as in the paper."""

    def __init__(self, depth: int = 49, grid: int | tuple[int, int] = 15):
        super().__init__()
        self.features = nn.Sequential(*_block(depth, 128, 3), nn.MaxPool2d(2), *_block(128, 64, 2), nn.MaxPool2d(2))
        gh, gw = (grid, grid) if isinstance(grid, int) else grid
        flat = 64 * (gh // 2 // 2) * (gw // 2 // 2)
        self.cls = nn.Linear(flat, 2)
        self.box = nn.Linear(flat, 4)

    def forward(self, volume: Tensor) -> tuple[Tensor, Tensor]:
        x = self.features(volume).flatten(1)
        return self.cls(x), self.box(x)


def encode_boxes(boxes: Tensor, image_hw: Tensor) -> Tensor:
    """Ground-truth ``[x1, y1, x2, y2]`` pixel boxes ``N×4`` -> targets relative to the whole gallery image
    (``N×2`` heights and widths), with torchvision's Faster R-CNN box coder."""
    h, w = image_hw[:, 0].to(boxes.dtype), image_hw[:, 1].to(boxes.dtype)
    whole = torch.stack([torch.zeros_like(w), torch.zeros_like(h), w, h], 1)
    return BOX_CODER.encode_single(boxes, whole)


def decode_boxes(codes: Tensor, image_hw: Tensor) -> Tensor:
    """Inverse of :func:`encode_boxes`: ``N×4`` codes -> ``[x1, y1, x2, y2]`` pixels in each gallery image."""
    h, w = image_hw[:, 0].to(codes.dtype), image_hw[:, 1].to(codes.dtype)
    whole = torch.stack([torch.zeros_like(w), torch.zeros_like(h), w, h], 1)
    return BOX_CODER.decode_single(codes, whole)


def local_similarity_loss(logits: Tensor, box_codes: Tensor, labels: Tensor, box_targets: Tensor,
                          lam: float = 0.05) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 8: ``L = L_cls + λ L_loc``; ``L_cls`` the mean cross-entropy over pairs; ``L_loc`` the smooth-L1 of the
    positive pairs' box codes summed over coordinates and divided by the number of positive pairs ``N_loc``
    (not by proposals). Returns ``(L, L_cls, L_loc)``; ``L_loc = 0`` for a batch without positives."""
    cls = F.cross_entropy(logits, labels)
    pos = labels == 1
    n_pos = int(pos.sum())
    loc = (F.smooth_l1_loss(box_codes[pos], box_targets[pos], reduction="sum") / n_pos if n_pos
           else logits.new_zeros(()))
    return cls + lam * loc, cls, loc


def hard_pair_batch(present_logit: Tensor, n_hard: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Sec. 4.1: ``N`` query/gallery pairs give ``N`` positives (query i with gallery i) and ``N(N−1)`` negatives
    (query i with gallery j ≠ i); keep every positive and the ``n_hard`` (default ``N``) negatives with the highest
    "present" score. ``present_logit`` ``N_q×N_g`` -> ``(query index, gallery index, label)`` of the kept pairs."""
    N = present_logit.shape[0]
    n_hard = N if n_hard is None else n_hard
    eye = torch.eye(N, dtype=torch.bool, device=present_logit.device)
    neg_scores = present_logit.detach().masked_fill(eye, float("-inf")).flatten()
    hard = neg_scores.topk(min(n_hard, N * (N - 1))).indices
    qi = torch.cat([torch.arange(N, device=hard.device), hard // N])
    gi = torch.cat([torch.arange(N, device=hard.device), hard % N])
    labels = torch.cat([torch.ones(N, dtype=torch.long), torch.zeros(len(hard), dtype=torch.long)]).to(hard.device)
    return qi, gi, labels
