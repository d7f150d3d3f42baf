"""Compact storage of database activation maps for re-ranking (Tolias, Sicre & Jégou, ICLR 2016, Sec. 7).

The paper keeps the last convolutional activations of every database image for spatial verification /
re-ranking, and makes them small by

1. **Quantization** (:func:`quantize`): responses are clipped at ``clip`` (128 in the paper for AlexNet/VGG;
   only 0.001% of values are larger) and uniformly quantized to ``levels`` (8) non-zero values. With
   ``Δ = clip / levels`` and ``z = clip · zero_fraction`` the level is
   ``floor((min(x, clip) + Δ − z) / Δ)`` in ``0..levels``, which for ``clip=128, levels=8`` is exactly the
   reference code's ``floor((15 + min(x, 128)) / 16)``: ``x < 1 → 0``, ``[1, 17) → 1``, …, ``128 → 8``.
   Other backbones have other scales, so ``clip=None`` picks a per-image clip (the ``1 − 1e-5`` quantile).
   The dequantized value is ``level · Δ``; the integral max-pooling works on the levels themselves.

2. **Sparse coding** (:func:`encode` / :func:`decode`): the C-order flattened level array is stored as one
   byte per non-zero, ``byte = (run << 3) | (level − 1)``, where ``run`` (0..30) is the number of zeros since
   the previous non-zero (or the start) — the delta-coded position. A gap of ``g`` zeros is written as
   ``g // 31`` escape bytes ``31 << 3`` (= 248, "31 zeros, no value") followed by the value byte with run
   ``g % 31``. Trailing zeros are implicit (the shape is stored separately). Without gaps ≥ 31 the code is
   exactly one byte per non-zero.

:class:`ActivationStore` keeps these codes on disk in fixed-size chunks (one ``.npz`` per chunk, written
atomically, folder named by the digest of the key and storage parameters), like the descriptor cache, so an
interrupted extraction resumes and a damaged chunk is recomputed rather than trusted.
"""
from __future__ import annotations

import json
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...atomic import atomic_write

MAX_LEVELS = 8  # the value field of a code byte has 3 bits
RUN_ESCAPE = 31  # run field of an escape byte: 31 zeros, no value
ESCAPE_BYTE = RUN_ESCAPE << 3
AUTO_CLIP_QUANTILE = 1.0 - 1e-5


def _as_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of a numpy array or a (possibly GPU, possibly grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def auto_clip(x: np.ndarray) -> float:
    """Per-image clip: the value below which (or at which) a fraction ``1 − 1e-5`` of ``x`` lies.

    The empirical quantile ``sorted(x)[ceil(q·n) − 1]`` found with ``np.partition`` (linear time). Falls back
    to ``x.max()`` when it is 0 (very sparse maps) and to 1.0 when everything is 0."""
    flat = np.ravel(x)
    if flat.size == 0:
        return 1.0
    k = min(max(int(np.ceil(AUTO_CLIP_QUANTILE * flat.size)) - 1, 0), flat.size - 1)
    clip = float(np.partition(flat, k)[k])
    if clip <= 0:
        clip = float(flat.max())
    return clip if clip > 0 else 1.0


def quantize(x: Any, clip: float | None = None, levels: int = 8,
             zero_fraction: float = 1 / 128) -> tuple[np.ndarray, float]:
    """Quantize a non-negative ``C×H×W`` map (numpy array or torch tensor) to ``uint8`` levels ``0..levels``.

    ``Δ = clip / levels``, ``z = clip · zero_fraction``, ``level = floor((min(x, clip) + Δ − z) / Δ)`` clipped
    to ``[0, levels]``: values below ``z`` become 0, ``[z, z + Δ)`` → 1, …, ``clip`` → ``levels``. With the
    defaults and ``clip=128`` this is the reference ``floor((15 + min(x, 128)) / 16)``. ``clip=None`` uses
    :func:`auto_clip`. Returns ``(levels, Δ)``; the dequantized map is ``levels · Δ``."""
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"quantize: levels must be an integer in 1..{MAX_LEVELS} (3-bit code), got {levels!r}")
    if not 0 < zero_fraction <= 1 / levels:
        raise ValueError(f"quantize: zero_fraction must be in (0, 1/levels], got {zero_fraction!r}")
    a = _as_numpy(x)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"quantize: expected a real-valued array, got dtype {a.dtype}")
    if a.size:
        if np.isnan(a).any():
            raise ValueError("quantize: the activation map contains NaN")
        if np.isinf(a).any():
            raise ValueError("quantize: the activation map contains infinite values")
        if a.min() < 0:
            raise ValueError(f"quantize: activations must be non-negative (post-ReLU), min is {a.min()!r}")
    if clip is None:
        clip = auto_clip(a)
    clip = float(clip)
    if not (np.isfinite(clip) and clip > 0):
        raise ValueError(f"quantize: clip must be a positive finite number, got {clip!r}")
    delta = clip / levels
    z = clip * zero_fraction
    v = np.minimum(a.astype(np.float64, copy=False), clip)
    v += delta - z
    v /= delta
    q = np.clip(np.floor(v, out=v), 0, levels).astype(np.uint8)
    return q, float(delta)


