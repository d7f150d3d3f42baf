"""Descriptor stores: ``N×D`` descriptors kept as row chunks, in memory or on disk, read block by block.

A store written by extraction is the descriptor cache's chunk files (``.npy``, one per chunk of images, each
written atomically; see :class:`~.cache.DescriptorCache`): search, query expansion and whitening read it a block
of rows at a time, each chunk file memory-mapped only while its rows are copied, so that searching a database
never holds more than one block (and the queries) in memory and never keeps a file open. Rows are stored as
``float32`` or ``float16`` (``store.dtype``) and always read as ``float32``.

A transform (e.g. the whitening learned on another dataset) is applied lazily to every block read
(:meth:`DescriptorStore.map`); rows of images skipped as unreadable stay zero after it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

STORE_DTYPES = ("float32", "float16")
#: rows per block when reading a store: 2^24 float32 values (64 MB) at most, 65536 rows at most
BLOCK_VALUES, BLOCK_ROWS = 1 << 24, 65536

Part = np.ndarray | Path
Transform = Callable[[np.ndarray], np.ndarray]


def check_store_dtype(dtype: str) -> str:
    if str(dtype) not in STORE_DTYPES:
        raise ValueError(f"store.dtype={dtype!r}: choose one of {list(STORE_DTYPES)} (float16 halves the descriptor "
                         "files; rows are read back as float32)")
    return str(dtype)


def _read(part: Part, rows: slice | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``rows`` (a slice or an index array) of one part as float32, written into ``out`` when given (no temporary
    copy); a chunk file is memory-mapped only for the copy: only the pages of those rows are read, and no file
    stays open."""
    src = part if isinstance(part, np.ndarray) else np.load(part, mmap_mode="r", allow_pickle=False)
    try:
        if out is None:
            return np.array(src[rows], dtype=np.float32)
        out[...] = src[rows]  # cast while copying
        return out
    finally:
        del src


