"""On-disk descriptor cache keyed by everything that affects a descriptor.

A cache entry is a folder named by the SHA-1 of the canonical JSON of its key (backbone, weights identity,
method and its parameters, image size, scales, dataset and image list, store dtype, ...). Descriptors are stored
in fixed-size chunks of images, each an ``.npy`` file written atomically (temporary file + ``os.replace``), so an
interrupted extraction resumes from the chunks already on disk, several processes can fill one entry (each its
own chunks, ``trainer=ddp``), and a changed configuration never reads another key's entries. A chunk holding an
unreadable image also writes its mask (``chunk_N.skipped.npy``, before the descriptors); such a chunk is never
served to a later run. The chunks of an entry are a :class:`~.store.DescriptorStore` (:meth:`DescriptorCache.store`),
read block by block without loading the whole entry.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from .store import DescriptorStore, check_store_dtype

log = logging.getLogger(__name__)


def key_digest(key: dict[str, Any]) -> str:
    """Stable hash of a JSON-serialisable key (sorted keys, no whitespace)."""
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


class DescriptorCache:
    """Chunked descriptor storage for one key under ``root`` (``dtype``: how rows are stored, float32 or float16).

    The cache is an optimisation: when it cannot be written (a full disk, a read-only folder) it warns once and
    the run goes on without it (the descriptors are then kept in memory)."""

    def __init__(self, root: str | Path, key: dict[str, Any], chunk_size: int = 64, dtype: str = "float32"):
        self.key = key
        self.chunk_size = int(chunk_size)
        self.dtype = check_store_dtype(dtype)
        if Path(root).exists() and not Path(root).is_dir():
            raise NotADirectoryError(f"cache.dir={root} is a file, not a folder. Fix: point cache.dir at a folder "
                                     "(or remove the file), or turn the cache off with cache.enabled=false")
        self.dir = Path(root) / key_digest({**key, "chunk_size": self.chunk_size, "store_dtype": self.dtype,
                                            "format": "npy"})
        self.writable = True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta = self.dir / "key.json"
            if not meta.exists():
                atomic_write(meta, lambda f: f.write(json.dumps(
                    {**key, "chunk_size": self.chunk_size, "store_dtype": self.dtype}, sort_keys=True, indent=1,
                    default=str).encode()))
        except OSError as err:
            self._give_up(err)

    def _give_up(self, err: OSError) -> None:
        if self.writable:
            log.warning("descriptor cache %s cannot be written (%s): going on without it (nothing is lost, the "
                        "descriptors are kept in memory; free space or fix the folder to cache again)", self.dir, err)
        self.writable = False

    def chunk_path(self, index: int) -> Path:
        return self.dir / f"chunk_{index:06d}.npy"

    def skipped_path(self, index: int) -> Path:
        return self.dir / f"chunk_{index:06d}.skipped.npy"

    def chunks(self, n: int) -> list[range]:
        return [range(s, min(s + self.chunk_size, n)) for s in range(0, n, self.chunk_size)]

    def peek(self, index: int, accept_skipped: bool = False) -> tuple[tuple[int, ...], np.ndarray] | None:
        """``(shape, skipped mask)`` of a chunk on disk without reading its rows, or ``None`` when it is missing,
        unreadable, of another dtype, or holds a skipped image (unless ``accept_skipped``: the chunks this run
        wrote itself, e.g. another rank's)."""
        path = self.chunk_path(index)
        if not path.exists():
            return None
        try:
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
            shape, dtype = mm.shape, mm.dtype
            del mm
            skipped = None
            if self.skipped_path(index).exists():
                skipped = np.load(self.skipped_path(index), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # a damaged chunk is recomputed, never trusted
        if len(shape) != 2 or dtype != np.dtype(self.dtype):
            return None
        if skipped is None:
            skipped = np.zeros(shape[0], bool)
        elif skipped.shape != (shape[0],) or (skipped.any() and not accept_skipped):
            return None
        return shape, skipped

    def load(self, index: int, accept_skipped: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """``(descriptors as stored, skipped mask)`` of a chunk, or ``None`` (see :meth:`peek`)."""
        got = self.peek(index, accept_skipped)
        if got is None:
            return None
        try:
            return np.load(self.chunk_path(index), allow_pickle=False), got[1]
        except (OSError, ValueError, EOFError):
            return None

    def save(self, index: int, desc: np.ndarray, skipped: np.ndarray) -> bool:
        """Write a chunk (rows cast to the store's dtype); ``False`` when the cache cannot be written."""
        if not self.writable:
            return False
        try:
            mask = self.skipped_path(index)
            if np.asarray(skipped).any():
                atomic_write(mask, lambda f: np.save(f, np.asarray(skipped, bool)))
            else:
                mask.unlink(missing_ok=True)  # a stale mask of an earlier run
            rows = np.ascontiguousarray(desc, dtype=self.dtype)
            atomic_write(self.chunk_path(index), lambda f: np.save(f, rows))
            return True
        except OSError as err:
            self._give_up(err)
            return False

    def store(self, ranges: list[range], dim: int, skipped: np.ndarray,
              memory: dict[int, np.ndarray] | None = None) -> DescriptorStore:
        """The entry's chunks as one store (``memory``: chunks kept in memory because they could not be written)."""
        memory = memory or {}
        parts = [memory[c] if c in memory else self.chunk_path(c) for c in range(len(ranges))]
        return DescriptorStore(parts, [len(r) for r in ranges], dim, self.dtype, skipped)
