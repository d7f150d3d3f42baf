"""The project's one box type, :class:`Boxes`, and its converters.

A :class:`Boxes` holds ``N`` boxes as ``xyxy`` (``x0, y0, x1, y1``, ends exclusive, so a box is
``x1 - x0`` wide) in one *frame*: the ``"pixels"`` of an image or the ``"cells"`` of a feature map, of size
``(H, W)`` when known. Every layout the papers and their reference code use is read and written here:

========  ==========================================  =========================================
format    columns                                     used by
========  ==========================================  =========================================
xyxy      ``x0, y0, x1, y1``                          torchvision, COCOeval, detectors, D2R, pictures
xywh      ``x, y, w, h``                              COCO annotations, Kim & Yoon's pixel grid
cxcywh    ``cx, cy, w, h``                            torchvision's ``box_convert``
yxhw      ``y0, x0, h, w``                            cirtorch's R-MAC regions (``regions.py``)
yxyx      ``y0, x0, y1, x1``                          AML's windows (``methods/aml/windows.py``)
========  ==========================================  =========================================

Between frames: :meth:`Boxes.to_cells` (``"cover"``: the cells a box touches, AML's localization truth;
``"roi"``: Caffe RoI pooling, Kim & Yoon's region projection) and :meth:`Boxes.to_pixels` (cells times a
stride, or the cell grid stretched over the image). Geometry goes through torchvision's box ops
(``box_convert``, ``box_iou``, ``box_area``, ``clip_boxes_to_image``, ``resize_boxes``). Arrays come back
as the type they came in (NumPy or torch) with their dtype kept where the operation allows it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_area, box_convert, box_iou, clip_boxes_to_image

Array = Union[np.ndarray, Tensor]
FORMATS = ("xyxy", "xywh", "cxcywh", "yxhw", "yxyx")
FRAMES = ("pixels", "cells")
ROUNDINGS = ("cover", "roi")
_YX_FIRST = {"yxhw": "xywh", "yxyx": "xyxy"}  # row-first layouts: the same boxes with x and y swapped
_SWAP = [1, 0, 3, 2]


def _tensor(boxes: Array | Sequence) -> Tensor:
    t = boxes if isinstance(boxes, Tensor) else torch.as_tensor(np.asarray(boxes))
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 columns, got shape {tuple(t.shape)}")
    return t.reshape(-1, 4)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown box format {fmt!r}: choose one of {FORMATS}")


def _convert(t: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    _check_format(in_fmt)
    _check_format(out_fmt)
    if in_fmt == out_fmt:
        return t
    if in_fmt in _YX_FIRST:
        t, in_fmt = t[:, _SWAP], _YX_FIRST[in_fmt]
    yx_out = out_fmt in _YX_FIRST
    base = _YX_FIRST.get(out_fmt, out_fmt)
    out = t if in_fmt == base else box_convert(t, in_fmt, base)
    return out[:, _SWAP] if yx_out else out


def _like(t: Tensor, template: Array | Sequence) -> Array:
    return t if isinstance(template, Tensor) else t.numpy()


def convert(boxes: Array, in_fmt: str, out_fmt: str) -> Array:
    """``N×4`` boxes from one format of :data:`FORMATS` to another (the input's array type and dtype kept)."""
    return _like(_convert(_tensor(boxes), in_fmt, out_fmt).clone(), boxes)


def paired_iou(a: Array, b: Array) -> np.ndarray:
    """Intersection over union of two ``N×4`` sets row by row (``N``, float64), both in the same format of
    ``xyxy`` or ``yxyx`` (the measure is the same in either)."""
    ta, tb = _tensor(a).double(), _tensor(b).double()
    if len(ta) != len(tb):
        raise ValueError(f"paired_iou needs as many boxes on both sides, got {len(ta)} and {len(tb)}")
    lo, hi = torch.maximum(ta[:, :2], tb[:, :2]), torch.minimum(ta[:, 2:], tb[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    union = box_area(ta) + box_area(tb) - inter
    return (inter / union.clamp(min=1e-12)).numpy()


def _round_half_away(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


@dataclass(frozen=True)
class Boxes:
    """``N`` boxes, ``xyxy`` with exclusive ends, in the ``frame`` (``"pixels"`` or ``"cells"``) of an
    ``(H, W)`` image or feature map (``size``; ``None`` where no operation needs it).

    Build with :meth:`of` from any format, read with :meth:`to` (a tensor) or :meth:`numpy`.
    """

    xyxy: Tensor
    frame: str = "pixels"
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.frame not in FRAMES:
            raise ValueError(f"unknown box frame {self.frame!r}: choose one of {FRAMES}")
        if self.size is not None:
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    @classmethod
    def of(cls, boxes: Array | Sequence, fmt: str = "xyxy", frame: str = "pixels",
           size: Sequence[int] | None = None) -> "Boxes":
        """Boxes from an ``N×4`` array (NumPy, torch or nested lists) in format ``fmt``."""
        return cls(_convert(_tensor(boxes), fmt, "xyxy"), frame, None if size is None else tuple(size))

    @classmethod
    def whole(cls, size: Sequence[int], frame: str = "pixels", dtype: torch.dtype = torch.float64) -> "Boxes":
        """The box covering the whole ``(H, W)`` frame."""
        H, W = int(size[0]), int(size[1])
        return cls(torch.tensor([[0, 0, W, H]], dtype=dtype), frame, (H, W))

    def __len__(self) -> int:
        return len(self.xyxy)

    def to(self, fmt: str = "xyxy") -> Tensor:
        """The boxes as an ``N×4`` tensor in format ``fmt``."""
        return _convert(self.xyxy, "xyxy", fmt)

    def numpy(self, fmt: str = "xyxy") -> np.ndarray:
        """The boxes as an ``N×4`` NumPy array in format ``fmt`` (a copy)."""
        return self.to(fmt).numpy().copy()

    def _need_size(self, what: str) -> tuple[int, int]:
        if self.size is None:
            raise ValueError(f"Boxes.{what} needs the frame's size: build with Boxes.of(..., size=(H, W))")
        return self.size

    def _scales(self, other: Sequence[int], stride: float | None) -> tuple[float, float]:
        """``(sy, sx)``: pixels per cell, the stride or the image / feature-map ratio."""
        if stride is not None:
            return float(stride), float(stride)
        (H, W), (h, w) = (self._need_size("scales"), tuple(other)) if self.frame == "pixels" else \
            (tuple(other), self._need_size("scales"))
        return H / h, W / w

    def area(self) -> Tensor:
        """Areas (torchvision's ``box_area``)."""
        return box_area(self.xyxy)

    def iou(self, other: "Boxes") -> Tensor:
        """``N×M`` intersection over union with ``other`` (torchvision's ``box_iou``), in float64."""
        return box_iou(self.xyxy.double(), other.xyxy.double())

    def clipped(self) -> "Boxes":
        """The boxes clipped to the frame (torchvision's ``clip_boxes_to_image``)."""
        return Boxes(clip_boxes_to_image(self.xyxy, self._need_size("clipped")), self.frame, self.size)

    def hflip(self) -> "Boxes":
        """The boxes of the horizontally flipped frame: column ``c`` goes to ``W - 1 - c``, so the span
        ``[x0, x1)`` becomes ``[W - x1, W - x0)``."""
        W = self._need_size("hflip")[1]
        b = self.xyxy.clone()
        b[:, 0], b[:, 2] = W - self.xyxy[:, 2], W - self.xyxy[:, 0]
        return Boxes(b, self.frame, self.size)

    def resized(self, size: Sequence[int]) -> "Boxes":
        """The same boxes in a frame resized to ``(H, W)`` (torchvision's ``resize_boxes``; float)."""
        new = (int(size[0]), int(size[1]))
        return Boxes(resize_boxes(self.xyxy.float(), list(self._need_size("resized")), list(new)), self.frame, new)

    def rounded_out(self) -> "Boxes":
        """Integer boxes covering these: floor of the start, ceil of the end, clipped to the frame, at least one
        unit wide and high (int64). Boxes must be finite."""
        H, W = self._need_size("rounded_out")
        b = self.xyxy.double()
        if not bool(torch.isfinite(b).all()):
            raise ValueError(f"boxes must be finite, got {b[~torch.isfinite(b).all(1)].tolist()}")
        lo = torch.stack([b[:, 0].floor().clamp(0, W - 1), b[:, 1].floor().clamp(0, H - 1)], 1)
        hi = torch.stack([torch.maximum(b[:, 2].ceil(), lo[:, 0] + 1).clamp(max=W),
                          torch.maximum(b[:, 3].ceil(), lo[:, 1] + 1).clamp(max=H)], 1)
        return Boxes(torch.cat([lo, hi], 1).long(), self.frame, self.size)

    def to_cells(self, feature_hw: Sequence[int], stride: float | None = None, rounding: str = "cover") -> "Boxes":
        """Pixel boxes -> integer cell boxes of an ``(h, w)`` feature map (int64).

        A cell is ``stride`` pixels, or, without a stride, the image stretched over the map (``H / h``).
        ``rounding="cover"``: every cell the box touches (floor / ceil, clipped, at least one cell).
        ``rounding="roi"``: Caffe RoI pooling (Kim & Yoon's code): inclusive pixel ends ``x1 - 1``, both ends
        divided by the stride and rounded half away from zero, clipped to the map, at least one cell.
        """
        if self.frame != "pixels":
            raise ValueError(f"to_cells needs pixel boxes, these are in {self.frame}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"unknown rounding {rounding!r}: choose one of {ROUNDINGS}")
        h, w = int(feature_hw[0]), int(feature_hw[1])
        sy, sx = self._scales((h, w), stride)
        b = self.xyxy.double()
        if rounding == "cover":
            cells = torch.stack([b[:, 0] / sx, b[:, 1] / sy, b[:, 2] / sx, b[:, 3] / sy], 1)
            return Boxes(cells, "cells", (h, w)).rounded_out()
        x0 = _round_half_away(b[:, 0] / sx).clamp(0, w - 1)
        y0 = _round_half_away(b[:, 1] / sy).clamp(0, h - 1)
        x1 = _round_half_away((b[:, 2] - 1) / sx).clamp(0, w - 1)
        y1 = _round_half_away((b[:, 3] - 1) / sy).clamp(0, h - 1)
        x1 = x0 + torch.clamp(x1 - x0 + 1, min=1)
        y1 = y0 + torch.clamp(y1 - y0 + 1, min=1)
        return Boxes(torch.stack([x0, y0, x1, y1], 1).long(), "cells", (h, w))

    def to_pixels(self, image_hw: Sequence[int], stride: int | None = None) -> "Boxes":
        """Cell boxes -> pixel boxes of an ``(H, W)`` image, clipped to it: cells times ``stride`` (integer
        boxes stay integer), or, without a stride, the cell grid stretched over the image (float64; the
        precision of ``W / w`` pixels that AML's localization has)."""
        if self.frame != "cells":
            raise ValueError(f"to_pixels needs cell boxes, these are in {self.frame}")
        H, W = int(image_hw[0]), int(image_hw[1])
        if stride is not None:
            b = self.xyxy * int(stride)
        else:
            sy, sx = self._scales((H, W), None)
            b = self.xyxy.double() * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
        return Boxes(clip_boxes_to_image(b, (H, W)), "pixels", (H, W))


__all__ = ["Boxes", "FORMATS", "FRAMES", "ROUNDINGS", "convert", "paired_iou"]
