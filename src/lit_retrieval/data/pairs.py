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
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .classification import SeededShuffleSampler, limit_samples
from .errors import DataError
from .features import CachedItems, FeatureStore, FrozenEncoder, feature_options, fill_store, model_encoder
from .images import to_tensor
from .provenance import ContentSet, content_of_files
from .synthetic.backgrounds import BackgroundSource, ImageFolderBackgrounds
from .synthetic.benchmark import split_by_image
from .synthetic.compositor import PRESETS, PasteParams, paste
from .synthetic.shuffle import shuffle_patches
from .synthetic.objects import MIN_OBJECT_SIZE, CocoObjects, ObjectInstance, ObjectRef, ObjectSource, ObjectSubset
from .synthetic.procedural import ProceduralBackgrounds, ProceduralObjects

log = logging.getLogger(__name__)

OBJECT_KINDS = ("procedural", "coco")
BACKGROUND_KINDS = ("procedural", "folder")
#: ``data.objects``: procedural sources are generated from their own ``seed`` (not the run seed), so the split
#: and its held-out part stay the same across training seeds.
OBJECTS_DEFAULTS: dict[str, Any] = {"kind": "procedural", "dir": None, "n": 64, "seed": 0,
                                    "min_size": MIN_OBJECT_SIZE, "per_image": "largest"}
PER_IMAGE = ("largest", "all")
BACKGROUNDS_DEFAULTS: dict[str, Any] = {"kind": "procedural", "dir": None, "n": 128, "seed": 0}
SPLIT_DEFAULTS: dict[str, Any] = {"fractions": (0.5, 0.1, 0.4), "seed": 0}
#: the paste ranges of the pairs (any other ``PasteParams`` field keeps the class default)
PASTE_DEFAULTS: dict[str, Any] = {"scale": (0.15, 0.5), "rotation": (0.0, 30.0), "flip_prob": 0.5,
                                  "brightness": (0.8, 1.2), "contrast": (0.8, 1.2), "saturation": (0.8, 1.2),
                                  "hue": (0.0, 0.05), "truncation_prob": 0.0}
GALLERY_JITTER = 1.25  # the gallery's short side is resized to a random value in [size, 1.25 size] before cropping
MAX_PASTE_TRIES = 10
SHUFFLE_GRID = 10  # patches per side of the shuffled hard negatives (the OxfShf construction)
TRAIN_PART, VAL_PART = 0, 1
PAIR_MAPS = ("query", "gallery", "shuffled")
_FIX_COCO = ("point data.objects.dir at a COCO folder (annotations/instances.json + images/), e.g. "
             "data.objects.dir=${paths.shared_dir}/coco128, or use data.objects.kind=procedural")
_FIX_FOLDER = ("point data.backgrounds.dir at a folder of .jpg/.jpeg/.png images, e.g. "
               "data.backgrounds.dir=${paths.shared_dir}/imagenet-samples, or use data.backgrounds.kind=procedural")


# ----------------------------------------------------------------------------------------------- sources

class BackgroundSubset:
    """A view of a background source restricted to some of its backgrounds (one side of a split).

    Args:
        base: the whole source.
        indices: positions in ``base`` kept, in this order.
    """

    def __init__(self, base: BackgroundSource, indices: Sequence[int]) -> None:
        base_keys = list(base.keys)
        self.base, self.indices = base, tuple(int(i) for i in indices)
        self._keys = [base_keys[i] for i in self.indices]

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> np.ndarray:
        return self.base.load(self.indices[index])

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "subset": len(self.indices)}


