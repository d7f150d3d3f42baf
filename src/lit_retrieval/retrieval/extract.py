"""Descriptor extraction for a list of images: loading in a worker, multi-scale, progress bar, cache.

Images are fed one at a time at their own size and aspect ratio (no crop): database images shrink to
``image_size`` on the long side, queries are cropped to their box first (cirtorch's protocol). Multi-scale
extraction (scales 1, 1/√2, 1/2 as in cirtorch) averages the per-scale L2-normalised descriptors raised to the
method's power (GeM's ``p`` for GeM, 1 otherwise), takes the root and L2-normalises.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.images import safe_load
from .cache import DescriptorCache
from .store import DescriptorStore

log = logging.getLogger(__name__)

Describe = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Loading:
    """How a run reads and feeds its images: the long side of database images (``image_size``; queries are cropped
    to their box and keep the full image's scale), loader processes, unreadable files skipped (``skip_bad``,
    logged) or refused, the EXIF orientation applied or not, the device and whether progress bars show
    (``eval.py``'s ``image_size``, ``num_workers``, ``skip_bad_images``, ``exif_transpose``, ``device``)."""

    image_size: int | None = None
    num_workers: int = 0
    skip_bad: bool = False
    exif_transpose: bool = False
    device: str | torch.device = "cpu"
    progress: bool = True
    engine: Any = None  # a distributed.DistributedExtraction (eval.py trainer=ddp), None: one process


@dataclass(frozen=True)
class ImageItem:
    path: Path
    bbx: tuple[float, float, float, float] | None = None


def dataset_items(dataset, part: str, crop: bool = True) -> list[ImageItem]:
    """The images of a retrieval dataset's ``part`` (``"db"`` or ``"query"``) in order; queries carry their box
    (cropped at load time) unless ``crop=False``."""
    if part == "db":
        return [ImageItem(Path(p)) for p in dataset.db_paths]
    return [ImageItem(Path(p), None if (b is None or not crop) else tuple(float(v) for v in b))
            for p, b in zip(dataset.query_paths, dataset.query_bbx)]


class _ImageList(Dataset):
    def __init__(self, items: Sequence[ImageItem], indices: Sequence[int], image_size: int | None,
                 exif_transpose: bool, skip_bad: bool):
        self.items, self.indices = items, list(indices)
        self.image_size, self.exif, self.skip_bad = image_size, exif_transpose, skip_bad

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        if self.indices[i] < 0:  # a placeholder: a rank of trainer=ddp with nothing to describe still takes part
            return -1, None
        item = self.items[self.indices[i]]
        img = safe_load(item.path, self.image_size, item.bbx, exif_transpose=self.exif, skip_bad=self.skip_bad)
        return self.indices[i], img


def _collate(batch):
    return batch[0]


def image_loader(items: Sequence[ImageItem], indices: Sequence[int], image_size: int | None, num_workers: int = 0,
                 skip_bad: bool = False, exif_transpose: bool = False) -> DataLoader:
    """``(index, image)`` pairs for ``items[indices]``, one at a time, preprocessed as the retrieval protocol says
    (database images shrunk to ``image_size``, queries cropped to their box); ``image`` is ``None`` for an
    unreadable file when ``skip_bad``."""
    return DataLoader(_ImageList(items, indices, image_size, exif_transpose, skip_bad), batch_size=1,
                      num_workers=num_workers, collate_fn=_collate, prefetch_factor=4 if num_workers > 0 else None)


def describe_multiscale(describe: Describe, image: torch.Tensor, scales: Sequence[float] = (1.0,),
                        power: float = 1.0) -> torch.Tensor:
    """``1×3×H×W`` normalised image -> ``1×D`` descriptor, averaged over scales as cirtorch's ``extract_ms``."""
    if len(scales) == 1 and scales[0] == 1:
        return describe(image)
    acc = None
    for s in scales:
        x = image if s == 1 else F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False)
        v = describe(x).pow(power)
        acc = v if acc is None else acc + v
    v = (acc / len(scales)).pow(1.0 / power)
    return v / (v.norm(dim=-1, keepdim=True) + 1e-6)


