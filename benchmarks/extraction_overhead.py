"""Descriptor-extraction overhead: ``retrieval.extract`` on a folder vs the bare backbone on preloaded images.

End-to-end = ``extract(items, method, backbone.normalize, Loading(image_size, num_workers=0, progress=False))``
(eval.py's CPU default, ``num_workers=auto``: loading in-line; a forked loader process slows the
forward pass itself through copy-on-write page faults, see the num_workers=1 and diagnostic rows). Bare = the same
images loaded and resized beforehand (untimed), then only ``method(backbone.normalize(x[None]))`` (backbone + pooling)
under ``torch.inference_mode``. Passes are interleaved (bare, extract, bare, ...) and the median pass is kept.
Prints images/s, the ratio and a per-image time breakdown; exits 1 if the ratio exceeds the target.

    .venv/bin/python benchmarks/extraction_overhead.py                 # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/extraction_overhead.py --n 30 --rounds 1 --workers-variants ''  # smoke run
"""
from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from _timing import load_note, markdown_table, median_time, set_threads
from lit_retrieval.backbones import build_backbone
from lit_retrieval.data.images import load_for_retrieval
from lit_retrieval.retrieval.extractor import loader_workers
from lit_retrieval.retrieval import ImageItem, Loading, build_method, extract

DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-samples"


def interleaved_passes(passes: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict[str, float]]:
    """Run the passes in turn ``rounds`` times; median wall seconds, minor page faults and kernel CPU seconds
    of the main process (``getrusage``) for each."""
    rec: dict[str, list[tuple[float, float, float]]] = {k: [] for k in passes}
    for _ in range(rounds):
        for name, fn in passes.items():
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            fn()
            t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            rec[name].append((t1 - t0, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime))
    return {k: dict(zip(("wall", "minflt", "stime"), (statistics.median(c) for c in zip(*v))))
            for k, v in rec.items()}