def _options(name: str, given: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by ``given`` (a dict or DictConfig); unknown keys are an error naming the known ones."""
    given = dict(given or {})
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown data.{name} keys {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **given}


def make_objects(spec: Mapping[str, Any] | None = None) -> ObjectSource:
    """The object source of ``data.objects``: ``{kind: procedural, n, seed}`` or ``{kind: coco, dir}``.

    Raises:
        DataError: coco without a folder, a missing folder, or a folder that is not in the COCO layout.
        ValueError: unknown kind or keys.
    """
    opts = _options("objects", spec, OBJECTS_DEFAULTS)
    kind = opts["kind"]
    if kind == "procedural":
        return ProceduralObjects(int(opts["n"]), seed=int(opts["seed"]))
    if kind != "coco":
        raise ValueError(f"data.objects.kind must be one of {OBJECT_KINDS}, got {kind!r}")
    if opts["dir"] is None:
        raise DataError("data.objects.kind=coco needs a COCO folder", None, _FIX_COCO)
    root = Path(opts["dir"])
    if not root.is_dir():
        raise DataError("COCO objects folder not found", root, _FIX_COCO)
    try:
        # every instance the benchmarks' split sees (>= MIN_OBJECT_SIZE) is kept here, whatever min_size: the split
        # (``stable_split``) is anchored on them; split_sources keeps the instances of at least min_size
        return CocoObjects(root, min_size=min(int(opts["min_size"]), MIN_OBJECT_SIZE))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read the COCO objects: {err}", root, _FIX_COCO) from err


def make_backgrounds(spec: Mapping[str, Any] | None = None) -> BackgroundSource:
    """The background source of ``data.backgrounds``: ``{kind: procedural, n, seed}`` or ``{kind: folder, dir}``.

    Raises:
        DataError: folder without a path, a missing folder, or one without images.
        ValueError: unknown kind or keys.
    """
    opts = _options("backgrounds", spec, BACKGROUNDS_DEFAULTS)
    kind = opts["kind"]
    if kind == "procedural":
        return ProceduralBackgrounds(int(opts["n"]), seed=int(opts["seed"]))
    if kind != "folder":
        raise ValueError(f"data.backgrounds.kind must be one of {BACKGROUND_KINDS}, got {kind!r}")
    if opts["dir"] is None:
        raise DataError("data.backgrounds.kind=folder needs a folder of images", None, _FIX_FOLDER)
    root = Path(opts["dir"])
    if not root.is_dir():
        raise DataError("backgrounds folder not found", root, _FIX_FOLDER)
    try:
        return ImageFolderBackgrounds(root)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot list the backgrounds: {err}", root, _FIX_FOLDER) from err


def one_per_image(refs: Sequence[ObjectRef], min_size: int = MIN_OBJECT_SIZE) -> list[ObjectRef]:
    """The largest instance (ties: smallest ann_id) of each source image among those whose box is at least
    ``min_size`` px wide and high, in the order of ``refs``."""
    best: dict[str, ObjectRef] = {}
    for r in refs:
        x1, y1, x2, y2 = r.bbox
        if x2 - x1 < min_size or y2 - y1 < min_size:
            continue
        held = best.get(r.source)
        if held is None or (-r.area, r.ann_id) < (-held.area, held.ann_id):
            best[r.source] = r
    chosen = set(best.values())
    return [r for r in refs if r in chosen]


def _side(ref: ObjectRef) -> float:
    x1, y1, x2, y2 = ref.bbox
    return min(x2 - x1, y2 - y1)


def stable_split(refs: Sequence[ObjectRef], universe: Sequence[ObjectRef], fractions: Sequence[float],
                 seed: int) -> list[list[ObjectRef]]:
    """``split_by_image`` of ``refs`` whose parts do not depend on which instances are kept: the source images that
    have an instance of at least ``MIN_OBJECT_SIZE`` px in ``universe`` (the images the cut-and-paste benchmarks
    split) are split among themselves, exactly as the benchmarks split them, and the other images (only smaller
    instances) among themselves. Keeping smaller instances or every instance of an image therefore never moves an
    image into another part, e.g. from a held-out benchmark's part into training."""
    anchored = {r.source for r in universe if _side(r) >= MIN_OBJECT_SIZE}
    a_parts = split_by_image([r for r in universe if r.source in anchored and _side(r) >= MIN_OBJECT_SIZE],
                             fractions, seed)
    part_of = {r.source: k for k, part in enumerate(a_parts) for r in part}
    others = [r for r in refs if r.source not in anchored]
    for k, part in enumerate(split_by_image(others, fractions, seed)):
        part_of.update({r.source: k for r in part})
    parts: list[list[ObjectRef]] = [[] for _ in fractions]
    for r in refs:
        parts[part_of[r.source]].append(r)
    return parts


def split_sources(objects: ObjectSource, backgrounds: BackgroundSource,
                  fractions: Sequence[float] = SPLIT_DEFAULTS["fractions"], seed: int = 0,
                  min_size: int = MIN_OBJECT_SIZE,
                  per_image: str = "largest") -> tuple[list[ObjectSubset], list[BackgroundSubset]]:
    """Split objects (``per_image="largest"``: one per source image, see ``one_per_image``; ``"all"``: every
    instance of at least ``min_size`` px) and backgrounds by image with ``split_by_image`` (same ``fractions`` and
    ``seed`` for both; backgrounds keyed by ``backgrounds.keys``): the instances of one image stay in one part.

    Returns one ``ObjectSubset`` and one ``BackgroundSubset`` per fraction. Part 0 trains and part 1
    validates in ``SyntheticPairsDataModule``; the other parts are the held-out ones (an evaluation benchmark
    built elsewhere takes them with the same call).
    """
    fractions = [float(f) for f in fractions]
    if len(fractions) < 2:
        raise ValueError(f"data.split.fractions needs at least 2 parts (train, val[, held out...]), got {fractions}")
    if per_image not in PER_IMAGE:
        raise ValueError(f"data.objects.per_image={per_image!r}: choose one of {PER_IMAGE}")
    refs = one_per_image(objects.refs, min_size) if per_image == "largest" else [
        r for r in objects.refs if _side(r) >= min_size]
    object_parts = stable_split(refs, objects.refs, fractions, seed)
    keys = list(backgrounds.keys)
    background_parts = split_by_image(list(range(len(keys))), fractions, seed, key=keys.__getitem__)
    return ([ObjectSubset(objects, tuple(p)) for p in object_parts],
            [BackgroundSubset(backgrounds, p) for p in background_parts])


def lru(cache: OrderedDict, key: Any, make: Any, size: int) -> Any:
    """``cache[key]`` (marked most recent), else ``make()`` stored there, the oldest entries dropped beyond ``size``
    (0: nothing is kept). A per-process cache of decoded objects: datasets empty it when pickled to workers."""
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return hit
    entry = make()
    if size:
        cache[key] = entry
        while len(cache) > size:
            cache.popitem(last=False)
    return entry


def paste_params(spec: PasteParams | Mapping[str, Any] | str | None = None) -> PasteParams:
    """``PasteParams`` from ``data.paste`` (``PASTE_DEFAULTS`` updated by the given keys), a preset name, or as is."""
    if isinstance(spec, PasteParams):
        return spec
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown paste preset {spec!r}; choose one of {sorted(PRESETS)} or give the ranges")
        return PRESETS[spec]
    known = {f.name for f in fields(PasteParams)}
    opts = _options("paste", spec, {**{k: None for k in known}, **PASTE_DEFAULTS})
    opts = {k: (tuple(float(x) for x in v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
            for k, v in opts.items() if v is not None}
    return PasteParams(**opts)


# ----------------------------------------------------------------------------------------------- dataset

class PastedItems:
    """What the cut-and-paste datasets share: item ``i`` is synthesis ``i % syntheses`` of object
    ``i // syntheses``; every random choice of it comes from ``default_rng([seed, epoch, i])`` (``[seed, i]``
    without resampling); decoded objects are kept in a per-process LRU cache that is never pickled to workers."""

    POOL_KIND = "pasted-items"  # names the items in the feature store's key (``pool_key``)

    def _init_items(self, objects: ObjectSource, backgrounds: BackgroundSource, syntheses: int, seed: int,
                    resample: bool, cache_size: int, split: Mapping[str, Any] | None) -> None:
        self.objects, self.backgrounds = objects, backgrounds
        self.refs: tuple[ObjectRef, ...] = tuple(objects.refs)
        self.n_backgrounds = len(list(backgrounds.keys))
        if not self.refs or not self.n_backgrounds:
            raise DataError(f"no {'object' if not self.refs else 'background'} to paste", None,
                            f"give {type(self).__name__} at least one object and one background")
        self.syntheses = int(syntheses)
        self.seed, self.resample, self.cache_size, self.epoch = int(seed), bool(resample), int(cache_size), 0
        self.split = dict(split or {})
        self._cache: OrderedDict[int, Any] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()  # workers start empty: no decoded pixels are pickled
        return state

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.refs) * self.syntheses

    def content_sources(self) -> list[str]:
        """What the items are made of: the objects' source images and the backgrounds (paths or procedural keys)."""
        return [r.source for r in self.refs] + [str(k) for k in self.backgrounds.keys]

    def pool_key(self) -> dict[str, Any]:
        """What the items are, for the feature store's key: the settings, which instances, and every source by
        content (a changed image, annotation or background changes the key)."""
        sources = content_of_files(f"{self.POOL_KIND} pool", [], self.content_sources())
        return {"items": f"{self.POOL_KIND}-v1", **self.describe(), "instances": [r.ann_id for r in self.refs],
                "content": sources.digest}

    def rng(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` in the current epoch."""
        seq = [self.seed, self.epoch, int(index)] if self.resample else [self.seed, int(index)]
        return np.random.default_rng(seq)


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


# -------------------------------------------------------------------------------------------- datamodule

class SeededSplitLoaders:
    """Loaders of a data module whose ``setup`` builds ``train_set`` and ``val_set``: seeded, resumable shuffling
    (``SeededShuffleSampler``, which also shards under DDP and forwards the epoch to the dataset), the last
    incomplete training batch dropped, ``collate_fn`` (a staticmethod; ``None``: torch's default)."""

    collate_fn = None

    def _ready(self) -> tuple[Any, Any]:
        if self.train_set is None or self.val_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not been called")
        return self.train_set, self.val_set

    def set_epoch(self, epoch: int) -> None:
        """Set the training epoch by hand (Lightning does it through the sampler); validation never changes."""
        self._ready()[0].set_epoch(epoch)

    def content(self) -> ContentSet:
        """What training and validation are made of, by content (the retrieval callback checks it against the
        benchmarks): the sources of generated items, the files of file-based sets."""
        train, val = self._ready()
        sources: list[str] = []
        for ds in (train, val):
            src = getattr(ds, "source", ds)  # detection datasets wrap their box source
            # generated items: what they are pasted from; file sets: their keys (paths are hashed by content)
            sources += src.content_sources() if isinstance(src, PastedItems) else [str(k) for k in src.keys]
        out = content_of_files(f"{type(self).__name__} training/validation data", [], sources)
        out.n_images = len(train) + len(val)
        return out

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=SeededShuffleSampler(dataset, self.seed, train),
                          num_workers=self.num_workers, drop_last=train, persistent_workers=False,
                          collate_fn=self.collate_fn, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._ready()[0], train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._ready()[1], train=False)


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
