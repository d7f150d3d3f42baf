"""Figure 2 of Jeong et al.: each query (box in blue) and its top results with their candidate regions outlined
and the region that matched the query best shaded yellow; results framed green (positive), red (negative) or
yellow (junk)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ...data import RetrievalDataset  # noqa: E402
from ...viz import clear_ticks, finish_figure, frame_result, show_query, show_thumbnail  # noqa: E402

_OUTLINES = ("tab:cyan", "tab:orange", "tab:pink", "tab:purple", "tab:olive", "tab:brown", "tab:gray", "white")


def draw_regions(ax, masks: np.ndarray, best: int | None = None) -> None:
    """Outline every region (``M×h×w`` masks on the feature grid, stretched over the image drawn in ``ax``) and
    shade region ``best``."""
    h_img, w_img = ax.images[0].get_array().shape[:2]
    extent = (0, w_img, h_img, 0)
    for m, mask in enumerate(masks[:-1]):  # the last region is the whole image: no outline
        ax.contour(np.kron(mask, np.ones((8, 8))).astype(float), levels=[0.5], extent=extent, origin="upper",
                   colors=_OUTLINES[m % len(_OUTLINES)], linewidths=0.8)
    if best is not None:
        shade = np.zeros(masks.shape[1:] + (4,))
        shade[masks[best]] = (1.0, 0.9, 0.0, 0.45)
        ax.imshow(shade, extent=extent, interpolation="nearest")
    ax.set_xlim(0, w_img)
    ax.set_ylim(h_img, 0)


def save_region_matches(salient: dict[str, Any], dataset: RetrievalDataset, gnd: Sequence[dict],
                        queries: Sequence[int], path: Path, k: int = 6, thumb: int = 200) -> None:
    """One row per query of ``queries``: the query, then its top ``k`` with regions and the best match."""
    d, ranks, scores, best = salient["described"], salient["ranks"], salient["scores"], salient["best"]
    variant = salient["info"]["variant"]
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(2.1 * (k + 1), 2.2 * len(queries)), dpi=90,
                             squeeze=False)
    for r, qi in enumerate(queries):
        ax = axes[r, 0]
        cropped = salient["info"]["settings"]["query"] == "cropped"
        show_query(ax, dataset.query_paths[qi], dataset.query_bbx[qi] if cropped else None, thumb, qi)
        qp = d.q_props[qi]
        if not cropped and qp is not None:
            draw_regions(ax, qp.masks)
        ok = set(np.asarray(gnd[qi]["ok"]).tolist())
        junk = set(np.asarray(gnd[qi].get("junk", [])).tolist())
        for c in range(min(k, ranks.shape[1])):
            ax = axes[r, c + 1]
            db = int(ranks[qi, c])
            show_thumbnail(ax, dataset.db_paths[db], thumb)
            p = d.db_props[db]
            if p is not None:
                draw_regions(ax, p.masks, int(best[qi, db]))
            ax.set_title(f"#{c + 1} ({scores[qi, db]:.2f})", fontsize=7)
            frame_result(ax, db, ok, junk)
        clear_ticks(axes[r])
    finish_figure(fig, path, f"salient regions {variant}: candidate regions outlined, best match to the query "
                             "shaded yellow")