def encode(levels: np.ndarray) -> np.ndarray:
    """Sparse code of a level array (any shape, read in C order): one byte per non-zero plus escapes.

    ``byte = (run << 3) | (level − 1)``, ``run`` = zeros since the previous non-zero (0..30); a gap of ``g``
    zeros is preceded by ``g // 31`` escape bytes 248 (run 31, "31 zeros, no value"). Trailing zeros are
    implicit, so the code length is ``nnz + Σ gap // 31``."""
    flat = np.ravel(np.asarray(levels), order="C")
    if flat.dtype.kind not in "iub":
        raise ValueError(f"encode: expected integer levels, got dtype {flat.dtype}")
    pos = np.flatnonzero(flat)
    if pos.size == 0:
        return np.zeros(0, dtype=np.uint8)
    vals = flat[pos].astype(np.int64)
    if vals.min() < 1 or vals.max() > MAX_LEVELS:
        raise ValueError(f"encode: levels must be in 0..{MAX_LEVELS}, got values in [{vals.min()}, {vals.max()}]")
    gaps = np.diff(pos, prepend=-1) - 1
    escapes = gaps // RUN_ESCAPE
    out_pos = np.arange(pos.size, dtype=np.int64) + np.cumsum(escapes)
    out = np.full(int(pos.size + escapes.sum()), ESCAPE_BYTE, dtype=np.uint8)
    out[out_pos] = ((gaps % RUN_ESCAPE) << 3) | (vals - 1)
    return out


def _code_lengths(codes: np.ndarray) -> np.ndarray:
    """Number of elements each byte advances the position by (escape: 31, value byte: run + 1), int64."""
    run = (codes >> 3).astype(np.int64)
    return np.where(run == RUN_ESCAPE, RUN_ESCAPE, run + 1)


def decode(codes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`encode`: ``uint8`` levels of ``shape``. ``ValueError`` if the codes run past its size
    or an escape byte carries a value."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 1:
        raise ValueError(f"decode: expected a 1-D uint8 code array, got {codes.dtype} with shape {codes.shape}")
    shape = tuple(int(s) for s in shape)
    size = int(np.prod(shape, dtype=np.int64))
    out = np.zeros(size, dtype=np.uint8)
    if codes.size == 0:
        return out.reshape(shape)
    is_escape = (codes >> 3) == RUN_ESCAPE
    if (codes[is_escape] & 7).any():
        raise ValueError("decode: an escape byte (run 31) has a non-zero value field")
    end = np.cumsum(_code_lengths(codes))  # one past the last element each byte covers
    if end[-1] > size:
        raise ValueError(f"decode: the codes cover {int(end[-1])} elements, past the shape's size {size} {shape}")
    value = ~is_escape
    out[end[value] - 1] = (codes[value] & 7) + 1
    return out.reshape(shape)


@dataclass
class _Chunk:
    """One chunk in memory: payloads concatenated (uint8 codes, or float32 raw values) and their index."""

    payload: np.ndarray  # 1-D: uint8 codes when quantized, float32 raw maps otherwise
    offsets: np.ndarray  # int64 (m + 1,): entry j is payload[offsets[j]:offsets[j + 1]]
    shapes: np.ndarray  # int64 (m, 3): C, H, W (zeros for a missing image)
    scales: np.ndarray  # float64 (m,): Δ when quantized, 1.0 for raw maps, 0.0 for missing images
    missing: np.ndarray  # bool (m,): the image could not be read / has no map

    def __len__(self) -> int:
        return len(self.missing)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.payload, self.offsets, self.shapes, self.scales, self.missing)))


