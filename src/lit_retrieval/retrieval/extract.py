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
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.images import safe_load
from .cache import DescriptorCache

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


def extract(items: Sequence[ImageItem], describe: Describe, normalize: Callable[[torch.Tensor], torch.Tensor],
            loading: Loading, scales: Sequence[float] = (1.0,), power: float = 1.0,
            cache: DescriptorCache | None = None, desc: str = "extract") -> tuple[np.ndarray, list[int]]:
    """Descriptors (``N×D`` float32) of ``items`` and the indices of images skipped as unreadable.

    Skipped images (only with ``loading.skip_bad``; each is logged) get a zero descriptor. With a ``cache``,
    chunks already on disk are loaded and only the missing ones are computed and saved as they complete.
    """
    device, progress = loading.device, loading.progress
    n = len(items)
    ranges = cache.chunks(n) if cache is not None else [range(0, n)]
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if cache is not None:
        for c in range(len(ranges)):
            got = cache.load(c)
            if got is not None and got[0].ndim == 2 and len(got[0]) == len(ranges[c]):
                done[c] = got
        widths = [d[0].shape[1] for d in done.values()]
        if len(set(widths)) > 1:  # a chunk of another width is damaged or foreign: recomputed, never mixed in
            width = max(set(widths), key=widths.count)
            for c in [c for c, d in done.items() if d[0].shape[1] != width]:
                log.warning("%s: cached chunk %s has descriptors of width %d, not %d: ignored and recomputed",
                            desc, cache.chunk_path(c), done[c][0].shape[1], width)
                del done[c]
    todo = [c for c in range(len(ranges)) if c not in done]
    indices = [i for c in todo for i in ranges[c]]
    if indices:
        if done:
            log.info("%s: %d of %d images cached, extracting the rest", desc, n - len(indices), n)
        loader = image_loader(items, indices, loading.image_size, loading.num_workers, loading.skip_bad,
                              loading.exif_transpose)
        pending: dict[int, tuple[np.ndarray | None, bool]] = {}
        chunk_of = {i: c for c in todo for i in ranges[c]}
        dim = None
        with torch.inference_mode():
            for idx, img in tqdm(loader, total=len(indices), desc=desc, disable=not progress, leave=False):
                if img is None:
                    pending[idx] = (None, True)
                else:
                    x = normalize(img.unsqueeze(0).to(device))
                    v = describe_multiscale(describe, x, scales, power)[0].float().cpu().numpy()
                    dim = v.shape[0]
                    pending[idx] = (v, False)
                c = chunk_of[idx]
                if all(i in pending for i in ranges[c]) and (dim is not None or c in done):
                    done[c] = _assemble(ranges[c], pending, dim)
                    if cache is not None:
                        cache.save(c, *done[c])
                    for i in ranges[c]:
                        pending.pop(i)
        if pending:  # only chunks made entirely of skipped images remain
            dim = dim or next(iter(done.values()))[0].shape[1]
            for c in todo:
                if c not in done:
                    done[c] = _assemble(ranges[c], pending, dim)
    if not done:
        return np.zeros((0, 0), np.float32), []
    desc_all = np.concatenate([done[c][0] for c in range(len(ranges))])
    skipped = np.concatenate([done[c][1] for c in range(len(ranges))])
    return desc_all, np.flatnonzero(skipped).tolist()


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
