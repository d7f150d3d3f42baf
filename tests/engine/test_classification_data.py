"""ImageNet-style classification data: class index, sources, seeded transforms, sampler, embedded set, datamodule."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path
from omegaconf import OmegaConf
from PIL import Image

from lit_retrieval.data.classification import (
    ClassificationDataModule,
    ClassificationDataset,
    ResizeCrop,
    SeededShuffleSampler,
    build_embedded_classification,
    embedded_classes,
    imagenet_class_index,
    imagenet_wnids,
    limit_samples,
    scan_flat_samples,
    scan_imagenet_folder,
    split_samples,
)
from lit_retrieval.data.errors import DataError, ImageLoadError

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
TINY = {"n_classes": 3, "n_train": 2, "n_val": 1, "image_size": (40, 56)}


def _write_image(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_class_index() -> None:
    assert imagenet_class_index("n01440764") == 0
    assert imagenet_class_index(imagenet_wnids()[-1]) == 999
    with pytest.raises(DataError, match=r"'n99999999' is not an ImageNet-1k wnid \(some/dir\)\. Fix: .*wnid"):
        imagenet_class_index("n99999999", "some/dir")


def test_scan_imagenet_folder(tmp_path: Path) -> None:
    _write_image(tmp_path / "train" / "n01443537" / "b.JPEG")
    _write_image(tmp_path / "train" / "n01443537" / "a.png")
    _write_image(tmp_path / "train" / "n01440764" / "c.jpg")
    (tmp_path / "train" / "n01443537" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "n01484850").mkdir()  # empty class: skipped
    samples = scan_imagenet_folder(tmp_path, "train")
    assert [(p.name, label) for p, label in samples] == [("c.jpg", 0), ("a.png", 1), ("b.JPEG", 1)]
    with pytest.raises(DataError, match=r"data\.root="):
        scan_imagenet_folder(tmp_path, "val")
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    with pytest.raises(DataError, match="no image"):
        scan_imagenet_folder(tmp_path, "val")
    (tmp_path / "val" / "cats").mkdir()
    with pytest.raises(DataError, match="'cats' is not an ImageNet-1k wnid"):
        scan_imagenet_folder(tmp_path, "val")


def test_scan_flat_samples_shared() -> None:
    samples = scan_flat_samples(shared_path("data", "imagenet-samples"))
    labels = [label for _, label in samples]
    assert len(samples) == 800 and len(set(labels)) == 800
    assert {p.name: label for p, label in samples}["n01440764_tench.JPEG"] == 0


def test_split_and_limit() -> None:
    samples = [(Path(f"{i:03d}.png"), i % 7) for i in range(50)]
    train, val = split_samples(samples, 0.2, seed=3)
    assert (train, val) == split_samples(samples, 0.2, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == samples
    assert val != split_samples(samples, 0.2, seed=4)[1]
    sub = limit_samples(samples, 5, seed=0)
    assert len(sub) == 5 and sub == sorted(sub) and sub == limit_samples(samples, 5, seed=0)
    assert limit_samples(samples, None) == samples


def test_transforms(tmp_path: Path) -> None:
    train_t, val_t = ResizeCrop(32, 40, 6, train=True), ResizeCrop(32, 40, 6, train=False)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8))
    out = train_t(img, np.random.default_rng(0))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    # validation: short side 40 (40x72), centre crop
    expected = np.asarray(img.resize((72, 40), Image.Resampling.BILINEAR))[4:36, 20:52]
    assert torch.equal(val_t(img), torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match="crop <= min_side"):
        ResizeCrop(crop=900, min_side=850)

    files = [_write_image(tmp_path / f"{i}.png", (90, 50), seed=i) for i in range(3)]
    ds = ClassificationDataset([(f, 5) for f in files], train_t, seed=1)
    a, label = ds[2]
    assert label == 5 and torch.equal(a, ds[2][0])
    assert torch.equal(a, ClassificationDataset(ds.samples, train_t, seed=1)[2][0])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[2][0])
    val_ds = ClassificationDataset(ds.samples, val_t)
    assert torch.equal(val_ds[0][0], val_ds[0][0])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="broken.png"):
        ClassificationDataset([(bad, 0)], val_t)[0]


def test_sampler() -> None:
    s = SeededShuffleSampler(10, seed=0)
    first = list(s)
    assert first == list(s) and sorted(first) == list(range(10)) and len(s) == 10
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(10))
    assert list(SeededShuffleSampler(10, shuffle=False)) == list(range(10))

    shards = [list(SeededShuffleSampler(10, seed=0, rank=r, world_size=3)) for r in range(3)]
    lengths = [len(SeededShuffleSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert [len(x) for x in shards] == [4, 4, 4] == lengths
    assert {i for shard in shards for i in shard} == set(range(10))
    assert [shards[r][k] for k in range(3) for r in range(3)] + [shards[0][3]] == first  # perm[rank::world]
    val_shards = [list(SeededShuffleSampler(5, shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert val_shards == [[0, 2, 4], [1, 3, 0]]

    ds = ClassificationDataset([], ResizeCrop(8, 8, 0, train=False))
    SeededShuffleSampler(ds).set_epoch(4)
    assert ds.epoch == 4


def test_embedded_builder_and_datamodule(tmp_path: Path) -> None:
    root = build_embedded_classification(tmp_path, seed=0, progress=False, **TINY)
    manifest = root / "classes.json"
    stamp = (root.stat().st_mtime_ns, manifest.stat().st_mtime_ns)
    assert build_embedded_classification(tmp_path, seed=0, progress=False, **TINY) == root
    assert (root.stat().st_mtime_ns, manifest.stat().st_mtime_ns) == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left
    expected = {c["label"] for c in embedded_classes(3)}
    assert expected == {0, 333, 667}
    train = scan_imagenet_folder(root, "train")
    assert len(train) == 6 and {label for _, label in train} == expected
    with Image.open(train[0][0]) as im:
        assert im.size == (56, 40)

    dm = ClassificationDataModule("embedded", batch_size=4, crop=24, min_side=28, jitter=4, seed=0,
                                  embedded=TINY, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.data_root == root and dm.num_classes_seen == 3
    assert dm.describe()["n_train"] == 6 and dm.describe()["n_val"] == 3
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 24, 24) and set(labels.tolist()) <= expected
    batches = list(dm.val_dataloader())
    assert [b[0].shape[0] for b in batches] == [3] and batches[0][1].tolist() == [0, 333, 667]


def test_samples_datamodule() -> None:
    root = shared_path("data", "imagenet-samples")
    dm = ClassificationDataModule("samples", str(root), batch_size=2, crop=32, min_side=36, jitter=4,
                                  limit_train=4, limit_val=2)
    dm.setup()
    info = dm.describe()
    assert (info["n_train"], info["n_val"], info["num_classes_seen"]) == (4, 2, 4)
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 32, 32) and labels.dtype == torch.int64


def test_hydra_configs(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    params = set(inspect.signature(ClassificationDataModule.__init__).parameters) - {"self"}
    for name in ("imagenet", "imagenet_samples", "embedded"):
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert set(cfg) - {"_target_"} == params, name
    root = OmegaConf.create({"seed": 0, "paths": {"cache_dir": str(tmp_path)},
                             "data": OmegaConf.load(CONF / "embedded.yaml")})
    dm = instantiate(root.data)
    assert dm.embedded["n_classes"] == 8 and dm.cache_dir == f"{tmp_path}/datasets" and dm.train_transform.crop == 224
    with pytest.raises(DataError, match="data.root="):
        ClassificationDataModule("imagenet")
