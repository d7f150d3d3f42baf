"""Re-ranking a short-list by AML localization, and query expansion on the localized windows (Tolias et al.,
Sec. 6), as the reference ``test.m`` does it.

For one query: the top-``N`` database images of the initial ranking are localized with AML (query MAC vector
against each image's stored activations); each localized window gets the descriptor the filtering used —
MAC, or R-MAC built on the window only (its own R-MAC grid, from the same integral images: the paper's
"regional feature vectors efficiently computed with integral images") — post-processed like the database
descriptors (L2, the evaluation's whitening, L2); the short-list is re-ordered by its similarity to the query
descriptor. QE: the mean of the query descriptor and the top ``k`` re-ranked window descriptors re-scores the
short-list's window descriptors once more (``test.m``: the windows' descriptors, post-processed exactly as the
re-ranking's, plus the query's own filtering descriptor, all with weight 1); with ``alpha > 0`` each window is
weighted by its similarity to the query to the power α instead (α-QE on windows, Radenović et al.), so that
a short-list whose top entries are mostly wrong pulls the query less.

Reference options: ``WindowDescriptor.power`` is ``test.m``'s power-law on the window MAC before the L2 and the
whitening (exponent 2 in its MAC branch); ``rerank_shortlist(aml=AMLSettings(root="aml_c"))`` localizes with
``aml.c``'s even-integer root (:func:`~.integral.aml_c_root`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ...pooling import l2n
from ...regions import rmac_grid
from ...retrieval.qe import expand_queries
from .aml import AMLSettings, localize
from .integral import DEFAULT_ALPHA, Workspace, check_root, generalized_max, power_integral, window_sums


@dataclass(frozen=True)
class WindowDescriptor:
    """What a localized window is described with: ``mac``, or ``rmac`` (``L`` levels; ``variant`` ``cirtorch``:
    the whole window + its grid, sum of L2-normalised regions; ``tolias``: grid only, each region L2 ->
    ``region_whitening`` -> L2, summed). ``power``: raise each max-pooled vector (the window's MAC, or each
    R-MAC region's) to this power before its L2, as ``test.m`` does (``vecpostproc(y, 2)``) on the window MAC
    before the whitening; ``None``: no power-law (the paper)."""

    kind: str = "mac"
    L: int = 3
    variant: str = "cirtorch"
    region_whitening: Callable[[Tensor], Tensor] | None = None
    power: float | None = None

    def pooled(self, sums: Tensor, alpha: float) -> Tensor:
        """L2-normalised (power-law'd) approximate max-pooled vectors from window sums of ``x^α``."""
        f = generalized_max(sums, alpha)
        return l2n(f if self.power is None else f.pow(float(self.power)))


def _window_regions(h: int, w: int, L: int, whole: bool) -> np.ndarray:
    """R-MAC regions of an ``h×w`` window as ``[y0, x0, y1, x1]`` relative to the window."""
    g = rmac_grid(h, w, L)
    r = np.stack([g[:, 0], g[:, 1], g[:, 0] + g[:, 2], g[:, 1] + g[:, 3]], 1)
    return np.concatenate([[[0, 0, h, w]], r]) if whole else r


def window_descriptors(sat: Tensor, boxes: Tensor, spec: WindowDescriptor, alpha: float = DEFAULT_ALPHA,
                       max_elements: int = 1 << 19) -> Tensor:
    """Descriptors (``B×C``, before whitening, L2-normalised) of one window per map, by integral max-pooling."""
    if spec.power is not None and not float(spec.power) > 0:
        raise ValueError(f"window power-law exponent must be > 0 (or None), got {spec.power}")
    if spec.kind == "mac":
        return spec.pooled(window_sums(sat, boxes.unsqueeze(1)), alpha)[:, 0]
    if spec.kind != "rmac" or spec.variant not in ("cirtorch", "tolias"):
        raise ValueError(f"window descriptor {spec.kind}/{spec.variant}: AML re-scores windows with mac or rmac "
                         "(variant cirtorch or tolias)")
    sizes, inverse = np.unique((boxes[:, 2:] - boxes[:, :2]).cpu().numpy(), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    grids = [_window_regions(int(h), int(w), spec.L, whole=spec.variant == "cirtorch") for h, w in sizes]
    R = max(len(g) for g in grids)
    regions = np.zeros((len(boxes), R, 4), np.int64)
    valid = np.zeros((len(boxes), R), bool)
    for u, g in enumerate(grids):  # one assignment per distinct window size, not per image
        rows = np.flatnonzero(inverse == u)
        regions[rows, :len(g)] = g
        valid[rows, :len(g)] = True
    if spec.variant == "tolias" and spec.region_whitening is None:
        raise ValueError("rmac variant 'tolias' re-scoring needs the regional whitening of the filtering")
    offset = torch.cat([boxes[:, :2], boxes[:, :2]], 1).unsqueeze(1)
    regions_t = torch.from_numpy(regions).to(boxes.device) + offset
    valid_t = torch.from_numpy(valid).to(boxes.device).unsqueeze(2)
    step = max(1, max_elements // (R * sat.shape[-1]))  # small temporaries (see aml.window_scores)
    out = []
    for b0 in range(0, len(boxes), step):
        images = torch.arange(b0, min(b0 + step, len(boxes)), device=boxes.device)
        v = spec.pooled(window_sums(sat, regions_t[images], images), alpha)
        if spec.variant == "tolias":
            v = l2n(spec.region_whitening(v))
        out.append(l2n((v * valid_t[images]).sum(1)))
    return torch.cat(out)


@dataclass
class Reranked:
    """One query's short-list after AML: ``order`` (positions into the short-list, best first), ``scores``
    (re-ranking similarity per short-list entry), ``boxes`` (``N×4`` cells per entry, ``-1`` where the image has
    no stored map), ``feature_hw`` (``N×2`` map size the boxes refer to), ``aml_scores`` (localization cosine),
    ``descriptors`` (``N×D`` window descriptors)."""

    order: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    feature_hw: np.ndarray
    aml_scores: np.ndarray
    descriptors: np.ndarray


@dataclass
class AMLQuery:
    """One query as re-ranking sees it: its MAC vector (for the localization), its descriptor (the filtering's,
    whitened, for the re-scoring) and its aspect ratio (height / width as fed; ``None``: any)."""

    mac: Tensor
    descriptor: np.ndarray
    ratio: float | None = None


def rerank_shortlist(shapes: Sequence[tuple[int, int, int] | None], load: Callable[[int], np.ndarray],
                     query: AMLQuery, spec: WindowDescriptor, aml: AMLSettings | None = None,
                     whiten: Callable[[np.ndarray], np.ndarray] | None = None,
                     workspace: Workspace | None = None) -> Reranked:
    """AML re-ranking of one query's short-list of ``len(shapes)`` images: ``shapes[i]`` is the ``(C, H, W)`` of
    entry ``i``'s activation map (``None``: no map; it keeps score −1 and sinks to the end of the short-list),
    ``load(i)`` returns that map (levels or raw values, any numeric dtype). Maps are grouped by size and loaded
    in batches of at most ``workspace.max_bytes`` of integral images, so a short-list never sits decoded in memory
    at once; ``workspace.timer`` accumulates seconds per stage (``load``, ``integral``, ``localize``,
    ``describe``). Pass one ``workspace`` for all the queries of a run (its buffers are reused). ``aml.root``: the
    localization's α-th root, ``exact`` or ``aml_c`` (the reference's, with exact float64 powers as its table of
    doubles)."""
    aml = aml or AMLSettings()
    alpha, root = aml.alpha, aml.root
    check_root(root, alpha)
    q_mac, q_desc = query.mac, query.descriptor
    power_dtype = torch.float64 if root == "aml_c" else torch.float32
    n, D = len(shapes), len(q_desc)
    scores = np.full(n, -1.0, np.float32)
    aml_scores = np.full(n, -1.0, np.float32)
    boxes = np.full((n, 4), -1, np.int64)
    feature_hw = np.zeros((n, 2), np.int64)
    desc = np.zeros((n, D), np.float32)
    workspace = workspace or Workspace()
    timer, max_bytes = workspace.timer, workspace.max_bytes
    clock = time.perf_counter

    def tick(stage: str, t0: float) -> float:
        t = clock()
        timer[stage] = timer.get(stage, 0.0) + t - t0
        return t

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        if shape is not None:
            groups.setdefault(tuple(shape), []).append(i)
    for (C, H, W), members in groups.items():
        batch = max(1, max_bytes // ((H + 1) * (W + 1) * C * 8))
        for b0 in range(0, len(members), batch):
            idx = members[b0:b0 + batch]
            t = clock()
            x = workspace.get("maps", (len(idx), C, H, W), torch.float32)
            for j, i in enumerate(idx):  # decoded straight into the reused batch buffer
                x[j].copy_(torch.from_numpy(np.asarray(load(i))))
            t = tick("load", t)
            sat = power_integral(x, alpha, workspace, power_dtype)
            t = tick("integral", t)
            loc = localize(sat, q_mac, query.ratio, aml)
            t = tick("localize", t)
            v = window_descriptors(sat, loc.boxes, spec, alpha).numpy()
            desc[idx] = whiten(v) if whiten is not None else v
            tick("describe", t)
            boxes[idx], aml_scores[idx], feature_hw[idx] = loc.boxes.numpy(), loc.scores.numpy(), (H, W)
    has = boxes[:, 0] >= 0
    scores[has] = desc[has] @ q_desc
    order = np.argsort(-scores, kind="stable")
    return Reranked(order, scores, boxes, feature_hw, aml_scores, desc)


def window_query_expansion(q_desc: np.ndarray, r: Reranked, k: int = 5,
                           alpha: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """AML-QE: the query expanded with the top-``k`` re-ranked window descriptors re-scores the short-list's
    window descriptors. ``alpha = 0``: ``test.m``'s mean of the query and the windows (uniform weights);
    ``alpha > 0``: window ``i`` weighs ``max(s_i, 0)^α``, ``s_i`` its re-ranking similarity to the query (the
    query itself weighs 1 = 1^α). Entries without a map are left out of the expansion and score ``−inf``.
    Returns ``(order, scores)`` over the short-list; the expanded query is L2-normalised (the order is that of
    the plain mean)."""
    top = r.order[:k]
    top = top[r.boxes[top, 0] >= 0]
    expanded = expand_queries(np.asarray(q_desc, np.float32)[None], r.descriptors, top[None],
                              np.asarray(r.scores, np.float32)[top][None], k=len(top), alpha=float(alpha))[0]
    scores = np.where(r.boxes[:, 0] >= 0, r.descriptors @ expanded, -np.inf).astype(np.float32)
    return np.argsort(-scores, kind="stable"), scores
