"""Descriptor extraction as ``eval.py`` runs it: one method's descriptors of a dataset's database or queries,
cached on disk under everything that affects them (backbone and weights, method, image size, scales, images)."""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from ..backbones import Backbone
from ..backbones.weights import weights_identity
from ..data import RetrievalDataset
from ..data.provenance import item_keys
from .cache import DescriptorCache
from . import distributed
from .extract import Loading, dataset_items, extract_store
from .store import DescriptorStore


def loader_workers(setting: int | str, device: str) -> int:
    """``auto``: no loader process on CPU, 2 on an accelerator.

    On CPU a forked loader slows the network's forward pass itself (copy-on-write page faults in the main
    process: +60-80% per image, benchmarks/extraction_overhead.py), far more than loading in-line (~5%)."""
    if setting == "auto":
        return 0 if str(device).startswith("cpu") else 2
    return int(setting)


def loading(cfg: DictConfig, progress: bool = True) -> Loading:
    """eval.py's image options: ``image_size``, ``num_workers`` (``auto``: :func:`loader_workers`),
    ``skip_bad_images``, ``exif_transpose``, ``device``."""
    return Loading(cfg.image_size, loader_workers(cfg.num_workers, cfg.device), bool(cfg.skip_bad_images),
                   bool(cfg.get("exif_transpose", False)), cfg.device, progress, distributed.current())


def backbone_key(cfg: DictConfig, backbone: Backbone) -> dict[str, str]:
    """What identifies a run's backbone in cache keys: its name and weights."""
    return {"backbone": backbone.name, "weights": weights_identity(str(cfg.backbone.weights), int(cfg.seed))}


class DescriptorExtractor:
    """Extracts (and caches) the descriptors of a dataset's database and queries for one method."""

    def __init__(self, cfg: DictConfig, backbone: Backbone, method: torch.nn.Module):
        self.cfg, self.backbone, self.method = cfg, backbone, method
        self.base_key = {
            "backbone": cfg.backbone.name,
            "weights": weights_identity(str(cfg.backbone.weights), int(cfg.seed)),
            "method": method.cache_key(),  # nested: a method's own keys (e.g. its region scales S) never
            "image_size": cfg.image_size,  # collide with the extraction's (e.g. the multi-scale ``scales``)
            "scales": [float(s) for s in cfg.scales],
            "exif_transpose": bool(cfg.exif_transpose),
            "version": 4,  # 3: images keyed by content; 4: .npy chunks
        }

    def store(self, dataset: RetrievalDataset, part: str) -> tuple[DescriptorStore, list[int]]:
        """The descriptors of ``dataset``'s ``part`` as a store (on disk, read block by block, with the cache).
        A database's distractors (``dataset.distractors``) are an entry of their own, keyed by their set, so that
        every benchmark they extend reads the same files."""
        items = dataset_items(dataset, part)
        d = dataset.distractors
        if d is None:
            return self._store(items, dataset.name, dataset.root, part)
        if part != "db":
            return self._store(items, d.base_name, dataset.root, part)
        base, skipped = self._store(items[:d.start], d.base_name, dataset.root, part)
        extra, extra_skipped = self._store(items[d.start:], d.name, d.root, "distractors")
        return DescriptorStore.concat([base, extra]), skipped + [d.start + i for i in extra_skipped]

    def _store(self, items: list, name: str, root: object, part: str) -> tuple[DescriptorStore, list[int]]:
        cache = None
        if self.cfg.cache.enabled:
            key = {**self.base_key, "dataset": name, "root": str(root), "part": part, "items": item_keys(items)}
            store_cfg = self.cfg.get("store") or {}
            cache = DescriptorCache(self.cfg.cache.dir, key, chunk_size=int(store_cfg.get("chunk_size", 64)),
                                    dtype=str(store_cfg.get("dtype", "float32")))
        return extract_store(items, self.method, self.backbone.normalize, loading(self.cfg),
                             scales=[float(s) for s in self.cfg.scales], power=self.method.power, cache=cache,
                             desc=f"{name}/{part}")

    def __call__(self, dataset: RetrievalDataset, part: str) -> tuple[np.ndarray, list[int]]:
        """The descriptors of ``dataset``'s ``part`` in memory (``N×D`` float32)."""
        store, skipped = self.store(dataset, part)
        return (np.asarray(store) if len(store) else np.zeros((0, 0), np.float32)), skipped
