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

from typing import Iterable, Sequence

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
