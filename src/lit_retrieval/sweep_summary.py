"""A Hydra callback that writes one summary table for a multirun: one row per run, its overrides and metrics.

Each run of a sweep writes ``results.json`` into its own directory; at the end of the sweep this collects
them into ``summary.md`` and ``summary.csv`` in the sweep directory and prints the table.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


_METRIC_KEYS = ("map", "mpk", "monitor_value", "metrics")  # eval.py's and train.py's results.json


def collect(sweep_dir: Path, metric_keys: tuple[str, ...] = _METRIC_KEYS) -> list[dict[str, Any]]:
    """Rows ``{"run", "overrides", <metric>: value}`` for every ``*/results.json`` under ``sweep_dir``."""
    rows = []
    for res in sorted(sweep_dir.glob("*/results.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        data = json.loads(res.read_text())
        over_file = res.parent / ".hydra" / "overrides.yaml"
        overrides = ""
        if over_file.exists():
            overrides = " ".join(line[2:].strip() for line in over_file.read_text().splitlines() if line.startswith("- "))
        row = {"run": res.parent.name, "overrides": overrides}
        row.update(_flatten({k: data[k] for k in metric_keys if k in data}))
        rows.append(row)
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
