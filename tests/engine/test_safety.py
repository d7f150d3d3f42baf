"""Never a silently wrong number: caches keyed by image content, skips never served again, pictures that never
fail a run, ground truth and generated benchmarks that cannot mislead."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import torch
from PIL import Image

from conftest import eval_cfg
from lit_retrieval.evaluate import run_eval
from lit_retrieval.retrieval import DescriptorCache, ImageItem, Loading, extract


def _copy(tiny, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny / "tiny", root / "tiny")
    return root


def _base(root, *extra):
    return ["method=gem", "dataset=revisited", f"dataset.root={root}", "dataset.name=tiny", "image_size=96",
            "plots.enabled=false", *extra]


def test_an_image_replaced_in_place_is_never_served_from_the_cache(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    before = run_eval(eval_cfg(tmp_path, *_base(root)), tmp_path / "a")
    from lit_retrieval.data import load_revisited

    ds = load_revisited(root, "tiny")
    rng = np.random.default_rng(0)
    for i in ds.gnd[0]["easy"][:2]:  # two positives of query 0 become noise, same file names
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(ds.db_paths[i])
    cached = run_eval(eval_cfg(tmp_path, *_base(root)), tmp_path / "b")
    fresh = run_eval(eval_cfg(tmp_path, *_base(root, "cache.enabled=false")), tmp_path / "c")
    assert cached["map"] == fresh["map"] != before["map"]
    assert cached["ap_per_query"] == fresh["ap_per_query"]


def test_another_seed_of_a_generated_benchmark_never_serves_its_descriptors(tmp_path):
    common = ["method=gem", "image_size=64", "plots.enabled=false", "dataset=embedded"]
    run_eval(eval_cfg(tmp_path, *common, "dataset.seed=1"), tmp_path / "s1")
    cached = run_eval(eval_cfg(tmp_path, *common, "dataset.seed=0"), tmp_path / "s0")
    fresh = run_eval(eval_cfg(tmp_path, *common, "dataset.seed=0", "cache.enabled=false"), tmp_path / "s0f")
    assert cached["map"] == fresh["map"]


def test_a_skip_is_never_served_to_a_later_run(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    bad = sorted((root / "tiny" / "jpg").glob("db_*.jpg"))[0]
    good = bad.read_bytes()
    bad.write_bytes(good[:200])  # truncated
    # skip_bad_images with pictures on: the pictures draw the unreadable image as a placeholder
    skipped = run_eval(eval_cfg(tmp_path, *_base(root, "skip_bad_images=true"), "plots.enabled=true"),
                       tmp_path / "skip")
    assert skipped["skipped_images"]["count"] == 1
    assert (tmp_path / "skip" / "topk.png").stat().st_size > 1000
    bad.write_bytes(good)  # repaired
    again = run_eval(eval_cfg(tmp_path, *_base(root)), tmp_path / "again")
    assert again["skipped_images"]["count"] == 0
    assert again["map"] == run_eval(eval_cfg(tmp_path, *_base(root, "cache.enabled=false")), tmp_path / "f")["map"]


def test_a_cached_chunk_with_a_skipped_image_is_recomputed(tmp_path):
    cache = DescriptorCache(tmp_path, {"k": 1}, chunk_size=2)
    cache.save(0, np.ones((2, 3), np.float32), np.array([False, True]))
    cache.save(1, np.ones((2, 3), np.float32), np.array([False, False]))
    assert cache.load(0) is None  # the skip is not trusted: recomputed (and raised, if skipping is off)
    assert cache.load(1) is not None


def test_a_cached_chunk_of_another_width_is_ignored_with_a_warning(tmp_path, caplog):
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (16, 16), (40 * i, 10, 10)).save(p)
        paths.append(p)
    items = [ImageItem(p) for p in paths]
    cache = DescriptorCache(tmp_path / "c", {"k": 1}, chunk_size=2)

    def describe(x):
        return x.mean(dim=(2, 3))  # 3 channels

    first, _ = extract(items, describe, lambda x: x, Loading(progress=False), cache=cache)
    cache.save(1, np.zeros((2, 5), np.float32), np.zeros(2, bool))  # damaged: 5 wide
    with caplog.at_level(logging.WARNING):
        again, _ = extract(items, describe, lambda x: x, Loading(progress=False), cache=cache)
    assert np.allclose(again, first) and again.shape == (4, 3)
    assert "width 5, not 3" in caplog.text and "chunk_000001" in caplog.text


def test_a_failing_picture_never_fails_the_run(tiny, tmp_path, monkeypatch, caplog):
    from lit_retrieval import evaluate

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate, "save_topk_grid", broken)
    with caplog.at_level(logging.WARNING):
        res = run_eval(eval_cfg(tmp_path, *_base(tiny), "plots.enabled=true"), tmp_path / "run")
    assert "could not draw" in caplog.text and "topk.png" in caplog.text
    assert (tmp_path / "run" / "results.json").is_file() and (tmp_path / "run" / "pr_curve.png").is_file()
    assert res["map"]["medium"] >= 0


def test_content_keys_see_the_exif_orientation(tmp_path):
    from lit_retrieval.data.provenance import pixel_key

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    img.save(a, quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: loaders with exif_transpose see another image
    img.save(b, quality=95, exif=exif)
    assert pixel_key(a) != pixel_key(b)
    assert torch.equal(torch.tensor(np.asarray(Image.open(a))), torch.tensor(np.asarray(Image.open(b))))
