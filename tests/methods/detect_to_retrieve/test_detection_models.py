"""Landmark detectors: torchvision models built class-agnostic, backbone weights loaded (or a clear error), the
checkpoint entry read back by ``load_detector``."""
from __future__ import annotations

import pytest
import torch
from torchvision.models import mobilenet_v3_large, resnet50

from lit_retrieval.backbones import WeightsNotFoundError
from lit_retrieval.methods.detect_to_retrieve.detector.models import (CKPT_KEY, build_detector, detect, detector_config,
                                                                      load_detector)

IMAGES = [torch.rand(3, 160, 200), torch.rand(3, 128, 176)]
TARGETS = [{"boxes": torch.tensor([[10.0, 20.0, 120.0, 150.0]]), "labels": torch.tensor([1])},
           {"boxes": torch.tensor([[30.0, 10.0, 100.0, 90.0]]), "labels": torch.tensor([1])}]
SMALL = {"min_size": 128, "max_size": 224}


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return build_detector("fasterrcnn_lite0", "random", **SMALL)


def test_lite0_trains_only_heads_and_detects(lite0):
    frozen = {n for n, p in lite0.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("backbone.features.") for n in frozen)  # EfficientNet-Lite0 frozen
    lite0.train()
    losses = lite0(IMAGES, TARGETS)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert lite0.backbone.reduce[0].weight.grad is not None
    assert not lite0.backbone.features.training  # frozen BatchNorm statistics while training
    (boxes, scores), _ = detect(lite0, IMAGES)
    assert lite0.training  # detect() restores the mode
    assert boxes.shape[1] == 4 and torch.all(scores[:-1] >= scores[1:])
    assert torch.all(boxes[:, 2] <= 200) and torch.all(boxes[:, 3] <= 160)  # input-image pixels
    assert lite0.roi_heads.box_predictor.cls_score.out_features == 2  # background + landmark


@pytest.mark.parametrize("arch,make,prefix", [("ssdlite_mobilenet_v3", mobilenet_v3_large, "backbone.features."),
                                              ("fasterrcnn_resnet50_fpn", resnet50, "backbone.body.")])
def test_backbone_weights_from_a_file(tmp_path, arch, make, prefix):
    torch.manual_seed(1)
    ref = make(weights=None)
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    det = build_detector(arch, str(path))
    conv = next(v for k, v in det.state_dict().items() if k.startswith(prefix) and k.endswith("weight")
                and v.ndim == 4)
    first = next(v for v in ref.state_dict().values() if v.ndim == 4)
    assert torch.equal(conv, first)  # the first convolution came from the file


def test_missing_imagenet_weights_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("LIT_RETRIEVAL_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="mobilenet_v3_large.*put it at"):
        build_detector("ssdlite_mobilenet_v3", "imagenet")


def test_bad_arch_and_layers():
    with pytest.raises(ValueError, match="unknown detector arch"):
        build_detector("yolo", "random")
    with pytest.raises(ValueError, match="frozen"):
        build_detector("fasterrcnn_lite0", "random", trainable_backbone_layers=2)


def test_checkpoint_round_trip(lite0, tmp_path):
    path = tmp_path / "det.ckpt"
    torch.save({CKPT_KEY: {"config": detector_config("fasterrcnn_lite0", None, **SMALL),
                           "state_dict": lite0.state_dict()}}, path)
    net, cfg = load_detector(path)
    assert cfg["kwargs"] == SMALL and not net.training
    lite0.eval()
    with torch.inference_mode():
        a, b = lite0(IMAGES[:1])[0], net(IMAGES[:1])[0]
    assert torch.allclose(a["boxes"], b["boxes"]) and torch.allclose(a["scores"], b["scores"])
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a landmark-detector checkpoint"):
        load_detector(tmp_path / "other.ckpt")


def test_non_finite_loss_stops_with_the_fix():
    from lit_retrieval.methods.detect_to_retrieve.detector.module import LandmarkDetectorModule

    module = LandmarkDetectorModule({"arch": "fasterrcnn_lite0", "backbone_weights": "random", "kwargs": SMALL},
                                    {"name": "efficientnet_lite0", "weights": "random"}, {"lr": 0.01})
    class NanLoss(torch.nn.Module):
        def forward(self, images, targets):
            return {"loss_classifier": torch.tensor(float("nan"))}

    module.net = NanLoss()
    with pytest.raises(FloatingPointError, match="lower model.optimizer.lr"):
        module.training_step((IMAGES, TARGETS), 0)
