"""AML re-ranking speed: seconds per query to re-rank N database images, the compiled pass (numba, the default
``rerank.backend=compiled``) against the torch reference (``rerank.backend=torch``) in the same run, on the same
stored codes and queries; and where the time goes. Tolias et al. report 2.9 s per query for N = 1000 with
256-channel AlexNet maps, single-threaded C. Target here: ≤ 1 s per query for N = 1000 with 2048-channel 24×32
maps (ResNet101 at 1024 px) on 2 CPU cores.

Maps are synthetic quantized activations (levels 0..8, ``--density`` non-zero; ReLU maps of the last conv layer
are ~20-30% non-zero after the Sec. 7 quantization), stored with the 1-byte sparse code exactly as
``eval.py rerank=aml`` stores them. ``same_result``: both paths give the same boxes and the same re-ranked order
for every query, their localization scores within 1e-5.

``eval.py`` re-ranks all its queries together: each database image's integral image is built once for every query
whose short-list holds it (``s_per_query``, and ``s_per_query_70_queries`` for ROxford's 70); one query alone pays
the whole build (``s_per_query_one_at_a_time``).

    python benchmarks/aml_speed.py                          # N = 1000, 2048×24×32 and 1280×16×16
    python benchmarks/aml_speed.py --queries 2 --json OUT.json
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from _timing import set_threads, write_json
from lit_retrieval.methods.aml import AMLQuery, AMLSettings, WindowDescriptor, rerank_shortlist
from lit_retrieval.methods.aml.rerank import rerank_queries
from lit_retrieval.methods.aml.integral import Workspace
from lit_retrieval.methods.aml.storage import encode

SHAPES = ((2048, 24, 32), (1280, 16, 16))  # ResNet101 / EfficientNet-B0-like maps at 1024 / 512 px


def synthetic_codes(n: int, C: int, H: int, W: int, density: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lv = np.minimum(rng.geometric(0.55, size=(C, H, W)), 8).astype(np.uint8)  # mostly 1-2, few high
        lv[rng.random((C, H, W)) > density] = 0
        out.append(encode(lv))
    return out


def run(backend: str, codes: list[np.ndarray], shape: tuple[int, int, int], queries: list[AMLQuery],
        spec: WindowDescriptor) -> tuple[list[float], dict[str, float], list]:
    """One query at a time (:func:`rerank_shortlist`): seconds per query (after one untimed warm-up query),
    seconds per stage per query, the results."""
    ws = Workspace()  # one workspace per run, as eval.py's re-ranking keeps
    aml = AMLSettings(backend=backend)
    times, results = [], []
    for k, q in enumerate([queries[0]] + queries):
        t0 = time.perf_counter()
        r = rerank_shortlist([shape] * len(codes), lambda i: codes[i], q, spec, aml, workspace=ws)
        if k == 0:
            ws.timer.clear()  # the warm-up's stages (compilation, first page faults) are not counted
            continue
        times.append(time.perf_counter() - t0)
        results.append(r)
    return times, {k: v / len(queries) for k, v in ws.timer.items()}, results


def run_shared(codes: list[np.ndarray], shape: tuple[int, int, int], queries: list[AMLQuery],
               spec: WindowDescriptor) -> tuple[float, dict[str, float], list]:
    """All queries at once, as ``eval.py`` runs them (:func:`rerank_queries`: each image's integral image built once
    for every query whose short-list holds it; here every query's short-list is the same N images). Seconds per
    query, seconds per stage per query, the results."""
    ws = Workspace()
    everything = [np.arange(len(codes))] * len(queries)
    t0 = time.perf_counter()
    results = rerank_queries(everything, lambda i: shape, lambda i: codes[i], queries, spec, AMLSettings(),
                             workspace=ws)
    total = time.perf_counter() - t0
    return total / len(queries), {k: v / len(queries) for k, v in ws.timer.items()}, results


def same(a: list, b: list) -> bool:
    return all(np.array_equal(x.boxes, y.boxes) and np.array_equal(x.order, y.order)
               and float(np.abs(x.aml_scores - y.aml_scores).max()) < 1e-5 for x, y in zip(a, b))


def compiled_split(codes: list[np.ndarray], shape: tuple[int, int, int], q: AMLQuery, images: int = 8
                   ) -> dict[str, float]:
    """Where one thread's time goes per image in the compiled pass (its steps called one by one)."""
    from lit_retrieval.methods.aml import compiled as cp
    from lit_retrieval.methods.aml.windows import candidate_windows

    C, H, W = shape
    lv, col, S = np.zeros(H * W * C, np.uint8), np.zeros(W * C), np.zeros((H + 1) * (W + 1) * C)
    f, rb = np.zeros(C), np.zeros(C, np.int64)
    table = cp.power_table(10.0, "exact")
    cands = np.ascontiguousarray(candidate_windows(H, W, q.ratio, 3, 1.1), dtype=np.int64)
    qn = (q.mac / q.mac.norm()).double().numpy()
    search = (cands, qn, 3, 5, 0, 10.0, cp._AML_C_POWERS.numpy())
    steps = {"decode": lambda i: cp._decode(codes[i], lv, H * W, C),
             "integral": lambda i: cp._integral_levels(lv, table, H, W, C, col, S),
             "localize": lambda i: cp._localize(S, (H, W, C), search, f, rb, np.zeros(4, np.int64),
                                                np.zeros(4, np.int64))}
    out = {}
    for name, fn in steps.items():
        fn(0)
        ts = []
        for i in range(images):
            t0 = time.perf_counter()
            fn(i)
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="short-list length N")
    ap.add_argument("--density", type=float, default=0.25)
    ap.add_argument("--distinct", type=int, default=200,
                    help="distinct synthetic maps repeated to fill the short-list (200 × 384 kB: beyond the caches)")
    ap.add_argument("--queries", type=int, default=3, help="timed queries per shape and backend (median)")
    ap.add_argument("--descriptor", choices=["mac", "rmac"], default="rmac")
    ap.add_argument("--many", type=int, default=70, help="queries of the shared run (ROxford has 70); 0: skip it")
    ap.add_argument("--json", metavar="OUT", help="write the table as JSON")
    args = ap.parse_args()
    threads = set_threads()
    import numba

    print(f"torch {torch.__version__} ({threads} threads), numba {numba.__version__} "
          f"({numba.get_num_threads()} threads); N={args.n}, density {args.density:.0%}, {args.descriptor} windows")
    spec = WindowDescriptor("mac") if args.descriptor == "mac" else WindowDescriptor("rmac", 3, "cirtorch")
    report: dict = {"n": args.n, "queries": args.queries, "threads": threads, "s_per_query": {},
                    "reference_torch_s_per_query": {}, "speedup": {}, "s_per_query_one_at_a_time": {},
                    f"s_per_query_{args.many}_queries": {}, "stages_s_per_query": {},
                    "compiled_one_thread_ms_per_image": {}, "same_result": True}
    rows = []
    for C, H, W in SHAPES:
        key = f"{C}x{H}x{W}"
        distinct = synthetic_codes(min(args.n, args.distinct), C, H, W, args.density)
        codes = [distinct[i % len(distinct)] for i in range(args.n)]
        rng = np.random.default_rng(1)
        queries = [AMLQuery(torch.from_numpy(rng.random(C).astype(np.float32)), rng.normal(size=C).astype(np.float32),
                            float(rng.uniform(0.6, 1.4))) for _ in range(max(args.queries, args.many))]
        run_shared(codes[:8], (C, H, W), queries[:1], spec)  # compiles, touches the buffers
        shared, st_s, r_s = run_shared(codes, (C, H, W), queries[:args.queries], spec)
        t_c, st_c, r_c = run("compiled", codes, (C, H, W), queries[:args.queries], spec)
        t_t, st_t, r_t = run("torch", codes, (C, H, W), queries[:args.queries], spec)
        many = run_shared(codes, (C, H, W), queries[:args.many], spec)[0] if args.many else None
        ok = same(r_s, r_t) and same(r_c, r_t)
        split = compiled_split(codes, (C, H, W), queries[0])
        ref = statistics.median(t_t)
        report["s_per_query"][key] = round(shared, 3)
        report["reference_torch_s_per_query"][key] = round(ref, 3)
        report["speedup"][key] = round(ref / shared, 1)
        report["s_per_query_one_at_a_time"][key] = round(statistics.median(t_c), 3)
        report[f"s_per_query_{args.many}_queries"][key] = None if many is None else round(many, 3)
        report["stages_s_per_query"][key] = {"compiled": {k: round(v, 3) for k, v in st_s.items()},
                                             "torch": {k: round(v, 3) for k, v in st_t.items()}}
        report["compiled_one_thread_ms_per_image"][key] = {k: round(1e3 * v, 3) for k, v in split.items()}
        report["same_result"] = bool(report["same_result"] and ok)
        rows.append((key, shared, statistics.median(t_c), many, ref, ok, st_s, st_t, split))
    print(f"\n| maps | compiled, {args.queries} queries together | compiled, one at a time | compiled, {args.many} "
          "queries together | torch reference | speed-up | same result |\n|---|---|---|---|---|---|---|")
    for key, sh, one, many, ref, ok, *_ in rows:
        print(f"| {key} | {sh:.2f} | {one:.2f} | {'-' if many is None else f'{many:.2f}'} | {ref:.2f} | "
              f"{ref / sh:.1f}× | {ok} |")
    print("(seconds per query)\n\n| maps | backend | stage | s per query |\n|---|---|---|---|")
    for key, *_, st_s, st_t, _ in rows:
        for backend, st in (("compiled", st_s), ("torch", st_t)):
            for k, v in st.items():
                print(f"| {key} | {backend} | {k} | {v:.3f} |")
    print("\ncompiled pass, one thread, ms per image (its steps one by one): decode + integral are paid once per "
          "database image of the run, localize once per query and image")
    for key, *_, split in rows:
        print(f"  {key}: " + ", ".join(f"{k} {1e3 * v:.2f}" for k, v in split.items()))
    target = report["s_per_query"]["2048x24x32"]
    print(f"\nN = {args.n} on 2048×24×32, {args.queries} queries: {target:.2f} s per query (target ≤ 1.0 s: "
          f"{'met' if target <= 1.0 else 'missed'}); same result as the torch reference: {report['same_result']}")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
