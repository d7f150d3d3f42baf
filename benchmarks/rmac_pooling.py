"""R-MAC pooling speed: ``lit_retrieval.pooling.rmac`` (on CPU inference maps: the compiled region max) vs the
per-region loop of cirtorch's ``rmac`` (index lists + ``max_pool2d`` per region), vs a leaner slice + ``amax``
loop, and vs its own torch code (the path autograd and GPUs take), in the same run.

All compute cirtorch's R-MAC (whole map + ``rmac_grid`` regions, each region's MAC L2-normalised with
``norm + 1e-6``, summed) on random non-negative maps; "one read of the map" (``x.amax()``) is the memory-bound
floor. Prints a markdown table (output difference, median
times, speed-up) and exits 1 if the outputs differ or the target speed-up is missed on the headline map.

    .venv/bin/python benchmarks/rmac_pooling.py            # 1-3 minutes on 2 cores
    .venv/bin/python benchmarks/rmac_pooling.py --profile  # + where the vectorised version spends its time
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from _timing import load_note, markdown_table, median_times, set_threads, write_json
from lit_retrieval.pooling import l2n, region_max, rmac
from lit_retrieval.regions import rmac_grid

HEADLINE = ((16, 2048, 24, 32), 3)
SWEEP = [((16, 2048, 24, 32), L) for L in range(1, 6)] + [((1, 2048, 48, 64), L) for L in range(1, 6)]
MAX_REL_DIFF = 1e-5


def rmac_loop(x: torch.Tensor, L: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """A lean per-region loop: one slice + amax per region (whole map first), L2-normalised and summed."""
    H, W = x.shape[-2:]
    out = torch.zeros(x.shape[:2], dtype=x.dtype)
    for y0, x0, h, w in [(0, 0, H, W)] + rmac_grid(H, W, L).tolist():
        v = x[:, :, y0:y0 + h, x0:x0 + w].amax(dim=(-2, -1))
        out += v / (torch.linalg.vector_norm(v, dim=-1, keepdim=True) + eps)
    return out


def rmac_cirtorch_style(x: torch.Tensor, L: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """The per-region loop as cirtorch's ``layers.functional.rmac`` runs it: the whole map max-pooled with
    ``F.max_pool2d``, then each region gathered with index lists along H then W (copies) and max-pooled the same
    way, each L2-normalised with ``norm + eps`` and added (same regions, same output)."""
    H, W = x.shape[-2:]
    v = F.max_pool2d(x, (H, W))
    v = v / (torch.norm(v, p=2, dim=1, keepdim=True) + eps)
    for y0, x0, h, w in rmac_grid(H, W, L).tolist():
        r = x[:, :, list(range(y0, y0 + h)), :][:, :, :, list(range(x0, x0 + w))]
        vt = F.max_pool2d(r, (h, w))
        v = v + vt / (torch.norm(vt, p=2, dim=1, keepdim=True) + eps)
    return v.flatten(1)


def torch_rmac(x: torch.Tensor, L: int) -> torch.Tensor:
    """``pooling.rmac``'s torch code (shifted-view maxima), the path autograd and GPUs take."""
    H, W = x.shape[-2:]
    boxes = [[0, 0, H, W]] + rmac_grid(H, W, L).tolist()
    return l2n(region_max(x, boxes, backend="torch")).sum(dim=1)


def measure(shape: tuple[int, ...], L: int, repeats: int, seed: int) -> dict:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).relu_()
    ref, got, lean = rmac_cirtorch_style(x, L), rmac(x, L=L, variant="cirtorch"), rmac_loop(x, L)
    with torch.enable_grad():  # the torch path, as autograd runs it (same values)
        xt = x.clone().requires_grad_(True)
        torch_path = rmac(xt, L=L, variant="cirtorch").detach()
    rel = float(max((got - ref).abs().max(), (lean - ref).abs().max(), (torch_path - ref).abs().max())
                / ref.abs().max())
    t = median_times({"vec": lambda: rmac(x, L=L, variant="cirtorch"), "loop": lambda: rmac_cirtorch_style(x, L),
                      "lean": lambda: rmac_loop(x, L), "read": lambda: x.amax(), "torch": lambda: torch_rmac(x, L)},
                     repeats=repeats, warmup=0)  # the calls above were the warm-up
    regions = 1 + len(rmac_grid(shape[2], shape[3], L))
    return {"shape": shape, "L": L, "regions": regions, "rel": rel, **t}


