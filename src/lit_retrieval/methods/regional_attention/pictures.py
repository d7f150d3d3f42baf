"""Pictures of regional attention (Kim & Yoon, "Regional attention based deep feature for image retrieval").

Their Figs. 1 and 3 draw the top-k most attended R-MAC regions as red boxes on the images; this module does
the same, plus a histogram of attention weights per R-MAC scale. Same style as :mod:`lit_retrieval.viz`
(matplotlib's Agg backend, set there); every PNG is written atomically.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.patches import Rectangle
from torchvision.ops import box_area, box_iou

from ...atomic import atomic_write
from ...viz import plt  # importing viz selects the Agg backend

MAX_COLS = 4


def top_regions(weights: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest weights, by decreasing weight (ties: lower index first).

    ``k`` larger than the number of regions gives all of them; ``k <= 0`` gives none. NaN weights rank last.
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    k = max(0, min(int(k), w.size))
    w = np.where(np.isnan(w), -np.inf, w)
    return np.argsort(-w, kind="stable")[:k].astype(np.int64)


def on_objects(regions: np.ndarray, objects: np.ndarray, min_overlap: float = 0.5) -> np.ndarray:
    """Whether each region ``R×4`` lies on one of the ``objects`` ``M×4`` (both ``[x1, y1, x2, y2]`` pixels):
    their intersection covers at least ``min_overlap`` of the smaller of the two boxes (the region mostly on
    the object, or the object mostly inside the region). Returns an ``R`` bool array (all false without objects)."""
    r = torch.as_tensor(np.asarray(regions, dtype=np.float64).reshape(-1, 4))
    o = torch.as_tensor(np.asarray(objects, dtype=np.float64).reshape(-1, 4))
    if len(r) == 0 or len(o) == 0:
        return np.zeros(len(r), dtype=bool)
    iou = box_iou(r, o)
    a, b = box_area(r)[:, None], box_area(o)[None, :]
    inter = iou * (a + b) / (1 + iou)  # from IoU = I / (a + b - I)
    return ((inter / torch.minimum(a, b).clamp(min=1e-12)) >= min_overlap).any(dim=1).numpy()


def attention_on_objects(boxes: Sequence[np.ndarray], weights: Sequence[np.ndarray], objects: Sequence[np.ndarray],
                         k: int = 5, min_overlap: float = 0.5) -> dict[str, float | int]:
    """How often the top-``k`` attended regions lie on an object (:func:`on_objects`), against chance.

    Per image: the fraction of its top-``k`` regions on an object, and the fraction of all its regions on one
    (what the top ``k`` of ``Φ ≡ 1``, i.e. of a random order, gives in expectation); both averaged over the images
    that have objects. Returns ``{"top_k", "chance", "k", "images", "min_overlap"}``."""
    top, chance = [], []
    for b, w, o in zip(boxes, weights, objects):
        if len(o) == 0:
            continue
        hit = on_objects(b, o, min_overlap)
        t = top_regions(w, k)
        top.append(float(hit[t].mean()) if len(t) else 0.0)
        chance.append(float(hit.mean()) if len(hit) else 0.0)
    n = len(top)
    return {"top_k": float(np.mean(top)) if n else float("nan"), "chance": float(np.mean(chance)) if n else
            float("nan"), "k": int(k), "images": n, "min_overlap": float(min_overlap)}


def _save_png(fig, path: str | Path) -> Path:
    """Render ``fig`` to PNG in memory, write it atomically (creating the parent folder), close the figure."""
    path = Path(path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def save_attention_regions(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], weights: Sequence[np.ndarray],
                           path: str | Path, k: int = 5, titles: Sequence[str] | None = None,
                           objects: Sequence[np.ndarray] | None = None, caption: str = "") -> Path:
    """A grid (at most 4 columns) of images, each with its top-``k`` regions by attention weight in red.

    ``images[i]`` is ``H×W×3`` uint8, ``boxes[i]`` is ``R×4`` ``[x1, y1, x2, y2]`` in that image's pixels and
    ``weights[i]`` its ``R`` non-negative weights. Rank 1 is drawn thickest and most opaque; each box carries
    a small "rank: weight" label. ``objects[i]``: boxes of the objects known to be in image ``i`` (same
    pixels), drawn dashed in green; ``caption``: a line under the grid. Returns ``path``.
    """
    n = len(images)
    if not (len(boxes) == len(weights) == n):
        raise ValueError(f"images, boxes and weights differ in length: {n}, {len(boxes)}, {len(weights)}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images")
    cols = max(1, min(MAX_COLS, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.axis("on")
        img = np.asarray(images[i])
        b = np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4)
        w = np.asarray(weights[i], dtype=np.float64).ravel()
        if len(b) != len(w):
            raise ValueError(f"image {i}: {len(b)} boxes but {len(w)} weights")
        ax.imshow(img)
        for x1, y1, x2, y2 in np.asarray(objects[i] if objects is not None else [], dtype=np.float64).reshape(-1, 4):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.2,
                                   linestyle="--"))
        top = top_regions(w, k)
        kk = max(len(top), 1)
        # Draw the lowest rank first so that rank 1 ends up on top.
        for rank in range(len(top), 0, -1):
            j = top[rank - 1]
            x1, y1, x2, y2 = b[j]
            frac = 1.0 - (rank - 1) / kk  # 1 for rank 1, down to 1/k
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red",
                                   linewidth=0.8 + 2.4 * frac, alpha=0.35 + 0.65 * frac))
            ax.text(x1 + 2, y1 + 2, f"{rank}: {w[j]:.2f}", color="white", fontsize=6, va="top", ha="left",
                    alpha=0.5 + 0.5 * frac, bbox={"facecolor": "red", "edgecolor": "none", "pad": 1.0,
                                                   "alpha": 0.35 + 0.45 * frac})
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(img.shape[0] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        title = titles[i] if titles is not None else f"image {i}"
        ax.set_title(f"{title} (top {len(top)})", fontsize=8)
    if caption:
        fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if caption else 0, 1, 1))
    return _save_png(fig, path)


def save_attention_histogram(weights: np.ndarray, scale_of_region: np.ndarray, path: str | Path,
                             title: str = "") -> Path:
    """One histogram of attention weights per R-MAC scale (levels ``1..S``), on a shared x range.

    ``weights`` and ``scale_of_region`` are flat arrays of the same length (weights pooled over many images,
    and the scale level of each). Each subplot's title gives the count, mean and std. Returns ``path``.
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    s = np.asarray(scale_of_region).ravel().astype(np.int64)
    if w.shape != s.shape:
        raise ValueError(f"{w.size} weights but {s.size} scale levels")
    finite = np.isfinite(w)
    scales = np.unique(s[finite]) if finite.any() else np.array([1])
    lo, hi = (float(w[finite].min()), float(w[finite].max())) if finite.any() else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 31)
    fig, axes = plt.subplots(len(scales), 1, figsize=(5, 1.8 * len(scales) + 0.6), dpi=100, squeeze=False,
                             sharex=True)
    for ax, level in zip(axes[:, 0], scales):
        v = w[finite & (s == level)]
        ax.hist(v, bins=bins, color="tab:red", alpha=0.8)
        stats = f"mean {v.mean():.3f}, std {v.std():.3f}" if v.size else "empty"
        ax.set_title(f"scale {level} (n={v.size}): {stats}", fontsize=8)
        ax.set_ylabel("count", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("attention weight")
    axes[-1, 0].set_xlim(lo, hi)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save_png(fig, path)
