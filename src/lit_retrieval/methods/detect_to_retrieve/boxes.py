"""Region selection for Detect-to-Retrieve (Sec. 5.2 "Region selection techniques", Appendix C).

Boxes are ``R×4`` float32 ``xyxy`` pixel boxes (``x0, y0, x1, y1``, ends exclusive) of the *input image*; none of
the functions here includes the whole image, which is always region 0 and added by
:func:`~.features.region_descriptors` (Sec. 5.2: "For all region selection techniques, we add the original image as
one of the selected regions"). Region counts reported by :func:`regions_per_image` include it, as the paper's do.

- D2R: the boxes of a landmark detector with score ``>=`` a threshold (:func:`select_boxes`; the paper sweeps
  0.7 ... 0.1, about 4 regions per image at 0.1 including the whole image).
- RMACB: the fixed multi-scale R-MAC grid of Tolias et al. (:func:`rmac_boxes`), levels ``1..L`` (the paper sweeps
  ``L`` = 1 ... 3).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ...boxes import convert
from ...regions import rmac_grid


def rmac_boxes(H: int, W: int, levels: int, drop_whole: bool = True) -> np.ndarray:
    """The R-MAC grid (Tolias et al., cirtorch's construction) of levels ``1..levels`` on an ``H×W`` image, as
    ``R×4`` float32 ``xyxy`` pixel boxes, in cirtorch's order (level, row, column).

    :func:`lit_retrieval.regions.rmac_grid` computes the grid on any integer ``H×W`` lattice and returns
    ``[y0, x0, h, w]``; on the pixel lattice those are pixel boxes (all inside the image), converted here to
    ``xyxy``. Level ``l`` has ``(l + W_d)·(l + H_d)`` square boxes of side ``2·min(H, W)/(l+1)``
    (``W_d``/``H_d`` extra boxes along the long side, about 40% overlap): a 4:3 image (e.g. 1024×768, the usual
    ROxford/RParis size) gets 2 boxes at level 1 and 6 at level 2, so ``levels=2`` gives 8 boxes, i.e. the
    paper's "RMAC boxes with 2 levels (9 regions per image)" (Appendix C) once the whole image is added as region 0;
    ``levels=3`` gives 20 (21 regions). For a square image the single level-1 box *is* the whole image; with
    ``drop_whole`` (default) boxes equal to the whole image are dropped, since the whole image is already region 0.
    """
    if levels < 1:
        raise ValueError(f"rmac_boxes needs levels >= 1, got {levels}")
    g = rmac_grid(int(H), int(W), int(levels))  # [y0, x0, h, w]
    b = convert(g, "yxhw", "xyxy").astype(np.float32)
    if drop_whole:
        b = b[~np.all(b == np.array([0, 0, W, H], np.float32), axis=1)]
    return b.reshape(-1, 4)


def select_boxes(boxes: np.ndarray, scores: np.ndarray, threshold: float,
                 max_boxes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Detector boxes (``N×4`` ``xyxy`` pixels) with ``score >= threshold``, by decreasing score (ties: input
    order), at most ``max_boxes`` of them: ``(boxes float32 M×4, scores float32 (M,))``."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    keep = np.flatnonzero(s >= threshold)
    keep = keep[np.argsort(-s[keep], kind="stable")][:max_boxes]
    return b[keep], s[keep]


def regions_per_image(boxes_per_image: Sequence[np.ndarray], include_whole: bool = True) -> dict[str, float]:
    """Statistics of the number of regions per image: ``mean``, ``min``, ``max``, ``total`` (``n_images`` too),
    counting the whole image as one region when ``include_whole`` (the paper's convention: "4.1 regions per image"
    at threshold 0.1, the relative size of a regional-search database, Table 1)."""
    n = np.array([len(np.asarray(b).reshape(-1, 4)) for b in boxes_per_image], dtype=np.int64) + int(include_whole)
    if n.size == 0:
        return dict(mean=0.0, min=0.0, max=0.0, total=0.0, n_images=0.0)
    return dict(mean=float(n.mean()), min=float(n.min()), max=float(n.max()), total=float(n.sum()),
                n_images=float(n.size))


__all__ = ["regions_per_image", "rmac_boxes", "select_boxes"]
