"""Retrieval metrics with exactly revisitop's semantics (``python/evaluate.py``).

``compute_map(ranks, gnd, kappas)`` takes ``ranks`` as a ``db × nq`` array of 0-based database indices (best
first, one column per query) and ``gnd`` as per-query dicts with ``ok`` and ``junk`` index arrays, and returns
``(map, aps, mpk, prs)``:

- AP is the trapezoid rule over recall steps of ``1/|ok|``; each positive's rank is shifted down by the junk
  images ranked before it; positives missing from a truncated ranking contribute nothing.
- mP@k uses ``kq = min(rank of the last positive (1-based), k)`` as denominator (revisitop's quirk).
- A query without positives gets NaN AP and P@k and is left out of the means.

Protocol builders turn revisited ground truth (``easy``/``hard``/``junk``) into Easy/Medium/Hard ``ok``/``junk``
lists, and the classic protocol (``ok``/``junk``) is used as is.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

REVISITED_PROTOCOLS = ("easy", "medium", "hard")


def _as_idx(v) -> np.ndarray:
    return np.asarray(v if v is not None else [], dtype=np.int64).ravel()


def compute_ap(pos: np.ndarray, n_ok: int) -> float:
    """Trapezoid AP of junk-adjusted 0-based positive ranks ``pos`` (sorted) for ``n_ok`` positives."""
    pos = np.asarray(pos, dtype=np.float64)
    j = np.arange(len(pos), dtype=np.float64)
    p0 = np.divide(j, pos, out=np.ones_like(pos), where=pos > 0)
    p1 = (j + 1) / (pos + 1)
    return float(((p0 + p1) / 2.0).sum() / n_ok)


def compute_map(ranks: np.ndarray, gnd: Sequence[dict], kappas: Iterable[int] = (1, 5, 10)):
    """revisitop's ``compute_map``: returns ``(map, aps, mpk, prs)`` as fractions (see module docstring)."""
    ranks = np.asarray(ranks)
    kappas = list(kappas)
    if ranks.ndim != 2 or ranks.shape[1] != len(gnd):
        raise ValueError(
            f"compute_map: ranks must be db × nq with one column per query; got shape {ranks.shape} for "
            f"{len(gnd)} queries (transpose a nq × db ranking with ranks.T)"
        )
    nq = len(gnd)
    aps = np.full(nq, np.nan)
    prs = np.full((nq, len(kappas)), np.nan)
    positions = np.arange(ranks.shape[0])
    for i in range(nq):
        ok = _as_idx(gnd[i].get("ok"))
        if ok.size == 0:
            continue
        junk = _as_idx(gnd[i].get("junk"))
        col = ranks[:, i]
        pos = positions[np.isin(col, ok)]
        junk_pos = positions[np.isin(col, junk)]
        pos = pos - np.searchsorted(junk_pos, pos, side="left")
        aps[i] = compute_ap(pos, ok.size)
        pos1 = pos + 1
        last = pos1.max() if pos1.size else 0
        for j, k in enumerate(kappas):
            kq = min(last, k)
            prs[i, j] = (pos1 <= kq).sum() / kq if kq > 0 else 0.0
    valid = ~np.isnan(aps)
    if not valid.any():
        return float("nan"), aps, np.full(len(kappas), np.nan), prs
    return float(aps[valid].mean()), aps, prs[valid].mean(axis=0), prs


def revisited_protocol(gnd: Sequence[dict], protocol: str) -> list[dict]:
    """Easy: ok=easy, junk=junk+hard. Medium: ok=easy+hard, junk=junk. Hard: ok=hard, junk=junk+easy."""
    out = []
    for g in gnd:
        e, h, j = _as_idx(g.get("easy")), _as_idx(g.get("hard")), _as_idx(g.get("junk"))
        if protocol == "easy":
            out.append({"ok": e, "junk": np.concatenate([j, h])})
        elif protocol == "medium":
            out.append({"ok": np.concatenate([e, h]), "junk": j})
        elif protocol == "hard":
            out.append({"ok": h, "junk": np.concatenate([j, e])})
        else:
            raise ValueError(f"unknown revisited protocol {protocol!r}: choose from {REVISITED_PROTOCOLS}")
    return out


def evaluate_ranks(ranks: np.ndarray, gnd: Sequence[dict], protocol: str = "revisited",
                   kappas: Iterable[int] = (1, 5, 10)) -> dict:
    """mAP and mP@k for a dataset's protocol, as percentages.

    Revisited: ``{"easy"|"medium"|"hard": {"map", "mpk", "aps", "prs"}}``; classic: ``{"all": {...}}``.
    """
    kappas = list(kappas)
    names = REVISITED_PROTOCOLS if protocol == "revisited" else ("all",)
    out = {}
    for name in names:
        g = revisited_protocol(gnd, name) if protocol == "revisited" else gnd
        m, aps, mpk, prs = compute_map(ranks, g, kappas)
        out[name] = {"map": 100 * m, "mpk": dict(zip(kappas, (100 * np.asarray(mpk)).tolist())),
                     "aps": aps, "prs": prs}
    return out


