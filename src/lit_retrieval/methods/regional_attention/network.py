"""The context-aware regional attention network of Kim & Yoon (BMVC 2018) on a frozen backbone.

- Region sampler ``C_S``: the R-MAC grid of scales ``1..S`` (``grid="rmac"``, on the feature map) or Kim & Yoon's
  pixel grid (``grid="kimyoon"``, the paper-faithful option), no whole-map region.
- Per region: max-pool ``M(R)`` and mean-pool ``k = J(R)``; attention ``Φ(k)`` or, context-aware,
  ``Φ(k ⊕ J(V_I))`` (:mod:`.attention`).
- Training output (eq. 4): ``ŷ = L(Σ_R Φ·M(R) / |Ω|)`` through the backbone's own frozen classifier ``L``.
- Descriptor (eq. 3): ``f = L2(Σ_R Φ·P(M(R)) / |Ω|)`` with ``P`` = L2 -> PCA-whitening -> L2 (the reference
  also divides by the vector's max before the first L2, which does not change its direction).

Only the attention's parameters train; the backbone is frozen (eval mode, no gradient, run under ``no_grad``).
``aggregate="sum"`` gives R-MAC's original sum over regions instead of the paper's mean (the paper changed it
to the mean for stabler training with many regions); ``uniform=True`` in :meth:`forward` replaces ``Φ`` by 1,
which is the paper's baseline (R-MAC with PCA-whitened regions, mean-pooled).
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ...backbones import Backbone, build_backbone
from ...pooling import l2n, region_max, region_mean
from ...regions import GRIDS, sample_regions
from ...data.features import is_map
from ...data.provenance import ContentSet
from ...whitening import Whitening
from .attention import RegionalAttention, attention_input
from ...checkpoint import check_backbone, load_trained_state, read_entry

log = logging.getLogger(__name__)
CKPT_KEY = "regional_attention"  # the checkpoint entry with everything the descriptor needs


class RegionalAttentionNet(nn.Module):
    """Regional attention over R-MAC regions; ``forward`` maps normalised images to L2 descriptors (N×D), so
    the module is also a retrieval method (``power``, ``cache_key``) for the engine and ``eval.py``."""

    power = 1.0

    def __init__(self, backbone: Backbone, scales: int = 5, train_scales: int = 4,
                 grid: Literal["rmac", "kimyoon"] = "rmac", context: bool = True, hidden: int = 64,
                 aggregate: Literal["mean", "sum"] = "mean", hidden_activation: str = "tanh",
                 pca_input: Literal["l2", "raw"] = "l2") -> None:
        super().__init__()
        if grid not in GRIDS:
            raise ValueError(f"model.grid={grid!r}: choose one of {GRIDS}")
        if aggregate not in ("mean", "sum"):
            raise ValueError(f"model.aggregate={aggregate!r}: choose 'mean' (the paper) or 'sum' (R-MAC's)")
        for name, s in (("scales", scales), ("train_scales", train_scales)):
            if int(s) < 1:
                raise ValueError(f"model.{name}={s}: the R-MAC scale S must be >= 1")
        self.backbone = backbone
        self.scales, self.train_scales = int(scales), int(train_scales)
        if pca_input not in ("l2", "raw"):
            raise ValueError(f"model.whitening.input={pca_input!r}: choose 'l2' (the paper: L2 -> PCA -> L2) or 'raw' "
                             "(the reference code: PCA of the raw regional MACs)")
        self.grid, self.context, self.hidden, self.aggregate = grid, bool(context), int(hidden), aggregate
        self.hidden_activation, self.pca_input = hidden_activation, pca_input
        C = backbone.out_channels
        self.attention = RegionalAttention(2 * C if self.context else C, self.hidden, hidden_activation)
        # PCA-whitening of the regional vectors (P in eq. 3): empty until learned; kept in checkpoints.
        self.register_buffer("white_mean", torch.zeros(0))
        self.register_buffer("white_proj", torch.zeros(0, C))
        # what the learned parts saw (component -> ContentSet), kept in checkpoints and checked at evaluation
        self.content: dict[str, ContentSet] = {}

    def learned_content(self) -> dict[str, ContentSet]:
        return dict(self.content)

    @property
    def takes_maps(self) -> bool:
        """Whether the descriptor of a frozen map equals that of its image: the R-MAC grid is a function of the map
        alone (Kim & Yoon's pixel grid also needs the image's exact size)."""
        return self.grid == "rmac"

    # -- configuration --------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything besides the tensors needed to rebuild the module (stored in checkpoints)."""
        return {"backbone": self.backbone.name, "scales": self.scales, "train_scales": self.train_scales,
                "grid": self.grid, "context": self.context, "hidden": self.hidden, "aggregate": self.aggregate,
                "hidden_activation": self.hidden_activation, "pca_input": self.pca_input}

    @property
    def whitened(self) -> bool:
        return self.white_proj.shape[0] > 0

    def set_whitening(self, white: Whitening | None) -> None:
        """Use ``white`` (learned on L2-normalised regional vectors, :meth:`regional_vectors`) as ``P``."""
        dev = self.white_proj.device
        if white is None:
            self.white_mean, self.white_proj = torch.zeros(0, device=dev), torch.zeros(0, self.white_proj.shape[1],
                                                                                        device=dev)
            return
        P = torch.as_tensor(np.asarray(white.P[: white.dims]), dtype=torch.float32, device=dev)
        if P.shape[1] != self.backbone.out_channels:
            raise ValueError(f"whitening of {P.shape[1]}-d vectors does not fit the backbone's "
                             f"{self.backbone.out_channels} channels: learn it with this backbone")
        self.white_mean = torch.as_tensor(np.asarray(white.m), dtype=torch.float32, device=dev)
        self.white_proj = P

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for name in ("white_mean", "white_proj"):  # learned buffers take the stored shape
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.white_proj.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def digest(self, attention: bool = True) -> str:
        """sha1 of the learned tensors (the whitening, and the attention weights unless ``attention=False``)."""
        tensors = {"white_mean": self.white_mean, "white_proj": self.white_proj}
        if attention:
            tensors.update(self.attention.state_dict())
        h = hashlib.sha1()
        for name, t in sorted(tensors.items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def cache_key(self) -> dict[str, Any]:
        """The descriptor's identity for the descriptor cache: settings + a digest of the learned tensors."""
        return {"method": "regional_attention", **self.config(), "learned": self.digest()}

    # -- maths ----------------------------------------------------------------------------------------
    def frozen_maps(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """The frozen backbone's maps and the input's size: of normalised images ``N×3×H×W`` (run under
        ``no_grad``), or cached maps ``N×C×h×w`` as they are (``data.features=cached``; the input is taken to be
        ``h·stride × w·stride``, exact for stride-aligned crops)."""
        if not is_map(x, self.backbone.out_channels):
            with torch.no_grad():
                return self.backbone(x), tuple(x.shape[-2:])
        stride = self.backbone.stride
        return x.float(), (x.shape[-2] * stride, x.shape[-1] * stride)

    def pool_regions(self, x: Tensor, S: int, attention: bool = True) -> dict[str, Any]:
        """Normalised images (or cached maps, :meth:`frozen_maps`) -> frozen map, boxes ``[y0, x0, h, w]``,
        levels, ``M(R)`` and (for the attention) ``k = J(R)`` and ``J(V_I)``."""
        fmap, image_hw = self.frozen_maps(x)
        boxes, levels = sample_regions(self.grid, image_hw, tuple(fmap.shape[-2:]), self.backbone.stride, int(S))
        out = {"fmap": fmap, "boxes": boxes, "levels": levels, "max": region_max(fmap, boxes)}
        if attention:
            out["mean"] = region_mean(fmap, boxes)
            out["global"] = fmap.mean(dim=(-2, -1)) if self.context else None
        return out

    def weights(self, pooled: dict[str, Any]) -> Tensor:
        """``Φ`` for every region: ``N×R``, positive."""
        return self.attention(attention_input(pooled["mean"], pooled["global"]))

    def _aggregate(self, w: Tensor, vectors: Tensor) -> Tensor:
        total = (w.unsqueeze(-1) * vectors).sum(dim=1)
        return total / vectors.shape[1] if self.aggregate == "mean" else total

    def attend(self, x: Tensor, S: int) -> tuple[dict[str, Any], Tensor]:
        """Pooled regions at scale ``S`` and their weights ``Φ`` (``N×R``)."""
        pooled = self.pool_regions(x, S)
        return pooled, self.weights(pooled)

    def classify(self, x: Tensor, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Eq. 4: normalised images (or cached maps) -> ImageNet logits through the frozen classifier (training
        scale S); with ``return_weights`` also ``Φ``."""
        pooled, w = self.attend(x, self.train_scales)
        logits = self.backbone.head(self._aggregate(w, pooled["max"]))
        return (logits, w) if return_weights else logits

    def descriptor(self, pooled: dict[str, Any], w: Tensor) -> Tensor:
        """Eq. 3 from pooled regions and their weights: ``L2(Σ_R Φ·P(M(R)) / |Ω|)``."""
        return l2n(self._aggregate(w, self.post_process(pooled["max"])))

    def post_process(self, regional_max: Tensor) -> Tensor:
        """``P``: L2 -> PCA-whitening (when learned) -> L2 of regional vectors ``...×C -> ...×D`` (``pca_input=raw``:
        the whitening is applied to the raw regional MACs, as the reference code learns it)."""
        v = l2n(regional_max) if self.pca_input == "l2" or not self.whitened else regional_max
        if self.whitened:
            v = l2n((v - self.white_mean) @ self.white_proj.T)
        return v

    def regional_vectors(self, x: Tensor, S: int | None = None) -> Tensor:
        """The regional max vectors ``N×R×C`` the PCA-whitening is learned on: L2-normalised (``pca_input=l2``,
        the paper) or raw (``raw``)."""
        v = self.pool_regions(x, S or self.scales, attention=False)["max"]
        return l2n(v) if self.pca_input == "l2" else v

    def forward(self, x: Tensor, S: int | None = None, uniform: bool = False) -> Tensor:
        """Eq. 3: normalised images (or cached maps) -> ``N×D`` L2 descriptors at the test scale (``uniform``:
        ``Φ ≡ 1``)."""
        pooled = self.pool_regions(x, S or self.scales, attention=not uniform)
        w = torch.ones(pooled["max"].shape[:2], device=x.device) if uniform else self.weights(pooled)
        return self.descriptor(pooled, w)

    def describe(self, images: Tensor, S: int | None = None) -> Tensor:
        """``[0, 1]`` RGB images -> ``N×D`` descriptors."""
        return self(self.backbone.normalize(images), S)

    def attention_map(self, x: Tensor, S: int | None = None) -> dict[str, Any]:
        """Boxes (``[y0, x0, h, w]`` cells), their scale levels and attention weights ``N×R`` (for pictures)."""
        pooled = self.pool_regions(x, S or self.scales)
        return {"boxes": pooled["boxes"], "levels": pooled["levels"], "weights": self.weights(pooled),
                "feature_hw": tuple(pooled["fmap"].shape[-2:])}


class UniformRegions(nn.Module):
    """The paper's baseline on the same backbone, regions and whitening: ``Φ ≡ 1`` (mean-pooled R-MAC)."""

    power = 1.0

    def __init__(self, net: RegionalAttentionNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x, uniform=True)

    @property
    def takes_maps(self) -> bool:
        return self.net.takes_maps

    def learned_content(self) -> dict[str, ContentSet]:
        """Φ ≡ 1 learns nothing itself: only the regional whitening's set."""
        return {k: v for k, v in self.net.content.items() if k.endswith("whitening")}

    def cache_key(self) -> dict[str, Any]:
        """Independent of the attention (and of its settings): regions, aggregation and whitening only."""
        c = self.net.config()
        return {"method": "rmac_uniform", "backbone": c["backbone"], "grid": c["grid"], "scales": c["scales"],
                "aggregate": c["aggregate"], "learned": self.net.digest(attention=False)}


def load_regional_attention(ckpt_path: str, backbone: Backbone | None = None,
                            map_location: str | torch.device = "cpu") -> RegionalAttentionNet:
    """Rebuild the descriptor network from a training checkpoint (attention, whitening, region settings).

    ``backbone``: the frozen backbone to use (must be the checkpoint's architecture); built from the
    checkpoint's ``backbone`` settings when ``None``.
    """
    entry, p = read_entry(ckpt_path, CKPT_KEY, "regional_attention", map_location)
    cfg = dict(entry["config"])
    name = cfg.pop("backbone")
    if backbone is None:
        backbone = build_backbone(name, weights=str(entry["backbone"].get("weights", "imagenet")))
    check_backbone(name, backbone, p)
    net = RegionalAttentionNet(backbone, **cfg)
    load_trained_state(net, entry["state_dict"], p)
    net.content = {k: ContentSet.from_state(v) for k, v in entry.get("content", {}).items()}
    if not net.whitened:
        log.warning("%s carries no regional whitening (trained with whitening.kind=none): descriptors use L2 "
                    "regional vectors only", p)
    return net.eval()


def retrieval_descriptor(backbone: Backbone, ckpt_path: str | None = None, scales: int | None = None,
                        uniform: bool = False, **kw) -> nn.Module:
    """Kim & Yoon's regional attention from a ``train.py model=regional_attention`` checkpoint (attention,
    regional whitening and region settings); ``scales`` overrides its test scale S; ``uniform=True`` drops the
    attention (Φ ≡ 1: the paper's baseline, mean-pooled R-MAC on the same regions and whitening)."""
    if not ckpt_path:
        raise ValueError("method=regional_attention needs a trained checkpoint: pass ckpt_path=RUN/checkpoints/"
                         "best.ckpt (from `python train.py model=regional_attention ...`)")
    if kw:
        raise ValueError(f"method=regional_attention takes ckpt_path, scales and uniform, not {sorted(kw)}")
    net = load_regional_attention(ckpt_path, backbone)
    if scales is not None:
        net.scales = int(scales)
    return UniformRegions(net) if uniform else net