class ActivationStore:
    """On-disk, chunked, resumable store of the activation maps of a database (Sec. 7 compression).

    The folder is ``root / key_digest({**key, chunk_size, quantized, clip, levels})`` and holds ``key.json``
    and ``chunk_XXXXXX.npz`` files, each written atomically with arrays ``codes`` (uint8, quantized) or
    ``raw`` (float32), ``offsets``, ``shapes``, ``scales`` and ``missing``. Loaded chunks are kept in memory
    in their compact form, the most recently used first, up to ``cache_bytes`` (the least recently used are
    dropped and read again when needed: a short-list over a million images never holds the whole store), and
    decoded on each :meth:`get`. A chunk file that cannot be read or is inconsistent counts as absent."""

    def __init__(self, root: str | Path, key: dict[str, Any], chunk_size: int = 64, quantized: bool = True,
                 clip: float | None = None, levels: int = 8, cache_bytes: int = 2 << 30):
        if chunk_size < 1:
            raise ValueError(f"ActivationStore: chunk_size must be positive, got {chunk_size}")
        if not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"ActivationStore: levels must be in 1..{MAX_LEVELS}, got {levels}")
        self.key = key
        self.chunk_size = int(chunk_size)
        self.quantized = bool(quantized)
        self.clip = None if clip is None else float(clip)
        self.levels = int(levels)
        full_key = {**key, "chunk_size": self.chunk_size, "quantized": self.quantized, "clip": self.clip,
                    "levels": self.levels}
        # imported here: ``lit_retrieval.retrieval`` pulls in the backbones (timm), seconds of import time that
        # quantize / encode / decode do not need
        from ...retrieval.cache import key_digest

        self.dir = Path(root) / key_digest(full_key)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "key.json"
        if not meta.exists():
            atomic_write(meta, lambda f: f.write(json.dumps(full_key, sort_keys=True, indent=1, default=str).encode()))
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[int, _Chunk] = OrderedDict()
        self._cached = 0  # bytes of the chunks in _cache

    # -- chunk files ---------------------------------------------------------------------------------------
    def _chunk_path(self, index: int) -> Path:
        return self.dir / f"chunk_{index:06d}.npz"

    def chunks(self, n: int) -> list[range]:
        """Image index ranges of the chunks of an ``n``-image database."""
        return [range(s, min(s + self.chunk_size, n)) for s in range(0, n, self.chunk_size)]

    def _read(self, index: int) -> _Chunk | None:
        """Read and validate a chunk file; ``None`` when absent, unreadable or inconsistent."""
        path = self._chunk_path(index)
        if not path.exists():
            return None
        name = "codes" if self.quantized else "raw"
        try:
            with np.load(path, allow_pickle=False) as z:
                c = _Chunk(z[name], z["offsets"], z["shapes"], z["scales"], z["missing"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # a damaged chunk is recomputed, never trusted
        return c if self._valid(c) else None

    def _valid(self, c: _Chunk) -> bool:
        m = len(c.missing)
        ok = (c.payload.ndim == 1 and c.payload.dtype == (np.uint8 if self.quantized else np.float32)
              and c.offsets.shape == (m + 1,) and c.offsets.dtype.kind == "i" and c.shapes.shape == (m, 3)
              and c.shapes.dtype.kind == "i" and c.scales.shape == (m,) and c.missing.dtype == np.bool_
              and 0 < m <= self.chunk_size)
        if not ok or c.offsets[0] != 0 or c.offsets[-1] != c.payload.size or (np.diff(c.offsets) < 0).any():
            return False
        if (c.shapes < 0).any() or not np.isfinite(c.scales).all():
            return False
        sizes = np.prod(c.shapes, axis=1)
        if not self.quantized:
            return bool((np.diff(c.offsets) == sizes).all())
        if c.payload.size == 0:
            return True
        # every entry's codes must stay inside its map, and escape bytes carry no value
        esc = (c.payload >> 3) == RUN_ESCAPE
        if (c.payload[esc] & 7).any():
            return False
        covered = np.concatenate([[0], np.cumsum(_code_lengths(c.payload))])
        return bool((covered[c.offsets[1:]] - covered[c.offsets[:-1]] <= sizes).all())

    def _chunk(self, index: int) -> _Chunk | None:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        c = self._read(index)
        if c is not None:  # a short-list reads the database in random order: keep what was read, within budget
            self._cache[index] = c
            self._cached += c.nbytes
            while self._cached > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.nbytes
        return c

    @property
    def cached_bytes(self) -> int:
        """Bytes of the chunks held in memory now (at most ``cache_bytes``, or one chunk)."""
        return self._cached

    def has_chunk(self, index: int) -> bool:
        """Whether chunk ``index`` is on disk and readable (it is then kept in memory)."""
        return self._chunk(index) is not None

    def save_chunk(self, index: int, maps: Sequence[Any | None]) -> None:
        """Quantize + encode (or keep as float32) each ``C×H×W`` map of chunk ``index`` (``None``: missing
        image) and write the chunk atomically."""
        if not 0 < len(maps) <= self.chunk_size:
            raise ValueError(f"save_chunk: expected 1..{self.chunk_size} maps, got {len(maps)}")
        payloads, shapes, scales, missing = [], [], [], []
        for m in maps:
            if m is None:
                payloads.append(np.zeros(0, np.uint8 if self.quantized else np.float32))
                shapes.append((0, 0, 0))
                scales.append(0.0)
                missing.append(True)
                continue
            a = _as_numpy(m)
            if a.ndim != 3:
                raise ValueError(f"save_chunk: expected C×H×W maps, got shape {a.shape}")
            if self.quantized:
                q, delta = quantize(a, clip=self.clip, levels=self.levels)
                payloads.append(encode(q))
                scales.append(delta)
            else:
                payloads.append(np.ascontiguousarray(a, dtype=np.float32).ravel())
                scales.append(1.0)
            shapes.append(a.shape)
            missing.append(False)
        offsets = np.concatenate([[0], np.cumsum([p.size for p in payloads])]).astype(np.int64)
        arrays = {"codes" if self.quantized else "raw": np.concatenate(payloads),
                  "offsets": offsets, "shapes": np.asarray(shapes, dtype=np.int64),
                  "scales": np.asarray(scales, dtype=np.float64), "missing": np.asarray(missing, dtype=bool)}
        atomic_write(self._chunk_path(index), lambda f: np.savez(f, **arrays))
        dropped = self._cache.pop(index, None)
        if dropped is not None:
            self._cached -= dropped.nbytes

    # -- entries -------------------------------------------------------------------------------------------
    def _entry(self, c: _Chunk, j: int, as_float: bool = True) -> tuple[np.ndarray, float] | None:
        if c.missing[j]:
            return None
        shape = tuple(int(s) for s in c.shapes[j])
        data = c.payload[c.offsets[j]:c.offsets[j + 1]]
        if self.quantized:
            levels = decode(data, shape)
            return (levels.astype(np.float32) if as_float else levels), float(c.scales[j])
        return (data.reshape(shape).copy() if as_float else data.reshape(shape)), float(c.scales[j])

    def load_chunk(self, index: int) -> list[tuple[np.ndarray, float] | None] | None:
        """Decoded entries of chunk ``index`` (as :meth:`get`), or ``None`` when it is absent or damaged."""
        c = self._chunk(index)
        return None if c is None else [self._entry(c, j) for j in range(len(c))]

    def _locate(self, index: int) -> tuple[_Chunk, int]:
        ci, j = divmod(int(index), self.chunk_size)
        c = self._chunk(ci)
        if c is None:
            raise KeyError(f"ActivationStore: chunk {ci} (image {index}) is not stored in {self.dir}")
        if j >= len(c):
            raise IndexError(f"ActivationStore: image {index} is past the end of chunk {ci} ({len(c)} entries)")
        return c, j

    def get(self, index: int) -> tuple[np.ndarray, float] | None:
        """``(map, scale)`` of image ``index``: the ``C×H×W`` float32 levels (not multiplied by ``scale`` = Δ)
        when quantized, the raw float32 map (scale 1.0) otherwise; ``None`` for a missing image. ``KeyError``
        when its chunk is not stored."""
        c, j = self._locate(index)
        return self._entry(c, j)

    def values(self, index: int) -> np.ndarray | None:
        """The map of image ``index`` in its stored type, for readers that copy it anyway: ``uint8`` levels
        when quantized, a read-only float32 view of the stored raw map otherwise; ``None`` for a missing image."""
        c, j = self._locate(index)
        e = self._entry(c, j, as_float=False)
        return None if e is None else e[0]

    def payload(self, index: int) -> np.ndarray | None:
        """What image ``index`` is stored as, undecoded (read-only views): its 1-D ``uint8`` codes when quantized
        (:func:`encode`), its ``C×H×W`` float32 map otherwise; ``None`` for a missing image."""
        c, j = self._locate(index)
        if c.missing[j]:
            return None
        data = c.payload[c.offsets[j]:c.offsets[j + 1]]
        return data if self.quantized else data.reshape(tuple(int(s) for s in c.shapes[j]))

    def shape(self, index: int) -> tuple[int, int, int] | None:
        """``(C, H, W)`` of image ``index``'s map without decoding it; ``None`` for a missing image."""
        c, j = self._locate(index)
        return None if c.missing[j] else tuple(int(v) for v in c.shapes[j])

    def stored_bytes(self, index: int) -> int:
        """Payload bytes of image ``index``: its code length when quantized, ``4·C·H·W`` otherwise (0 if missing)."""
        c, j = self._locate(index)
        return int(c.offsets[j + 1] - c.offsets[j]) * c.payload.itemsize

    def raw_bytes(self, index: int) -> int:
        """Bytes of image ``index`` as a float32 map, ``4·C·H·W`` (0 if missing)."""
        c, j = self._locate(index)
        return 4 * int(np.prod(c.shapes[j]))

    def clear_cache(self) -> None:
        """Drop the chunks kept in memory."""
        self._cache.clear()
        self._cached = 0
