"""Landmark box data (data=synthetic_boxes): synthetic, COCO and Google Landmark Boxes sources, flips, splits,
loaders, COCO AP and pictures."""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF, shared_path
from omegaconf import OmegaConf
from PIL import Image

from lit_retrieval.data.errors import DataError
from lit_retrieval.data.pairs import split_sources
from lit_retrieval.data.synthetic import ProceduralBackgrounds, ProceduralObjects
from lit_retrieval.data.synthetic.compositor import PasteTransform, compose
from lit_retrieval.methods.detect_to_retrieve.detector import ap as ap_module
from lit_retrieval.methods.detect_to_retrieve.detector import data
from lit_retrieval.methods.detect_to_retrieve.detector.ap import coco_ap
from lit_retrieval.methods.detect_to_retrieve.detector.data import (BoxesDataModule, CocoBoxes, DetectionDataset,
                                                                    LandmarkBoxesCSV, SyntheticBoxes, collate_detection)
from lit_retrieval.methods.detect_to_retrieve.detector.viz import save_detections, save_learning_curve

SIZE = 96


def _synthetic(**kwargs) -> SyntheticBoxes:
    objects, backgrounds = split_sources(ProceduralObjects(6), ProceduralBackgrounds(6), (0.5, 0.5))
    return SyntheticBoxes(objects[0], backgrounds[0], **{"syntheses": 2, "image_size": SIZE, "seed": 3, **kwargs})


def _module(**kwargs) -> BoxesDataModule:
    args = {"objects": {"n": 8}, "backgrounds": {"n": 10}, "syntheses": 2, "image_size": SIZE, "batch_size": 2,
            **kwargs}
    dm = BoxesDataModule(**args)
    dm.setup("fit")
    return dm


