"""Pictures of the landmark box detector: detections on images (as Figs. 8-9 of Teichmann et al.: boxes
scoring at least 0.2 with their scores, ground truth dashed) and the AP@0.5 learning curve.

Boxes are ``[x1, y1, x2, y2]`` pixels of the drawn image (``x2``/``y2`` exclusive). PNGs are written
atomically (``lit_retrieval.atomic``): a reader never sees half a file.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ....atomic import atomic_write  # noqa: E402
from ....viz import clear_ticks, draw_boxes  # noqa: E402

DET_COLOR, GT_COLOR = "yellow", "lime"
MIN_SCORE = 0.2  # the paper's figures show detections scoring at least 0.2


def as_uint8_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(H, W, 3)`` uint8 of a uint8 ``(H, W, 3)`` array or a float ``3 x H x W`` (or ``H x W x 3``) in [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"an image must be (H, W, 3) or 3 x H x W, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def _array(x: Any) -> np.ndarray:
    if x is None:
        return np.zeros((0,))
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def save_figure(fig: Any, path: str | Path, title: str | None = None) -> Path:
    """Title, lay out, write atomically as PNG and close a figure; returns the path."""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return Path(path)


def save_detections(images: Sequence[np.ndarray | torch.Tensor], dets: Sequence[tuple[Any, Any] | None] | None,
                    gts: Sequence[Any] | None, path: str | Path, min_score: float = MIN_SCORE,
                    titles: Sequence[str] | None = None, cols: int = 4) -> Path:
    """A grid of images with their detections (solid, score-labelled, only those scoring ``>= min_score``)
    and ground-truth boxes (dashed, another colour).

    Args:
        images: uint8 ``(H, W, 3)`` arrays or float ``3 x H x W`` tensors in [0, 1].
        dets: per image ``(boxes (m, 4), scores (m,))`` or ``None``; ``None`` altogether: no detections.
        gts: per image ``(n, 4)`` boxes or ``None``; ``None`` altogether: no ground truth.
        path: the PNG written.
        min_score: lowest score drawn.
        titles: per-image titles (default: the index and the number of boxes drawn).
        cols: images per row.
    """
    n = len(images)
    if n == 0:
        raise ValueError("save_detections needs at least one image")
    for name, per_image in (("dets", dets), ("gts", gts), ("titles", titles)):
        if per_image is not None and len(per_image) != n:
            raise ValueError(f"{n} images but {len(per_image)} {name}")
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), dpi=90, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(as_uint8_image(images[i]))
        shown = 0
        if gts is not None and gts[i] is not None:
            draw_boxes(ax, gts[i], GT_COLOR, dashed=True)
        if dets is not None and dets[i] is not None:
            boxes, scores = _array(dets[i][0]).reshape(-1, 4), _array(dets[i][1]).reshape(-1)
            keep = scores >= min_score
            shown = int(keep.sum())
            draw_boxes(ax, boxes[keep], DET_COLOR, scores[keep])
        ax.set_title(titles[i] if titles is not None else f"{i}: {shown} detection(s)", fontsize=8)
        clear_ticks([ax])
    return save_figure(fig, path, f"detections (score >= {min_score:g}, solid) and ground truth (dashed)")


def save_learning_curve(history: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "AP50",
                        others: Sequence[str] = ("AP", "AR100"), title: str = "landmark detector") -> Path:
    """``metric`` (AP@0.5 by default) against the training step, the epochs on the top axis; ``others`` keys
    present in the history are drawn dashed.

    Args:
        history: evaluations ``{"step", "epoch" (optional), "AP50", ...}``, in any order.
        path: the PNG written.
    """
    points = sorted((h for h in history if metric in h and h[metric] is not None), key=lambda h: float(h["step"]))
    if not points:
        raise ValueError(f"the history has no {metric!r} value to plot")
    steps = np.array([float(h["step"]) for h in points])
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    ax.plot(steps, [float(h[metric]) for h in points], marker="o", label=metric.replace("AP50", "AP@0.5"))
    for key in others:
        pts = [(float(h["step"]), float(h[key])) for h in points if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), linestyle="--", marker=".", alpha=0.7, label=key)
    top = max(1.0, *(float(v) for h in points for k, v in h.items() if k in (metric, *others) and v is not None))
    ax.set(xlabel="training step", ylabel="average precision", ylim=(0, 1.02 * top))
    if len(steps) == 1:
        ax.set_xlim(steps[0] - 1, steps[0] + 1)
    if all("epoch" in h for h in points):
        epochs = ax.twiny()
        epochs.set_xlim(ax.get_xlim())
        ticks = np.unique(np.linspace(0, len(points) - 1, min(len(points), 8)).round().astype(int))
        epochs.set_xticks(steps[ticks])
        epochs.set_xticklabels([str(points[t]["epoch"]) for t in ticks], fontsize=7)
        epochs.set_xlabel("epoch", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path, title)


__all__ = ["as_uint8_image", "save_detections", "save_figure", "save_learning_curve"]
