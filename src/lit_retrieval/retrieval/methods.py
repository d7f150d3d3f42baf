"""The registry of retrieval methods: image batch -> L2-normalised global descriptors.

A method is an ``nn.Module`` whose ``forward`` maps *normalised* images ``N×3×H×W`` to ``N×D`` L2-normalised
descriptors, with ``power`` (the exponent for multi-scale averaging) and ``cache_key()`` (everything besides the
backbone that changes its output). Later issues register learned methods with ``@register_method(name)``.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from .. import pooling
from ..backbones import Backbone

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
    """Frozen backbone -> global pooling (mac, spoc, gem, crow, rmac) -> L2."""

    def __init__(self, backbone: Backbone, pooling_name: str, **params: Any):
        super().__init__()
        if pooling_name not in pooling.POOLINGS:
            raise ValueError(f"unknown pooling {pooling_name!r}: choose one of {sorted(pooling.POOLINGS)}")
        self.backbone, self.pooling_name, self.params = backbone, pooling_name, dict(params)
        self.power = float(params["p"]) if pooling_name == "gem" else 1.0

    def forward(self, x: Tensor) -> Tensor:
        fmap = self.backbone(x)
        params = self.params
        if self.pooling_name == "rmac" and params.get("variant") == "kimyoon":
            params = {**params, "image_hw": tuple(x.shape[-2:]), "stride": self.backbone.stride}
        return pooling.l2n(pooling.POOLINGS[self.pooling_name](fmap, **params))

    def cache_key(self) -> dict[str, Any]:
        return {"method": self.pooling_name, **self.params}


for _name in ("mac", "spoc", "crow"):
    register_method(_name)(lambda backbone, _n=_name, **kw: GlobalPooling(backbone, _n, **kw))


@register_method("gem")
def _gem(backbone: Backbone, p: float = 3.0, **kw) -> GlobalPooling:
    return GlobalPooling(backbone, "gem", p=float(p), **kw)


@register_method("rmac")
def _rmac(backbone: Backbone, L: int = 3, variant: str = "cirtorch", **kw) -> GlobalPooling:
    if variant == "tolias":
        raise ValueError(
            "eval.py method=rmac supports variant=cirtorch|kimyoon; the 'tolias' variant needs a regional "
            "PCA-whitening learned on another dataset: call lit_retrieval.pooling.rmac(..., variant='tolias', "
            "region_whitening=...) directly"
        )
    return GlobalPooling(backbone, "rmac", L=int(L), variant=variant, **kw)
