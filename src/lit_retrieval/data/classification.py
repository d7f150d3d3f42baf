"""ImageNet-style classification data, for training a region-attention network through a frozen ImageNet classifier.

Labels are ImageNet-1k indices (the frozen classifier has 1000 outputs): the index of a wnid is its position
in the sorted list of the 1000 ImageNet wnids. Three sources give ``(path, label)`` lists:

* ``scan_imagenet_folder``: the ImageNet layout ``<root>/<split>/<wnid>/*.JPEG``;
* ``scan_flat_samples`` + ``split_samples``: a flat folder of ``<wnid>_<anything>.JPEG`` files
  (e.g. ``../shared/data/imagenet-samples``, one image per class), split into train/val by file;
* ``build_embedded_classification``: procedurally generated classes written once, in the ImageNet layout,
  to a cache folder, so training runs offline and still goes through ``scan_imagenet_folder``.

Images are prepared as in Kim & Yoon: short side resized to a random integer in
``[min_side, min_side + jitter)``, then a random ``crop`` x ``crop`` square (validation: short side
``min_side``, centre crop). Tensors stay in [0, 1], unnormalised: the backbone normalises. Every random
choice comes from a generator seeded by ``(seed, epoch, index)`` (crops) or ``(seed, epoch)`` (order), so an
epoch is reproducible whatever the number of workers or a resume.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..atomic import atomic_json, make_temp_dir
from .errors import DataError
from .features import CachedItems, FeatureStore, feature_options, fill_store, model_encoder
from .images import load_image, to_tensor
from .provenance import ContentSet, content_of_files
from .synthetic.benchmark import split_by_image
from .synthetic.procedural import PATTERNS, SHAPES, procedural_background, render_object
from .synthetic.shuffle import publish_dir

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
Sample = tuple[Path, int]

NUM_CLASSES = 1000
CONTENT_CHECK_MAX = 50_000  # training sets up to this size are checked against the benchmarks by content
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
KINDS = ("imagenet", "samples", "embedded")
EMBEDDED_DEFAULTS: dict[str, Any] = {"n_classes": 8, "n_train": 16, "n_val": 4, "image_size": (384, 512)}
EMBEDDED_FORMAT = 1
_MANIFEST = "classes.json"
_EMBEDDED_TAG = 0xC1A55
_FIX_WNID = ("name class folders/files after one of the 1000 ImageNet-1k wnids (e.g. n01440764): the frozen "
             "classifier has no output for other classes")


# ------------------------------------------------------------------------------------------- class index

@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids, sorted: position = the classifier's output index (timm's list, shipped)."""
    # imported here: timm is slow to import and only this needs it
    from timm.data import ImageNetInfo

    wnids = tuple(sorted(ImageNetInfo().label_names()))
    assert len(wnids) == NUM_CLASSES, f"timm lists {len(wnids)} ImageNet-1k wnids, expected {NUM_CLASSES}"
    return wnids


@functools.lru_cache(maxsize=1)
def _wnid_to_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


def imagenet_class_index(wnid: str, source: PathLike | None = None) -> int:
    """ImageNet-1k class index of ``wnid``; ``source`` (the folder/file it came from) is named in the error.

    Raises:
        DataError: ``wnid`` is not one of the 1000 ImageNet-1k wnids.
    """
    index = _wnid_to_index().get(wnid)
    if index is None:
        raise DataError(f"{wnid!r} is not an ImageNet-1k wnid", source, _FIX_WNID)
    return index


# ----------------------------------------------------------------------------------------------- sources

