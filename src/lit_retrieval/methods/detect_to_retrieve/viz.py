"""Selected regions of database images (the paper's Figs. 10-11): the detected (or R-MAC) boxes with their scores;
the whole image, always a region too, is not boxed."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ...data import RetrievalDataset  # noqa: E402
from ...viz import clear_ticks, draw_boxes, finish_figure, show_thumbnail  # noqa: E402


def save_regions(dataset: RetrievalDataset, boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray], path: Path,
                 image_size: int, title: str, n: int = 12, cols: int = 4, thumb: int = 240) -> None:
    """``n`` database images, evenly spread over the database, with their regions. ``boxes`` are in the pixels of
    the image shrunk to ``image_size`` on its long side (as extracted)."""
    pick = np.linspace(0, dataset.n_db - 1, min(n, dataset.n_db)).astype(int)
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), dpi=90, squeeze=False)
    for ax, i in zip(axes.ravel(), pick):
        sx, _ = show_thumbnail(ax, dataset.db_paths[i], thumb)
        with Image.open(dataset.db_paths[i]) as im:
            w, h = im.size
        f = sx * max(w, h) / min(image_size, max(w, h))  # extracted pixels -> thumbnail pixels
        draw_boxes(ax, boxes[i], "orange", scores[i], scale=(f, f), linewidth=1.5)
        ax.set_title(f"db {i}: {len(np.asarray(scores[i]).reshape(-1)) + 1} regions", fontsize=7)
    for ax in axes.ravel()[len(pick):]:
        ax.axis("off")
    clear_ticks(axes.ravel())
    finish_figure(fig, path, f"{title}: regions besides the whole image (score in the corner)")
