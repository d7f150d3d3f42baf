"""Frozen-feature training: the frozen backbone's maps of a fixed pool of training items, computed once.

Every learned piece of this project trains a small network on top of a **frozen** backbone, so recomputing the
backbone at every step spends almost all of the step on a function that never changes. With
``data.features=cached`` a data module turns its training (and validation) items into a fixed pool, and

- :class:`FeatureStore` keeps the backbone maps of the pool on disk: float16 (or float32), in chunks of
  ``chunk_size`` items, each chunk a memory-mapped ``.npy`` blob of the maps plus an index ``.npz`` (offsets,
  shapes, and the item's other fields at their own dtype). The blob is written first and the index last, each
  atomically, so a chunk exists only when complete: an interrupted build resumes from the chunks on disk, and a
  damaged chunk is recomputed, never trusted. The folder is named by the digest of everything that affects the
  maps (the pool's sources by content, its synthesis settings, the backbone and its weights, the dtype), like the
  descriptor cache: a changed key never reads another key's maps.
- :func:`fill_store` computes the missing chunks (progress bar), encoding the image fields of each item with a
  :class:`FrozenEncoder`.
- :class:`CachedItems` is the training dataset: it reads an item's maps (memory-mapped, so only the pages a step
  touches are read) and hands them to the data module's ``serve`` function, which does what the online pipeline
  did after the backbone (e.g. a stride-aligned random crop of the map), with a generator seeded by
  ``(seed, epoch, index)``.

``data.features=online`` (the default) keeps the backbone in the step: it is the only choice where the pool does
not fit on disk (ImageNet-scale data) or where fresh syntheses every epoch matter more than speed.
"""
from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..atomic import atomic_write
from .errors import DataError

log = logging.getLogger(__name__)

FEATURE_MODES = ("online", "cached")
STORE_DTYPES = ("float16", "float32")
FORMAT_VERSION = 1
F16_MAX = float(np.finfo(np.float16).max)
#: ``data.feature_store``: where and how ``data.features=cached`` keeps the frozen maps
STORE_DEFAULTS: dict[str, Any] = {"dir": None, "dtype": "float16", "chunk_size": 32}
Item = dict[str, Any]


def check_mode(features: str) -> str:
    if features not in FEATURE_MODES:
        raise ValueError(f"data.features={features!r}: choose 'online' (the backbone runs in every step) or "
                         "'cached' (its maps of a fixed training pool are computed once and read back)")
    return features


