"""What every cut-and-paste training set shares (the pairs of ``data.pairs``, the boxes of D2R's detector):
the object and background sources and their by-image split (``data.objects``, ``data.backgrounds``,
``data.split``), the paste ranges (``data.paste``), :class:`PastedItems` (seeded items of syntheses of objects) and
:class:`SeededSplitLoaders` (seeded, resumable loaders of a train / val data module), with a small LRU cache."""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .classification import SeededShuffleSampler
from .errors import DataError
from .provenance import ContentSet, content_of_files
from .synthetic.backgrounds import BackgroundSource, ImageFolderBackgrounds
from .synthetic.benchmark import split_by_image
from .synthetic.compositor import PRESETS, PasteParams
from .synthetic.objects import MIN_OBJECT_SIZE, CocoObjects, ObjectRef, ObjectSource, ObjectSubset
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


