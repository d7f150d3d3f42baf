"""On-disk descriptor cache keyed by everything that affects a descriptor.

A cache entry is a folder named by the SHA-1 of the canonical JSON of its key (backbone, weights identity,
method and its parameters, image size, scales, dataset and image list, ...). Descriptors are stored in
fixed-size chunks, each written atomically (temporary file + ``os.replace``), so an interrupted extraction
resumes from the chunks already on disk and a changed configuration never reads another key's entries.
"""
from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write

log = logging.getLogger(__name__)


def key_digest(key: dict[str, Any]) -> str:
    """Stable hash of a JSON-serialisable key (sorted keys, no whitespace)."""
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


class DescriptorCache:
    """Chunked descriptor storage for one key under ``root``.

    The cache is an optimisation: when it cannot be written (a full disk, a read-only folder) it warns once and
    the run goes on without it."""

    def __init__(self, root: str | Path, key: dict[str, Any], chunk_size: int = 64):
        self.key = key
        self.chunk_size = int(chunk_size)
        if Path(root).exists() and not Path(root).is_dir():
            raise NotADirectoryError(f"cache.dir={root} is a file, not a folder. Fix: point cache.dir at a folder "
                                     "(or remove the file), or turn the cache off with cache.enabled=false")
        self.dir = Path(root) / key_digest({**key, "chunk_size": self.chunk_size})
        self.writable = True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta = self.dir / "key.json"
            if not meta.exists():
                atomic_write(meta, lambda f: f.write(json.dumps(key, sort_keys=True, indent=1,
                                                                default=str).encode()))
        except OSError as err:
            self._give_up(err)

    def _give_up(self, err: OSError) -> None:
        if self.writable:
            log.warning("descriptor cache %s cannot be written (%s): going on without it (nothing is lost, the "
                        "descriptors are kept in memory; free space or fix the folder to cache again)", self.dir, err)
        self.writable = False

    def chunk_path(self, index: int) -> Path:
        return self.dir / f"chunk_{index:06d}.npz"

    def chunks(self, n: int) -> list[range]:
        return [range(s, min(s + self.chunk_size, n)) for s in range(0, n, self.chunk_size)]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(descriptors, skipped_mask)`` of a chunk, or ``None`` when it is not on disk, unreadable, or holds a
        skipped image: a skip is never served to a later run (the file may have been repaired, or the run may not
        allow skipping), the chunk is recomputed."""
        path = self.chunk_path(index)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                desc, skipped = z["desc"], z["skipped"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # a damaged chunk is recomputed, never trusted
        if skipped.any():
            return None
        return desc, skipped

    def save(self, index: int, desc: np.ndarray, skipped: np.ndarray) -> None:
        if not self.writable:
            return
        try:
            atomic_write(self.chunk_path(index), lambda f: np.savez(f, desc=desc, skipped=skipped))
        except OSError as err:
            self._give_up(err)