def profile(shape: tuple[int, ...], L: int, seed: int) -> None:
    """Top operators of one vectorised call (torch.profiler, self CPU time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).relu_()
    rmac(x, L=L)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        rmac(x, L=L)
    print(f"\nprofile of rmac({'×'.join(map(str, shape))}, L={L}):\n")
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=34, max_shapes_column_width=44))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of the headline row (median)")
    ap.add_argument("--sweep-repeats", type=int, default=3, help="timed runs of the other rows (median)")
    ap.add_argument("--no-sweep", action="store_true", help="only the headline row (16×2048×32×24, L=3)")
    ap.add_argument("--target", type=float, default=20.0, help="minimum speed-up on the headline row")
    ap.add_argument("--json", metavar="OUT", help="write the headline row and the sweep as JSON")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also profile the vectorised headline call")
    ap.add_argument("--no-check", action="store_true", help="only print; always exit 0")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    print(f"R-MAC (cirtorch variant): vectorised `pooling.rmac` vs per-region loop; {load_note(threads)}\n")

    cases = [HEADLINE] + ([c for c in SWEEP if c != HEADLINE] if not args.no_sweep else [])
    results = []
    for shape, L in cases:
        reps = args.repeats if (shape, L) == HEADLINE else args.sweep_repeats
        results.append(measure(shape, L, reps, args.seed))
    results.sort(key=lambda r: (-r["shape"][0], r["L"]))
    rows = [["×".join(map(str, r["shape"])) + (" **(target)**" if (r["shape"], r["L"]) == HEADLINE else ""),
             r["L"], r["regions"], f"{r['rel']:.1e}", f"{r['vec'] * 1e3:.1f}", f"{r['loop'] * 1e3:.1f}",
             f"{r['loop'] / r['vec']:.2f}×", f"{r['lean'] * 1e3:.1f}", f"{r['lean'] / r['vec']:.2f}×",
             f"{r['torch'] * 1e3:.1f}", f"{r['read'] * 1e3:.1f}"] for r in results]
    print(markdown_table(["map N×C×H×W", "L", "regions", "max |Δ| / max |ref|", "vectorised ms",
                          "cirtorch-style loop ms", "speed-up", "slice loop ms", "speed-up vs slices",
                          "torch path ms", "one read of the map, ms"], rows))

    head = next(r for r in results if (r["shape"], r["L"]) == HEADLINE)
    speedup = head["loop"] / head["vec"]
    bad = [r for r in results if not r["rel"] <= MAX_REL_DIFF]
    ok = speedup >= args.target and not bad
    print(f"\ntarget: speed-up ≥ {args.target:g}× on {'×'.join(map(str, HEADLINE[0]))}, L={HEADLINE[1]}: "
          f"{speedup:.2f}× — " + ("met" if speedup >= args.target else
          f"MISSED by {args.target / speedup:.1f}× (the vectorised call must take ≤ "
          f"{head['loop'] / args.target * 1e3:.0f} ms, it takes {head['vec'] * 1e3:.0f} ms)"))
    print(f"outputs: max relative difference ≤ {MAX_REL_DIFF:g} on every row: "
          + ("yes" if not bad else f"NO on {len(bad)} row(s)"))
    print(f"memory-bound limit (one streaming read of the {'×'.join(map(str, HEADLINE[0]))} map, `x.amax()`): "
          f"{head['read'] * 1e3:.1f} ms; the vectorised call takes {head['vec'] / head['read']:.1f}× that")
    write_json(args.json, {
        "shape": list(HEADLINE[0]), "L": HEADLINE[1], "speedup_vs_cirtorch_style_loop": round(speedup, 2),
        "ms": round(head["vec"] * 1e3, 2), "loop_ms": round(head["loop"] * 1e3, 2),
        "slice_loop_ms": round(head["lean"] * 1e3, 2), "speedup_vs_slice_loop": round(head["lean"] / head["vec"], 2),
        "torch_path_ms": round(head["torch"] * 1e3, 2), "memory_bound_ms": round(head["read"] * 1e3, 2),
        "same_output": not bad, "max_rel_diff": max(r["rel"] for r in results), "threads": threads,
        "rows": [{"shape": list(r["shape"]), "L": r["L"], "ms": round(r["vec"] * 1e3, 2),
                  "loop_ms": round(r["loop"] * 1e3, 2), "torch_path_ms": round(r["torch"] * 1e3, 2)}
                 for r in results]})
    if args.profile:
        profile(*HEADLINE, args.seed)
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