def _uint8(image: torch.Tensor) -> np.ndarray:
    return (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


# ----------------------------------------------------------------------------------------------- synthetic

def test_synthetic_item_is_the_compositor_paste() -> None:
    src = _synthetic()
    assert len(src) == 3 * 2 and len(src.keys) == len(src)
    for i in (0, 3):
        image, boxes, key = src.load(i)
        h, w = image.shape[:2]
        assert image.dtype == np.uint8 and image.shape[2] == 3 and max(h, w) == SIZE
        assert boxes.dtype == np.float32 and boxes.shape == (1, 4) and key == src.keys[i]
        x1, y1, x2, y2 = (int(v) for v in boxes[0])
        assert boxes[0].tolist() == [x1, y1, x2, y2] and 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h

        # the box is the compositor's: replaying the recorded paste on the item's background gives it back
        same, box, info = src.synthesize(i)
        background = src.background(i)
        replay, replay_box, _ = compose(background, src.instance(i // 2), PasteTransform(**info["transform"]))
        assert box == replay_box == [x1, y1, x2, y2] and np.array_equal(same, image) and np.array_equal(replay, image)
        # ... and outside it (plus the feathered edge) the background is untouched
        outside = np.ones((h, w), dtype=bool)
        outside[max(y1 - 3, 0):y2 + 3, max(x1 - 3, 0):x2 + 3] = False
        assert np.array_equal(image[outside], background[outside])
        assert np.abs(image[y1:y2, x1:x2].astype(int) - background[y1:y2, x1:x2]).mean() > 5
    with pytest.raises(IndexError):
        src.load(len(src))


def test_synthetic_determinism() -> None:
    src, twin = _synthetic(), _synthetic()
    a = src.load(1)
    assert np.array_equal(a[0], twin.load(1)[0]) and np.array_equal(a[1], twin.load(1)[1])
    src.set_epoch(1)
    b = src.load(1)
    assert not np.array_equal(a[0], b[0]) or not np.array_equal(a[1], b[1])
    twin.set_epoch(1)
    assert np.array_equal(b[0], twin.load(1)[0])
    assert not np.array_equal(_synthetic(seed=4).load(1)[0], a[0])
    fixed = _synthetic(resample=False)
    c = fixed.load(1)
    fixed.set_epoch(5)
    assert np.array_equal(c[0], fixed.load(1)[0]) and np.array_equal(c[1], fixed.load(1)[1])


def test_hflip_flips_boxes_with_the_image() -> None:
    src = _synthetic()
    plain, flipped = DetectionDataset(src, train=False), DetectionDataset(src, train=True, hflip_prob=1.0)
    for i in range(len(src)):
        (image, target), (fimage, ftarget) = plain[i], flipped[i]
        assert torch.equal(fimage, image.flip(-1)) and ftarget["image_id"] == target["image_id"] == i
        (x1, y1, x2, y2), (fx1, fy1, fx2, fy2) = (b.int().tolist() for b in (target["boxes"][0], ftarget["boxes"][0]))
        assert (fy1, fy2, fx2 - fx1) == (y1, y2, x2 - x1)
        assert torch.equal(fimage[:, fy1:fy2, fx1:fx2], image[:, y1:y2, x1:x2].flip(-1))  # the same pixels
    half = DetectionDataset(src, train=True, hflip_prob=0.5, seed=1)
    flips = [half.flipped(i) for i in range(len(src))]
    assert flips == [DetectionDataset(src, train=True, seed=1).flipped(i) for i in range(len(src))]
    half.set_epoch(3)
    assert src.epoch == 3 and [half.flipped(i) for i in range(40)] != [DetectionDataset(src, True, seed=1).flipped(i)
                                                                         for i in range(40)]


def test_synthetic_split_by_image() -> None:
    dm = _module()
    train, val = dm.train_set.source, dm.val_set.source
    objects, backgrounds = split_sources(ProceduralObjects(8), ProceduralBackgrounds(10), [0.5, 0.1, 0.4])
    train_src, val_src = {r.source for r in train.refs}, {r.source for r in val.refs}
    assert train_src == {r.source for r in objects[0].refs} and val_src == {r.source for r in objects[1].refs}
    held = {r.source for r in objects[2].refs}
    assert held and not train_src & val_src and not (train_src | val_src) & held
    train_bg, val_bg = set(train.backgrounds.keys), set(val.backgrounds.keys)
    assert train_bg and val_bg and not train_bg & val_bg and not (train_bg | val_bg) & set(backgrounds[2].keys)
    assert train.resample and not val.resample and dm.train_set.train and not dm.val_set.train
    assert train.paste_params.scale == (0.25, 0.8)
    info = dm.describe()
    assert (info["n_train_images"], info["n_val_images"], info["train"]["n_objects"]) == (8, 2, 4)
    assert len(_module(limit_train=2).train_set) == 2 * 2


def test_coco_objects_on_folder_backgrounds() -> None:
    coco, folder = shared_path("data", "coco128"), shared_path("data", "imagenet-samples")
    dm = _module(objects={"kind": "coco", "dir": str(coco)}, backgrounds={"kind": "folder", "dir": str(folder)},
                 limit_train=2, limit_val=1)
    train, val = dm.train_set.source, dm.val_set.source
    assert not {r.source for r in train.refs} & {r.source for r in val.refs}
    assert not set(train.backgrounds.keys) & set(val.backgrounds.keys)
    image, target = dm.train_set[0]
    assert max(image.shape[1:]) == SIZE and target["boxes"].shape == (1, 4)
    assert dm.describe()["train"]["objects"]["kind"] == "coco"


# ----------------------------------------------------------------------------------------------- COCO

def test_coco_boxes() -> None:
    root = shared_path("data", "coco128")
    raw = json.loads((root / "annotations" / "instances.json").read_text())
    kept = [a for a in raw["annotations"] if not a.get("iscrowd", 0)]
    src = CocoBoxes(root)
    assert len(src) == len(raw["images"]) and sum(src.count(i) for i in range(len(src))) == len(kept)
    assert src.describe()["n_boxes"] == len(kept)
    i = max(range(len(src)), key=src.count)
    anns = [a for a in kept if a["image_id"] == src.image_ids[i]]
    want = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float32)
    image, boxes, key = src.load(i)
    assert np.allclose(boxes, want) and np.allclose(src.boxes(i), want) and key == str(src.files[i])
    assert image.shape == (*src.sizes[i], 3) and image.dtype == np.uint8

    explicit = CocoBoxes(root / "annotations" / "instances.json", root / "images")
    assert explicit.keys == src.keys
    people = CocoBoxes(root, categories=["person"], skip_empty=True)
    person_id = next(c["id"] for c in raw["categories"] if c["name"] == "person")
    assert sum(people.count(j) for j in range(len(people))) == sum(a["category_id"] == person_id for a in kept)
    assert all(people.count(j) for j in range(len(people))) and len(people) < len(src)
    with pytest.raises(DataError, match="unknown COCO categories"):
        CocoBoxes(root, categories=["cathedral"])

    dm = _module(source={"kind": "coco", "dir": str(root)}, limit_train=4, limit_val=3)
    assert (len(dm.train_set), len(dm.val_set)) == (4, 3)
    assert not set(dm.train_set.source.keys) & set(dm.val_set.source.keys)
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == len(targets) == 2 and images[0].shape[0] == 3
    assert dm.describe()["train"]["kind"] == "coco"


# ---------------------------------------------------------------------------------- Google Landmark Boxes

def _gld(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    (images / "d" / "e" / "f").mkdir(parents=True)
    Image.new("RGB", (40, 30), (10, 20, 30)).save(images / "abc123.jpg")  # flat layout
    Image.new("RGB", (50, 20), (200, 100, 0)).save(images / "d" / "e" / "f" / "def456.jpg")  # GLD a/b/c layout
    Image.new("RGB", (8, 8)).save(images / "neg.jpg")
    csv = tmp_path / "boxes.csv"
    csv.write_text("id,box\n"
                   "abc123,0.1 0.2 0.5 0.6 0.0 0.0 1.0 1.0\n"  # two boxes in one row
                   "def456,0.5 0.25 1.0 0.75\n"
                   "neg,\n"
                   "def456,0.0 0.0 0.5 0.5\n")  # a second row of an id
    return csv, images


def test_landmark_boxes_csv(tmp_path: Path) -> None:
    csv, images = _gld(tmp_path)
    src = LandmarkBoxesCSV(csv, images)
    assert src.keys == ["abc123", "def456", "neg"] and [src.count(i) for i in range(3)] == [2, 2, 0]
    assert src.files[1] == images / "d" / "e" / "f" / "def456.jpg"
    image, boxes, key = src.load(0)  # 40 x 30: [xmin W, ymin H, xmax W, ymax H]
    assert image.shape == (30, 40, 3) and key == "abc123" and boxes.dtype == np.float32
    assert np.allclose(boxes, [[0.2 * 40, 0.1 * 30, 0.6 * 40, 0.5 * 30], [0, 0, 40, 30]])
    assert np.allclose(src.boxes(1), [[12.5, 10, 37.5, 20], [0, 0, 25, 10]])  # 50 x 20, header read only
    assert np.allclose(src.load(1)[1], src.boxes(1)) and src.load(2)[1].shape == (0, 4)
    assert src.describe()["n_boxes"] == 4

    (images / "abc123.jpg").unlink()
    with pytest.raises(DataError, match=re.escape(str(images / "abc123.jpg"))):
        LandmarkBoxesCSV(csv, images)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,box\nx,0.1 0.2 0.3\n")
    with pytest.raises(DataError, match="line 2.*groups of 4"):
        LandmarkBoxesCSV(bad, images)
    bad.write_text("id,box\nx,0.5 0.2 0.3 0.9\n")
    with pytest.raises(DataError, match="ymin < ymax"):
        LandmarkBoxesCSV(bad, images)
    bad.write_text("image,boxes\n")
    with pytest.raises(DataError, match="not id,box"):
        LandmarkBoxesCSV(bad, images)


def test_gld_train_val_sets(tmp_path: Path) -> None:
    csv, images = _gld(tmp_path)
    dm = _module(source={"kind": "gld_csv", "images": str(images), "train": {"csv": str(csv)},
                         "val": {"csv": str(csv)}})
    assert len(dm.train_set) == len(dm.val_set) == 3
    gt = dm.val_ground_truth()
    assert [i for i, _ in gt] == [0, 1, 2] and [len(b) for _, b in gt] == [2, 2, 0]
    with pytest.raises(DataError, match=r"data\.source\.train\.csv"):
        _module(source={"kind": "gld_csv", "images": str(images), "train": {"csv": str(tmp_path / "no.csv")},
                        "val": {"csv": str(csv)}})


# ----------------------------------------------------------------------------------------------- loaders

def test_loaders_are_torchvision_batches() -> None:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    dm0, dm2 = _module(), _module(num_workers=2)
    loader = dm0.train_dataloader()
    loader.sampler.set_epoch(1)  # what Lightning does before it starts the workers
    batches = list(loader)
    assert len(batches) == 4 and dm0.train_set.epoch == dm0.train_set.source.epoch == 1
    images, targets = batches[0]
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    for image, target in zip(images, targets):
        assert image.dtype == torch.float32 and image.shape[0] == 3 and max(image.shape[1:]) == SIZE
        assert set(target) == {"boxes", "labels", "image_id"} and isinstance(target["image_id"], int)
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (1, 4)
        assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1]
    loader2 = dm2.train_dataloader()
    loader2.sampler.set_epoch(1)
    for (im2, t2), (im0, t0) in zip(loader2, batches, strict=True):  # the epoch reaches the workers
        assert all(torch.equal(a, b) for a, b in zip(im2, im0)) and [t["image_id"] for t in t2] == [
            t["image_id"] for t in t0]
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(t2, t0))

    val = list(dm0.val_dataloader())  # fixed: never resampled, never flipped
    dm0.set_epoch(7)
    dm0.val_set.set_epoch(7)
    again = list(dm0.val_dataloader())
    assert all(torch.equal(a, b) for (x, _), (y, _) in zip(val, again) for a, b in zip(x, y))
    gt = dict(dm0.val_ground_truth())
    assert sorted(gt) == list(range(len(dm0.val_set)))
    for _, targets in val:
        for t in targets:
            assert np.array_equal(gt[t["image_id"]], t["boxes"].numpy())

    images, targets = collate_detection([dm0.train_set[0], dm0.train_set[1]])
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.ReLU())
    backbone.out_channels = 8
    model = FasterRCNN(backbone, num_classes=2, min_size=SIZE, max_size=SIZE,
                       rpn_anchor_generator=AnchorGenerator(((16, 32, 64),), ((0.5, 1.0, 2.0),)),
                       box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), representation_size=32)
    losses = model.train()(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_hydra_config(tmp_path: Path) -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.utils import instantiate

    cfg = OmegaConf.load(CONF / "data" / "synthetic_boxes.yaml")
    params = set(inspect.signature(BoxesDataModule.__init__).parameters) - {"self"}
    assert set(cfg) - {"_target_"} == params and set(cfg.source) == set(data.SOURCE_DEFAULTS)
    paths = {"shared_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache")}
    root = OmegaConf.create({"seed": 5, "paths": paths, "data": cfg})
    dm = instantiate(root.data, limit_train=3, limit_val=2, image_size=64)
    assert dm.seed == 5 and dm.kind == "synthetic" and dm.batch_size == 4 and dm.syntheses == 4
    assert dm.paste_params.scale == (0.25, 0.8) and dm.hflip_prob == 0.5
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (3 * 4, 2 * 4)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # the override of the comments
        composed = hydra_compose("train", overrides=["data=synthetic_boxes", "data.source.kind=gld_csv",
                                                     "data.source.train={csv:/gld/train.csv,images:/gld/train}",
                                                     "data.source.val={csv:/gld/val.csv,images:/gld/train}"])
    assert composed.data.source.train.csv == "/gld/train.csv" and composed.data.source.val.images == "/gld/train"


