"""Shared helpers for the speed benchmarks: median timer, peak-RSS reading, thread setup, table printing."""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Sequence


def set_threads(n: int | None = None) -> int:
    """Pin torch's intra-op threads to ``n`` (default: the CPU cores usable by this process); returns ``n``."""
    import torch

    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``VmHWM``), in bytes."""
    return _status_kib("VmHWM") * 1024


def rss_bytes() -> int:
    """The process's current resident set size (``VmRSS``), in bytes."""
    return _status_kib("VmRSS") * 1024


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table; cells are ``str()``-ed."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
