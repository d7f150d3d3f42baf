"""The one box type: formats, frames, rounding conventions of the papers, and torchvision underneath."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_retrieval.boxes import FORMATS, Boxes, convert, paired_iou

XYWH = np.array([[10, 20, 30, 40], [0, 0, 5, 7]], np.int64)
XYXY = np.array([[10, 20, 40, 60], [0, 0, 5, 7]], np.int64)


def test_convert_reads_and_writes_every_format():
    assert convert(XYWH, "xywh", "xyxy").tolist() == XYXY.tolist()
    assert convert(XYXY, "xyxy", "yxyx").tolist() == [[20, 10, 60, 40], [0, 0, 7, 5]]
    assert convert(XYXY, "xyxy", "yxhw").tolist() == [[20, 10, 40, 30], [0, 0, 7, 5]]
    assert convert(XYXY.astype(np.float32), "xyxy", "cxcywh").tolist() == [[25, 40, 30, 40], [2.5, 3.5, 5, 7]]
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 50, (20, 4))
    b[:, 2:] += b[:, :2]
    for fmt in FORMATS:
        np.testing.assert_allclose(convert(convert(b, "xyxy", fmt), fmt, "xyxy"), b, rtol=0, atol=1e-12)


def test_array_type_and_dtype_are_kept():
    assert convert(XYWH, "xywh", "xyxy").dtype == np.int64
    t = convert(torch.tensor(XYWH, dtype=torch.float32), "xywh", "xyxy")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    out = convert(XYXY, "xyxy", "xyxy")
    out[0, 0] = -1
    assert XYXY[0, 0] == 10  # a copy, never the caller's array
    assert convert(np.zeros((0, 4)), "xywh", "xyxy").shape == (0, 4)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown box format 'ltrb'"):
        convert(XYXY, "ltrb", "xyxy")
    with pytest.raises(ValueError, match="4 columns"):
        Boxes.of(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown box frame"):
        Boxes.of(XYXY, frame="grid")
    with pytest.raises(ValueError, match=r"needs the frame's size"):
        Boxes.of(XYXY).hflip()
    with pytest.raises(ValueError, match="needs pixel boxes"):
        Boxes.of(XYXY, frame="cells").to_cells((4, 4), stride=8)
    with pytest.raises(ValueError, match="needs cell boxes"):
        Boxes.of(XYXY).to_pixels((100, 100), stride=8)
    with pytest.raises(ValueError, match="unknown rounding"):
        Boxes.of(XYXY, size=(64, 64)).to_cells((4, 4), rounding="nearest")
    with pytest.raises(ValueError, match="finite"):
        Boxes.of([[0, 0, np.nan, 3]], size=(10, 10)).rounded_out()


def test_roi_rounding_is_caffe_roi_pooling():
    # Kim & Yoon's projection: inclusive ends x1 - 1, divided by the stride, rounded half away from zero, clipped
    # pixels [0, 767] at stride 32 -> cells 0..24 (767/32 rounds up), clipped to the 24-row map
    cells = Boxes.of([[0, 0, 768, 768]], "xywh").to_cells((24, 32), stride=32, rounding="roi")
    assert cells.frame == "cells" and cells.size == (24, 32)
    assert cells.numpy("yxhw").tolist() == [[0, 0, 24, 25]]
    # x = 16 -> 0.5 rounds away to 1; a box inside one cell is still one cell wide
    assert Boxes.of([[16, 0, 1, 1]], "xywh").to_cells((4, 4), stride=32, rounding="roi").numpy().tolist() == \
        [[1, 0, 2, 1]]


def test_cover_rounding_and_stretched_cells_round_trip():
    cells = np.array([[2, 3, 6, 8]])  # y0, x0, y1, x1 on a 16×12 map of a 512×384 image
    px = Boxes.of(cells, "yxyx", "cells", (16, 12)).to_pixels((512, 384))
    assert px.numpy().tolist() == [[96.0, 64.0, 256.0, 192.0]]
    assert px.to_cells((16, 12)).numpy("yxyx").tolist() == cells.tolist()
    # any pixel box is covered by its cells
    assert Boxes.of([[97.0, 65.0, 97.5, 65.5]], size=(512, 384)).to_cells((16, 12)).numpy().tolist() == \
        [[3, 2, 4, 3]]


def test_stride_to_pixels_clips_and_stays_integer():
    cells = np.array([[0, 0, 2, 3], [1, 2, 5, 5], [3, 4, 1, 1]])  # y0, x0, h, w
    px = Boxes.of(cells, "yxhw", "cells").to_pixels((150, 200), stride=32).numpy()
    assert px.dtype == np.int64
    assert px.tolist() == [[0, 0, 96, 64], [64, 32, 200, 150], [128, 96, 160, 128]]


def test_rounded_out_floor_ceil_clip_and_one_unit():
    def window(box):
        return tuple(Boxes.of([box], size=(40, 50)).rounded_out().numpy()[0].tolist())

    assert window((3.2, 5.7, 20.1, 30.0)) == (3, 5, 21, 30)
    assert window((-5, -5, 1000, 1000)) == (0, 0, 50, 40)
    assert window((10, 10, 10, 10)) == (10, 10, 11, 11)  # at least one pixel
    assert window((60, 45, 70, 50)) == (49, 39, 50, 40)  # outside: the last pixel


def test_hflip_and_resize_follow_the_image():
    assert Boxes.of(np.array([[2.0, 1.0, 5.0, 4.0]]), size=(6, 10)).hflip().numpy().tolist() == [[5.0, 1.0, 8.0, 4.0]]
    t = Boxes.of(torch.tensor([[0.0, 0.0, 10.0, 3.0]]), size=(6, 10)).hflip()
    assert t.to().tolist() == [[0.0, 0.0, 10.0, 3.0]]
    flipped_twice = Boxes.of(XYXY.astype(np.float32), size=(80, 50)).hflip().hflip()
    assert flipped_twice.numpy().tolist() == XYXY.tolist()
    half = Boxes.of(XYXY.astype(np.float32), size=(80, 50)).resized((40, 100))
    assert half.size == (40, 100) and half.numpy().tolist() == [[20, 10, 80, 30], [0, 0, 10, 3.5]]
    assert Boxes.of([[-3.0, 2, 70, 90]], size=(80, 50)).clipped().numpy().tolist() == [[0, 2, 50, 80]]


def test_iou_pairwise_and_row_by_row():
    a = np.array([[0, 0, 2, 2], [0, 0, 4, 4]], np.float64)
    b = np.array([[1, 1, 3, 3], [0, 0, 4, 4]], np.float64)
    np.testing.assert_allclose(paired_iou(a, b), [1 / 7, 1.0])
    np.testing.assert_allclose(paired_iou(convert(a, "xyxy", "yxyx"), convert(b, "xyxy", "yxyx")), [1 / 7, 1.0])
    np.testing.assert_allclose(Boxes.of(a).iou(Boxes.of(b)).numpy(), [[1 / 7, 0.25], [4 / 16, 1.0]])
    with pytest.raises(ValueError, match="as many boxes"):
        paired_iou(a, b[:1])
    assert Boxes.whole((3, 5)).numpy().tolist() == [[0, 0, 5, 3]]
    assert Boxes.of(a).area().tolist() == [4.0, 16.0]
