"""Shared helpers for the speed benchmarks: median timers, peak-RSS readings, thread set-up, markdown tables."""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Sequence


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default: the cores this process may use); returns ``n``."""
    import torch

    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    return median_times({"fn": fn}, repeats, warmup)["fn"]


def median_times(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, calls interleaved (a, b, a, b, ...) so that load drifts hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``VmHWM``; it cannot be reset), in bytes."""
    return _status_kib("VmHWM") * 1024


def rss_bytes() -> int:
    """The process's current resident set size (``VmRSS``), in bytes."""
    return _status_kib("VmRSS") * 1024


def load_note(threads: int) -> str:
    """One line on the machine: cores, torch threads and the 1-minute load average (other jobs skew timings).

    Call it before measuring: afterwards the load average includes the benchmark's own threads.
    """
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = " — busy machine: timings are inflated and noisy, rerun when idle" if load > 0.5 * cores else ""
    return f"{cores} cores, torch threads {threads}, load average (1 min) before the run {load:.2f}{busy}"


def write_json(path: str | None, report: dict) -> None:
    """Write a benchmark's ``--json OUT`` table (nothing when ``path`` is None) and say where."""
    if path:
        import json

        with open(path, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {path}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table; cells are ``str()``-ed."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
