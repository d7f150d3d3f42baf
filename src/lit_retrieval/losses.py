"""Retrieval objectives for learned region scoring on synthetic query/gallery pairs (frozen backbones).

:func:`pair_contrastive`: every query of a batch against every gallery of the batch (its own pair is the
positive, the other objects' galleries are negatives, other syntheses of the same object are left out) and
against extra hard negatives (e.g. patch-shuffled copies of the galleries: the same pixels without their
structure), as a softmax cross-entropy over cosine similarities at a temperature (InfoNCE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pair_contrastive(queries: Tensor, galleries: Tensor, objects: Tensor, negatives: Tensor | None = None,
                     temperature: float = 0.05) -> tuple[Tensor, Tensor]:
    """``B×D`` L2 query and gallery descriptors (row ``i`` of each is a pair), ``B`` object ids, optional ``M×D``
    hard negatives -> ``(loss, hits)``: the mean InfoNCE loss, and ``B`` booleans, the query's own gallery ranked
    first among the candidates (recall@1)."""
    if queries.shape != galleries.shape or queries.shape[0] != objects.shape[0]:
        raise ValueError(f"pair_contrastive: {tuple(queries.shape)} queries, {tuple(galleries.shape)} galleries and "
                         f"{tuple(objects.shape)} object ids do not pair up")
    if not temperature > 0:
        raise ValueError(f"model.retrieval.temperature must be positive, got {temperature}")
    sim = queries @ galleries.T
    same = objects[:, None] == objects[None, :]
    same.fill_diagonal_(False)
    sim = sim.masked_fill(same, float("-inf"))  # another synthesis of one's own object is not a negative
    if negatives is not None and negatives.numel():
        sim = torch.cat([sim, queries @ negatives.T], dim=1)
    target = torch.arange(len(queries), device=queries.device)
    loss = F.cross_entropy(sim / temperature, target)
    return loss, sim.argmax(dim=1) == target


__all__ = ["pair_contrastive"]