# -- uncertainty: bootstrap over queries ----------------------------------------------------------------------------

N_BOOTSTRAP = 10_000
BOOTSTRAP_SEED = 0


def _resample_means(values: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Means of ``n`` seeded resamples (with replacement) of the rows of ``values`` (``nq`` or ``nq × m``)."""
    nq = len(values)
    idx = np.random.default_rng(seed).integers(0, nq, size=(n, nq))
    return values[idx].mean(axis=1)


def bootstrap_ci(aps: Sequence[float], n: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-query APs (queries resampled with replacement).

    NaN APs (queries without positives) are left out, as in the mean itself. Same units as ``aps``. Returns
    ``(nan, nan)`` when no query has positives."""
    a = np.asarray(aps, dtype=np.float64)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    means = _resample_means(a, n, seed)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap(aps_a: Sequence[float], aps_b: Sequence[float], n: int = N_BOOTSTRAP,
                     seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> dict[str, Any]:
    """Paired bootstrap of ``mean(a) - mean(b)`` over the same queries: the queries are resampled together, so the
    interval reflects how consistently one ranking beats the other, not the spread of the queries' difficulty.

    Returns ``{"diff", "ci95": [lo, hi], "within_noise"}`` (``within_noise``: the interval contains 0). Queries
    with NaN AP in either ranking are left out."""
    a, b = np.asarray(aps_a, dtype=np.float64), np.asarray(aps_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap needs the APs of the same queries: got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    if d.size == 0:
        return {"diff": float("nan"), "ci95": [float("nan"), float("nan")], "within_noise": True}
    means = _resample_means(d, n, seed)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(d.mean()), "ci95": [float(lo), float(hi)], "within_noise": bool(lo <= 0 <= hi)}


def uncertainty(metrics: dict, digits: int = 4) -> dict[str, Any]:
    """``ap_per_query`` (percent, ``null`` for queries without positives) and ``map_ci95`` per protocol of an
    :func:`evaluate_ranks` result, as written to ``results.json``."""
    def r(v: float) -> float | None:
        return None if np.isnan(v) else round(float(v), digits)

    return {"ap_per_query": {p: [r(100 * v) for v in m["aps"]] for p, m in metrics.items()},
            "map_ci95": {p: [r(100 * v) for v in bootstrap_ci(m["aps"])] for p, m in metrics.items()}}


def compare(metrics_a: dict, metrics_b: dict, digits: int = 4) -> dict[str, dict[str, Any]]:
    """Per protocol, the paired bootstrap interval (percent) of mAP(a) - mAP(b) on the same queries."""
    out = {}
    for p in metrics_a:
        c = paired_bootstrap(metrics_a[p]["aps"], metrics_b[p]["aps"])
        out[p] = {"diff": round(100 * c["diff"], digits), "ci95": [round(100 * v, digits) for v in c["ci95"]],
                  "within_noise": c["within_noise"]}
    return out


def format_ci(value: float, ci: Sequence[float | None]) -> str:
    """``"44.24 [38.1, 50.2]"``."""
    if ci is None or ci[0] is None or ci[1] is None:
        return f"{value:.2f}"
    return f"{value:.2f} [{ci[0]:.1f}, {ci[1]:.1f}]"


def format_diff(c: dict[str, Any], digits: int = 2) -> str:
    """``"+3.10 [+0.4, +5.9]"`` or ``"-0.80 [-2.1, +0.6] within noise"``."""
    lo, hi = c["ci95"]
    s = f"{c['diff']:+.{digits}f} [{lo:+.1f}, {hi:+.1f}]"
    return s + (" within noise" if c["within_noise"] else "")


def format_maps(maps: dict[str, float], cis: dict[str, Sequence[float | None]] | None = None,
                protocols: Sequence[str] = ("easy", "medium", "hard")) -> str:
    """Compact table cell ``"53.5 [41, 67] / 35.4 [27, 44] / 2.1 [1, 4]"``: each protocol's mAP with its 95%
    bootstrap interval rounded to integers (``cis`` as in ``results.json`` ``map_ci95``)."""
    cells = []
    for p in protocols:
        ci = (cis or {}).get(p)
        cells.append(f"{maps[p]:.1f}" if ci is None or None in ci else f"{maps[p]:.1f} [{ci[0]:.0f}, {ci[1]:.0f}]")
    return " / ".join(cells)