def test_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"{re.escape(str(missing))}.*data\.source\.dir"):
        _module(source={"kind": "coco", "dir": str(missing)})
    with pytest.raises(DataError, match=r"data\.source\.dir or data\.source\.json"):
        _module(source={"kind": "coco"})
    (tmp_path / "coco").mkdir()
    with pytest.raises(DataError, match="instances.json"):
        _module(source={"kind": "coco", "dir": str(tmp_path / "coco")})
    with pytest.raises(DataError, match=r"data\.source\.csv and data\.source\.images"):
        _module(source={"kind": "gld_csv", "csv": "x.csv"})
    with pytest.raises(ValueError, match="go together"):
        _module(source={"kind": "coco", "train": {"dir": "x"}})
    with pytest.raises(ValueError, match="synthetic.*coco.*gld_csv"):
        _module(source={"kind": "lvis"})
    with pytest.raises(ValueError, match="not synthetic"):
        _module(source={"dir": "x"})
    with pytest.raises(ValueError, match="unknown data.paste keys"):
        _module(paste={"scales": [0.1, 0.2]})
    with pytest.raises(ValueError, match="unknown data.source.train keys"):
        _module(source={"kind": "coco", "train": {"folder": "x"}, "val": {"dir": "y"}})
    with pytest.raises(DataError, match="validation part .* has no objects"):
        _module(objects={"n": 2})
    with pytest.raises(DataError, match="no full batch"):
        _module(batch_size=64)


