"""The landmark detector on stored trunk maps (``data.features=cached``): the stages after the trunk give the online
detector's losses and detections, flips come from the map of the flipped image, and the options that cannot be
cached are clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_retrieval.data.synthetic.procedural import ProceduralBackgrounds, ProceduralObjects
from lit_retrieval.methods.detect_to_retrieve.detector.data import (BoxesDataModule, DetectionDataset, SyntheticBoxes,
                                                                    cached_boxes, collate_detection)
from lit_retrieval.methods.detect_to_retrieve.detector.models import build_detector, rcnn_from_trunk
from lit_retrieval.methods.detect_to_retrieve.detector.module import LandmarkDetectorModule

SMALL = {"min_size": 96, "max_size": 128, "channels": 32, "representation_size": 64,
         "anchor_sizes": [32, 64, 128, 256, 512]}
FPN = {**SMALL, "fpn": True, "anchor_sizes": [16, 32, 64, 128]}


def _module(kwargs: dict) -> LandmarkDetectorModule:
    torch.manual_seed(0)
    return LandmarkDetectorModule(detector={"arch": "fasterrcnn_lite0", "backbone_weights": "imagenet",
                                            "kwargs": dict(kwargs)},
                                  backbone={"name": "efficientnet_lite0", "weights": "imagenet"},
                                  optimizer={"lr": 0.01})


def _boxes(seed: int = 0) -> SyntheticBoxes:
    return SyntheticBoxes(ProceduralObjects(3, seed=11), ProceduralBackgrounds(4, seed=11), syntheses=2,
                          image_size=128, seed=seed, resample=False)


def _online_losses(module, images, targets):
    torch.manual_seed(1)
    return module._run(images, targets)


@pytest.mark.parametrize("kwargs", [SMALL, FPN], ids=["one map", "fpn"])
@pytest.mark.parametrize("flip", [0.0, 1.0], ids=["as is", "flipped"])
def test_cached_and_online_detector_steps_give_the_same_losses_and_detections(tmp_path, kwargs, flip):
    module = _module(kwargs)
    source = _boxes()
    cached = cached_boxes(source, module.frozen_encoder(), {"dir": tmp_path, "dtype": "float32", "chunk_size": 4},
                          "test boxes", train=True, hflip_prob=flip)
    assert set(cached.store.maps) == {f"{i}.{lvl}" for i in (["image", "flip"] if flip else ["image"])
                                      for lvl in module.net.backbone.levels}
    online = DetectionDataset(source, train=True, hflip_prob=flip)
    module.train()
    module.net.transform.eval()  # torchvision's transform draws no random resize then: the same box samples
    for i in range(2):
        maps, target = collate_detection([cached[i]])
        images, targets = collate_detection([online[i]])
        assert torch.allclose(target[0]["boxes"], module.net.transform([images[0]], targets)[1][0]["boxes"])
        lo, lc = _online_losses(module, images, targets), _online_losses(module, maps, target)
        assert set(lo) == set(lc) and all(torch.isclose(lo[k], lc[k], rtol=1e-4, atol=1e-5) for k in lo), (lo, lc)
    # validation: detections in pixels of the image, ground truth unresized
    val = cached_boxes(source, module.frozen_encoder(), {"dir": tmp_path, "dtype": "float32", "chunk_size": 4},
                       "test boxes", train=False)
    module.eval()
    for i in range(2):  # one image at a time: a batch pads the smaller images, online and cached alike
        maps, target = collate_detection([val[i]])
        images, targets = collate_detection([DetectionDataset(source, train=False)[i]])
        assert torch.equal(target[0]["boxes"], targets[0]["boxes"])
        with torch.no_grad():
            dc, do = module._run(maps, target)[0], module.net(images)[0]
        assert len(dc["boxes"]) == len(do["boxes"]) > 0
        assert torch.allclose(dc["boxes"], do["boxes"], atol=1e-3) and torch.allclose(dc["scores"], do["scores"],
                                                                                        atol=1e-5)
    with torch.no_grad():
        both = module._run(*collate_detection([val[0], val[1]]))
    assert len(both) == 2 and all(d["boxes"].shape[1] == 4 for d in both)


def test_the_flipped_items_read_the_map_of_the_flipped_image(tmp_path):
    module = _module(SMALL)
    cached = cached_boxes(_boxes(), module.frozen_encoder(), {"dir": tmp_path, "dtype": "float16", "chunk_size": 4},
                          "test boxes", train=True, hflip_prob=0.5)
    item = cached.store.get(0)
    as_is, flipped = item["image.c5"], item["flip.c5"]
    # not the flipped map: the receptive fields of a CNN are not mirror-symmetric
    assert not np.allclose(flipped, as_is[..., ::-1], atol=1e-2)
    drawn = {bool(torch.equal(cached[i][0]["c5"], torch.from_numpy(cached.store.get(i)["flip.c5"])))
             for i in range(len(cached)) for _ in range(1)}
    cached.set_epoch(1)
    drawn |= {bool(torch.equal(cached[i][0]["c5"], torch.from_numpy(cached.store.get(i)["flip.c5"])))
              for i in range(len(cached))}
    assert drawn == {True, False}


def test_box_head_width_and_anchors_are_options():
    small = build_detector("fasterrcnn_lite0", **SMALL)
    default = build_detector("fasterrcnn_lite0", min_size=96, max_size=128)
    n = lambda m: sum(p.numel() for p in m.roi_heads.box_head.parameters())  # noqa: E731
    assert n(default) == 256 * 7 * 7 * 1024 + 1024 + 1024 * 1024 + 1024  # torchvision's head
    assert n(small) == 32 * 7 * 7 * 64 + 64 + 64 * 64 + 64
    with pytest.raises(ValueError, match="one anchor size per map"):
        build_detector("fasterrcnn_lite0", **{**FPN, "anchor_sizes": [32, 64]})


def test_what_cannot_be_cached_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="source.kind=coco reads files"):
        BoxesDataModule(source={"kind": "coco", "dir": str(tmp_path)}, features="cached",
                        feature_store={"dir": str(tmp_path)})
    net = build_detector("fasterrcnn_resnet50_fpn", backbone_weights="random", min_size=96, max_size=128)
    with pytest.raises(ValueError, match="trains its backbone"):
        rcnn_from_trunk(net, [], [])
    module = _module({**SMALL, "min_size": [96, 112]})
    with pytest.raises(ValueError, match="one min_size"):
        module.frozen_encoder()
    with pytest.raises(ValueError, match="fixed pool"):
        cached_boxes(SyntheticBoxes(ProceduralObjects(2, seed=11), ProceduralBackgrounds(2, seed=11), resample=True),
                     _module(SMALL).frozen_encoder(), {"dir": tmp_path, "dtype": "float16", "chunk_size": 4}, "x",
                     train=True)


def test_more_objects_per_image_keep_every_box_visible_and_the_first_paste(tmp_path):
    one = _boxes()
    many = SyntheticBoxes(ProceduralObjects(3, seed=11), ProceduralBackgrounds(4, seed=11), syntheses=2,
                          image_size=128, seed=0, resample=False, pastes=(2, 3))
    counts = []
    for i in range(len(many)):
        boxes = many.load(i)[1]
        counts.append(len(boxes))
        assert np.array_equal(boxes[0], one.load(i)[1][0])  # the item's own object, pasted as with one object
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                w = min(boxes[a][2], boxes[b][2]) - max(boxes[a][0], boxes[b][0])
                h = min(boxes[a][3], boxes[b][3]) - max(boxes[a][1], boxes[b][1])
                area = min(np.prod(boxes[a][2:] - boxes[a][:2]), np.prod(boxes[b][2:] - boxes[b][:2]))
                assert max(w, 0) * max(h, 0) <= SyntheticBoxes.MAX_COVER * area
    assert max(counts) > 1 and max(counts) <= 3
    stored = cached_boxes(many, _module(SMALL).frozen_encoder(),
                          {"dir": tmp_path, "dtype": "float16", "chunk_size": 4}, "test boxes", train=False)
    assert [len(stored[i][1]["boxes"]) for i in range(len(many))] == counts
    with pytest.raises(ValueError, match="1 <= lo <= hi"):
        BoxesDataModule(pastes=[0, 2])
