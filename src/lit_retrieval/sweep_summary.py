"""A Hydra callback that writes one summary table for a multirun: one row per run, its overrides and metrics.

Each run of a sweep writes ``results.json`` into its own directory; at the end of the sweep this collects
them into ``summary.md`` and ``summary.csv`` in the sweep directory and prints the table.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .metrics import format_diff, paired_bootstrap


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


_METRIC_KEYS = ("map", "mpk", "monitor_value", "metrics")  # eval.py's and train.py's results.json


def _ci(ci: list | None) -> str:
    return "" if not ci or ci[0] is None else f"[{ci[0]:.1f}, {ci[1]:.1f}]"


def _paired_to_first(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    """``vs <first run>/<protocol>``: the paired bootstrap interval of each run's mAP minus the first run's, for
    the runs evaluated on the same dataset and queries (``ap_per_query`` of eval.py's results)."""
    base = next((r for r in runs if "ap_per_query" in r), None)
    if base is None:
        return
    for row, r in zip(rows, runs):
        if r is base or r.get("dataset") != base.get("dataset") or "ap_per_query" not in r:
            continue
        for proto, aps in r["ap_per_query"].items():
            ref = base["ap_per_query"].get(proto)
            if ref is None or len(ref) != len(aps):
                continue
            as_array = lambda v: np.array([np.nan if x is None else x for x in v], dtype=np.float64)  # noqa: E731
            c = paired_bootstrap(as_array(aps), as_array(ref))
            row[f"vs run {rows[runs.index(base)]['run']}/{proto}"] = format_diff(c)


def collect(sweep_dir: Path, metric_keys: tuple[str, ...] = _METRIC_KEYS) -> list[dict[str, Any]]:
    """Rows ``{"run", "overrides", <metric>: value}`` for every ``*/results.json`` under ``sweep_dir``: each mAP
    with its 95% bootstrap interval, and the paired interval of its difference to the first run's."""
    rows, runs = [], []
    for res in sorted(sweep_dir.glob("*/results.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        data = json.loads(res.read_text())
        over_file = res.parent / ".hydra" / "overrides.yaml"
        overrides = ""
        if over_file.exists():
            overrides = " ".join(line[2:].strip() for line in over_file.read_text().splitlines()
                                 if line.startswith("- "))
        row = {"run": res.parent.name, "overrides": overrides}
        row.update(_flatten({k: data[k] for k in metric_keys if k in data}))
        row.update({f"map_ci95/{p}": _ci(ci) for p, ci in data.get("map_ci95", {}).items()})
        rows.append(row)
        runs.append(data)
    _paired_to_first(rows, runs)
    return rows


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(c for r in rows for c in r))  # first-seen order: run, overrides, map E/M/H, mP@k
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    table = "\n".join(lines)
    (sweep_dir / "summary.md").write_text(table + "\n")
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return table


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        if rows:
            print(f"\nsweep summary ({sweep_dir}/summary.md):\n" + write_summary(sweep_dir, rows), flush=True)
