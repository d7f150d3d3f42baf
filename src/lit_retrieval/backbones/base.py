"""The frozen feature-extractor interface shared by every backbone.

A :class:`Backbone` maps normalised images of any size to the post-ReLU activations of the network's
last convolutional layer (N×C×h×w, non-negative), and exposes the network's own frozen ImageNet
classifier as :meth:`Backbone.head` (N×C pooled vector -> N×1000 logits) so that a pooling can be trained
with a classification loss through it. It is always in eval mode (frozen BatchNorm statistics) and its
parameters never require gradients; gradients still flow through it to its inputs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# [0,1] images pass; 0-255 images and already-normalised ones (ImageNet range about [-2.1, 2.6]) do not.
_RANGE_TOLERANCE = 0.5


class Backbone(nn.Module):
    """Frozen CNN: ``forward`` gives the last conv activation map, ``head`` the ImageNet classifier.

    Subclasses build the network, load its weights, then call :meth:`freeze`, and implement
    ``_features`` (normalised images -> activation map), ``_head`` (pooled -> logits) and ``_logits``
    (normalised images -> the network's own full classification).
    """

    name: str
    out_channels: int
    stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(
        self,
        name: str,
        out_channels: int,
        stride: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.name, self.out_channels, self.stride = name, out_channels, stride
        self.mean, self.std = tuple(mean), tuple(std)
        # Non-persistent: they follow .to(device) but stay out of checkpoints.
        self.register_buffer("_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    # -- public API ---------------------------------------------------------------------------------
    def normalize(self, images: Tensor) -> Tensor:
        """N×3×H×W RGB images in [0, 1] -> the network's normalised input."""
        self._check_images(images, "normalize")
        lo, hi = float(images.min()), float(images.max())
        if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
            raise ValueError(
                f"{self.name}.normalize expects RGB images in [0, 1], got values in [{lo:.3g}, {hi:.3g}]: "
                "divide 0-255 images by 255, and pass raw images (not already-normalised ones)."
            )
        return (images - self._mean) / self._std

    def forward(self, x: Tensor) -> Tensor:
        """Normalised N×3×H×W images (any H, W; no crop) -> N×C×h×w post-ReLU activations."""
        self._check_images(x, "forward")
        return self._features(x)

    def features(self, images: Tensor) -> Tensor:
        """[0, 1] images -> activation map: :meth:`normalize` then :meth:`forward`."""
        return self(self.normalize(images))

    def head(self, pooled: Tensor) -> Tensor:
        """N×C pooled vectors -> N×1000 logits through the network's own frozen classifier."""
        if pooled.ndim != 2 or pooled.shape[1] != self.out_channels:
            raise ValueError(
                f"{self.name}.head expects pooled vectors of shape N×{self.out_channels}, got "
                f"{tuple(pooled.shape)}: pool the feature map over its spatial dimensions first."
            )
        return self._head(pooled)

    def logits(self, images: Tensor) -> Tensor:
        """The network's own full classification (its pooling and head) of [0, 1] images -> N×1000."""
        return self._logits(self.normalize(images))

    def freeze(self) -> Backbone:
        """Stop gradients to all parameters and switch to eval mode (done once at construction)."""
        self.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Always eval mode, whatever ``mode``: BatchNorm statistics and dropout stay frozen."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_channels={self.out_channels}, stride={self.stride}"

    # -- for subclasses -------------------------------------------------------------------------------
    def _features(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _features")

    def _head(self, pooled: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _head")

    def _logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _logits")

    def _check_images(self, x: Tensor, where: str) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            dtype = x.dtype if isinstance(x, Tensor) else ""
            raise ValueError(
                f"{self.name}.{where} expects a float N×3×H×W RGB batch, got {shape} {dtype}: add the batch "
                "dimension with x[None], convert grey images to RGB and uint8 to float."
            )
