"""Pictures of regional attention: PNGs are written, top-k selection and box maths are right."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lit_retrieval.boxes import Boxes
from lit_retrieval.methods.regional_attention.pictures import (
    attention_on_objects,
    on_objects,
    save_attention_histogram,
    save_attention_regions,
    top_regions,
)


def test_top_regions_order_ties_and_large_k():
    w = np.array([0.1, 0.5, 0.3, 0.5, 0.0])
    assert top_regions(w, 3).tolist() == [1, 3, 2]  # tie 0.5: lower index first
    assert top_regions(w, 10).tolist() == [1, 3, 2, 0, 4]  # k > R: all, sorted
    assert top_regions(w, 0).tolist() == []
    assert top_regions(np.array([]), 5).tolist() == []
    assert top_regions(np.array([np.nan, 0.2, 0.1]), 2).tolist() == [1, 2]  # NaN ranks last
    # picks the highest weights, sorted decreasingly
    rng = np.random.default_rng(0)
    r = rng.random(50)
    idx = top_regions(r, 7)
    assert np.all(np.diff(r[idx]) <= 0)
    assert set(idx.tolist()) == set(np.argsort(r)[-7:].tolist())


def test_on_objects_uses_the_overlap_of_the_smaller_box():
    obj = np.array([[100, 100, 200, 200]])
    regions = np.array([[0, 0, 400, 400],      # contains the object: on it
                        [120, 120, 180, 180],  # inside the object: on it
                        [150, 100, 260, 200],  # half of the region (and of the object) covered: on it (>= 0.5)
                        [180, 100, 300, 200],  # 20 of 120 px wide: off
                        [300, 300, 350, 350]])  # elsewhere: off
    assert on_objects(regions, obj).tolist() == [True, True, True, False, False]
    assert on_objects(regions, obj, min_overlap=0.9).tolist() == [True, True, False, False, False]
    assert on_objects(regions, np.zeros((0, 4))).tolist() == [False] * 5
    two = np.array([[100, 100, 200, 200], [300, 300, 340, 340]])
    assert on_objects(regions, two).tolist() == [True, True, True, False, True]


def test_attention_on_objects_against_chance():
    regions = np.array([[0, 0, 50, 50], [50, 0, 100, 50], [0, 50, 50, 100], [50, 50, 100, 100]])
    obj = np.array([[0, 0, 50, 50]])  # one of four regions on the object: chance 1/4
    good = attention_on_objects([regions], [np.array([9.0, 1, 1, 1])], [obj], k=1)
    bad = attention_on_objects([regions], [np.array([0.0, 1, 2, 3])], [obj], k=2)
    assert good == {"top_k": 1.0, "chance": 0.25, "k": 1, "images": 1, "min_overlap": 0.5}
    assert bad["top_k"] == 0.0 and bad["chance"] == 0.25
    # images without objects are left out of both; none at all gives NaN
    both = attention_on_objects([regions, regions], [np.array([9.0, 1, 1, 1])] * 2, [obj, np.zeros((0, 4))], k=1)
    assert both["images"] == 1 and both["top_k"] == 1.0
    assert np.isnan(attention_on_objects([regions], [np.ones(4)], [np.zeros((0, 4))])["top_k"])


def _to_pixels(cells_yxhw, stride, image_hw):
    return Boxes.of(cells_yxhw, "yxhw", "cells").to_pixels(image_hw, stride=stride).numpy()


def test_feature_boxes_to_pixels():
    boxes = np.array([[0, 0, 2, 3],    # y0, x0, h, w
                      [1, 2, 5, 5],    # overflows the image: clipped
                      [3, 4, 1, 1]])
    px = _to_pixels(boxes, stride=32, image_hw=(150, 200))
    assert px.dtype == np.int64
    assert px.tolist() == [[0, 0, 96, 64],
                           [64, 32, 200, 150],
                           [128, 96, 160, 128]]
    assert _to_pixels(np.zeros((0, 4), np.int64), 16, (10, 10)).shape == (0, 4)


def _png_size(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_save_attention_regions(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(120, 160), (160, 120), (100, 100),
                                                                            (80, 140), (90, 90)]]
    boxes, weights = [], []
    for img in images:
        H, W = img.shape[:2]
        feat = np.array([[0, 0, 2, 2], [1, 1, 2, 2], [0, 1, 3, 2], [2, 2, 1, 1], [0, 0, 4, 4], [1, 0, 1, 3]])
        boxes.append(_to_pixels(feat, 32, (H, W)))
        weights.append(rng.random(len(feat)))
    out = save_attention_regions(images, boxes, weights, tmp_path / "sub" / "regions.png", k=3,
                                 titles=[f"img{i}" for i in range(5)])
    assert out.exists() and out.parent.name == "sub"
    w, h = _png_size(out)
    assert 400 < w < 3000 and 300 < h < 3000  # 4 columns, 2 rows
    assert not list(out.parent.glob(".*.tmp"))
    # k larger than the number of regions, no titles, a single image
    one = save_attention_regions(images[:1], boxes[:1], weights[:1], tmp_path / "one.png", k=50)
    assert _png_size(one)[0] > 100
    with pytest.raises(ValueError):
        save_attention_regions(images[:2], boxes[:1], weights[:2], tmp_path / "bad.png")


def test_save_attention_histogram(tmp_path):
    rng = np.random.default_rng(2)
    scale = np.repeat([1, 2, 3], [10, 40, 90])
    weights = rng.gamma(2.0, 0.1, size=scale.size) * scale
    out = save_attention_histogram(weights, scale, tmp_path / "h" / "hist.png", title="attention per scale")
    w, h = _png_size(out)
    assert w > 200 and h > 300
    # constant weights do not break the shared x range
    out2 = save_attention_histogram(np.full(6, 0.5), np.array([1, 1, 1, 2, 2, 2]), tmp_path / "flat.png")
    assert _png_size(out2)[1] > 100
