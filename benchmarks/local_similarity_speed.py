"""Local-similarity speed: query/gallery pairs scored per second by the correlation layer + localization subnet
(Chen et al. report about 16,000 pairs/s on a Titan X), against the machine's bound = measured matmul throughput /
FLOPs per pair (counted by torch's FlopCounterMode); and the end-to-end time of one query against a database of
``--n`` images with a shortlist of K = 1000 (raw float32 grids) and K = 5000 (product-quantized grids, M = 128: the
paper's scalable setting; raw grids of 5000 images would take 5.8 GB): query features, R-MAC search, scoring.

Gallery grids are random (L2 per location): the subnet's cost does not depend on their values.

    python benchmarks/local_similarity_speed.py                 # efficientnet_lite0 (1280 channels), 15×15 / 7×7
    python benchmarks/local_similarity_speed.py --channels 2048  # ResNet101's width (random backbone-free grids)

Target: pairs/s at least 25% of the FLOP bound (exit 1 otherwise).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import load_note, markdown_table, median_time, set_threads  # noqa: E402

from lit_retrieval.methods.local_similarity import GalleryGrids, GridQuantizer, local_scores, shortlist  # noqa: E402
from lit_retrieval.methods.local_similarity.network import LocalSimilarityNet  # noqa: E402


class _Stub(torch.nn.Module):
    name = "stub"

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels


def unit_grids(n: int, locations: int, channels: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed).random((n, locations, channels), dtype=np.float32)
    return g / np.linalg.norm(g, axis=2, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=1280)
    ap.add_argument("--gallery-grid", type=int, default=15)
    ap.add_argument("--query-grid", type=int, default=7)
    ap.add_argument("--n", type=int, default=5000, help="database images for the end-to-end query time")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-check", action="store_true")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    print(load_note(threads))
    C, G, Q = args.channels, args.gallery_grid, args.query_grid
    net = LocalSimilarityNet(_Stub(C), gallery_grid=G, query_grid=Q).eval()
    query = torch.from_numpy(unit_grids(1, Q * Q, C, 1)[0].T.reshape(C, Q, Q).copy())

    with torch.inference_mode():
        g1 = torch.from_numpy(unit_grids(1, G * G, C)).view(1, G, G, C).permute(0, 3, 1, 2)
        with FlopCounterMode(display=False) as fc:
            net(query[None], g1)
        flops = fc.get_total_flops()
        a = torch.rand(2048, 2048)
        gemm = 2 * 2048 ** 3 / median_time(lambda: a @ a, repeats=7)
    bound = gemm / flops
    print(f"\nFLOPs per pair (correlation {C}×{Q * Q}×{G * G} + subnet): {flops / 1e6:.1f} M; matmul throughput "
          f"{gemm / 1e9:.0f} GFLOP/s -> bound {bound:.0f} pairs/s\n")

    rows, best = [], 0.0
    gallery = GalleryGrids(unit_grids(1024, G * G, C), (G, G))
    for batch in (16, 64, 256, 1024):
        idx = np.arange(1024)
        t = median_time(lambda: local_scores(net, query, gallery, idx, batch=batch), repeats=3)
        rate = 1024 / t
        best = max(best, rate)
        rows.append([batch, f"{rate:.0f}", f"{100 * rate / bound:.0f}%"])
    print(markdown_table(["gallery images per batch", "pairs / s", "of the FLOP bound"], rows))

    print(f"\nEnd to end, one query against {args.n} database images (R-MAC {C}-D search, then the shortlist):\n")
    rows = []
    db_glob = unit_grids(1, args.n, C)[0]
    q_glob = db_glob[:1] + 0.05
    for K, M in ((1000, None), (5000, 128)):
        K = min(K, args.n)
        if M is None:
            store = GalleryGrids(unit_grids(K, G * G, C, seed=2), (G, G))
        else:  # codes of every database image (random: decoding costs the same), centres learned on a sample
            quant = GridQuantizer.learn(unit_grids(200, G * G, C, seed=2).reshape(-1, C), M, max_train=45_000)
            codes = np.random.default_rng(3).integers(0, 256, (args.n, G * G, quant.bytes_per_vector()), np.uint8)
            store = GalleryGrids.from_codes(codes, (G, G), quant)

        def one_query() -> None:
            short = shortlist(q_glob @ db_glob.T, K)[0] % len(store)
            local_scores(net, query, store, short, batch=256)

        t = median_time(one_query, repeats=3)
        rows.append([K, "raw float32" if M is None else f"PQ M = {M}", store.bytes_per_image, f"{t:.2f}",
                     f"{K / t:.0f}"])
    print(markdown_table(["K", "gallery grids", "bytes / image", "s per query (search + scoring)", "pairs / s"],
                         rows))
    print("\n(+ the query's own features: one backbone pass on the cropped query, e.g. 0.03 s for efficientnet_lite0 "
          "on a 224-px crop)")
    ok = best >= 0.25 * bound
    print(f"\nbest {best:.0f} pairs/s = {100 * best / bound:.0f}% of the FLOP bound: target >= 25% "
          f"{'met' if ok else 'MISSED'}")
    if not ok and not args.no_check:
        sys.exit(1)


if __name__ == "__main__":
    main()
