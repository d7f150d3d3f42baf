"""Retrieval engine: chunked search, query expansion, cached and resumable extraction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lit_retrieval.retrieval import (DescriptorCache, ImageItem, Loading, describe_multiscale, expand_queries, extract,
                                     search)


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_chunked_equals_bruteforce():
    rng = np.random.default_rng(0)
    db, q = _unit(rng, 1000, 16), _unit(rng, 7, 16)
    s_full, r_full = search(q, db)
    ref = np.argsort(-(q @ db.T), axis=1, kind="stable")
    np.testing.assert_array_equal(r_full[:, :50], ref[:, :50])
    s_chunk, r_chunk = search(q, db, k=20, chunk_size=128)
    np.testing.assert_array_equal(r_chunk, r_full[:, :20])
    np.testing.assert_allclose(s_chunk, s_full[:, :20], rtol=1e-6)
    with pytest.raises(ValueError, match="equal widths"):
        search(q[:, :8], db)


def test_query_expansion_average_and_alpha():
    rng = np.random.default_rng(1)
    db, q = _unit(rng, 50, 8), _unit(rng, 3, 8)
    s, r = search(q, db)
    avg = expand_queries(q, db, r, s, k=2)
    ref = q + db[r[:, 0]] + db[r[:, 1]]
    np.testing.assert_allclose(avg, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-5)
    aqe = expand_queries(q, db, r, s, k=2, alpha=3.0)
    w = np.clip(s[:, :2], 0, None) ** 3
    ref = q + w[:, :1] * db[r[:, 0]] + w[:, 1:2] * db[r[:, 1]]
    np.testing.assert_allclose(aqe, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(2)
    paths = []
    for i in range(7):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


class _Counting:
    """A describe function (mean colour and size) that counts its calls."""

    power = 1.0

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        v = torch.cat([x.mean(dim=(-2, -1)), torch.tensor([[x.shape[-2] / 100.0]])], dim=1)
        return v / v.norm(dim=1, keepdim=True)


def test_extract_cache_resumes_and_keys(tmp_path, images, monkeypatch):
    items = [ImageItem(p) for p in images]
    f = _Counting()
    cache = DescriptorCache(tmp_path / "cache", {"k": 1}, chunk_size=3)
    d1, skipped = extract(items, f, lambda x: x, Loading(64, progress=False), cache=cache)
    assert d1.shape == (7, 4) and skipped == [] and f.calls == 7
    d2, _ = extract(items, f, lambda x: x, Loading(64, progress=False), cache=cache)
    assert f.calls == 7  # everything from the cache
    np.testing.assert_array_equal(d1, d2)
    # an interrupted run: drop the last chunk, only its images are recomputed
    (cache.dir / "chunk_000001.npy").unlink()
    d3, _ = extract(items, f, lambda x: x, Loading(64, progress=False), cache=cache)
    assert f.calls == 10
    np.testing.assert_array_equal(d1, d3)
    # a different key never reads these entries
    other = DescriptorCache(tmp_path / "cache", {"k": 2}, chunk_size=3)
    assert other.dir != cache.dir and other.load(0) is None
    # a crash mid-extraction leaves only complete chunks behind
    (cache.dir / "chunk_000002.npy").unlink()

    def boom(x):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(items, boom, lambda x: x, Loading(64, progress=False), cache=cache)
    assert sorted(p.name for p in cache.dir.glob("*.np*")) == ["chunk_000000.npy", "chunk_000001.npy"]


def test_extract_skip_bad_images(tmp_path, images, caplog):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    items = [ImageItem(p) for p in images[:2]] + [ImageItem(bad)]
    from lit_retrieval.data.errors import ImageLoadError

    with pytest.raises(ImageLoadError, match="bad.jpg"):
        extract(items, _Counting(), lambda x: x, Loading(64, progress=False))
    d, skipped = extract(items, _Counting(), lambda x: x, Loading(64, skip_bad=True, progress=False))
    assert skipped == [2] and not d[2].any() and d[0].any()
    assert "bad.jpg" in caplog.text


def test_extract_with_worker_and_query_boxes(images):
    """Queries are cropped to their box before description; images keep their own size (no crop)."""
    items = [ImageItem(images[0], (2.0, 3.0, 12.0, 15.0)), ImageItem(images[1])]
    size = lambda x: torch.tensor([[float(x.shape[-2]), float(x.shape[-1])]])  # noqa: E731
    d, _ = extract(items, size, lambda x: x, Loading(64, num_workers=1, progress=False))
    np.testing.assert_array_equal(d, [[12, 10], [21, 30]])


def test_describe_multiscale_gem_power():
    x = torch.rand(1, 3, 32, 48)
    f = lambda t: torch.nn.functional.normalize(t.mean(dim=(-2, -1)) + t.shape[-1], dim=1)  # noqa: E731
    v = describe_multiscale(f, x, (1.0, 0.5), power=3.0)
    a, b = f(x), f(torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))
    ref = ((a ** 3 + b ** 3) / 2) ** (1 / 3)
    torch.testing.assert_close(v, ref / ref.norm(), rtol=1e-5, atol=1e-6)


def test_descriptor_cache_treats_a_truncated_chunk_as_absent(tmp_path):
    cache = DescriptorCache(tmp_path, {"k": 1})
    cache.save(0, np.ones((2, 3), np.float32), np.zeros(2, bool))
    path = cache.dir / "chunk_000000.npy"
    assert cache.load(0) is not None
    path.write_bytes(path.read_bytes()[:40])  # an .npy cut short: its header promises more rows
    assert cache.load(0) is None


def test_global_poolings_of_maps_equal_those_of_images():
    """``takes_maps``: the training callback pools the frozen maps it holds instead of re-running the backbone."""
    from lit_retrieval.backbones import build_backbone
    from lit_retrieval.retrieval import build_method

    bb = build_backbone("efficientnet_lite0")
    x = bb.normalize(torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        maps = bb(x)
        for name, kw in (("gem", {"p": 3.0}), ("mac", {}), ("spoc", {}), ("rmac", {"L": 2})):
            m = build_method(name, bb, **kw)
            assert m.takes_maps
            assert torch.equal(m(maps), m(x)), name
        assert not build_method("rmac", bb, L=2, variant="kimyoon").takes_maps  # its grid needs the image size
        with pytest.raises(ValueError, match="another backbone"):
            build_method("gem", bb)(torch.rand(1, 7, 3, 4))