def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def scan_imagenet_folder(root: PathLike, split: str = "train") -> list[Sample]:
    """``(image, label)`` for every image of ``<root>/<split>/<wnid>/``, sorted by wnid then file name.

    Images are .jpg/.jpeg/.png in any case; other files, hidden entries and empty class folders are skipped.

    Raises:
        DataError: ``<root>/<split>`` is missing, a class folder is not an ImageNet-1k wnid, or there is no image.
    """
    split_dir = Path(root) / split
    layout = f"the ImageNet layout <root>/{split}/<wnid>/*.JPEG"
    if not split_dir.is_dir():
        raise DataError(f"split folder {split!r} not found", split_dir,
                        f"point the root at a folder in {layout}: data.root=/path/to/imagenet")
    samples: list[Sample] = []
    for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
        label = imagenet_class_index(class_dir.name, class_dir)
        samples += [(f, label) for f in sorted(class_dir.iterdir()) if _is_image(f)]
    if not samples:
        raise DataError(f"no image ({'/'.join(sorted(IMAGE_EXTENSIONS))}) in any class folder", split_dir,
                        f"fill it in {layout}, or set data.root=... to the right folder")
    return samples


def scan_flat_samples(root: PathLike) -> list[Sample]:
    """``(image, label)`` for every ``<wnid>_<anything>.<ext>`` image directly in ``root``, sorted by name.

    Raises:
        DataError: ``root`` is missing, a file name does not start with an ImageNet-1k wnid, or there is no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("flat samples folder not found", root,
                        "set data.root=... to a folder of <wnid>_<name>.JPEG files (e.g. "
                        "../shared/data/imagenet-samples)")
    samples = [(f, imagenet_class_index(f.name.split("_", 1)[0], f)) for f in sorted(root.iterdir()) if _is_image(f)]
    if not samples:
        raise DataError("no <wnid>_<name>.JPEG image in the flat samples folder", root,
                        "set data.root=... to a folder of ImageNet-named images")
    return samples


def split_samples(samples: Sequence[Sample], val_fraction: float = 0.2,
                  seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Split by file with a seeded permutation: ``round(n * val_fraction)`` files (at least one if the fraction
    is positive and there are two files) go to val. Both parts keep the input order; same input, same split."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(samples)
    n_val = min(max(round(n * val_fraction), int(val_fraction > 0)), max(n - 1, 0))
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return [s for s, v in zip(samples, is_val) if not v], [s for s, v in zip(samples, is_val) if v]


def limit_samples(samples: Sequence[Sample], limit: int | None, seed: int = 0) -> list[Sample]:
    """A seeded random subset of ``limit`` samples, in the input order (``None``: all). Random rather than the
    first ``limit``, because sorted lists start with whole classes: a quick run still sees many classes."""
    if limit is None or limit >= len(samples):
        return list(samples)
    if limit < 1:
        raise ValueError(f"a sample limit must be a positive integer or None, got {limit}")
    keep = np.sort(np.random.default_rng(seed).permutation(len(samples))[:limit])
    return [samples[i] for i in keep]


# ------------------------------------------------------------------------------------- embedded classes

def embedded_classes(n_classes: int) -> list[dict[str, Any]]:
    """Class ``c``: the wnid at position ``round(c * 1000 / n_classes)`` (spread over ImageNet) and its own
    shape and pattern (``(c mod 4, c mod 5)``: the first 20 classes all differ)."""
    if not 1 <= n_classes <= NUM_CLASSES:
        raise ValueError(f"n_classes must be in [1, {NUM_CLASSES}], got {n_classes}")
    wnids = imagenet_wnids()
    return [{"wnid": wnids[round(c * NUM_CLASSES / n_classes)], "label": round(c * NUM_CLASSES / n_classes),
             "shape": SHAPES[c % len(SHAPES)], "pattern": PATTERNS[c % len(PATTERNS)]} for c in range(n_classes)]


def render_embedded_image(seed: int, cls: int, shape: str, pattern: str, split: int, index: int,
                          image_size: tuple[int, int]) -> np.ndarray:
    """One (height, width, 3) uint8 image of class ``cls``: its object (colours and texture from a class-seeded
    generator, so all instances look alike) at a random size, aspect, rotation and position on a procedural
    background; everything else from ``(seed, cls, split, index)``."""
    height, width = image_size
    rng = np.random.default_rng([seed, _EMBEDDED_TAG, cls, split, index])
    canvas = procedural_background(rng, width, height)
    short = min(height, width)
    long = max(8, int(rng.integers(round(0.35 * short), round(0.6 * short) + 1)))  # rotated: <= 0.85 short
    other = max(8, round(long * rng.uniform(0.7, 1.0)))
    ow, oh = (long, other) if rng.random() < 0.5 else (other, long)
    rgb, mask = render_object(np.random.default_rng([seed, _EMBEDDED_TAG, cls]), ow, oh, shape, pattern)
    angle = float(rng.uniform(-45.0, 45.0))
    rgb = np.asarray(Image.fromarray(rgb).rotate(angle, Image.Resampling.BILINEAR, expand=True))[:height, :width]
    mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).rotate(
        angle, Image.Resampling.NEAREST, expand=True))[:height, :width] > 127
    rh, rw = mask.shape
    y, x = int(rng.integers(0, height - rh + 1)), int(rng.integers(0, width - rw + 1))
    window = canvas[y:y + rh, x:x + rw]
    window[mask] = rgb[mask]
    return canvas


def embedded_classification_name(seed: int = 0, n_classes: int = 8, n_train: int = 16, n_val: int = 4,
                                 image_size: tuple[int, int] = (384, 512)) -> str:
    """Folder name of an embedded classification set: it encodes every generation parameter."""
    return f"embedded-cls-s{seed}-c{n_classes}-n{n_train}-v{n_val}-{image_size[0]}x{image_size[1]}"


def _embedded_complete(root: Path, params: Mapping[str, Any]) -> bool:
    try:
        manifest = json.loads((root / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("format") == EMBEDDED_FORMAT and manifest.get("params") == dict(params)


def build_embedded_classification(out_root: PathLike, n_classes: int = 8, n_train: int = 16, n_val: int = 4,
                                  seed: int = 0, image_size: tuple[int, int] = (384, 512),
                                  progress: bool = True) -> Path:
    """``<out_root>/<name>/{train,val}/<wnid>/<wnid>_NNNN.png`` of procedural classes, generated once.

    Returns at once if the folder is already complete (its ``classes.json`` manifest, written last, matches the
    parameters). The build goes to a temporary sibling renamed at the end: an interrupted build leaves nothing
    behind and concurrent builders end up with one complete copy. Deterministic from ``seed``.

    Args:
        out_root: cache folder (e.g. ``.cache/datasets``).
        n_classes: number of classes (1-1000), spread over the ImageNet-1k wnids.
        n_train, n_val: images per class in each split (>= 1).
        seed: generation seed.
        image_size: (height, width) of every image.
        progress: show a tqdm bar.
    """
    height, width = (int(v) for v in image_size)
    if n_train < 1 or n_val < 1 or min(height, width) < 16:
        raise ValueError(f"need n_train >= 1, n_val >= 1 and images of at least 16 px, got n_train={n_train}, "
                         f"n_val={n_val}, image_size={tuple(image_size)}")
    classes = embedded_classes(n_classes)
    params = {"seed": seed, "n_classes": n_classes, "n_train": n_train, "n_val": n_val, "image_size": [height, width]}
    name = embedded_classification_name(seed, n_classes, n_train, n_val, (height, width))
    out_root = Path(out_root)
    root = out_root / name
    if _embedded_complete(root, params):
        return root
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{name}.tmp-", out_root)
    try:
        with tqdm(total=n_classes * (n_train + n_val), desc=f"building {name}", disable=not progress) as bar:
            for split_code, (split, n) in enumerate((("train", n_train), ("val", n_val))):
                for c, info in enumerate(classes):
                    folder = tmp / split / info["wnid"]
                    folder.mkdir(parents=True)
                    for i in range(n):
                        pixels = render_embedded_image(seed, c, info["shape"], info["pattern"], split_code, i,
                                                       (height, width))
                        Image.fromarray(pixels).save(folder / f"{info['wnid']}_{i:04d}.png")
                        bar.update()
        atomic_json({"format": EMBEDDED_FORMAT, "params": params, "classes": classes}, tmp / _MANIFEST)
        publish_dir(tmp, root, overwrite=root.exists())
    except OSError:  # FileExistsError included: a concurrent build may have finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not _embedded_complete(root, params):
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


# ---------------------------------------------------------------------------------------------- transforms

@dataclass(frozen=True)
class ResizeCrop:
    """Kim & Yoon's input: short side resized (bilinear, aspect kept) to a random integer in
    ``[min_side, min_side + jitter)`` then a random ``crop`` square; ``train=False``: short side ``min_side``,
    centre crop. ``jitter`` 0 or 1 means no jitter. Output: 3 x crop x crop float32 in [0, 1], unnormalised."""

    crop: int = 800
    min_side: int = 850
    jitter: int = 10
    train: bool = True

    def __post_init__(self) -> None:
        if self.crop < 1 or self.jitter < 0:
            raise ValueError(f"crop must be >= 1 and jitter >= 0, got crop={self.crop}, jitter={self.jitter}")
        if self.crop > self.min_side:
            raise ValueError(f"crop ({self.crop}) is larger than the resized short side min_side ({self.min_side}): "
                             "set crop <= min_side")

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.train and rng is None:
            raise ValueError("a training ResizeCrop needs a numpy Generator")
        side = self.min_side + (int(rng.integers(self.jitter)) if self.train and self.jitter > 1 else 0)
        w, h = img.size
        size = (side, max(side, round(h * side / w))) if w <= h else (max(side, round(w * side / h)), side)
        room_x, room_y = size[0] - self.crop, size[1] - self.crop
        if self.train:
            x, y = int(rng.integers(room_x + 1)), int(rng.integers(room_y + 1))
        else:
            x, y = room_x // 2, room_y // 2
        img = img.resize(size, Image.Resampling.BILINEAR)
        return to_tensor(img.crop((x, y, x + self.crop, y + self.crop)))


class ClassificationDataset(Dataset[tuple[torch.Tensor, int]]):
    """``(image tensor, label)`` from ``(path, label)`` samples; the crop of item ``i`` in epoch ``e`` is drawn
    from ``default_rng((seed, e, i))``. Unreadable files raise ``ImageLoadError`` naming the file."""

    def __init__(self, samples: Sequence[Sample], transform: ResizeCrop, seed: int = 0) -> None:
        self.samples, self.transform, self.seed, self.epoch = list(samples), transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, int(index))) if self.transform.train else None
        return self.transform(load_image(path), rng), label


class ResizedImages(Dataset[dict[str, Any]]):
    """The fixed pool behind cached classification features: each image whole, short side resized to
    ``min_side`` (``{"image": 3×H×W [0, 1], "label"}``); the crops are taken from its frozen map (:class:`MapCrop`)."""

    def __init__(self, samples: Sequence[Sample], min_side: int) -> None:
        self.samples, self.min_side = list(samples), int(min_side)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        img = load_image(path)
        w, h = img.size
        side = self.min_side
        size = (side, max(side, round(h * side / w))) if w <= h else (max(side, round(w * side / h)), side)
        return {"image": to_tensor(img.resize(size, Image.Resampling.BILINEAR)), "label": np.int64(label)}

    def pool_key(self) -> dict[str, Any]:
        content = content_of_files("classification pool", [p for p, _ in self.samples])
        return {"items": "resized-images-v1", "min_side": self.min_side, "labels": [int(y) for _, y in self.samples],
                "content": content.digest}


@dataclass(frozen=True)
class MapCrop:
    """``ResizeCrop``'s square crop taken on the cached frozen map instead: ``cells = crop / stride`` map cells at a
    random cell-aligned position (``train=False``: centred). The short side is ``min_side`` (no jitter)."""

    cells: int
    train: bool = True

    def __call__(self, item: dict[str, Any], rng: np.random.Generator | None) -> tuple[torch.Tensor, int]:
        m = item["image"]
        h, w = m.shape[-2:]
        n = min(self.cells, h, w)
        if self.train:
            y, x = int(rng.integers(h - n + 1)), int(rng.integers(w - n + 1))
        else:
            y, x = (h - n) // 2, (w - n) // 2
        return torch.from_numpy(np.ascontiguousarray(m[:, y: y + n, x: x + n])), int(item["label"])


# ------------------------------------------------------------------------------------------------ sampler

class SeededShuffleSampler(Sampler[int]):
    """Indices in the order of ``default_rng((seed, epoch)).permutation(n)`` (``shuffle=False``: 0..n-1).

    Under DDP (torch.distributed initialised when iterating, or explicit ``rank``/``world_size``) each rank
    takes ``perm[rank::world_size]`` of the permutation padded by wrapping around to a multiple of
    ``world_size``, as ``DistributedSampler`` does: all ranks get the same length (a few samples repeat).

    Args:
        dataset: the dataset, or just its length. A dataset with ``set_epoch`` gets the epoch forwarded by
            ``set_epoch`` (which Lightning calls on the sampler each epoch, before workers are started), so its
            crops follow the epoch. Workers copy the dataset when created: use ``persistent_workers=False``.
        seed: shuffle seed.
        shuffle: permute (train) or keep the order (validation).
        rank, world_size: override torch.distributed (tests, custom launchers).
    """

    def __init__(self, dataset: Sized | int, seed: int = 0, shuffle: bool = True, rank: int | None = None,
                 world_size: int | None = None) -> None:
        self.dataset = None if isinstance(dataset, int) else dataset
        self.n = dataset if isinstance(dataset, int) else len(dataset)
        self.seed, self.shuffle, self.rank, self.world_size, self.epoch = seed, shuffle, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    def _world(self) -> tuple[int, int]:
        distributed = dist.is_available() and dist.is_initialized()
        world = self.world_size if self.world_size is not None else dist.get_world_size() if distributed else 1
        rank = self.rank if self.rank is not None else dist.get_rank() if distributed else 0
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside [0, world_size={world})")
        return rank, world

    def __len__(self) -> int:
        return math.ceil(self.n / self._world()[1])

    def __iter__(self) -> Iterator[int]:
        rank, world = self._world()
        order = (np.random.default_rng((self.seed, self.epoch)).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        if self.n:
            order = np.resize(order, math.ceil(self.n / world) * world)  # pads by repeating from the start
        return iter(order[rank::world].tolist())


# -------------------------------------------------------------------------------------------- datamodule

class ClassificationDataModule(pl.LightningDataModule):
    """Train/val ImageNet-labelled images, from an ImageNet folder, a flat samples folder or the embedded set.

    Args:
        kind: ``"imagenet"`` (``root/{train,val}/<wnid>/``), ``"samples"`` (flat ``root/<wnid>_*.JPEG``,
            split by file with ``val_fraction``) or ``"embedded"`` (procedural classes built into ``cache_dir``).
        root: dataset folder (imagenet, samples); unused by embedded.
        batch_size, num_workers: DataLoader settings (workers are re-created every epoch).
        crop, min_side, jitter: see ``ResizeCrop``; ``crop <= min_side`` is checked here.
        val_fraction: share of the samples folder used for validation.
        seed: shuffle, split, subset and crop seed.
        limit_train, limit_val: keep a seeded random subset of N samples (quick runs); ``None`` keeps all.
        embedded: ``n_classes``, ``n_train``, ``n_val`` (and ``image_size``) of the embedded set.
        cache_dir: where the embedded set is built.
        split: samples only: ``{fractions, seed, parts: [train, val]}``, a by-image split of the folder instead of
            ``val_fraction`` (the split the cut-and-paste benchmarks use, so that their parts stay unseen).
        features: ``online`` (images) or ``cached``: the frozen map of every image (short side ``min_side``, no
            jitter) is computed once into ``feature_store.dir`` and the crops are cell-aligned crops of it
            (``crop`` must be a multiple of the backbone's stride). ImageNet-scale sets stay ``online``.
        feature_store: ``{dir, dtype: float16|float32, chunk_size}`` of the cached maps.

    Sharding under DDP is done here (train and validation, see ``SeededShuffleSampler``): the trainer runs
    with ``use_distributed_sampler=False``.
    """

    def __init__(self, kind: str = "embedded", root: str | None = None, batch_size: int = 4, num_workers: int = 0,
                 crop: int = 800, min_side: int = 850, jitter: int = 10, val_fraction: float = 0.2, seed: int = 0,
                 limit_train: int | None = None, limit_val: int | None = None,
                 embedded: Mapping[str, Any] | None = None, cache_dir: str | None = None,
                 split: Mapping[str, Any] | None = None, features: str = "online",
                 feature_store: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features, self.store_opts = feature_options(features, feature_store)
        if split is not None and kind != "samples":
            raise ValueError("data.split (a by-image split of a flat folder) only applies to data.kind=samples")
        self.split = None if split is None else {"fractions": [float(f) for f in split["fractions"]],
                                                 "seed": int(split.get("seed", 0)),
                                                 "parts": [int(v) for v in split.get("parts", (0, 1))]}
        if kind not in KINDS:
            raise ValueError(f"data.kind must be one of {KINDS}, got {kind!r}")
        if kind != "embedded" and root is None:
            raise DataError(f"data.kind={kind} needs a dataset folder", None, "set data.root=/path/to/the/images")
        if kind == "embedded" and cache_dir is None:
            raise DataError("data.kind=embedded needs a folder to build into", None, "set data.cache_dir=...")
        unknown = set(embedded or {}) - set(EMBEDDED_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown data.embedded keys {sorted(unknown)}; known: {sorted(EMBEDDED_DEFAULTS)}")
        self.kind, self.root, self.cache_dir = kind, root, cache_dir
        self.batch_size, self.num_workers, self.val_fraction, self.seed = batch_size, num_workers, val_fraction, seed
        self.limit_train, self.limit_val = limit_train, limit_val
        self.embedded = {**EMBEDDED_DEFAULTS, **dict(embedded or {})}
        self.embedded["image_size"] = tuple(int(v) for v in self.embedded["image_size"])
        self.train_transform = ResizeCrop(crop, min_side, jitter, train=True)  # raises if crop > min_side
        self.val_transform = ResizeCrop(crop, min_side, jitter, train=False)
        self.data_root: Path | None = None
        self.train_set: ClassificationDataset | None = None
        self.val_set: ClassificationDataset | None = None

    def _build_embedded(self, progress: bool) -> Path:
        e = self.embedded
        return build_embedded_classification(self.cache_dir, e["n_classes"], e["n_train"], e["n_val"], self.seed,
                                             e["image_size"], progress=progress)

    def prepare_data(self) -> None:
        """Build the embedded set once per node (Lightning calls this on one process only)."""
        if self.kind == "embedded":
            self._build_embedded(progress=True)

    def setup(self, stage: str | None = None) -> None:
        """Scan the sample lists (idempotent); the embedded set is built here too if ``prepare_data`` was not run."""
        if self.train_set is not None:
            return
        if self.kind == "samples":
            self.data_root = Path(self.root)
            samples = scan_flat_samples(self.data_root)
            if self.split is None:
                train, val = split_samples(samples, self.val_fraction, self.seed)
            else:  # the same by-image split as the cut-and-paste benchmarks built from this folder
                parts = split_by_image(samples, self.split["fractions"], self.split["seed"], key=lambda s: str(s[0]))
                train, val = (parts[i] for i in self.split["parts"])
        else:
            self.data_root = self._build_embedded(progress=False) if self.kind == "embedded" else Path(self.root)
            train, val = scan_imagenet_folder(self.data_root, "train"), scan_imagenet_folder(self.data_root, "val")
        self.train_set = ClassificationDataset(limit_samples(train, self.limit_train, self.seed),
                                               self.train_transform, self.seed)
        self.val_set = ClassificationDataset(limit_samples(val, self.limit_val, self.seed), self.val_transform,
                                             self.seed)
        if self.features == "cached":
            self.train_set, self.val_set = (self._cached(ds, name) for ds, name in
                                            ((self.train_set, "training images"), (self.val_set, "validation images")))

    def _cached(self, dataset: ClassificationDataset, name: str) -> CachedItems:
        encoder = model_encoder(self)
        stride, t = int(encoder.backbone.stride), dataset.transform
        if t.crop % stride:
            raise ValueError(f"data.features=cached crops the frozen map: data.crop={t.crop} must be a multiple of the "
                             f"backbone's stride {stride} (e.g. {t.crop // stride * stride})")
        if t.train and t.jitter > 1:
            log.info("data.features=cached: training images are resized to a short side of %d (no jitter)",
                     t.min_side)
        pool = ResizedImages(dataset.samples, t.min_side)
        store = FeatureStore(self.store_opts["dir"], {"pool": pool.pool_key(), "encoder": encoder.key()}, len(pool),
                             ("image",), int(self.store_opts["chunk_size"]), str(self.store_opts["dtype"]))
        fill_store(store, pool.__getitem__, encoder, f"frozen maps of the {name}", batch=1)
        out = CachedItems(store, MapCrop(t.crop // stride, t.train), self.seed, t.train)
        out.samples = dataset.samples
        return out

    def _ready(self) -> tuple[Any, Any]:
        if self.train_set is None or self.val_set is None:
            raise RuntimeError("ClassificationDataModule.setup() has not been called")
        return self.train_set, self.val_set

    def _loader(self, dataset: ClassificationDataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size,
                          sampler=SeededShuffleSampler(dataset, self.seed, shuffle),
                          num_workers=self.num_workers, drop_last=False, persistent_workers=False,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._ready()[0], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._ready()[1], shuffle=False)

    def content(self) -> ContentSet | None:
        """The training and validation images by content (the retrieval callback checks them against the
        benchmarks); ``None`` above ``CONTENT_CHECK_MAX`` images (ImageNet-scale: hashing every image would cost
        more than the run; the run says the check was skipped)."""
        train, val = self._ready()
        paths = [p for p, _ in train.samples + val.samples]
        if len(paths) > CONTENT_CHECK_MAX:
            log.warning("%d training/validation images: not checked against the retrieval benchmarks by content "
                        "(more than %d); make sure they share no image with them", len(paths), CONTENT_CHECK_MAX)
            return None
        return content_of_files(f"{self.kind} training/validation images ({self.data_root})", paths)

    @property
    def num_classes_seen(self) -> int:
        """Number of distinct labels among the training samples."""
        return len({label for _, label in self._ready()[0].samples})

    def describe(self) -> dict[str, Any]:
        """What is being trained on, for the logger."""
        train, val = self._ready()
        t = self.train_transform
        return {"kind": self.kind, "root": str(self.data_root), "n_train": len(train), "n_val": len(val),
                "num_classes_seen": self.num_classes_seen, "num_classes": NUM_CLASSES, "crop": t.crop,
                "min_side": t.min_side, "jitter": t.jitter, "seed": self.seed, "batch_size": self.batch_size,
                "limit_train": self.limit_train, "limit_val": self.limit_val,
                **({"embedded": {**self.embedded, "image_size": list(self.embedded["image_size"])}}
                   if self.kind == "embedded" else {})}


__all__ = ["EMBEDDED_DEFAULTS", "IMAGE_EXTENSIONS", "KINDS", "NUM_CLASSES", "ClassificationDataModule",
           "ClassificationDataset", "ResizeCrop", "Sample", "SeededShuffleSampler", "build_embedded_classification",
           "embedded_classes", "embedded_classification_name", "imagenet_class_index", "imagenet_wnids",
           "limit_samples", "render_embedded_image", "scan_flat_samples", "scan_imagenet_folder", "split_samples"]