# ----------------------------------------------------------------------------------------------- COCO AP

def _det(*boxes_scores: tuple[list[float], float]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([b for b, _ in boxes_scores], dtype=np.float32).reshape(-1, 4),
            np.array([s for _, s in boxes_scores], dtype=np.float32))


def test_coco_ap() -> None:
    gt = [np.array([[0, 0, 100, 100]], dtype=np.float32), np.array([[10, 20, 50, 80], [60, 0, 90, 30]]),
          np.zeros((0, 4))]
    perfect = [(g, np.linspace(0.9, 0.5, len(g))) for g in gt]
    result = coco_ap(gt, perfect)
    assert result["AP50"] == pytest.approx(1.0) and result["AP"] == pytest.approx(1.0)
    assert result["AR100"] == pytest.approx(1.0) and (result["n_images"], result["n_gt"], result["n_dets"]) == (3, 3, 3)

    one = [np.array([[0, 0, 100, 100]])]
    assert coco_ap(one, [_det(([0, 0, 60, 100], 0.9))])["AP50"] == pytest.approx(1.0)  # IoU 0.6: a hit
    assert coco_ap(one, [_det(([0, 0, 40, 100], 0.9))])["AP50"] == 0.0  # IoU 0.4: a miss
    assert coco_ap(one, [_det(([0, 0, 60, 100], 0.9))], iou=0.7)["AP50"] == 0.0

    # Two images, one box each; detections by score: 0.9 TP (image 0), 0.8 FP (image 1), 0.7 TP (image 1).
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; envelope (max to the right) 1, 2/3, 2/3. Of the 101 recall
    # points 0, 0.01, ..., 1: the 51 up to 0.5 take precision 1, the 50 above take 2/3:
    # AP = (51 * 1 + 50 * 2/3) / 101 = 253/303 ~ 0.835.
    two = [np.array([[0, 0, 50, 50]]), np.array([[20, 20, 60, 60]])]
    dets = [_det(([0, 0, 50, 50], 0.9)), _det(([100, 100, 140, 140], 0.8), ([20, 20, 60, 60], 0.7))]
    assert coco_ap(two, dets)["AP50"] == pytest.approx(253 / 303)
    # the false positive below both true positives costs nothing
    dets = [_det(([0, 0, 50, 50], 0.9)), _det(([100, 100, 140, 140], 0.1), ([20, 20, 60, 60], 0.7))]
    assert coco_ap(two, dets)["AP50"] == pytest.approx(1.0)

    empty = coco_ap(two, [None, _det()])
    assert (empty["AP50"], empty["AP"], empty["n_dets"]) == (0.0, 0.0, 0)
    with pytest.raises(ValueError, match="no ground-truth"):
        coco_ap([np.zeros((0, 4)), None], [_det(([0, 0, 5, 5], 0.5)), None])
    with pytest.raises(ValueError, match="2 ground-truth images but 1"):
        coco_ap(two, dets[:1])
    # torch tensors work as well, and AP50 is COCOeval's stats[1]
    t = coco_ap([torch.tensor(g) for g in two], [(torch.tensor(b), torch.tensor(s)) for b, s in dets])
    assert t["AP50"] == pytest.approx(1.0) and ap_module.LANDMARK_CATEGORY == 1


