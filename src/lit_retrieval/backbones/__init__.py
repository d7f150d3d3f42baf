"""Frozen CNN feature extractors with their own ImageNet classifier head, built by name.

Example::

    backbone = build_backbone("efficientnet_lite0")   # bundled ImageNet weights, no download
    fmap = backbone.features(images)                  # N×1280×h×w, images N×3×H×W in [0, 1]
    logits = backbone.head(fmap.mean(dim=(2, 3)))     # N×1000 through the frozen classifier
"""
from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone
from .efficientnet_lite import EfficientNetLite0
from .torchvision_cnn import TorchvisionResNet, TorchvisionVGG16
from .weights import WeightsMismatchError, WeightsNotFoundError

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet101": partial(TorchvisionResNet, "resnet101"),
    "resnet50": partial(TorchvisionResNet, "resnet50"),
    "vgg16": TorchvisionVGG16,
    "efficientnet_lite0": EfficientNetLite0,
}


def build_backbone(name: str, weights: str | os.PathLike = "imagenet", **kw) -> Backbone:
    """Build the frozen backbone ``name`` with ``weights`` ("imagenet", "random" or a .pth path).

    Extra keyword: ``weights_file`` (explicit ImageNet checkpoint for ``weights="imagenet"``).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](weights=weights, **kw)


__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "EfficientNetLite0",
    "TorchvisionResNet",
    "TorchvisionVGG16",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "build_backbone",
]
