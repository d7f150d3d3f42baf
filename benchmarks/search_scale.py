"""Exact search at scale: ``retrieval.search`` over 1M random 512-D descriptors — time, memory, correctness.

The database (L2-normalised Gaussian vectors, float32) is generated chunk-wise into one preallocated array,
so it is held once. Queries are database rows plus noise (re-normalised), so each query's top-1 is known.
Peak memory is the process's ``VmHWM``, reset before each search (``/proc/self/clear_refs``) where the
kernel allows it; the check is peak RSS during the search ≤ 2× the descriptor matrix. The top-10 of every
query is compared with a brute-force numpy matmul over the whole database. Exits 1 if a check fails.

    .venv/bin/python benchmarks/search_scale.py                  # about 1.5 minutes on 2 cores, 2.8 GiB RAM
    .venv/bin/python benchmarks/search_scale.py --n 200000       # smaller
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import faiss
import numpy as np

from _timing import load_note, markdown_table, peak_rss_bytes, rss_bytes, set_threads
from lit_retrieval.retrieval import search

GiB = 1024 ** 3


def random_unit_rows(n: int, dim: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """``n×dim`` float32 L2-normalised Gaussian rows, written chunk-wise into one preallocated array."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        block = out[s:s + chunk]
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def reset_peak() -> bool:
    """Reset the process's peak RSS (``VmHWM``) to its current RSS; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def brute_topk(queries: np.ndarray, db: np.ndarray, k: int, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products by numpy matmul, chunk by chunk; ``(scores, ids)`` best first."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for s in range(0, len(db), chunk):
        sc = queries @ db[s:s + chunk].T  # nq × chunk
        kk = min(k, sc.shape[1])
        top = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, top, 1)], 1)
        cand_i = np.concatenate([best_i, top + s], 1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_s, best_i


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="database size")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--check-k", type=int, default=10, help="ranks compared with brute force")
    ap.add_argument("--chunk-sizes", default="16384,262144",
                    help="extra rows with these search chunk sizes ('' for none); the first row uses the default")
    ap.add_argument("--repeats", type=int, default=3, help="timed searches per row (median)")
    ap.add_argument("--no-blas-row", dest="blas_row", action="store_false",
                    help="skip the row with faiss.cvar.distance_compute_blas_threshold lowered to 20")
    ap.add_argument("--no-reference", dest="reference", action="store_false",
                    help="skip the numpy matmul + argpartition reference row")
    ap.add_argument("--max-peak", type=float, default=2.0, help="allowed peak RSS during search / matrix size")
    ap.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-check", action="store_true", help="only print; always exit 0")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    faiss.omp_set_num_threads(threads)
    print(f"exact search: {args.queries} queries × {args.n:,} descriptors × {args.dim}-D float32, k={args.k}; "
          f"{load_note(threads)}\n")

    base = rss_bytes()
    t0 = time.perf_counter()
    db = random_unit_rows(args.n, args.dim, args.seed)
    t_gen = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed + 1)
    src = rng.choice(args.n, args.queries, replace=False)
    queries = db[src] + 0.05 * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    matrix = db.nbytes

    can_reset = True

    def measure(fn) -> tuple[float, int, int, object]:
        """Median seconds over ``repeats`` calls, RSS before, peak RSS during the first call, its result."""
        nonlocal can_reset
        can_reset = reset_peak() and can_reset
        before, t0 = rss_bytes(), time.perf_counter()
        result = fn()
        times, peak = [time.perf_counter() - t0], peak_rss_bytes()
        for _ in range(args.repeats - 1):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), before, peak, result

    def row(name: str, t: float, before: int, peak: int) -> list:
        return [name, f"{t:.2f}", f"{t / args.queries * 1e3:.1f}", f"{before / GiB:.2f}", f"{peak / GiB:.2f}",
                f"{(peak - before) / 2 ** 20:.0f}", f"{(peak - before) / matrix:.3f}", f"{peak / matrix:.2f}"]

    rows, first = [], None
    for chunk in [None] + [int(c) for c in args.chunk_sizes.split(",") if c.strip()]:
        kw = {} if chunk is None else {"chunk_size": chunk}
        t, before, peak, result = measure(lambda: search(queries, db, k=args.k, **kw))
        first = first or (*result, peak)
        rows.append(row(f"`search`, chunk {'65536 (default)' if chunk is None else chunk}", t, before, peak))
    if args.blas_row:  # faiss only uses BLAS from distance_compute_blas_threshold queries up (128000 in 1.15)
        default = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 20
        try:
            t, before, peak, _ = measure(lambda: search(queries, db, k=args.k))
        finally:
            faiss.cvar.distance_compute_blas_threshold = default
        rows.append(row(f"`search`, chunk 65536, faiss BLAS threshold 20 (default {default})", t, before, peak))
    if args.reference:
        t, before, peak, _ = measure(lambda: brute_topk(queries, db, args.k))
        rows.append(row("reference: numpy matmul + argpartition, same k", t, before, peak))
    print(markdown_table(["method", "search s", "ms / query", "RSS before GiB", "peak RSS GiB", "peak increase MiB",
                          "increase / matrix", "peak / matrix"], rows))
    print(f"\ndescriptor matrix {matrix / GiB:.2f} GiB (generated in {t_gen:.1f} s); the process held "
          f"{base / GiB:.2f} GiB before it (interpreter, torch, faiss); peak RSS = VmHWM "
          + ("reset before each row" if can_reset else "since process start (no reset here)")
          + f"; times: median of {args.repeats}")

    scores, ranks, peak = first
    kc = args.check_k
    t0 = time.perf_counter()
    b_s, b_i = brute_topk(queries, db, kc)
    t_brute = time.perf_counter() - t0
    same = (ranks[:, :kc] == b_i).all(axis=1)
    # A differing id is fine only if it ties: its exact score equals the brute-force score at that rank.
    exact = np.einsum("qd,qkd->qk", queries, db[ranks[:, :kc]])
    tie_ok = np.abs(exact - b_s).max() <= 1e-5
    score_diff = float(np.abs(scores[:, :kc] - b_s).max())
    top1 = float((ranks[:, 0] == src).mean())
    correct = tie_ok and score_diff <= 1e-5 and top1 == 1.0
    print(f"top-{kc} vs brute-force matmul ({t_brute:.1f} s): identical ids for {same.sum()}/{len(same)} queries, "
          f"max |Δscore| {score_diff:.1e}, differing ids are ties: {'yes' if tie_ok else 'NO'}; "
          f"top-1 is the query's source row: {top1:.0%}")
    mem_ok = peak <= args.max_peak * matrix
    print(f"target: peak RSS during search ≤ {args.max_peak:g}× matrix: {peak / matrix:.2f}× — "
          + ("met" if mem_ok else "MISSED") + f"; results correct: {'yes' if correct else 'NO'}")
    return 0 if (mem_ok and correct) or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
