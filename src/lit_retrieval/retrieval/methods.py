"""The registry of retrieval methods: image batch -> L2-normalised global descriptors.

A method is an ``nn.Module`` whose ``forward`` maps *normalised* images ``N×3×H×W`` to ``N×D`` L2-normalised
descriptors, with ``power`` (the exponent for multi-scale averaging) and ``cache_key()`` (everything besides the
backbone that changes its output). Learned descriptors register the same way, with ``@register_method(name)``.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from .. import pooling
from ..backbones import Backbone
from ..data.features import is_map

METHODS: dict[str, Callable[..., nn.Module]] = {}


def register_method(name: str):
    def deco(factory):
        METHODS[name] = factory
        return factory
    return deco


def build_method(name: str, backbone: Backbone, **params: Any) -> nn.Module:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {sorted(METHODS)} (eval.py method=...)")
    return METHODS[name](backbone, **params)


class GlobalPooling(nn.Module):
    """Frozen backbone -> global pooling (mac, spoc, gem, crow, rmac) -> L2. The input may also be the backbone's
    maps of the images (``takes_maps``: the training callback pools the maps it holds instead of re-running the
    backbone; the same numbers)."""

    def __init__(self, backbone: Backbone, pooling_name: str, learned: dict[str, Any] | None = None,
                 learned_key: dict[str, Any] | None = None, **params: Any):
        """``params``: the pooling's parameters; ``learned``: learned inputs (e.g. a regional whitening), with
        ``learned_key`` describing them for the descriptor cache."""
        super().__init__()
        if pooling_name not in pooling.POOLINGS:
            raise ValueError(f"unknown pooling {pooling_name!r}: choose one of {sorted(pooling.POOLINGS)}")
        self.backbone, self.pooling_name, self.params = backbone, pooling_name, dict(params)
        self.learned, self.learned_key = dict(learned or {}), dict(learned_key or {})
        self.power = float(params["p"]) if pooling_name == "gem" else 1.0

    @property
    def takes_maps(self) -> bool:
        """Whether the descriptor of a map equals that of its image (Kim & Yoon's pixel grid needs the image size)."""
        return not (self.pooling_name == "rmac" and self.params.get("variant") == "kimyoon")

    def forward(self, x: Tensor) -> Tensor:
        fmap = x if is_map(x, self.backbone.out_channels) else self.backbone(x)
        params = {**self.params, **self.learned}
        if self.pooling_name == "rmac" and params.get("variant") == "kimyoon":
            params.update(image_hw=tuple(x.shape[-2:]), stride=self.backbone.stride)
        return pooling.l2n(pooling.POOLINGS[self.pooling_name](fmap, **params))

    def cache_key(self) -> dict[str, Any]:
        return {"method": self.pooling_name, **self.params, **self.learned_key}


for _name in ("mac", "spoc", "crow"):
    register_method(_name)(lambda backbone, _n=_name, **kw: GlobalPooling(backbone, _n, **kw))


@register_method("gem")
def _gem(backbone: Backbone, p: float = 3.0, **kw) -> GlobalPooling:
    return GlobalPooling(backbone, "gem", p=float(p), **kw)


@register_method("rmac")
def _rmac(backbone: Backbone, L: int = 3, variant: str = "cirtorch", region_whitening=None,
          region_whitening_key: dict | None = None, **kw) -> GlobalPooling:
    """R-MAC; ``variant="tolias"`` needs ``region_whitening``, a PCA-whitening of regional vectors learned on
    another dataset (``eval.py`` learns it on ``method.region_whitening.dataset``)."""
    if variant == "tolias" and region_whitening is None:
        raise ValueError("rmac variant 'tolias' whitens every regional vector: pass region_whitening (learned on "
                         "region vectors of another dataset, see "
                         "lit_retrieval.global_retriever.learn_region_whitening)")
    learned = {"region_whitening": region_whitening} if variant == "tolias" else None
    return GlobalPooling(backbone, "rmac", learned=learned, learned_key=region_whitening_key if learned else None,
                         L=int(L), variant=variant, **kw)


@register_method("regional_attention")
def _regional_attention(backbone: Backbone, ckpt_path: str | None = None, scales: int | None = None,
                        uniform: bool = False, **kw) -> nn.Module:
    """Kim & Yoon's regional attention from a ``train.py model=regional_attention`` checkpoint (attention,
    regional whitening and region settings); ``scales`` overrides its test scale S; ``uniform=True`` drops the
    attention (Φ ≡ 1: the paper's baseline, mean-pooled R-MAC on the same regions and whitening)."""
    if not ckpt_path:
        raise ValueError("method=regional_attention needs a trained checkpoint: pass ckpt_path=RUN/checkpoints/"
                         "best.ckpt (from `python train.py model=regional_attention ...`)")
    if kw:
        raise ValueError(f"method=regional_attention takes ckpt_path, scales and uniform, not {sorted(kw)}")
    from ..models import UniformRegions, load_regional_attention

    net = load_regional_attention(ckpt_path, backbone)
    if scales is not None:
        net.scales = int(scales)
    return UniformRegions(net) if uniform else net
