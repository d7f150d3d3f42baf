"""Images of retrieval results: precision-recall curves and a grid of top-ranked results per query."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from .boxes import Boxes  # noqa: E402
from .data.errors import DataError  # noqa: E402
from .data.images import crop_query, load_image  # noqa: E402

log = logging.getLogger(__name__)

RECALL_GRID = np.linspace(0, 1, 101)


def pr_curve(ranks: np.ndarray, gnd: Sequence[dict]) -> np.ndarray | None:
    """Mean interpolated precision at ``RECALL_GRID`` over queries with positives (junk removed).

    ``ranks`` is ``db × nq`` (revisitop's layout); ``gnd`` has ``ok``/``junk`` per query.
    """
    curves = []
    for i, g in enumerate(gnd):
        ok = np.asarray(g["ok"], dtype=np.int64)
        if ok.size == 0:
            continue
        col = ranks[:, i][~np.isin(ranks[:, i], np.asarray(g.get("junk", []), dtype=np.int64))]
        hit = np.isin(col, ok)
        tp = np.cumsum(hit)
        precision = tp / np.arange(1, len(col) + 1)
        recall = tp / ok.size
        interp = np.maximum.accumulate(precision[::-1])[::-1]  # precision envelope
        idx = np.searchsorted(recall, RECALL_GRID, side="left")
        curves.append(np.where(idx < len(col), interp[np.minimum(idx, len(col) - 1)], 0.0))
    return np.mean(curves, axis=0) if curves else None


def save_pr_curves(curves: dict[str, np.ndarray | None], maps: dict[str, float], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for name, c in curves.items():
        if c is not None:
            ax.plot(RECALL_GRID, c, label=f"{name} (mAP {maps[name]:.1f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def picture_image(path: Path) -> Image.Image:
    """An image for a picture: a file that cannot be read (e.g. one ``skip_bad_images`` skipped) is drawn as a grey
    placeholder with a cross, logged, instead of failing the picture."""
    try:
        return load_image(path)
    except DataError as err:
        log.warning("picture: %s is unreadable, drawn as a placeholder (%s)", path, err.what)
        img = Image.new("RGB", (64, 48), (160, 160, 160))
        ImageDraw.Draw(img).line([(0, 0), (63, 47)], fill=(200, 0, 0), width=3)
        ImageDraw.Draw(img).line([(0, 47), (63, 0)], fill=(200, 0, 0), width=3)
        return img


def _thumb(path: Path, bbx=None, size: int = 160) -> np.ndarray:
    img = picture_image(path)
    try:
        img = crop_query(img, bbx, None, source=path) if bbx is not None else img.copy()
    except DataError:  # a placeholder is smaller than the box
        img = img.copy()
    img.thumbnail((size, size), Image.LANCZOS)
    return np.asarray(img)


def show_thumbnail(ax, path: Path, size: int) -> tuple[float, float]:
    """Draw an image shrunk to ``size`` on its long side; returns the ``(x, y)`` scale from original pixels."""
    img = picture_image(path)
    w0, h0 = img.size
    img.thumbnail((size, size), Image.LANCZOS)
    ax.imshow(np.asarray(img))
    return img.size[0] / w0, img.size[1] / h0


def draw_boxes(ax, boxes, color: str, scores=None, scale: tuple[float, float] = (1.0, 1.0), dashed: bool = False,
               linewidth: float = 2.0) -> None:
    """Rectangles for ``N×4`` ``xyxy`` boxes (any :mod:`lit_retrieval.boxes` source: NumPy, torch or lists),
    scaled by ``(sx, sy)`` into the drawn image, labelled with their ``scores`` if given."""
    b = Boxes.of(np.asarray(_numpy(boxes), np.float64).reshape(-1, 4)).numpy() * np.array(scale * 2)
    s = None if scores is None else np.asarray(_numpy(scores), np.float64).reshape(-1)
    for k, (x1, y1, x2, y2) in enumerate(b.tolist()):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=linewidth,
                               linestyle="--" if dashed else "-"))
        if s is not None:
            ax.text(x1, y1, f"{s[k]:.2f}", color="black", fontsize=7, va="bottom",
                    bbox={"facecolor": color, "edgecolor": "none", "pad": 1, "alpha": 0.8})


def _numpy(x):
    if x is None:
        return np.zeros((0,))
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def show_query(ax, path: Path, bbx, size: int, index: int) -> None:
    """Draw a query image shrunk to ``size`` with its box (if any) in blue, titled ``query <index>``."""
    scale = show_thumbnail(ax, path, size)
    if bbx is not None:
        draw_boxes(ax, [bbx], "blue", scale=scale)
    ax.set_title(f"query {index}", fontsize=8)


def frame_result(ax, index: int, ok: set, junk: set) -> None:
    """Frame a result image green (positive), yellow (junk) or red (negative)."""
    color = "limegreen" if index in ok else ("gold" if index in junk else "red")
    for s in ax.spines.values():
        s.set_edgecolor(color)
        s.set_linewidth(4)


def clear_ticks(axes) -> None:
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def finish_figure(fig, path: Path, title: str) -> None:
    """Title, lay out, write and close a figure."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_topk_grid(ranks: np.ndarray, gnd: Sequence[dict], db_paths: Sequence[Path], query_paths: Sequence[Path],
                   query_bbx: Sequence, path: Path, queries: Sequence[int], k: int = 10) -> None:
    """Query (cropped to its box) then its top-``k`` results; green = positive, red = negative, yellow = junk."""
    rows = len(queries)
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.6 * (k + 1), 1.7 * rows), dpi=90, squeeze=False)
    for r, q in enumerate(queries):
        ok = set(np.asarray(gnd[q]["ok"]).tolist())
        junk = set(np.asarray(gnd[q].get("junk", [])).tolist())
        axes[r, 0].imshow(_thumb(query_paths[q], query_bbx[q]))
        axes[r, 0].set_title(f"query {q}", fontsize=8)
        for c in range(k):
            ax = axes[r, c + 1]
            if c < ranks.shape[0]:
                i = int(ranks[c, q])
                ax.imshow(_thumb(db_paths[i]))
                ax.set_title(f"#{c + 1} ({i})", fontsize=7, color="black")
                frame_result(ax, i, ok, junk)
        clear_ticks(axes[r])
    finish_figure(fig, path, "top results (green: positive, red: negative, yellow: junk)")
