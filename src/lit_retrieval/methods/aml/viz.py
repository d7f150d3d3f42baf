"""Figure 5 of Tolias et al.: the query with its box (blue) and its top re-ranked images with the AML-localized
window (magenta), each titled with its initial and final rank and framed green (positive), red (negative) or
yellow (junk)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ...data import RetrievalDataset  # noqa: E402
from ...boxes import Boxes  # noqa: E402
from ...viz import clear_ticks, draw_boxes, finish_figure, frame_result, show_query, show_thumbnail  # noqa: E402


def save_localizations(rerank: dict[str, Any], dataset: RetrievalDataset, gnd: Sequence[dict], queries: Sequence[int],
                       path: Path, k: int = 6, image_size: int | None = None, thumb: int = 200) -> None:
    """One row per query of ``queries``: the query image with its box, then the top ``k`` after AML re-ranking."""
    rows = len(queries)
    fig, axes = plt.subplots(rows, k + 1, figsize=(2.1 * (k + 1), 2.2 * rows), dpi=90, squeeze=False)
    for r, qi in enumerate(queries):
        show_query(axes[r, 0], dataset.query_paths[qi], dataset.query_bbx[qi], thumb, qi)
        rr, short = rerank["reranked"][qi], rerank["shortlists"][qi]
        ok = set(np.asarray(gnd[qi]["ok"]).tolist())
        junk = set(np.asarray(gnd[qi].get("junk", [])).tolist())
        for c in range(k):
            ax = axes[r, c + 1]
            if c >= len(rr.order):
                continue
            pos = int(rr.order[c])
            db = int(short[pos])
            show_thumbnail(ax, dataset.db_paths[db], thumb)
            if rr.boxes[pos, 0] >= 0:  # the window in cells, stretched over the thumbnail
                window = Boxes.of(rr.boxes[pos:pos + 1], "yxyx", "cells", rr.feature_hw[pos])
                draw_boxes(ax, window.to_pixels(ax.images[0].get_array().shape[:2]).numpy(), "magenta")
            ax.set_title(f"#{pos + 1} → #{c + 1}  ({rr.scores[pos]:.2f})", fontsize=7)
            frame_result(ax, db, ok, junk)
        clear_ticks(axes[r])
    finish_figure(fig, path, "AML re-ranking: query box (blue), localized window (magenta); initial → final rank")
