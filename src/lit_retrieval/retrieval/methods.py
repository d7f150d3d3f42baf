"""The registry of retrieval methods: image batch -> L2-normalised global descriptors.

A method is an ``nn.Module`` whose ``forward`` maps *normalised* images ``N×3×H×W`` to ``N×D`` L2-normalised
descriptors, with ``power`` (the exponent for multi-scale averaging) and ``cache_key()`` (everything besides the
backbone that changes its output). Learned descriptors register the same way, with ``@register_method(name)``.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import Tensor, nn

from .. import pooling
from ..backbones import Backbone
from ..data.features import is_map

METHODS: dict[str, Callable[..., nn.Module] | str] = {}


def resolve(target: Any) -> Any:
    """A registry entry: the object itself, or ``"module:attribute"`` imported now (the registries name a paper's
    code by string, so the engine never imports a paper's package)."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register_method(name: str):
    """``@register_method(name)`` on a factory ``(backbone, **params) -> nn.Module``, or
    ``register_method(name)("module:attribute")``."""
    def deco(factory):
        METHODS[name] = factory
        return factory
    return deco


def build_method(name: str, backbone: Backbone, **params: Any) -> nn.Module:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {sorted(METHODS)} (eval.py method=...)")
    return resolve(METHODS[name])(backbone, **params)


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
                         "lit_retrieval.methods.aml.retriever.learn_region_whitening)")
    learned = {"region_whitening": region_whitening} if variant == "tolias" else None
    return GlobalPooling(backbone, "rmac", learned=learned, learned_key=region_whitening_key if learned else None,
                         L=int(L), variant=variant, **kw)


# learned descriptors live in their paper's package: imported on first use, so the engine never imports a paper
register_method("regional_attention")("lit_retrieval.methods.regional_attention.network:retrieval_descriptor")