def with_idle_child(fn: Callable[[], object]) -> None:
    """Run ``fn`` while a forked child that only sleeps exists (what a DataLoader worker is, seen from here)."""
    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    try:
        fn()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES.resolve(), help="folder of images")
    ap.add_argument("--n", type=int, default=100, help="first N images of the folder (sorted)")
    ap.add_argument("--image-size", type=int, default=512, help="long side after resizing (never enlarged)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--method", default="gem")
    ap.add_argument("--workers", type=int, default=loader_workers("auto", "cpu"),
                    help="num_workers of the checked extract() row (default: eval.py's CPU default)")
    ap.add_argument("--workers-variants", default="1,2",
                    help="comma-separated extra num_workers rows, for comparison ('' for none)")
    ap.add_argument("--no-fork-diagnostic", dest="fork_diagnostic", action="store_false",
                    help="skip the row timing bare passes while an idle forked child exists")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved passes of each row (median)")
    ap.add_argument("--target", type=float, default=1.15, help="maximum extract / bare time ratio")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--no-check", action="store_true", help="only print; always exit 0")
    args = ap.parse_args()
    threads = set_threads(args.threads)

    paths = sorted(p for p in args.images.iterdir() if p.is_file())[:args.n]
    if not paths:
        sys.exit(f"no images in {args.images}: pass --images DIR")
    n = len(paths)
    backbone = build_backbone(args.backbone)
    method = build_method(args.method, backbone)
    items = [ImageItem(p) for p in paths]
    print(f"extraction overhead: {n} images of {args.images}, image_size {args.image_size}, "
          f"{args.backbone} + {args.method}; {load_note(threads)}\n")

    # Load + resize alone (main process, sequential), which also preloads the bare inputs.
    t0 = time.perf_counter()
    images = [load_for_retrieval(p, args.image_size) for p in paths]
    t_load = (time.perf_counter() - t0) / n
    sizes = np.array([x.shape[1:] for x in images])

    def bare() -> np.ndarray:
        with torch.inference_mode():
            return np.stack([method(backbone.normalize(x[None]))[0].numpy() for x in images])

    def run_extract(workers: int, describe=method, its=items) -> np.ndarray:
        return extract(its, describe, backbone.normalize, Loading(args.image_size, workers, progress=False))[0]

    # Warm-up (first convolutions, DataLoader imports) and a correctness check on a few images.
    few = min(n, 4)
    with torch.inference_mode():
        ref = np.stack([method(backbone.normalize(x[None]))[0].numpy() for x in images[:few]])
    diff = float(np.abs(run_extract(args.workers, its=items[:few]) - ref).max())

    bare()  # one full untimed pass: oneDNN builds its kernels once per input shape

    variants = [args.workers] + [int(w) for w in args.workers_variants.split(",") if w.strip()]
    variants = list(dict.fromkeys(variants))
    passes = {"bare": bare, **{f"w{w}": (lambda w=w: run_extract(w)) for w in variants}}
    if args.fork_diagnostic:
        passes["fork"] = lambda: with_idle_child(bare)
    stats = interleaved_passes(passes, args.rounds)
    t = {k: v["wall"] / n for k, v in stats.items()}

    # Breakdown, each part timed on its own over the same images.
    with torch.inference_mode():
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (backbone.mean, backbone.std))
        t_norm = median_time(lambda: [backbone.normalize(x[None]) for x in images], 3) / n
        t_norm_plain = median_time(lambda: [(x[None] - mean) / std for x in images], 3) / n
    t_loader = median_time(lambda: run_extract(args.workers, describe=lambda x: x.mean(dim=(2, 3))), 1, 0) / n
    t_start = median_time(lambda: run_extract(args.workers, describe=lambda x: x.mean(dim=(2, 3)),
                                              its=items[:1]), 3, 0)

    def row(name: str, key: str) -> list:
        return [name, f"{1 / t[key]:.1f}", f"{t[key] * 1e3:.1f}", f"{t[key] / t['bare']:.3f}×",
                f"{stats[key]['minflt'] / n:.0f}", f"{stats[key]['stime'] / n * 1e3:.1f}"]

    rows = [row("bare: preloaded images, normalize + backbone + pooling", "bare")]
    for w in variants:
        rows.append(row(f"extract(), num_workers={w}" + (" **(target)**" if w == args.workers else ""), f"w{w}"))
    if args.fork_diagnostic:
        rows.append(row("diagnostic: bare while an idle forked child process exists", "fork"))
    print(markdown_table(["pipeline", "images/s", "ms / image", "ratio to bare", "page faults / image",
                          "kernel CPU ms / image"], rows))
    print("\n(median of the interleaved passes; page faults and kernel CPU time: main process, getrusage)")

    print("\nbreakdown (each part timed alone, ms per image unless stated):\n")
    print(markdown_table(["part", "time"], [
        [f"load + resize (`load_for_retrieval`, main process; images {sizes.max(1).min()}–"
         f"{sizes.max(1).max()} px long side)", f"{t_load * 1e3:.2f}"],
        ["`backbone.normalize` (incl. the [0, 1] min/max range check)", f"{t_norm * 1e3:.2f}"],
        ["plain `(x - mean) / std`", f"{t_norm_plain * 1e3:.2f}"],
        ["backbone + pooling (bare minus normalize)", f"{(t['bare'] - t_norm) * 1e3:.2f}"],
        [f"loader alone: extract() with a trivial describe, num_workers={args.workers} (start-up included)",
         f"{t_loader * 1e3:.2f}"],
        [f"extract() of 1 image, trivial describe, num_workers={args.workers} (start-up; ms once)",
         f"{t_start * 1e3:.0f}"],
        [f"extract() overhead over bare, num_workers={args.workers}",
         f"{(t[f'w{args.workers}'] - t['bare']) * 1e3:.2f}"],
    ]))

    ratio = t[f"w{args.workers}"] / t["bare"]
    print(f"\ndescriptors: extract() vs bare max |Δ| = {diff:.1e} (first {few} images)")
    print(f"target: extract() / bare ≤ {args.target:g} with num_workers={args.workers}: {ratio:.3f} — "
          + ("met" if ratio <= args.target else f"MISSED ({ratio:.3f} > {args.target:g})"))
    ok = ratio <= args.target and diff <= 1e-5
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
