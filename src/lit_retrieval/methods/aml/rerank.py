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
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...pooling import l2n
from ...regions import rmac_grid
from ...retrieval.qe import expand_queries
from .aml import AMLSettings, localize
from .integral import DEFAULT_ALPHA, Workspace, generalized_max, power_integral, window_sums
from .storage import decode


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
        return self.normalized(generalized_max(sums, alpha))

    def normalized(self, f: Tensor) -> Tensor:
        """L2-normalised (power-law'd) max-pooled vectors."""
        return l2n(f if self.power is None else f.pow(float(self.power)))

    def combine(self, v: Tensor, valid: Tensor) -> Tensor:
        """One descriptor per window from its ``B×R×C`` normalised region vectors (``valid`` ``B×R×1``): MAC takes
        its only region; R-MAC sums the valid regions (``tolias``: each whitened and L2-normalised first), L2."""
        if self.kind == "mac":
            return v[:, 0]
        if self.variant == "tolias":
            v = l2n(self.region_whitening(v))
        return l2n((v * valid).sum(1))

    def check(self) -> None:
        """Fail on settings AML cannot re-score windows with."""
        if self.power is not None and not float(self.power) > 0:
            raise ValueError(f"window power-law exponent must be > 0 (or None), got {self.power}")
        if self.kind not in ("mac", "rmac") or (self.kind == "rmac" and self.variant not in ("cirtorch", "tolias")):
            raise ValueError(f"window descriptor {self.kind}/{self.variant}: AML re-scores windows with mac or rmac "
                             "(variant cirtorch or tolias)")
        if self.kind == "rmac" and self.variant == "tolias" and self.region_whitening is None:
            raise ValueError("rmac variant 'tolias' re-scoring needs the regional whitening of the filtering")


def _window_regions(h: int, w: int, L: int, whole: bool) -> np.ndarray:
    """R-MAC regions of an ``h×w`` window as ``[y0, x0, y1, x1]`` relative to the window."""
    g = rmac_grid(h, w, L)
    r = np.stack([g[:, 0], g[:, 1], g[:, 0] + g[:, 2], g[:, 1] + g[:, 3]], 1)
    return np.concatenate([[[0, 0, h, w]], r]) if whole else r


