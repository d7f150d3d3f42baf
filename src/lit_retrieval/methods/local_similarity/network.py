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

from ...pooling import l2n, rmac
from ...checkpoint import check_backbone, load_trained_state, read_entry

#: Faster R-CNN box encoding (dx, dy, dw, dh) with unit weights; the reference box is the whole gallery image.
BOX_CODER = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))


def feature_grid(fmap: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Max RoI-pooling of the whole image to a fixed ``size`` grid, then L2 at every location:
    ``N×D×H×W -> N×D×h×w`` (gallery 15×15, query 7×7 in the paper)."""
    return l2n(F.adaptive_max_pool2d(fmap, size), dim=1)


def correlation_volume(gallery: Tensor, query: Tensor) -> Tensor:
    """Eq. 3 for aligned pairs: ``s(h_g, w_g, d') = f_g(h_g, w_g)ᵀ f_q(d')``, ``N×D×H_g×W_g`` and
    ``N×D×H_q×W_q`` (or ``1×D×H_q×W_q``: one query against every gallery) -> ``N×(H_q·W_q)×H_g×W_g`` as one
    batched matrix product. Gallery grids stored location-major (channels-last views) are read without a copy."""
    N, D, Hg, Wg = gallery.shape
    g = gallery.permute(0, 2, 3, 1).reshape(N, Hg * Wg, D)
    q = query.flatten(2)  # N×D×(Hq·Wq), row-major: channel h_q·W_q + w_q
    return torch.matmul(g, q).transpose(1, 2).reshape(N, -1, Hg, Wg)


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


def hard_pair_batch(present_logit: Tensor, n_hard: int | None = None,
                    objects: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Sec. 4.1: ``N`` query/gallery pairs give ``N`` positives (query i with gallery i) and ``N(N−1)`` negatives
    (query i with gallery j ≠ i); keep every positive and the ``n_hard`` (default ``N``) negatives with the highest
    "present" score. ``present_logit`` ``N_q×N_g`` -> ``(query index, gallery index, label)`` of the kept pairs.
    ``objects`` (``N`` ids): pairs of two items of the same object are not negatives and are never kept."""
    N = present_logit.shape[0]
    n_hard = N if n_hard is None else n_hard
    same = torch.eye(N, dtype=torch.bool, device=present_logit.device)
    if objects is not None:
        same = same | (objects[:, None] == objects[None, :]).to(same.device)
    neg_scores = present_logit.detach().masked_fill(same, float("-inf")).flatten()
    hard = neg_scores.topk(min(n_hard, int((~same).sum()))).indices
    qi = torch.cat([torch.arange(N, device=hard.device), hard // N])
    gi = torch.cat([torch.arange(N, device=hard.device), hard % N])
    labels = torch.cat([torch.ones(N, dtype=torch.long), torch.zeros(len(hard), dtype=torch.long)]).to(hard.device)
    return qi, gi, labels


CKPT_KEY = "local_similarity"  # the checkpoint entry with everything scoring needs


def tail_convs(backbone: nn.Module, n: int) -> list[nn.Conv2d]:
    """The last ``n`` convolutions of a backbone in forward (registration) order: the layers the paper fine-tunes
    ("the last 10 layers" of ResNet-101)."""
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if n > len(convs):
        raise ValueError(f"model.finetune_layers={n}, but the backbone has only {len(convs)} convolutions")
    return convs[len(convs) - n:] if n > 0 else []


class LocalSimilarityNet(nn.Module):
    """Feature extraction subnet (backbone -> whole-image max RoI-pooling to ``gallery_grid``/``query_grid`` -> L2
    per location) + correlation layer + :class:`LocalizationSubnet`. The backbone is frozen except its last
    ``finetune_layers`` convolutions (0 by default; BatchNorm statistics stay frozen either way). The R-MAC of the
    same activation map (``rmac_levels``) is the global descriptor of the shortlist and of the fusion."""

    def __init__(self, backbone: nn.Module, gallery_grid: int = 15, query_grid: int = 7, finetune_layers: int = 0,
                 rmac_levels: int = 3) -> None:
        super().__init__()
        if gallery_grid < 4 or query_grid < 1:
            raise ValueError(f"model.gallery_grid={gallery_grid} must be >= 4 (two 2×2 poolings) and "
                             f"model.query_grid={query_grid} >= 1")
        self.backbone = backbone
        self.gallery_grid, self.query_grid = int(gallery_grid), int(query_grid)
        self.finetune_layers, self.rmac_levels = int(finetune_layers), int(rmac_levels)
        self.subnet = LocalizationSubnet(depth=self.query_grid ** 2, grid=self.gallery_grid)
        for conv in tail_convs(backbone, self.finetune_layers):
            conv.requires_grad_(True)

    def config(self) -> dict:
        return {"backbone": self.backbone.name, "gallery_grid": self.gallery_grid, "query_grid": self.query_grid,
                "finetune_layers": self.finetune_layers, "rmac_levels": self.rmac_levels}

    def grid(self, fmap: Tensor, part: str) -> Tensor:
        """Activation map -> the gallery (``part="db"``) or query grid, L2 per location."""
        return feature_grid(fmap, self.gallery_grid if part == "db" else self.query_grid)

    def describe(self, x: Tensor, part: str) -> tuple[Tensor, Tensor]:
        """Normalised images -> ``(R-MAC N×C, grid N×C×g×g)`` from one backbone pass."""
        fmap = self.backbone(x)
        return l2n(rmac(fmap, L=self.rmac_levels)), self.grid(fmap, part)

    def forward(self, query: Tensor, gallery: Tensor) -> tuple[Tensor, Tensor]:
        """Aligned grids ``N×D×q×q`` and ``N×D×g×g`` -> ``(logits N×2, box codes N×4)`` (eq. 7)."""
        return self.subnet(correlation_volume(gallery, query))

    def score_all(self, query: Tensor, gallery: Tensor) -> tuple[Tensor, Tensor]:
        """Every query against every gallery: ``(logits N_q×N_g×2, box codes N_q×N_g×4)``."""
        vol = correlation_all_pairs(gallery, query)
        Nq, Ng = vol.shape[:2]
        logits, codes = self.subnet(vol.flatten(0, 1))
        return logits.view(Nq, Ng, 2), codes.view(Nq, Ng, 4)


def present_probability(logits: Tensor) -> Tensor:
    """S_local: the probability of the "query present" class (index 1) of ``...×2`` logits."""
    return logits.softmax(-1)[..., 1]


def load_local_similarity(ckpt_path: str, backbone: nn.Module, map_location: str | torch.device = "cpu"
                          ) -> LocalSimilarityNet:
    """Rebuild the network from a ``train.py model=local_similarity`` checkpoint on the given (frozen) backbone:
    the localization subnet, the grid settings and any fine-tuned backbone layers."""
    entry, p = read_entry(ckpt_path, CKPT_KEY, "local_similarity", map_location)
    cfg = dict(entry["config"])
    check_backbone(cfg.pop("backbone"), backbone, p)
    net = LocalSimilarityNet(backbone, **cfg)
    load_trained_state(net, entry["state_dict"], p)
    return net.eval()


def stored_quantizer(ckpt_path: str, map_location: str | torch.device = "cpu") -> dict[str, Tensor] | None:
    """The product quantizer state a quantized fine-tuning run (``model.quantize.M``) stored with the subnet
    (:meth:`GridQuantizer.state_dict`), or ``None`` for a subnet trained on raw grids."""
    entry, _ = read_entry(ckpt_path, CKPT_KEY, "local_similarity", map_location)
    return entry.get("quantizer")
