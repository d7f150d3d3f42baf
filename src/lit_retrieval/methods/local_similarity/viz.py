"""Predicted boxes of local similarity (the paper's Fig. 6 style): each query (its box in blue) and its top results
with the box the localization subnet predicts for the query in magenta and ``S_local`` in the title; results
framed green (positive), red (negative) or yellow (junk)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ...data import RetrievalDataset  # noqa: E402
from ...viz import clear_ticks, draw_boxes, finish_figure, frame_result, show_query, show_thumbnail  # noqa: E402


def save_local_boxes(result: dict[str, Any], dataset: RetrievalDataset, gnd: Sequence[dict], queries: Sequence[int],
                     path: Path, mode: str = "local_global", k: int = 6, thumb: int = 200) -> None:
    """One row per query of ``queries``: the query, then its top ``k`` of ranking ``mode`` with predicted boxes."""
    ranks, short, s_local, boxes = result["rankings"][mode], result["short"], result["s_local"], result["boxes"]
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(2.1 * (k + 1), 2.2 * len(queries)), dpi=90,
                             squeeze=False)
    for r, qi in enumerate(queries):
        show_query(axes[r, 0], dataset.query_paths[qi], dataset.query_bbx[qi], thumb, qi)
        ok = set(np.asarray(gnd[qi]["ok"]).tolist())
        junk = set(np.asarray(gnd[qi].get("junk", [])).tolist())
        pos = {int(d): j for j, d in enumerate(short[qi])}
        for c in range(min(k, ranks.shape[1])):
            ax = axes[r, c + 1]
            db = int(ranks[qi, c])
            sx, sy = show_thumbnail(ax, dataset.db_paths[db], thumb)
            j = pos.get(db)
            if j is None:
                ax.set_title(f"#{c + 1} (not shortlisted)", fontsize=7)
            else:
                with Image.open(dataset.db_paths[db]) as im:
                    w, h = im.size
                draw_boxes(ax, boxes[qi, j:j + 1], "magenta", scale=(w * sx, h * sy))  # boxes: image fractions
                ax.set_title(f"#{c + 1} S_local {s_local[qi, j]:.2f}", fontsize=7)
            frame_result(ax, db, ok, junk)
        clear_ticks(axes[r])
    finish_figure(fig, path, f"local similarity ({mode}): query box in blue, predicted box of the query in magenta")