def describe_image(describe: Describe, normalize: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                   device: str | torch.device, scales: Sequence[float] = (1.0,), power: float = 1.0) -> np.ndarray:
    """One ``3×H×W`` [0, 1] image -> its float32 descriptor (normalised, described at every scale)."""
    x = normalize(image.unsqueeze(0).to(device))
    return describe_multiscale(describe, x, scales, power)[0].float().cpu().numpy()


class _Chunks:
    """Descriptors arriving one image at a time, assembled into the cache's chunks: each chunk is written as soon
    as its last image is in (and dropped from memory), or kept in memory when there is no cache or it cannot be
    written."""

    def __init__(self, ranges: list[range], todo: Sequence[int], cache: DescriptorCache | None,
                 dim: int | None) -> None:
        self.ranges, self.cache, self.dim = ranges, cache, dim
        self.chunk_of = {i: c for c in todo for i in ranges[c]}
        self.pending: dict[int, tuple[np.ndarray | None, bool]] = {}
        self.memory: dict[int, np.ndarray] = {}
        self.skipped: dict[int, np.ndarray] = {}
        self.open = set(todo)

    def add(self, idx: int, v: np.ndarray | None) -> None:
        self.pending[idx] = (v, v is None)
        if v is not None:
            self.dim = int(v.shape[0])
        c = self.chunk_of[idx]
        if self.dim is not None and all(i in self.pending for i in self.ranges[c]):
            self._close(c)

    def _close(self, c: int) -> None:
        desc, skipped = _assemble(self.ranges[c], self.pending, self.dim)
        for i in self.ranges[c]:
            self.pending.pop(i)
        self.skipped[c] = skipped
        if self.cache is None or not self.cache.save(c, desc, skipped):
            dtype = self.cache.dtype if self.cache is not None else np.float32
            self.memory[c] = desc.astype(dtype, copy=False)
        self.open.discard(c)

    def finish(self) -> None:
        """Close the chunks made entirely of unreadable images (their width known only now)."""
        for c in sorted(self.open):
            if all(i in self.pending for i in self.ranges[c]):
                self._close(c)


