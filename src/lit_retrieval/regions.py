"""Region grids for regional pooling (R-MAC and the Kim & Yoon pixel grid).

Boxes on feature maps are ``[y0, x0, h, w]`` integer rows (cirtorch's order); pixel-space boxes of the
Kim & Yoon grid are ``[x, y, w, h]`` (their order). Both grids follow Tolias et al.'s construction: square
regions of side ``2·min(H, W)/(l+1)`` at level ``l``, with a number of regions along the long side chosen
so that neighbours overlap by about 40%.
"""
from __future__ import annotations

import functools

import numpy as np

from .boxes import Boxes

_OVERLAP = 0.4
_STEPS = np.array([2, 3, 4, 5, 6, 7], dtype=np.float32)


def _extra_regions(H: int, W: int) -> tuple[int, int]:
    """Tolias' "region overplus" (Wd, Hd): extra regions along the long side, float32 as in the references."""
    w = min(H, W)
    b = np.float32(max(H, W) - w) / (_STEPS - np.float32(1))
    w2 = np.float32(w * w)
    idx = int(np.argmin(np.abs((w2 - np.float32(w) * b) / w2 - np.float32(_OVERLAP)))) + 1
    if H < W:
        return idx, 0
    if H > W:
        return 0, idx
    return 0, 0


def rmac_grid(H: int, W: int, L: int = 3) -> np.ndarray:
    """cirtorch's R-MAC grid on an ``H×W`` feature map, levels ``1..L``, without the whole-map region.

    Returns an ``R×4`` int64 array of ``[y0, x0, h, w]`` in cirtorch's iteration order (level, then row,
    then column). Levels whose region side rounds to zero are dropped, as cirtorch does.
    """
    if H < 1 or W < 1 or L < 1:
        raise ValueError(f"rmac_grid needs H, W, L >= 1, got H={H}, W={W}, L={L}")
    Wd, Hd = _extra_regions(H, W)
    w = min(H, W)
    out = []
    for level in range(1, L + 1):
        wl = int(np.floor(2 * w / (level + 1)))
        if wl == 0:
            continue
        wl2 = np.float32(np.floor(wl / 2 - 1))
        cen = []
        for size, extra in ((W, Wd), (H, Hd)):
            n = level + extra
            step = 0.0 if n == 1 else (size - wl) / (n - 1)
            # cirtorch computes the centres in float32 (torch.Tensor arithmetic); keep that exactly.
            c = np.floor(wl2 + np.arange(n, dtype=np.float32) * np.float32(step)) - wl2
            cen.append(c.astype(np.int64))
        cw, ch = cen
        yy, xx = np.meshgrid(ch, cw, indexing="ij")
        n_reg = yy.size
        out.append(np.stack([yy.ravel(), xx.ravel(), np.full(n_reg, wl), np.full(n_reg, wl)], axis=1))
    return np.concatenate(out, axis=0).astype(np.int64) if out else np.zeros((0, 4), np.int64)


def kimyoon_grid(H: int, W: int, L: int = 5) -> np.ndarray:
    """Kim & Yoon's pixel-space R-MAC grid (port of Tolias' MATLAB), levels ``1..L``.

    Returns ``R×4`` int64 ``[x, y, w, h]`` in image pixels, rounded half-to-even (Python's ``round``) and
    shifted back inside the image where a region crosses the right or bottom border.
    """
    if H < 1 or W < 1 or L < 1:
        raise ValueError(f"kimyoon_grid needs H, W, L >= 1, got H={H}, W={W}, L={L}")
    Wd, Hd = _extra_regions(H, W)
    w = min(H, W)
    out = []
    for level in range(1, L + 1):
        wl = np.floor(2 * w / (level + 1))
        wl2 = np.floor(wl / 2 - 1)
        bw = (W - wl) / (level + Wd - 1) if level + Wd - 1 > 0 else 0.0
        bh = (H - wl) / (level + Hd - 1) if level + Hd - 1 > 0 else 0.0
        cw = np.floor(wl2 + bw * np.arange(level + Wd)) - wl2
        ch = np.floor(wl2 + bh * np.arange(level + Hd)) - wl2
        yy, xx = np.meshgrid(ch, cw, indexing="ij")
        out.append(np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, wl), np.full(xx.size, wl)], axis=1))
    r = np.rint(np.concatenate(out, axis=0)).astype(np.int64)
    r[:, 0] -= np.maximum(r[:, 0] + r[:, 2] - W, 0)
    r[:, 1] -= np.maximum(r[:, 1] + r[:, 3] - H, 0)
    return r


def kimyoon_feature_grid(
    image_hw: tuple[int, int], feature_hw: tuple[int, int], stride: int, L: int = 5
) -> np.ndarray:
    """Kim & Yoon's grid for an image of ``image_hw`` pixels, on its ``feature_hw`` map at ``stride``.

    Returns ``[y0, x0, h, w]`` feature-map boxes, projected as Kim & Yoon's Caffe RoI pooling does
    (:meth:`~lit_retrieval.boxes.Boxes.to_cells` with ``rounding="roi"``).
    """
    pixels = Boxes.of(kimyoon_grid(*image_hw, L), "xywh", "pixels", image_hw)
    return pixels.to_cells(feature_hw, stride=stride, rounding="roi").numpy("yxhw")


GRIDS = ("rmac", "kimyoon")


@functools.lru_cache(maxsize=256)
def sample_regions(grid: str, image_hw: tuple[int, int], feature_hw: tuple[int, int], stride: int,
                   S: int) -> tuple[np.ndarray, np.ndarray]:
    """The R-MAC region sampler ``C_S`` of Kim & Yoon: feature-map boxes ``[y0, x0, h, w]`` of scales ``1..S``
    and the scale level of each box (``R``-vectors, read-only, cached by size).

    ``grid="rmac"``: cirtorch's grid on the feature map; ``grid="kimyoon"``: their pixel grid projected at
    ``stride`` (the paper-faithful option). Neither includes the whole-map region (as in Kim & Yoon's code).
    """
    if grid == "rmac":
        make = lambda level: rmac_grid(*feature_hw, level)  # noqa: E731
    elif grid == "kimyoon":
        make = lambda level: kimyoon_feature_grid(image_hw, feature_hw, stride, level)  # noqa: E731
    else:
        raise ValueError(f"unknown region grid {grid!r}: choose one of {GRIDS}")
    boxes = make(S)
    counts = np.diff([0] + [len(make(level)) for level in range(1, S + 1)])
    levels = np.repeat(np.arange(1, S + 1), counts)
    boxes.setflags(write=False)
    levels.setflags(write=False)
    return boxes, levels
