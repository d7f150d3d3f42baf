"""GPU check, one table in a few minutes: ResNet101 extraction at 1024 px (images/s and the fraction of the GPU's
bf16 FLOP bound), AML re-ranking of a 1000-image short-list (the torch backend on the GPU) and the local-similarity
scorer (correlation volume + localization subnet, pairs/s).

Without a GPU it says "no GPU" and runs the same checks on the CPU at a reduced size (a few images, a 50-image
short-list, float32), so the script itself keeps working; its numbers are then CPU numbers.

    bash benchmarks/gpu_check.sh                # = python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --json OUT.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table, set_threads, write_json  # noqa: E402
from aml_speed import synthetic_codes  # noqa: E402
from local_similarity_speed import _Stub, unit_grids  # noqa: E402

from lit_retrieval.backbones import build_backbone  # noqa: E402
from lit_retrieval.methods.aml import AMLQuery, AMLSettings, WindowDescriptor, Workspace, rerank_shortlist  # noqa: E402
from lit_retrieval.methods.local_similarity import GalleryGrids, local_scores  # noqa: E402
from lit_retrieval.methods.local_similarity.network import LocalSimilarityNet  # noqa: E402

# dense bf16 tensor-core peaks (TFLOP/s) of the GPUs this project is run on; others: the measured matmul peak only
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a large square matmul (the achievable bound)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ a, device, 5)


def extraction(device: torch.device, dtype: torch.dtype, batch: int, size: tuple[int, int]) -> dict:
    net = build_backbone("resnet101", weights="random").to(device).eval()
    x = torch.rand(batch, 3, *size, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        with FlopCounterMode(display=False) as fc:
            net(x[:1])
        flops = fc.get_total_flops()
        t = timed(lambda: net(x), device, 3)
    return {"images_per_s": batch / t, "gflops_per_image": flops / 1e9, "flop_per_s": batch * flops / t}


def aml(device: torch.device, n: int) -> dict:
    C, H, W = 2048, 24, 32
    distinct = synthetic_codes(min(n, 50), C, H, W, 0.25)
    codes = [distinct[i % len(distinct)] for i in range(n)]
    rng = np.random.default_rng(1)
    q = AMLQuery(torch.from_numpy(rng.random(C).astype(np.float32)), rng.normal(size=C).astype(np.float32), 0.75)
    ws = Workspace(device=device)
    spec = WindowDescriptor("rmac", 3, "cirtorch")
    t = timed(lambda: rerank_shortlist([(C, H, W)] * n, lambda i: codes[i], q, spec, AMLSettings(backend="torch"),
                                       workspace=ws), device, 2)
    return {"n": n, "s_per_query": t}


def local_similarity(device: torch.device, n: int) -> dict:
    C, G, Q = 2048, 15, 7
    net = LocalSimilarityNet(_Stub(C), gallery_grid=G, query_grid=Q).to(device).eval()
    query = torch.from_numpy(unit_grids(1, Q * Q, C, 1)[0].T.reshape(C, Q, Q).copy()).to(device)
    gallery = GalleryGrids(unit_grids(n, G * G, C), (G, G))
    idx = np.arange(n)
    with torch.inference_mode():
        t = timed(lambda: local_scores(net, query, gallery, idx, batch=min(n, 1024), device=device), device, 3)
    return {"pairs": n, "pairs_per_s": n / t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="OUT", help="write the table as JSON")
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        name = torch.cuda.get_device_name(0)
        print(f"GPU: {name}, torch {torch.__version__}")
        dtype, batch, size, n_aml, n_pairs = torch.bfloat16, 32, (768, 1024), 1000, 8192
    else:
        name = "none"
        threads = set_threads()
        print(f"no GPU (torch.cuda.is_available() is False): the same checks on the CPU ({threads} threads) at a "
              "reduced size, float32")
        dtype, batch, size, n_aml, n_pairs = torch.float32, 1, (384, 512), 50, 256
    t0 = time.perf_counter()
    peak = matmul_peak(device, dtype)
    spec = next((v * 1e12 for k, v in BF16_PEAK_TFLOPS.items() if gpu and k in name), None)
    ex = extraction(device, dtype, batch, size)
    am = aml(device, n_aml)
    ls = local_similarity(device, n_pairs)
    bound = spec or peak
    rows = [[f"ResNet101 extraction, {size[1]}×{size[0]}, batch {batch}", str(dtype).replace("torch.", ""),
             f"{ex['images_per_s']:.1f} images/s ({ex['gflops_per_image']:.0f} GFLOP each): "
             f"{100 * ex['flop_per_s'] / bound:.1f}% of the {'spec' if spec else 'measured matmul'} peak "
             f"({bound / 1e12:.1f} TFLOP/s; measured matmul {peak / 1e12:.1f})"],
            [f"AML re-ranking, N = {n_aml}, 2048×24×32 (torch backend)", "float32/float64",
             f"{am['s_per_query']:.2f} s per query"],
            ["local similarity, 2048-D 15×15 / 7×7 grids", "float32", f"{ls['pairs_per_s']:.0f} pairs/s"]]
    print(markdown_table(["check", "dtype", f"result on {device.type}" + (f" ({name})" if gpu else "")], rows))
    print(f"\n{time.perf_counter() - t0:.0f} s in all" + ("" if gpu else "; no GPU: CPU numbers"))
    write_json(args.json, {"gpu": name if gpu else None, "device": device.type, "extraction": ex, "aml": am,
                            "local_similarity": ls, "matmul_peak_flop_per_s": peak, "spec_peak_flop_per_s": spec,
                            "extraction_fraction_of_peak": ex["flop_per_s"] / bound})


if __name__ == "__main__":
    main()