def extract_store(items: Sequence[ImageItem], describe: Describe, normalize: Callable[[torch.Tensor], torch.Tensor],
                  loading: Loading, scales: Sequence[float] = (1.0,), power: float = 1.0,
                  cache: DescriptorCache | None = None, desc: str = "extract") -> tuple[DescriptorStore, list[int]]:
    """Descriptors of ``items`` as a :class:`~.store.DescriptorStore` (``N×D``; on disk with a ``cache``, read
    block by block) and the indices of the images skipped as unreadable.

    Skipped images (only with ``loading.skip_bad``; each is logged) get a zero descriptor. With a ``cache``,
    chunks already on disk are reused and only the missing ones are computed, each saved as it completes. With
    ``loading.engine`` (``eval.py trainer=ddp``: :mod:`.distributed`), the chunks are dealt out over the ranks and
    each rank describes its own with Lightning's predict loop; every rank then reads the whole store.
    """
    engine = loading.engine
    n = len(items)
    if n == 0:
        return DescriptorStore([], [], 0), []
    ranges = cache.chunks(n) if cache is not None else [range(0, n)]
    if engine is not None and cache is None:
        raise ValueError("trainer=ddp writes each rank's descriptors to the shared descriptor store: it needs "
                         "cache.enabled=true (and cache.dir on a disk every rank sees)")
    if engine is not None:
        engine.barrier()  # every rank sees the same store (none writes before all have looked)
    have = _on_disk(cache, ranges, desc)
    todo = [c for c in range(len(ranges)) if c not in have]
    dim = next(iter(have.values()))[0][1] if have else None
    chunks = _Chunks(ranges, todo, cache, dim)

    def describe_one(img: torch.Tensor, device: str | torch.device) -> np.ndarray:
        return describe_image(describe, normalize, img, device, scales, power)

    if todo:
        mine = [c for c in todo if engine is None or engine.owns(c)]
        indices = [i for c in mine for i in ranges[c]]
        if engine is None and have:
            log.info("%s: %d of %d images cached, extracting the rest", desc, n - len(indices), n)
        loader = image_loader(items, indices or ([-1] if engine is not None else []), loading.image_size,
                              loading.num_workers, loading.skip_bad, loading.exif_transpose)
        if engine is not None:
            module = describe if isinstance(describe, torch.nn.Module) else torch.nn.Module()
            engine.describe(module, loader, describe_one, chunks.add)
        else:
            with torch.inference_mode():
                for idx, img in tqdm(loader, total=len(indices), desc=desc, disable=not loading.progress,
                                     leave=False):
                    chunks.add(idx, None if img is None else describe_one(img, loading.device))
        chunks.finish()
        if engine is not None:  # the other ranks' chunks, written in this run (a skip among them is theirs)
            engine.barrier()
            got = _on_disk(cache, ranges, desc, accept_skipped=True)
            missing = [c for c in range(len(ranges)) if c not in got and c not in chunks.memory]
            if missing:
                raise RuntimeError(f"{desc}: {len(missing)} chunks of the descriptor store were not written by "
                                   f"their rank (first: {cache.chunk_path(missing[0])}): check that cache.dir="
                                   f"{cache.dir.parent} is writable and shared by every rank, then rerun (the "
                                   "chunks on disk are kept)")
            have = got
    dim = chunks.dim if chunks.dim is not None else next(iter(have.values()))[0][1]
    skipped = np.concatenate([have[c][1] if c in have else chunks.skipped[c] for c in range(len(ranges))])
    if cache is None:
        return (DescriptorStore([chunks.memory[0]], [n], dim, "float32", skipped),
                np.flatnonzero(skipped).tolist())
    return cache.store(ranges, dim, skipped, chunks.memory), np.flatnonzero(skipped).tolist()


def _on_disk(cache: DescriptorCache | None, ranges: list[range], desc: str,
             accept_skipped: bool = False) -> dict[int, tuple[tuple[int, ...], np.ndarray]]:
    """The chunks already in the cache (``(shape, skipped mask)``) of the right length, all of one width (a chunk
    of another width is damaged or foreign: recomputed, never mixed in)."""
    if cache is None:
        return {}
    have = {}
    for c in range(len(ranges)):
        got = cache.peek(c, accept_skipped)
        if got is not None and got[0][0] == len(ranges[c]):
            have[c] = got
    widths = [shape[1] for shape, _ in have.values()]
    if len(set(widths)) > 1:
        width = max(set(widths), key=widths.count)
        for c in [c for c, (shape, _) in have.items() if shape[1] != width]:
            log.warning("%s: cached chunk %s has descriptors of width %d, not %d: ignored and recomputed",
                        desc, cache.chunk_path(c), have[c][0][1], width)
            del have[c]
    return have


def extract(items: Sequence[ImageItem], describe: Describe, normalize: Callable[[torch.Tensor], torch.Tensor],
            loading: Loading, scales: Sequence[float] = (1.0,), power: float = 1.0,
            cache: DescriptorCache | None = None, desc: str = "extract") -> tuple[np.ndarray, list[int]]:
    """:func:`extract_store` read into memory: ``(N×D float32 descriptors, skipped indices)``."""
    store, skipped = extract_store(items, describe, normalize, loading, scales, power, cache, desc)
    if len(store) == 0:
        return np.zeros((0, 0), np.float32), []
    return np.asarray(store), skipped


def _assemble(r: range, pending: dict, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    if dim is None:
        raise RuntimeError("every image of the first chunk was unreadable: no descriptor dimension known")
    out = np.zeros((len(r), dim), np.float32)
    skipped = np.zeros(len(r), bool)
    for j, i in enumerate(r):
        v, bad = pending[i]
        skipped[j] = bad
        if not bad:
            out[j] = v
    return out, skipped
