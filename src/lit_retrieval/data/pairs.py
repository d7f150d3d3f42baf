"""Cut-and-paste query/gallery pairs for training Chen et al.'s local-similarity network (Sec. 3.6 and 4.1).

Each object is the largest instance of one source image (boxes of at least 80 x 80 px). A pair is:

* the *query*: the object's box cropped from its source image, resized to ``query_size`` x ``query_size``
  (at evaluation, queries are the source image cropped to the object's box: training matches);
* the *gallery*: a background resized so that its short side is a random value in
  ``[gallery_size, 1.25 gallery_size]``, randomly cropped to ``gallery_size`` x ``gallery_size``, with the
  object pasted by ``synthetic.compositor.paste`` (its box comes with the item).

Objects and backgrounds are split by source image with ``split_by_image`` (same fractions and seed for
both): part 0 trains, part 1 validates, the other parts are held out for an evaluation benchmark built
elsewhere and are never read here. Every object gets ``syntheses`` galleries per epoch: item ``i`` is
synthesis ``i % syntheses`` of object ``i // syntheses``, and every random choice of it comes from
``default_rng([seed, epoch, i])`` (``[seed, i]`` without resampling), so an epoch is the same whatever the
number of workers. The epoch reaches the workers as in ``classification``: Lightning calls ``set_epoch`` on
the ``SeededShuffleSampler`` before the workers are started, and the sampler forwards it to the dataset.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import Dataset

from .classification import limit_samples
from .errors import DataError
from .features import CachedItems, FeatureStore, FrozenEncoder, feature_options, fill_store, model_encoder
from .images import to_tensor
from .synthetic.backgrounds import BackgroundSource
from .synthetic.compositor import PasteParams, paste
from .synthetic.shuffle import shuffle_patches
from .synthetic.objects import ObjectInstance, ObjectSource, ObjectSubset
from .paste import (BACKGROUND_KINDS, BACKGROUNDS_DEFAULTS, GALLERY_JITTER, MAX_PASTE_TRIES, OBJECT_KINDS,
                    OBJECTS_DEFAULTS, PAIR_MAPS, PASTE_DEFAULTS, SHUFFLE_GRID, SPLIT_DEFAULTS, TRAIN_PART, VAL_PART,
                    BackgroundSubset, PastedItems, SeededSplitLoaders, _options, lru, make_backgrounds, make_objects,
                    one_per_image, paste_params, split_sources)

log = logging.getLogger(__name__)


class SyntheticPairs(PastedItems, Dataset[dict[str, torch.Tensor]]):
    """Query/gallery pairs of the objects ``objects.refs`` pasted on ``backgrounds``.

    Item ``i`` is synthesis ``i % syntheses`` of object ``i // syntheses``::

        {"query": 3 x Sq x Sq float32 in [0, 1], "gallery": 3 x Sg x Sg float32 in [0, 1],
         "box": float32 [x1, y1, x2, y2] of the pasted object in gallery pixels (x2, y2 exclusive),
         "object": int64 position of the object in ``objects.refs``,
         "shuffled": (with ``shuffled=True``) the gallery cut in 10 x 10 patches and shuffled: a hard negative
                     with the gallery's pixels and none of its structure}

    Two items of one object are not negatives of each other: the model must use ``object``.

    Args:
        objects: the objects, one per source image (e.g. a part of ``split_sources``); decoded lazily.
        backgrounds: the backgrounds (e.g. a part of ``split_sources``), chosen at random per item.
        syntheses: galleries per object and epoch.
        gallery_size, query_size: sides of the square gallery and query.
        paste: paste ranges (``PasteParams``, a ``data.paste`` mapping or a preset name).
        seed: every random choice of item ``i`` comes from ``default_rng([seed, epoch, i])``.
        resample: fresh galleries each epoch; ``False`` uses ``default_rng([seed, i])`` whatever the epoch.
        cache_size: decoded objects (instance and query) kept per process.
        split: how these objects and backgrounds were chosen (fractions, seed, part), for ``describe``.
        shuffled: also give a patch-shuffled copy of each gallery (``"shuffled"``).
    """

    POOL_KIND = "synthetic-pairs"

    def __init__(self, objects: ObjectSource, backgrounds: BackgroundSource, syntheses: int = 4,
                 gallery_size: int = 448, query_size: int = 224,
                 paste: PasteParams | Mapping[str, Any] | str | None = None, seed: int = 0, resample: bool = True,
                 cache_size: int = 64, split: Mapping[str, Any] | None = None, shuffled: bool = False) -> None:
        if syntheses < 1 or gallery_size < 8 or query_size < 8 or cache_size < 0:
            raise ValueError(f"need syntheses >= 1, gallery_size and query_size >= 8 and cache_size >= 0, got "
                             f"syntheses={syntheses}, gallery_size={gallery_size}, query_size={query_size}, "
                             f"cache_size={cache_size}")
        self._init_items(objects, backgrounds, syntheses, seed, resample, cache_size, split)
        self.gallery_size, self.query_size = int(gallery_size), int(query_size)
        self.paste_params = paste_params(paste)
        self.shuffled = bool(shuffled)

    def _object(self, k: int) -> tuple[ObjectInstance, np.ndarray]:
        """(instance, query pixels) of object ``k``, from the per-process LRU cache."""
        return lru(self._cache, k, lambda: self._decode(k), self.cache_size)

    def _decode(self, k: int) -> tuple[ObjectInstance, np.ndarray]:
        ref = self.refs[k]
        image = self.objects.source_image(ref)
        h, w = image.shape[:2]
        x1, y1, x2, y2 = ref.crop_box
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"object {ref.ann_id} has box {list(ref.bbox)} outside its {w}x{h} source image",
                            ref.source, "fix or remove this annotation")
        crop = Image.fromarray(np.ascontiguousarray(image[y1:y2, x1:x2]))
        query = np.asarray(crop.resize((self.query_size, self.query_size), Image.Resampling.BILINEAR))
        return self.objects.load(ref), query

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """A random background, short side resized to a random value in [size, 1.25 size], random square crop."""
        size = self.gallery_size
        image = self.backgrounds.load(int(rng.integers(self.n_backgrounds)))
        side = int(rng.integers(size, max(size, math.floor(GALLERY_JITTER * size)) + 1))
        h, w = image.shape[:2]
        new = (side, max(side, round(h * side / w))) if w <= h else (max(side, round(w * side / h)), side)
        x, y = int(rng.integers(new[0] - size + 1)), int(rng.integers(new[1] - size + 1))
        resized = Image.fromarray(image).resize(new, Image.Resampling.BILINEAR)
        return np.asarray(resized.crop((x, y, x + size, y + size)))

    def _check_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"pair {index} out of range [0, {len(self)})")
        return index

    def background(self, index: int) -> np.ndarray:
        """The gallery of item ``index`` (current epoch) before the paste: (size, size, 3) uint8."""
        return self._background(self.rng(self._check_index(index)))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = self._check_index(index)
        k = index // self.syntheses
        instance, query = self._object(k)
        rng = self.rng(index)
        background = self._background(rng)
        for _ in range(MAX_PASTE_TRIES):
            gallery, box, _info = paste(background, instance, rng, self.paste_params)
            if box is not None:
                break
        else:
            raise DataError(f"pasting object {self.refs[k].ann_id} left nothing visible {MAX_PASTE_TRIES} times",
                            self.refs[k].source, "lower data.paste.truncation_prob or raise data.paste.visible")
        item = {"query": to_tensor(Image.fromarray(query)), "gallery": to_tensor(Image.fromarray(gallery)),
                "box": torch.tensor(box, dtype=torch.float32), "object": torch.tensor(k, dtype=torch.int64)}
        if self.shuffled:
            item["shuffled"] = to_tensor(Image.fromarray(shuffle_patches(gallery, SHUFFLE_GRID, rng)))
        return item

    def describe(self) -> dict[str, Any]:
        """Sources, counts, split and synthesis settings."""
        return {"objects": self.objects.describe(), "backgrounds": self.backgrounds.describe(),
                "n_objects": len(self.refs), "n_backgrounds": self.n_backgrounds, "syntheses": self.syntheses,
                "n_pairs": len(self), "gallery_size": self.gallery_size, "query_size": self.query_size,
                "seed": self.seed, "resample": self.resample, "split": dict(self.split), "shuffled": self.shuffled,
                "paste": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.paste_params).items()}}


def _as_tensors(item: dict[str, Any], rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.array(v)) for k, v in item.items()}


def cached_pairs(pairs: SyntheticPairs, encoder: FrozenEncoder, store: Mapping[str, Any], name: str,
                 random: bool = False) -> CachedItems:
    """The fixed pool of ``pairs`` with its query, gallery (and shuffled) images replaced by frozen maps, computed
    once into ``store["dir"]`` (see :mod:`.features`); items also carry ``gallery_hw``, the gallery's pixel size."""
    if pairs.resample:
        raise ValueError("cached pairs need a fixed pool: build the SyntheticPairs with resample=False")
    maps = tuple(m for m in PAIR_MAPS if m != "shuffled" or pairs.shuffled)
    fs = FeatureStore(store["dir"], {"pool": pairs.pool_key(), "encoder": encoder.key()}, len(pairs), maps,
                      int(store["chunk_size"]), str(store["dtype"]))
    def item(i: int) -> dict[str, Any]:  # + the gallery's pixel size, which its map no longer tells
        return {**pairs[i], "gallery_hw": np.array([pairs.gallery_size] * 2, np.int64)}

    fill_store(fs, item, encoder, f"frozen maps of the {name}")
    out = CachedItems(fs, _as_tensors, pairs.seed, random, describe=pairs.describe())
    out.source = pairs  # what the items are made of (``content``), and the pixels for pictures
    return out


class SyntheticPairsDataModule(SeededSplitLoaders, pl.LightningDataModule):
    """Training and validation ``SyntheticPairs``, from COCO or procedural objects on folder or procedural
    backgrounds, split by image (part 0 trains, part 1 validates, the others are never read).

    Args:
        objects: ``{kind: procedural, n: 64, seed: 0}`` or ``{kind: coco, dir: <COCO folder>}``.
        backgrounds: ``{kind: procedural, n: 128, seed: 0}`` or ``{kind: folder, dir: <image folder>}``.
        split: ``{fractions: [0.5, 0.1, 0.4], seed: 0}`` for ``split_sources`` (at least 2 parts).
        syntheses: galleries per object and epoch.
        gallery_size, query_size: sides of the square gallery and query images.
        paste: ranges of the paste (``PASTE_DEFAULTS`` updated by these keys).
        batch_size: pairs per batch and per GPU; num_workers: loading processes (re-created every epoch).
        seed: shuffle, subset and synthesis seed.
        resample: fresh training galleries every epoch; validation galleries never change.
        limit_train, limit_val: keep a seeded random subset of N objects (quick runs); ``None`` keeps all.
        shuffled: every item also carries a patch-shuffled copy of its gallery (a hard negative).
        features: ``online`` (images; the model runs its frozen backbone in every step) or ``cached`` (the
            frozen maps of a fixed pool, ``syntheses`` galleries per object, computed once into
            ``feature_store.dir`` and read back: the items carry maps instead of images, see ``data.features``).
        feature_store: ``{dir, dtype: float16|float32, chunk_size}`` of the cached maps.

    Sharding under DDP is done by ``SeededShuffleSampler`` (the trainer runs with
    ``use_distributed_sampler=False``); the training loader drops the last incomplete batch.
    """

    def __init__(self, objects: Mapping[str, Any] | None = None, backgrounds: Mapping[str, Any] | None = None,
                 split: Mapping[str, Any] | None = None, syntheses: int = 4, gallery_size: int = 448,
                 query_size: int = 224, paste: Mapping[str, Any] | None = None, batch_size: int = 8,
                 num_workers: int = 0, seed: int = 0, resample: bool = True, limit_train: int | None = None,
                 limit_val: int | None = None, shuffled: bool = False, features: str = "online",
                 feature_store: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features, self.store_opts = feature_options(features, feature_store)
        if self.features == "cached" and resample:
            log.info("data.features=cached: the training pool is fixed (%d galleries per object), not resampled "
                     "every epoch", syntheses)
            resample = False
        self.shuffled = bool(shuffled)
        self.objects_spec = _options("objects", objects, OBJECTS_DEFAULTS)
        self.backgrounds_spec = _options("backgrounds", backgrounds, BACKGROUNDS_DEFAULTS)
        if self.objects_spec["kind"] not in OBJECT_KINDS:
            raise ValueError(f"data.objects.kind must be one of {OBJECT_KINDS}, got {self.objects_spec['kind']!r}")
        if self.backgrounds_spec["kind"] not in BACKGROUND_KINDS:
            raise ValueError(f"data.backgrounds.kind must be one of {BACKGROUND_KINDS}, "
                             f"got {self.backgrounds_spec['kind']!r}")
        split_opts = _options("split", split, SPLIT_DEFAULTS)
        self.fractions = [float(f) for f in split_opts["fractions"]]
        self.split_seed = int(split_opts["seed"])
        if len(self.fractions) < 2:
            raise ValueError(f"data.split.fractions needs at least 2 parts (train, val[, held out...]), "
                             f"got {self.fractions}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.paste_params = paste_params(paste)
        self.syntheses, self.gallery_size, self.query_size = syntheses, gallery_size, query_size
        self.batch_size, self.num_workers, self.seed, self.resample = batch_size, num_workers, seed, resample
        self.limit_train, self.limit_val = limit_train, limit_val
        self.train_set: SyntheticPairs | None = None
        self.val_set: SyntheticPairs | None = None

    def _where(self, spec: Mapping[str, Any], noun: str) -> str:
        return spec["dir"] if spec["dir"] is not None else f"{spec['n']} procedural {noun} (seed {spec['seed']})"

    def setup(self, stage: str | None = None) -> None:
        """Index the sources and split them (idempotent); objects are decoded only when an item needs them.

        Raises:
            DataError: a missing folder, or a training/validation part without objects or backgrounds.
        """
        if self.train_set is not None:
            return
        objects, backgrounds = make_objects(self.objects_spec), make_backgrounds(self.backgrounds_spec)
        object_parts, background_parts = split_sources(objects, backgrounds, self.fractions, self.split_seed,
                                                       int(self.objects_spec["min_size"]),
                                                       str(self.objects_spec["per_image"]))
        for part, name in ((TRAIN_PART, "training"), (VAL_PART, "validation")):
            for noun, count, spec in (("objects", len(object_parts[part].refs), self.objects_spec),
                                      ("backgrounds", len(background_parts[part]), self.backgrounds_spec)):
                if not count:
                    raise DataError(
                        f"the {name} part (part {part} of data.split.fractions={self.fractions}) has no {noun}",
                        self._where(spec, noun),
                        f"add {noun} (more source images, or a larger data.{noun}.n) or give part {part} a larger "
                        "fraction in data.split.fractions")
        common = {"syntheses": self.syntheses, "gallery_size": self.gallery_size, "query_size": self.query_size,
                  "paste": self.paste_params, "seed": self.seed, "shuffled": self.shuffled}
        sets = []
        for part, limit, resample in ((TRAIN_PART, self.limit_train, self.resample), (VAL_PART, self.limit_val, False)):
            refs = limit_samples(object_parts[part].refs, limit, self.seed)
            split = {"fractions": self.fractions, "seed": self.split_seed, "part": part, "limit": limit}
            sets.append(SyntheticPairs(ObjectSubset(objects, tuple(refs)), background_parts[part], resample=resample,
                                       split=split, **common))
        train, val = sets
        if len(train) < self.batch_size:
            raise DataError(f"{len(train)} training pairs make no full batch of {self.batch_size} (the last "
                            "incomplete batch is dropped)", self._where(self.objects_spec, "objects"),
                            "lower data.batch_size, raise data.syntheses or data.limit_train, or add objects")
        log.info("synthetic pairs: %d training objects x %d syntheses, %d backgrounds; %d val objects, %d backgrounds",
                 len(train.refs), self.syntheses, train.n_backgrounds, len(val.refs), val.n_backgrounds)
        if self.features == "cached":
            train, val = (cached_pairs(ds, model_encoder(self), self.store_opts, name, random=False)
                          for ds, name in ((train, "training pairs"), (val, "validation pairs")))
        self.train_set, self.val_set = train, val


    def describe(self) -> dict[str, Any]:
        """What is being trained on, for the logger."""
        train, val = self._ready()
        return {"train": train.describe(), "val": val.describe(), "batch_size": self.batch_size,
                "features": self.features,
                "split": {"fractions": self.fractions, "seed": self.split_seed},
                "limit_train": self.limit_train, "limit_val": self.limit_val}


__all__ = ["BACKGROUNDS_DEFAULTS", "BACKGROUND_KINDS", "OBJECTS_DEFAULTS", "OBJECT_KINDS", "PASTE_DEFAULTS",
           "SPLIT_DEFAULTS", "BackgroundSubset", "SyntheticPairs", "SyntheticPairsDataModule", "make_backgrounds",
           "make_objects", "one_per_image", "paste_params", "split_sources"]
