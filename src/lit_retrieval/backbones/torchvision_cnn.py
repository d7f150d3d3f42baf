"""torchvision ResNet-50/101 and VGG16 as frozen feature extractors (cirtorch conventions).

Weights are torchvision state dicts (the ``IMAGENET1K_V1`` checkpoints for ``weights="imagenet"``), loaded
into a network built with ``weights=None``; see :mod:`lit_retrieval.backbones.weights`.
"""
from __future__ import annotations

import os

from torch import Tensor, nn
from torchvision import models

from .base import Backbone
from .weights import load_state_dict_checked, read_state_dict, resolve_imagenet_checkpoint, weights_kind

_RESNETS = {
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1),
}
#: backbone name -> address of the torchvision ImageNet checkpoint ``weights="imagenet"`` loads
IMAGENET_URLS = {**{arch: imagenet.url for arch, (_, imagenet) in _RESNETS.items()},
                 "vgg16": models.VGG16_Weights.IMAGENET1K_V1.url}


def load_torchvision_weights(
    model: nn.Module, arch: str, url: str, weights: str | os.PathLike, weights_file: str | os.PathLike | None
) -> None:
    """Fill ``model`` (a torchvision ``arch`` built with ``weights=None``) according to ``weights``."""
    kind = weights_kind(weights)
    if kind == "random":
        return
    if kind == "imagenet":
        state, source = resolve_imagenet_checkpoint(arch, url, weights_file), f"ImageNet checkpoint for {arch}"
    else:
        state, source = read_state_dict(weights), f"file {str(weights)!r}"
    load_state_dict_checked(model, state, source)


class TorchvisionResNet(Backbone):
    """ResNet-50/101: features = conv1 ... layer4 (post-ReLU, 2048 channels, stride 32); head = ``fc``."""

    def __init__(
        self, arch: str = "resnet101", weights: str | os.PathLike = "imagenet",
        weights_file: str | os.PathLike | None = None,
    ) -> None:
        if arch not in _RESNETS:
            raise ValueError(f"unknown ResNet {arch!r}; choose one of {sorted(_RESNETS)}")
        super().__init__(arch, out_channels=2048, stride=32)
        self.net = _RESNETS[arch][0](weights=None)
        load_torchvision_weights(self.net, arch, IMAGENET_URLS[arch], weights, weights_file)
        self.freeze()

    def _features(self, x: Tensor) -> Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def _head(self, pooled: Tensor) -> Tensor:
        return self.net.fc(pooled)

    def _logits(self, x: Tensor) -> Tensor:
        return self.net(x)


class TorchvisionVGG16(Backbone):
    """VGG16: features = ``features[:-1]`` (conv5_3 + ReLU, last max-pool dropped: 512 channels, stride 16).

    ``head`` feeds the pooled 512-vector, broadcast to the 7×7 map that VGG's adaptive average pool
    outputs, through VGG's ``classifier``: it equals VGG's classifier applied to a spatially constant
    feature map. ``logits`` is VGG's own classification (last max-pool, 7×7 average pool, classifier).
    """

    def __init__(
        self, weights: str | os.PathLike = "imagenet", weights_file: str | os.PathLike | None = None
    ) -> None:
        super().__init__("vgg16", out_channels=512, stride=16)
        self.net = models.vgg16(weights=None)
        load_torchvision_weights(self.net, "vgg16", IMAGENET_URLS["vgg16"], weights, weights_file)
        self.freeze()

    def _features(self, x: Tensor) -> Tensor:
        return self.net.features[:-1](x)

    def _head(self, pooled: Tensor) -> Tensor:
        h, w = self.net.avgpool.output_size
        grid = pooled[:, :, None, None].expand(-1, -1, h, w)
        return self.net.classifier(grid.flatten(1))

    def _logits(self, x: Tensor) -> Tensor:
        return self.net(x)