# ----------------------------------------------------------------------------------------------- pictures

def test_viz(tmp_path: Path) -> None:
    src = _synthetic()
    ds = DetectionDataset(src, train=False)
    images = [src.load(0)[0], ds[1][0]]  # a uint8 array and a float tensor
    dets = [_det(([10, 10, 40, 40], 0.9), ([0, 0, 5, 5], 0.1)), (torch.zeros(0, 4), torch.zeros(0))]
    path = save_detections(images, dets, [src.boxes(0), ds[1][1]["boxes"]], tmp_path / "plots" / "dets.png",
                           titles=["a", "b"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    save_detections(images[:1], None, None, tmp_path / "bare.png")
    assert (tmp_path / "bare.png").stat().st_size > 0
    history = [{"step": 10, "epoch": 0, "AP50": 0.2, "AP": 0.1}, {"step": 20, "epoch": 1, "AP50": 0.5, "AP": 0.3}]
    curve = save_learning_curve(history, tmp_path / "curve.png")
    assert curve.read_bytes()[:4] == b"\x89PNG" and curve.stat().st_size > 1000
    assert not list(tmp_path.rglob("*.tmp"))  # written atomically
    with pytest.raises(ValueError, match="AP50"):
        save_learning_curve([{"step": 1}], tmp_path / "none.png")
