"""Sec. 7 activation storage: quantization, sparse byte codes and the chunked on-disk store."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_retrieval.methods.aml.storage import ActivationStore, auto_clip, decode, encode, quantize


def _sparse_levels(rng: np.random.Generator, shape: tuple[int, ...], density: float) -> np.ndarray:
    nz = rng.random(shape) < density
    return np.where(nz, rng.integers(1, 9, size=shape), 0).astype(np.uint8)


def _maps(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        x = rng.gamma(0.5, 20.0, size=(6, 3 + i % 3, 4)).astype(np.float32)
        x[rng.random(x.shape) < 0.6] = 0  # ReLU-like sparsity
        out.append(x)
    return out


# -- quantization ----------------------------------------------------------------------------------------------
def test_quantize_matches_reference_formula():
    rng = np.random.default_rng(0)
    special = np.array([0, 0.99, 1, 16.99, 17, 127.9, 128, 500, 1e-6, 15.999, 33, 112.99, 113], np.float32)
    x = np.concatenate([special, rng.uniform(0, 200, 5000).astype(np.float32)]).reshape(1, 1, -1)
    q, delta = quantize(x, clip=128)
    ref = np.floor((15 + np.minimum(x.astype(np.float64), 128)) / 16)
    assert q.dtype == np.uint8 and q.shape == x.shape and delta == 16.0
    np.testing.assert_array_equal(q, ref)
    assert q[0, 0, :8].tolist() == [0, 0, 1, 1, 2, 8, 8, 8]


def test_quantize_torch_auto_clip_and_validation():
    x = torch.zeros(2, 3, 4)
    x[0, 0, 0] = 5.0
    q, delta = quantize(x)  # the quantile is 0 → clip = max = 5
    assert isinstance(q, np.ndarray) and q[0, 0, 0] == 8 and q.sum() == 8 and delta == pytest.approx(5 / 8)
    assert quantize(torch.zeros(1, 2, 2))[1] == pytest.approx(1 / 8)  # all zero → clip 1.0
    big = np.arange(1_000_000, dtype=np.float32)
    assert auto_clip(big) == pytest.approx(np.quantile(big, 1 - 1e-5), abs=1.0)
    with pytest.raises(ValueError, match="non-negative"):
        quantize(np.array([[[1.0, -0.5]]]))
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([[[1.0, np.nan]]]))
    for bad in (0, 9):
        with pytest.raises(ValueError, match="levels"):
            quantize(np.ones((1, 1, 1)), levels=bad)


# -- sparse codes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 1.0])
def test_encode_decode_round_trip(density):
    rng = np.random.default_rng(int(density * 100))
    lv = _sparse_levels(rng, (7, 13, 11), density)
    codes = encode(lv)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(decode(codes, lv.shape), lv)
    pos = np.flatnonzero(lv)
    escapes = int(((np.diff(pos, prepend=-1) - 1) // 31).sum())
    assert codes.size == pos.size + escapes
    if density == 1.0:
        assert codes.size == lv.size and (codes >> 3 == 0).all()


def test_encode_runs_at_escape_boundaries():
    flat = np.zeros(400, np.uint8)
    # gaps before each non-zero: 0, 30, 31, 62, 1, 93; then 100 trailing zeros
    pos = [0, 31, 63, 126, 128, 222]
    flat[pos] = [3, 1, 8, 2, 5, 7]
    codes = encode(flat.reshape(4, 10, 10))
    expected = [0 << 3 | 2, 30 << 3 | 0, 248, 0 << 3 | 7, 248, 248, 0 << 3 | 1, 1 << 3 | 4, 248, 248, 248, 0 << 3 | 6]
    assert codes.tolist() == expected
    np.testing.assert_array_equal(decode(codes, (4, 10, 10)).ravel(), flat)
    no_long_gaps = np.zeros(100, np.uint8)
    no_long_gaps[::31] = 4  # gaps of exactly 30 need no escape
    assert encode(no_long_gaps).size == np.count_nonzero(no_long_gaps)


def test_decode_rejects_overrun():
    codes = encode(np.ones(10, np.uint8))
    with pytest.raises(ValueError, match="past"):
        decode(codes, (9,))
    with pytest.raises(ValueError, match="past"):
        decode(np.array([248, 0], np.uint8), (31,))
    with pytest.raises(ValueError):
        encode(np.array([0, 9]))


# -- on-disk store ---------------------------------------------------------------------------------------------
KEY = {"backbone": "test", "dataset": "tiny"}


def test_quantized_store_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    maps = _maps(rng, 5)
    store = ActivationStore(tmp_path, KEY, chunk_size=3)
    assert store.chunks(5) == [range(0, 3), range(3, 5)]
    assert not store.has_chunk(0)
    store.save_chunk(0, maps[:3])
    store.save_chunk(1, [torch.from_numpy(m) for m in maps[3:]])
    assert (store.dir / "key.json").exists()
    fresh = ActivationStore(tmp_path, dict(KEY), chunk_size=3)
    assert fresh.dir == store.dir and fresh.has_chunk(0) and fresh.has_chunk(1)
    for i, m in enumerate(maps):
        q, delta = quantize(m)
        lv, scale = fresh.get(i)
        assert lv.dtype == np.float32 and lv.shape == m.shape
        np.testing.assert_array_equal(lv, q)
        assert scale == delta
        assert np.abs(lv * scale - np.minimum(m, 8 * delta)).max() <= delta + 1e-6
        assert fresh.stored_bytes(i) == encode(q).size < fresh.raw_bytes(i) == 4 * m.size
    chunk = fresh.load_chunk(1)
    assert len(chunk) == 2 and np.array_equal(chunk[0][0], fresh.get(3)[0])
    with pytest.raises(KeyError):
        ActivationStore(tmp_path, {"other": 1}).get(0)


def test_fixed_clip_store_uses_reference_levels(tmp_path):
    x = np.array([0, 0.99, 1, 16.99, 17, 127.9, 128, 500], np.float32).reshape(2, 2, 2)
    store = ActivationStore(tmp_path, KEY, clip=128)
    store.save_chunk(0, [x])
    lv, scale = ActivationStore(tmp_path, KEY, clip=128).get(0)
    assert scale == 16.0 and lv.ravel().tolist() == [0, 0, 1, 1, 2, 8, 8, 8]


def test_raw_store_exact_and_missing(tmp_path):
    rng = np.random.default_rng(2)
    maps = _maps(rng, 4)
    entries = [maps[0], None, maps[1], None]
    for quantized in (False, True):
        ActivationStore(tmp_path, KEY, chunk_size=4, quantized=quantized).save_chunk(0, entries)
        fresh = ActivationStore(tmp_path, KEY, chunk_size=4, quantized=quantized)
        got = fresh.load_chunk(0)
        assert got[1] is None and got[3] is None and fresh.get(1) is None
        assert fresh.stored_bytes(1) == 0 and fresh.raw_bytes(1) == 0
        if not quantized:
            for i in (0, 2):
                assert got[i][0].dtype == np.float32 and got[i][1] == 1.0
                np.testing.assert_array_equal(got[i][0], entries[i])
                assert fresh.stored_bytes(i) == fresh.raw_bytes(i) == 4 * entries[i].size
        else:
            np.testing.assert_array_equal(got[2][0], quantize(entries[2])[0])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_damaged_chunk_is_absent(tmp_path, damage):
    rng = np.random.default_rng(3)
    store = ActivationStore(tmp_path, KEY, chunk_size=2)
    store.save_chunk(0, _maps(rng, 2))
    path = store._chunk_path(0)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not an npz file at all")
    else:
        start = data.index(b"offsets")  # corrupt the offsets array's payload (zip CRC or validation catches it)
        for k in range(start + 20, min(start + 180, len(data))):
            data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    fresh = ActivationStore(tmp_path, KEY, chunk_size=2)
    assert not fresh.has_chunk(0) and fresh.load_chunk(0) is None
    store.save_chunk(0, _maps(rng, 2))  # recomputed chunk replaces it
    assert ActivationStore(tmp_path, KEY, chunk_size=2).has_chunk(0)


def test_key_and_parameters_select_folder(tmp_path):
    base = ActivationStore(tmp_path, KEY)
    assert ActivationStore(tmp_path, dict(KEY)).dir == base.dir
    others = [ActivationStore(tmp_path, {**KEY, "dataset": "other"}), ActivationStore(tmp_path, KEY, chunk_size=8),
              ActivationStore(tmp_path, KEY, quantized=False), ActivationStore(tmp_path, KEY, clip=128),
              ActivationStore(tmp_path, KEY, levels=4)]
    assert len({base.dir, *(s.dir for s in others)}) == 6


def test_store_keeps_at_most_its_cache_budget_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    maps = [np.maximum(rng.standard_normal((16, 6, 8)), 0).astype(np.float32) for _ in range(12)]
    writer = ActivationStore(tmp_path, KEY, chunk_size=2, quantized=False)
    for c in range(6):
        writer.save_chunk(c, maps[2 * c:2 * c + 2])
    one_chunk = 2 * maps[0].nbytes
    store = ActivationStore(tmp_path, KEY, chunk_size=2, quantized=False, cache_bytes=int(2.5 * one_chunk))
    for i in [0, 3, 5, 7, 9, 11, 1, 10]:  # every chunk, in a short-list's random order
        np.testing.assert_array_equal(store.get(i)[0], maps[i])
        assert store.cached_bytes <= 2.5 * one_chunk + 1024  # two chunks (+ their small index arrays)
    assert len(store._cache) == 2
    store.clear_cache()
    assert store.cached_bytes == 0