def feature_options(features: str, feature_store: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """``(data.features, data.feature_store over STORE_DEFAULTS)``, checked: a cached mode needs a folder."""
    mode = check_mode(features)
    unknown = set(feature_store or {}) - set(STORE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown data.feature_store keys {sorted(unknown)}; known: {sorted(STORE_DEFAULTS)}")
    opts = {**STORE_DEFAULTS, **dict(feature_store or {})}
    if mode == "cached" and not opts["dir"]:
        raise DataError("data.features=cached needs a folder for the maps", None,
                        "set data.feature_store.dir (e.g. ${paths.cache_dir}/features)")
    return mode, opts


def is_map(x: Tensor, channels: int) -> bool:
    """Whether a batch ``N×C×H×W`` is frozen maps of a backbone with ``channels`` channels (``data.features=cached``)
    rather than images (3 channels); anything else is a clear error."""
    if x.shape[1] == 3:
        return False
    if x.shape[1] != channels:
        raise ValueError(f"expected images (3 channels) or this backbone's maps ({channels} channels), got "
                         f"{tuple(x.shape)}: cached maps of another backbone? Fix: rebuild the feature store for "
                         "this backbone")
    return True


def store_key_digest(key: Mapping[str, Any]) -> str:
    # imported here: ``lit_retrieval.retrieval`` pulls in the backbones, which the store itself does not need
    from ..retrieval.cache import key_digest

    return key_digest(dict(key))


class FrozenEncoder:
    """The frozen part of a model as the store sees it: ``[0, 1]`` images ``N×3×H×W`` -> maps ``N×C×h×w``
    (normalised, eval mode, no gradient), and ``key()``: what identifies its output (backbone, weights)."""

    def __init__(self, backbone: torch.nn.Module, identity: Mapping[str, Any]) -> None:
        self.backbone, self.identity = backbone, dict(identity)

    def key(self) -> dict[str, Any]:
        return dict(self.identity)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        device = next(self.backbone.parameters()).device
        was_training = self.backbone.training
        self.backbone.train(False)
        try:
            return self.backbone(self.backbone.normalize(images.to(device))).float().cpu()
        finally:
            self.backbone.train(was_training)


class FeatureStore:
    """Chunked on-disk store of the maps (and small fields) of ``n_items`` training items.

    Args:
        root: the cache folder; the store lives in ``root / digest(key + layout)``.
        key: everything that affects the maps (see the module docstring).
        n_items: the pool size.
        maps: the names of the map fields (stored in the blob at ``dtype``); every other field of an item is an
            array of one shape for all items, stored at its own dtype.
        chunk_size: items per chunk.
        dtype: ``float16`` (the default: half the disk and reads) or ``float32``.
    """

    def __init__(self, root: str | Path, key: Mapping[str, Any], n_items: int, maps: Sequence[str],
                 chunk_size: int = 32, dtype: str = "float16") -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"data.feature_store.dtype={dtype!r}: choose one of {STORE_DTYPES}")
        if chunk_size < 1 or n_items < 0:
            raise ValueError(f"FeatureStore: need chunk_size >= 1 and n_items >= 0, got {chunk_size}, {n_items}")
        if Path(root).exists() and not Path(root).is_dir():
            raise NotADirectoryError(f"data.feature_store.dir={root} is a file, not a folder. Fix: point it at a "
                                     "folder (or remove the file)")
        self.n_items, self.maps, self.chunk_size, self.dtype = int(n_items), tuple(maps), int(chunk_size), dtype
        self.key = {**dict(key), "n_items": self.n_items, "maps": list(self.maps), "chunk_size": self.chunk_size,
                    "dtype": dtype, "format": FORMAT_VERSION}
        self.dir = Path(root) / store_key_digest(self.key)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "key.json"
        if not meta.exists():
            atomic_write(meta, lambda f: f.write(json.dumps(self.key, sort_keys=True, indent=1,
                                                            default=str).encode()))
        self._open: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}  # loader workers map the chunks themselves
        return state

    # -- layout ---------------------------------------------------------------------------------------------
    def chunks(self) -> list[range]:
        return [range(s, min(s + self.chunk_size, self.n_items)) for s in range(0, self.n_items, self.chunk_size)]

    def _paths(self, c: int) -> tuple[Path, Path]:
        return self.dir / f"chunk_{c:06d}.npy", self.dir / f"chunk_{c:06d}.npz"

    def _read_chunk(self, c: int) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
        """``(blob, index)`` of a complete, consistent chunk, else ``None`` (absent, damaged or of another size)."""
        blob_path, index_path = self._paths(c)
        if not index_path.exists() or not blob_path.exists():
            return None
        try:
            with np.load(index_path, allow_pickle=False) as z:
                index = {k: z[k] for k in z.files}
            blob = np.load(blob_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        expected = len(self.chunks()[c])
        ends = [index.get(f"offsets/{m}") for m in self.maps]
        if (any(e is None or len(e) != expected + 1 for e in ends) or blob.ndim != 1
                or blob.dtype != np.dtype(self.dtype) or int(ends[-1][-1]) != blob.shape[0]):
            return None
        return blob, index

    def complete(self, c: int) -> bool:
        return self._read_chunk(c) is not None

    def missing(self) -> list[int]:
        return [c for c in range(len(self.chunks())) if not self.complete(c)]

    def nbytes(self) -> int:
        """Bytes on disk (blobs and indexes)."""
        return sum(p.stat().st_size for p in self.dir.glob("chunk_*") if p.is_file())

    # -- writing --------------------------------------------------------------------------------------------
    def write(self, c: int, items: Sequence[Item]) -> None:
        """Store chunk ``c``: ``items`` (as many as the chunk holds), each with every map field (float arrays) and
        the same other fields."""
        if len(items) != len(self.chunks()[c]):
            raise ValueError(f"chunk {c} holds {len(self.chunks()[c])} items, got {len(items)}")
        offsets, shapes, start = {}, {}, 0
        order = []  # maps in blob order: map-major, then item
        for m in self.maps:
            ends, shp = [start], []
            for it in items:
                a = np.asarray(it[m], dtype=np.float32)
                if not np.isfinite(a).all():
                    raise ValueError(f"map {m!r} of a training item has non-finite values: the backbone's output "
                                     "is not usable (check its weights)")
                if self.dtype == "float16" and a.size and float(np.abs(a).max()) > F16_MAX:
                    raise ValueError(f"map {m!r} exceeds the float16 range (max {float(np.abs(a).max()):.4g}). "
                                     "Fix: data.feature_store.dtype=float32")
                v = a.astype(self.dtype)
                order.append(v.ravel())
                shp.append(a.shape)
                ends.append(ends[-1] + v.size)
            start = ends[-1]
            offsets[m], shapes[m] = np.asarray(ends, np.int64), np.asarray(shp, np.int64)
        blob = np.concatenate(order) if order else np.zeros(0, self.dtype)
        index = {f"offsets/{m}": offsets[m] for m in self.maps} | {f"shapes/{m}": shapes[m] for m in self.maps}
        others = sorted(set(items[0]) - set(self.maps))
        for k in others:
            index[f"field/{k}"] = np.stack([np.asarray(it[k]) for it in items])
        blob_path, index_path = self._paths(c)
        atomic_write(blob_path, lambda f: np.save(f, blob, allow_pickle=False))
        atomic_write(index_path, lambda f: np.savez(f, **index))  # last: the chunk's commit
        self._open.pop(c, None)

    # -- reading --------------------------------------------------------------------------------------------
    def get(self, i: int) -> Item:
        """Item ``i``: its maps as float32 arrays (read from the memory-mapped blob) and its other fields."""
        if not 0 <= i < self.n_items:
            raise IndexError(f"item {i} out of range [0, {self.n_items})")
        c, j = divmod(int(i), self.chunk_size)
        if c not in self._open:
            chunk = self._read_chunk(c)
            if chunk is None:
                raise DataError(f"feature store chunk {c} is missing or damaged", self.dir,
                                "the store was changed while training: delete the folder to rebuild it")
            self._open[c] = chunk
        blob, index = self._open[c]
        out: Item = {}
        for m in self.maps:
            a, b = index[f"offsets/{m}"][j: j + 2]
            out[m] = np.array(blob[a:b], dtype=np.float32).reshape(tuple(index[f"shapes/{m}"][j]))
        for k in index:
            if k.startswith("field/"):
                out[k[len("field/"):]] = index[k][j]
        return out


def _encode(items: list[Item], inputs: Sequence[str], encoder: Callable[[Tensor], Any], batch: int) -> None:
    """Replace the image fields ``inputs`` of ``items`` by their frozen maps (batched where shapes agree): field
    ``m`` becomes the map ``m``, or the maps ``m.<level>`` of an encoder that returns ``{level: maps}``."""
    for m in inputs:
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, it in enumerate(items):
            by_shape.setdefault(tuple(it[m].shape), []).append(k)
        for ks in by_shape.values():
            for s in range(0, len(ks), batch):
                group = ks[s: s + batch]
                out = encoder(torch.stack([torch.as_tensor(items[k][m]) for k in group]))
                levels = out if isinstance(out, Mapping) else {None: out}
                for j, k in enumerate(group):
                    del items[k][m]
                    for level, maps in levels.items():
                        items[k][m if level is None else f"{m}.{level}"] = maps[j].numpy()


def fill_store(store: FeatureStore, item: Callable[[int], Item], encoder: Callable[[Tensor], Any], desc: str,
               batch: int = 1, progress: bool = True, inputs: Sequence[str] | None = None) -> FeatureStore:
    """Compute the chunks of ``store`` that are not on disk: ``item(i)`` gives pool item ``i`` with its image
    fields ``inputs`` (default: the store's map names) as ``3×H×W`` ``[0, 1]`` tensors, which ``encoder`` turns
    into maps (a tensor, or ``{level: tensor}`` stored as ``<field>.<level>``), ``batch`` images of one shape at a
    time (1 by default: on a CPU, batches of large images are slower per image, e.g. 1.9× at 448 px)."""
    todo = store.missing()
    if todo:
        n = sum(len(store.chunks()[c]) for c in todo)
        log.info("%s: computing the frozen maps of %d of %d items into %s", desc, n, store.n_items, store.dir)
        with tqdm(total=n, desc=desc, unit="item", disable=not progress) as bar:
            for c in todo:
                items = [dict(item(i)) for i in store.chunks()[c]]
                _encode(items, store.maps if inputs is None else inputs, encoder, batch)
                store.write(c, [{k: (v.numpy() if isinstance(v, Tensor) else v) for k, v in it.items()}
                                for it in items])
                bar.update(len(items))
    log.info("%s: %d items, %.1f MB on disk (%.2f MB per item) in %s", desc, store.n_items, store.nbytes() / 1e6,
             store.nbytes() / 1e6 / max(store.n_items, 1), store.dir)
    return store


class CachedItems(Dataset):
    """Training items served from a :class:`FeatureStore`: ``serve(stored item, rng)`` builds what the model's step
    receives; ``rng`` is ``default_rng((seed, epoch, index))`` (``None`` when ``random=False``, e.g. validation)."""

    def __init__(self, store: FeatureStore, serve: Callable[[Item, np.random.Generator | None], Any],
                 seed: int = 0, random: bool = True, describe: Mapping[str, Any] | None = None,
                 content_sources: Callable[[], list[str]] | None = None) -> None:
        self.store, self.serve, self.seed, self.random, self.epoch = store, serve, int(seed), bool(random), 0
        self._describe, self._content_sources = dict(describe or {}), content_sources

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.store.n_items

    def __getitem__(self, index: int) -> Any:
        rng = np.random.default_rng((self.seed, self.epoch, int(index))) if self.random else None
        return self.serve(self.store.get(int(index)), rng)

    def describe(self) -> dict[str, Any]:
        return {**self._describe, "features": "cached", "store": str(self.store.dir), "n_items": len(self),
                "store_mb": round(self.store.nbytes() / 1e6, 1)}


def model_encoder(datamodule: Any) -> FrozenEncoder:
    """The frozen encoder of the model a data module is being fitted with (``data.features=cached``)."""
    trainer = getattr(datamodule, "trainer", None)
    module = None if trainer is None else trainer.lightning_module
    make = getattr(module, "frozen_encoder", None)
    if make is None:
        raise ValueError(f"data.features=cached: the model ({type(module).__name__}) has no frozen backbone to "
                         "cache. Fix: data.features=online")
    return make()


__all__ = ["FEATURE_MODES", "STORE_DEFAULTS", "STORE_DTYPES", "CachedItems", "FeatureStore", "FrozenEncoder",
           "check_mode", "feature_options", "fill_store", "is_map", "model_encoder"]