class DescriptorStore:
    """Read-only ``N×D`` descriptors made of row ``parts`` (arrays in memory, or ``.npy`` chunk files).

    ``skipped``: a boolean mask of the rows of unreadable images (zero rows, kept zero by :meth:`map`).
    ``np.asarray(store)`` materialises it (for small sets, e.g. a whitening's training set); ``store[idx]`` reads
    the rows of an integer index array of any shape; :meth:`blocks` iterates over the rows in bounded blocks.
    """

    def __init__(self, parts: Sequence[Part], lengths: Sequence[int], dim: int, stored_dtype: str = "float32",
                 skipped: np.ndarray | None = None, transform: Transform | None = None,
                 out_dim: int | None = None) -> None:
        if len(parts) != len(lengths):
            raise ValueError("DescriptorStore: one length per part")
        self.parts = list(parts)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.in_dim = int(dim)
        self.stored_dtype = check_store_dtype(stored_dtype)
        n = int(self.offsets[-1])
        self.skipped = np.zeros(n, bool) if skipped is None else np.asarray(skipped, bool)
        if len(self.skipped) != n:
            raise ValueError(f"DescriptorStore: skipped mask of {len(self.skipped)} rows for {n} rows")
        self.transform = transform
        self.dim = int(out_dim if out_dim is not None else dim)

    @classmethod
    def from_array(cls, x: np.ndarray, skipped: Sequence[int] | np.ndarray | None = None) -> DescriptorStore:
        """One in-memory part (a copy is not made)."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"DescriptorStore.from_array needs an N×D array, got shape {x.shape}")
        mask = np.zeros(len(x), bool)
        if skipped is not None:
            s = np.asarray(skipped)
            mask[s if s.dtype != bool else np.flatnonzero(s)] = True
        dtype = "float16" if x.dtype == np.float16 else "float32"
        return cls([x], [len(x)], x.shape[1], dtype, mask)

    @classmethod
    def concat(cls, stores: Sequence[DescriptorStore]) -> DescriptorStore:
        """The rows of ``stores`` one after the other (untransformed stores of one width and dtype)."""
        stores = [s for s in stores if len(s)]
        if not stores:
            return cls([], [], 0)
        first = stores[0]
        if any(s.transform is not None or s.in_dim != first.in_dim or s.stored_dtype != first.stored_dtype
               for s in stores):
            raise ValueError("DescriptorStore.concat: stores of one width and dtype, before any transform")
        return cls([p for s in stores for p in s.parts], np.concatenate([s.lengths for s in stores]), first.in_dim,
                   first.stored_dtype, np.concatenate([s.skipped for s in stores]))

    # -- shape ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes_stored(self) -> int:
        """Bytes of the stored rows (before any transform)."""
        return len(self) * self.in_dim * np.dtype(self.stored_dtype).itemsize

    @property
    def on_disk(self) -> bool:
        return any(not isinstance(p, np.ndarray) for p in self.parts)

    def __repr__(self) -> str:
        where = "on disk" if self.on_disk else "in memory"
        return (f"DescriptorStore({len(self)}×{self.dim}, {self.stored_dtype}, {len(self.parts)} parts {where}"
                f"{', transformed' if self.transform else ''})")

    # -- reading ----------------------------------------------------------------------------------------------
    def _finish(self, rows: np.ndarray, start: int) -> np.ndarray:
        """The transform and the zero rows of skipped images, for the rows ``start:start + len(rows)``."""
        if self.transform is not None:
            rows = np.ascontiguousarray(self.transform(rows), dtype=np.float32)
        bad = self.skipped[start:start + len(rows)]
        if bad.any():
            rows[bad] = 0
        return rows

    def block_rows(self, rows: int | None = None) -> int:
        """The block size :meth:`blocks` uses: ``rows``, else as many rows as fit in 64 MB of float32 (at most
        65536)."""
        if rows is not None:
            return max(1, int(rows))
        return int(max(1, min(BLOCK_ROWS, BLOCK_VALUES // max(1, self.in_dim, self.dim))))

    def blocks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, float32 block)`` over the whole store, ``rows`` rows per block (:meth:`block_rows`)."""
        step, n = self.block_rows(rows), len(self)
        for start in range(0, n, step):
            yield start, self.read(start, min(n, start + step))

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` as float32 (transformed)."""
        lo, hi = max(0, int(lo)), min(len(self), int(hi))
        out = np.empty((max(0, hi - lo), self.in_dim), np.float32)
        first = int(np.searchsorted(self.offsets, lo, side="right")) - 1
        pos = lo
        for p in range(max(first, 0), len(self.parts)):
            if pos >= hi:
                break
            a, b = int(self.offsets[p]), int(self.offsets[p + 1])
            take = min(hi, b) - pos
            _read(self.parts[p], slice(pos - a, pos - a + take), out[pos - lo:pos - lo + take])
            pos += take
        return self._finish(out, lo)

    def __getitem__(self, index: np.ndarray | Sequence[int] | int | slice) -> np.ndarray:
        if isinstance(index, slice):
            lo, hi, step = index.indices(len(self))
            if step != 1:
                raise IndexError("DescriptorStore slices have step 1")
            return self.read(lo, hi)
        idx = np.asarray(index, dtype=np.int64)
        flat = idx.reshape(-1)
        if flat.size and (flat.min() < -len(self) or flat.max() >= len(self)):
            raise IndexError(f"row index out of range for a store of {len(self)} rows")
        flat = np.where(flat < 0, flat + len(self), flat)
        out = np.empty((flat.size, self.in_dim), np.float32)
        part = np.searchsorted(self.offsets, flat, side="right") - 1
        order = np.argsort(part, kind="stable")
        bounds = np.flatnonzero(np.diff(part[order])) + 1
        for group in np.split(order, bounds) if flat.size else []:  # one read per part touched
            p = int(part[group[0]])
            out[group] = _read(self.parts[p], flat[group] - self.offsets[p])
        if self.transform is not None:
            out = np.ascontiguousarray(self.transform(out), dtype=np.float32)
        out[self.skipped[flat]] = 0
        return out.reshape(idx.shape + (self.dim,))

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        x = self.read(0, len(self))
        return x if dtype is None else x.astype(dtype, copy=False)

    def map(self, fn: Transform) -> DescriptorStore:
        """The same rows through ``fn`` (``B×D -> B×D'`` float32, e.g. a whitening), applied as blocks are read;
        skipped rows stay zero."""
        inner = self.transform
        composed = fn if inner is None else (lambda x: fn(inner(x)))
        probe = np.zeros((1, self.in_dim), np.float32)
        out_dim = int(np.asarray(composed(probe)).shape[1])
        return DescriptorStore(self.parts, self.lengths, self.in_dim, self.stored_dtype, self.skipped, composed,
                               out_dim)


def as_store(x: np.ndarray | DescriptorStore) -> DescriptorStore:
    return x if isinstance(x, DescriptorStore) else DescriptorStore.from_array(x)


__all__ = ["DescriptorStore", "STORE_DTYPES", "as_store", "check_store_dtype"]