def window_descriptors(sat: Tensor, boxes: Tensor, spec: WindowDescriptor, alpha: float = DEFAULT_ALPHA,
                       max_elements: int = 1 << 19) -> Tensor:
    """Descriptors (``B×C``, before whitening, L2-normalised) of one window per map, by integral max-pooling."""
    spec.check()
    if spec.kind == "mac":
        return spec.combine(spec.pooled(window_sums(sat, boxes.unsqueeze(1)), alpha), None)
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
    offset = torch.cat([boxes[:, :2], boxes[:, :2]], 1).unsqueeze(1)
    regions_t = torch.from_numpy(regions).to(boxes.device) + offset
    valid_t = torch.from_numpy(valid).to(boxes.device).unsqueeze(2)
    step = max(1, max_elements // (R * sat.shape[-1]))  # small temporaries (see aml.window_scores)
    out = []
    for b0 in range(0, len(boxes), step):
        images = torch.arange(b0, min(b0 + step, len(boxes)), device=boxes.device)
        out.append(spec.combine(spec.pooled(window_sums(sat, regions_t[images], images), alpha), valid_t[images]))
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


Batch = tuple[list[int], np.ndarray, np.ndarray, np.ndarray]  # short-list positions, boxes, scores, descriptors


def _pooled_descriptors(spec: WindowDescriptor, out: dict[str, np.ndarray]) -> np.ndarray:
    """Window descriptors (before whitening) from the compiled pass's max-pooled regions, normalised and combined
    exactly as :func:`window_descriptors` does."""
    f = torch.from_numpy(out["pooled"])
    valid = (torch.arange(f.shape[1])[None, :] < torch.from_numpy(out["count"])[:, None]).unsqueeze(2)
    return spec.combine(spec.normalized(f), valid).numpy()


def _dense(payload: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A map from what a short-list loader returns: the map itself, or its stored 1-byte codes (decoded)."""
    m = np.asarray(payload)
    return decode(m, shape) if m.ndim == 1 and m.dtype == np.uint8 else m


def _torch_batches(shape: tuple[int, int, int], members: list[int], load: Callable[[int], np.ndarray],
                   query: AMLQuery, spec: WindowDescriptor, aml: AMLSettings, workspace: Workspace,
                   tick: Callable[[str, float], float]) -> Iterator[Batch]:
    """The reference: batches of maps -> integral images -> :func:`~.aml.localize` -> :func:`window_descriptors`."""
    C, H, W = shape
    power_dtype = torch.float64 if aml.root == "aml_c" else torch.float32
    batch = max(1, workspace.max_bytes // ((H + 1) * (W + 1) * C * 8))
    for b0 in range(0, len(members), batch):
        idx = members[b0:b0 + batch]
        t = time.perf_counter()
        x = workspace.get("maps", (len(idx), C, H, W), torch.float32)
        for j, i in enumerate(idx):  # decoded straight into the reused batch buffer
            x[j].copy_(torch.from_numpy(_dense(load(i), shape)))
        t = tick("load", t)
        sat = power_integral(x, aml.alpha, workspace, power_dtype)
        t = tick("integral", t)
        loc = localize(sat, query.mac, query.ratio, aml)
        t = tick("localize", t)
        v = window_descriptors(sat, loc.boxes, spec, aml.alpha).cpu().numpy()
        tick("describe", t)
        yield idx, loc.boxes.cpu().numpy(), loc.scores.cpu().numpy(), v


def _compiled_batches(shape: tuple[int, int, int], members: list[int], load: Callable[[int], np.ndarray],
                      query: AMLQuery, spec: WindowDescriptor, aml: AMLSettings, workspace: Workspace,
                      tick: Callable[[str, float], float]) -> Iterator[Batch]:
    """The compiled pass (:mod:`.compiled`): stored codes -> localized window and its pooled regions, per image in
    one fused pass (stage ``aml``), then the same normalisation of the regions as the reference."""
    from . import compiled  # numba: imported when used

    C, H, W = shape
    regions = compiled.region_table(H, W, 0 if spec.kind == "mac" else spec.L, spec.variant == "cirtorch")
    R = int(regions[1][..., 1].max())
    if workspace.compiled is None:
        workspace.compiled = compiled.Buffers()
    batch = max(1, (64 << 20) // (4 * R * C))  # pooled regions of one batch: at most 64 MB
    for b0 in range(0, len(members), batch):
        idx = members[b0:b0 + batch]
        t = time.perf_counter()
        payloads = [load(i) for i in idx]
        t = tick("load", t)
        out = compiled.localize_and_pool(payloads, shape, query.mac, query.ratio, aml, regions, workspace.compiled)
        t = tick("aml", t)
        v = _pooled_descriptors(spec, out)
        tick("describe", t)
        yield idx, out["boxes"], out["scores"].astype(np.float32), v


def rerank_shortlist(shapes: Sequence[tuple[int, int, int] | None], load: Callable[[int], np.ndarray],
                     query: AMLQuery, spec: WindowDescriptor, aml: AMLSettings | None = None,
                     whiten: Callable[[np.ndarray], np.ndarray] | None = None,
                     workspace: Workspace | None = None) -> Reranked:
    """AML re-ranking of one query's short-list of ``len(shapes)`` images: ``shapes[i]`` is the ``(C, H, W)`` of
    entry ``i``'s activation map (``None``: no map; it keeps score −1 and sinks to the end of the short-list),
    ``load(i)`` returns that map (levels or raw values, any numeric dtype) or its stored 1-byte codes
    (:func:`~.storage.encode`, as :meth:`~.storage.ActivationStore.payload` gives them). ``aml.backend``:
    ``compiled`` (:mod:`.compiled`, one fused numba pass per image, images in parallel) or ``torch`` (the
    reference: maps grouped by size and loaded in batches of at most ``workspace.max_bytes`` of integral images).
    ``workspace.timer`` accumulates seconds per stage (``load``, ``integral``, ``localize``, ``describe``; compiled:
    ``load``, ``aml``, ``describe``). Pass one ``workspace`` for all the queries of a run (its buffers are reused).
    ``aml.root``: the localization's α-th root, ``exact`` or ``aml_c`` (the reference's, with exact float64 powers
    as its table of doubles)."""
    aml = aml or AMLSettings()
    aml.check()
    spec.check()
    n, D = len(shapes), len(query.descriptor)
    aml_scores = np.full(n, -1.0, np.float32)
    boxes = np.full((n, 4), -1, np.int64)
    feature_hw = np.zeros((n, 2), np.int64)
    raw = _Rows(n, D)
    workspace = workspace or Workspace()
    timer = workspace.timer
    clock = time.perf_counter

    def tick(stage: str, t0: float) -> float:
        t = clock()
        timer[stage] = timer.get(stage, 0.0) + t - t0
        return t

    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        if shape is not None:
            groups.setdefault(tuple(int(v) for v in shape), []).append(i)  # type: ignore[arg-type]
    batches = _compiled_batches if aml.backend == "compiled" else _torch_batches
    for (C, H, W), members in groups.items():
        for idx, loc_boxes, loc_scores, v in batches((C, H, W), members, load, query, spec, aml, workspace, tick):
            boxes[idx], aml_scores[idx], feature_hw[idx] = loc_boxes, loc_scores, (H, W)
            raw.put(idx, v)
    t = clock()
    out = _finish_query(query.descriptor, boxes, aml_scores, feature_hw, raw.array, whiten)
    tick("describe", t)
    return out


class _Rows:
    """The window descriptors of a short-list before the evaluation's whitening: ``n`` rows whose width is that of
    the first descriptors put (the filtering descriptor's own, which a PCA-whitening then reduces to the query's
    ``width``; that width when none is put)."""

    def __init__(self, n: int, width: int) -> None:
        self.n, self.width, self._array = n, width, None

    def put(self, rows: Any, values: np.ndarray) -> None:
        if self._array is None:
            self._array = np.zeros((self.n, values.shape[1]), np.float32)
        self._array[rows] = values

    @property
    def array(self) -> np.ndarray:
        return self._array if self._array is not None else np.zeros((self.n, self.width), np.float32)


def _finish_query(q_desc: np.ndarray, boxes: np.ndarray, aml_scores: np.ndarray, feature_hw: np.ndarray,
                  raw: np.ndarray, whiten: Callable[[np.ndarray], np.ndarray] | None) -> Reranked:
    """One query's short-list from its localized windows and their descriptors before whitening."""
    has = boxes[:, 0] >= 0
    desc = np.zeros((len(boxes), len(q_desc)), np.float32)  # the query's space: after the whitening (PCA: fewer dims)
    if has.any():
        desc[has] = whiten(raw[has]) if whiten is not None else raw[has]
    scores = np.full(len(boxes), -1.0, np.float32)
    scores[has] = desc[has] @ q_desc
    return Reranked(np.argsort(-scores, kind="stable"), scores, boxes, feature_hw, aml_scores, desc)


def rerank_queries(shortlists: Sequence[np.ndarray], shape_of: Callable[[int], tuple[int, int, int] | None],
                   load: Callable[[int], np.ndarray], queries: Sequence[AMLQuery], spec: WindowDescriptor,
                   aml: AMLSettings | None = None, whiten: Callable[[np.ndarray], np.ndarray] | None = None,
                   workspace: Workspace | None = None, progress: str | None = None) -> list[Reranked]:
    """AML re-ranking of every query's short-list (``shortlists[q]``: database indices; ``shape_of(i)`` and
    ``load(i)`` address the database, as in :func:`rerank_shortlist`). With ``aml.backend="compiled"`` and stored
    codes, each database image is decoded and its integral image built once for all the queries whose short-list
    holds it (the same localization for each query–image pair, so the same result as query by query); otherwise
    :func:`rerank_shortlist` runs query by query. ``workspace.timer`` holds the run's seconds per stage (all
    queries)."""
    aml = aml or AMLSettings()
    aml.check()
    spec.check()
    workspace = workspace or Workspace()
    shortlists = [np.asarray(s, np.int64) for s in shortlists]
    union = np.unique(np.concatenate(shortlists)) if shortlists else np.zeros(0, np.int64)
    shapes = {int(i): shape_of(int(i)) for i in union}
    first = next((int(i) for i in union if shapes[int(i)] is not None), None)
    codes_first = None if first is None or aml.backend != "compiled" else np.asarray(load(first))
    if codes_first is None or codes_first.ndim != 1:  # the torch backend, or raw maps: query by query
        iterate = queries if progress is None else tqdm(queries, desc=progress, leave=False)
        return [rerank_shortlist([shapes[int(i)] for i in s], lambda j, s=s: load(int(s[j])), q, spec, aml, whiten,
                                 workspace) for s, q in zip(shortlists, iterate)]
    from . import compiled  # numba: imported when used

    timer, clock = workspace.timer, time.perf_counter
    if workspace.compiled is None:
        workspace.compiled = compiled.Buffers()
    D = len(queries[0].descriptor) if queries else 0
    boxes = [np.full((len(s), 4), -1, np.int64) for s in shortlists]
    aml_scores = [np.full(len(s), -1.0, np.float32) for s in shortlists]
    feature_hw = [np.zeros((len(s), 2), np.int64) for s in shortlists]
    raw = [_Rows(len(s), D) for s in shortlists]
    # every (query, position) pair of the short-lists, grouped by database image
    pair_q = np.repeat(np.arange(len(shortlists)), [len(s) for s in shortlists])
    pair_pos = np.concatenate([np.arange(len(s)) for s in shortlists]) if shortlists else np.zeros(0, np.int64)
    pair_db = np.concatenate(shortlists) if shortlists else np.zeros(0, np.int64)
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i in union:
        if shapes[int(i)] is not None:
            groups.setdefault(tuple(int(v) for v in shapes[int(i)]), []).append(int(i))  # type: ignore[arg-type]
    bar = None if progress is None else tqdm(total=sum(map(len, groups.values())), desc=progress, leave=False)
    for shape, members in groups.items():
        C, H, W = shape
        regions = compiled.region_table(H, W, 0 if spec.kind == "mac" else spec.L, spec.variant == "cirtorch")
        R = int(regions[1][..., 1].max())
        in_group = np.flatnonzero(np.isin(pair_db, members))
        in_group = in_group[np.argsort(pair_db[in_group], kind="stable")]  # this size's pairs, by image
        lo = np.searchsorted(pair_db[in_group], members, "left")
        hi = np.searchsorted(pair_db[in_group], members, "right")
        budget = max(1, (64 << 20) // (4 * R * C))  # pooled regions of one batch: at most 64 MB
        # batches of consecutive images holding at most `budget` pairs (at least one image each)
        ends = np.cumsum(hi - lo)
        cuts, start = [0], 0
        while cuts[-1] < len(members):
            nxt = max(cuts[-1] + 1, int(np.searchsorted(ends, start + budget, "right")))
            cuts.append(min(nxt, len(members)))
            start = int(ends[cuts[-1] - 1])
        for b0, b1 in zip(cuts[:-1], cuts[1:]):
            sel = in_group[lo[b0]:hi[b1 - 1]]
            ptr = np.concatenate([[0], np.cumsum(hi[b0:b1] - lo[b0:b1])])
            t = clock()
            codes = [codes_first if i == first else load(i) for i in members[b0:b1]]
            timer["load"] = timer.get("load", 0.0) + clock() - t
            t = clock()
            out = compiled.localize_shared(codes, shape, [(q.mac, q.ratio) for q in queries], (ptr, pair_q[sel]), aml,
                                           regions, workspace.compiled)
            timer["aml"] = timer.get("aml", 0.0) + clock() - t
            t = clock()
            v = _pooled_descriptors(spec, out)
            qs, pos = pair_q[sel], pair_pos[sel]
            for qi in np.unique(qs).tolist():  # scattered back to each query's short-list order
                m = qs == qi
                boxes[qi][pos[m]], aml_scores[qi][pos[m]] = out["boxes"][m], out["scores"][m]
                feature_hw[qi][pos[m]] = (H, W)
                raw[qi].put(pos[m], v[m])
            timer["describe"] = timer.get("describe", 0.0) + clock() - t
            if bar is not None:
                bar.update(b1 - b0)
    if bar is not None:
        bar.close()
    t = clock()
    out = [_finish_query(q.descriptor, boxes[k], aml_scores[k], feature_hw[k], raw[k].array, whiten)
           for k, q in enumerate(queries)]
    timer["describe"] = timer.get("describe", 0.0) + clock() - t
    return out


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
