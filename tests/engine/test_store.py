"""Descriptor stores: chunk files read block by block, float16 rows, lazy transforms, bounded memory."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lit_retrieval.retrieval import search
from lit_retrieval.retrieval.cache import DescriptorCache


def _store(tmp_path, x, chunk, dtype="float32", skipped=None):
    cache = DescriptorCache(tmp_path, {"k": dtype}, chunk_size=chunk, dtype=dtype)
    ranges = cache.chunks(len(x))
    mask = np.zeros(len(x), bool) if skipped is None else skipped
    for c, r in enumerate(ranges):
        cache.save(c, x[r.start:r.stop], mask[r.start:r.stop])
    return cache.store(ranges, x.shape[1], mask)


def test_store_reads_like_the_array(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((103, 8)).astype(np.float32)
    s = _store(tmp_path, x, 10)
    assert s.shape == (103, 8) and s.on_disk and len(s.parts) == 11
    np.testing.assert_array_equal(np.asarray(s), x)
    idx = rng.integers(0, 103, (5, 7))
    np.testing.assert_array_equal(s[idx], x[idx])
    np.testing.assert_array_equal(s[17:44], x[17:44])
    blocks = list(s.blocks(rows=25))
    assert [b for b, _ in blocks] == [0, 25, 50, 75, 100]
    np.testing.assert_array_equal(np.concatenate([v for _, v in blocks]), x)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    for k in (5, None):
        d_arr, i_arr = search(q, x, k=k)
        d_st, i_st = search(q, s, k=k, chunk_size=16)  # 7 blocks, not aligned with the files
        np.testing.assert_array_equal(i_st, i_arr)
        np.testing.assert_allclose(d_st, d_arr, rtol=1e-6)


def test_store_map_and_skipped_rows_stay_zero(tmp_path):
    x = np.ones((6, 4), np.float32)
    skipped = np.array([False, True, False, False, True, False])
    x[skipped] = 0
    s = _store(tmp_path, x, 4, skipped=skipped).map(lambda v: v @ np.full((4, 2), 0.5, np.float32) + 1)
    assert s.shape == (6, 2)
    out = np.asarray(s)
    assert (out[skipped] == 0).all() and (out[~skipped] == 3).all()
    np.testing.assert_array_equal(s[np.array([1, 2])], [[0, 0], [3, 3]])


def test_store_float16_halves_the_files(tmp_path):
    x = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    s16, s32 = _store(tmp_path / "a", x, 16, "float16"), _store(tmp_path / "b", x, 16, "float32")
    size = lambda s: sum(p.stat().st_size for p in s.parts)  # noqa: E731
    assert s16.stored_dtype == "float16" and size(s16) < 0.55 * size(s32)
    np.testing.assert_array_equal(np.asarray(s16), x.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="store.dtype"):
        DescriptorCache(tmp_path, {"k": 1}, dtype="int8")


def test_search_over_a_store_larger_than_its_memory_budget(tmp_path):
    """A 320 MB store searched in a process whose address space is capped at what it uses after its imports
    plus 160 MB: it completes (one block at a time), and loading the store whole fails under the same cap."""
    script = textwrap.dedent(f"""
        import resource, sys
        import numpy as np
        from lit_retrieval.retrieval.cache import DescriptorCache
        from lit_retrieval.retrieval.search import search
        rng = np.random.default_rng(0)
        n, d, chunk = 320_000, 256, 8192
        cache = DescriptorCache({str(tmp_path)!r}, {{"big": 1}}, chunk_size=chunk)
        ranges = cache.chunks(n)
        planted = rng.standard_normal(d).astype(np.float32)
        for c, r in enumerate(ranges):
            x = rng.standard_normal((len(r), d), dtype=np.float32) * 0.01
            if c == 17:
                x[5] = planted  # row 17 * chunk + 5 is the best match of the query
            cache.save(c, x, np.zeros(len(r), bool))
            del x
        store = cache.store(ranges, d, np.zeros(n, bool))
        search(planted[None], store, k=10, chunk_size=16384)  # warm-up: faiss/BLAS thread buffers
        vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize")][0]
        budget = 160 << 20
        resource.setrlimit(resource.RLIMIT_AS, (vm + budget, vm + budget))
        scores, ranks = search(planted[None], store, k=100, chunk_size=16384)
        assert ranks[0, 0] == 17 * chunk + 5, ranks[0, :3]
        print("store MB", store.nbytes_stored >> 20, "budget MB", budget >> 20)
        try:
            np.asarray(store)
        except MemoryError:
            print("whole store refused")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "store MB 312 budget MB 160" in out.stdout and "whole store refused" in out.stdout
