"""Simulated R1M scale on this machine: descriptor stores on disk, exact and IVF-PQ search, the D2R inverted file,
and the projected time to extract R1M.

- **Stores**: ``N × 512`` (float32 and float16) and ``N × 2048`` (float16) descriptor stores written to disk in
  the descriptor cache's own format (chunk files of ``--chunk`` rows), rows drawn from a low-rank model (a
  32-dimensional signal in the descriptor space plus noise, L2-normalised: neighbours are well defined, as for
  real descriptors, unlike uniform noise). For each: write time, exact search time per query (``search.index=flat``:
  the store read block by block), and the peak RSS of a fresh process that searches it, against its size on disk.
- **IVF-PQ** on the ``N × 512`` float32 store (``search.index=ivfpq``): trained on a separate sample of the same
  model (never the database), ``nlist`` cells, ``M`` codes of 8 bits, ``nprobe``; time per query and recall@100
  against the exact search.
- **D2R inverted file** at ``N`` simulated images (ASMK* binary 128-D items, the measured 67 items per image of the
  embedded runs spread over 1024 words): query time and bytes per image.
- **Extraction**: images per second of ResNet101 at 1024 px measured here (on the GPU when there is one, else the
  CPU: the JSON says which), and the projected wall time of R1M on 1, 8 and 64 devices (linear scaling, as the
  sharded extraction of ``trainer=ddp`` needs no communication between ranks).

    python benchmarks/scale.py --json OUT.json                   # N = 1,000,000: about 10 min on 2 cores, 7.2 GB disk
    python benchmarks/scale.py --n 20000 --json OUT.json         # a quick run
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table, set_threads, write_json  # noqa: E402

from lit_retrieval.retrieval.cache import DescriptorCache  # noqa: E402
from lit_retrieval.retrieval.index import IndexSettings, build_index, measure_recall  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RANK, NOISE = 32, 0.1


def _basis(dim: int) -> np.ndarray:
    return np.random.default_rng(1234 + dim).standard_normal((RANK, dim)).astype(np.float32) / np.sqrt(RANK)


def draw(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` L2-normalised rows of the low-rank model."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, RANK), dtype=np.float32) @ _basis(dim)
    x += (NOISE / np.sqrt(dim)) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_store(folder: Path, n: int, dim: int, dtype: str, chunk: int) -> tuple[DescriptorCache, float]:
    cache = DescriptorCache(folder, {"simulated": [n, dim, dtype]}, chunk_size=chunk, dtype=dtype)
    t0 = time.perf_counter()
    for c, r in enumerate(cache.chunks(n)):
        if cache.peek(c) is None:
            cache.save(c, draw(len(r), dim, seed=c), np.zeros(len(r), bool))
    return cache, time.perf_counter() - t0


def _rss_probe(folder: Path, n: int, dim: int, dtype: str, chunk: int, queries: int) -> dict:
    """Search the store in a fresh process: its peak RSS, and its RSS before the search (after a first small
    search, so that faiss and BLAS have set up their per-thread buffers: what remains is the search's own)."""
    script = textwrap.dedent(f"""
        import json, time
        import numpy as np
        from lit_retrieval.retrieval.cache import DescriptorCache
        from lit_retrieval.retrieval.search import search
        status = lambda key: [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key)][0]
        cache = DescriptorCache({str(folder)!r}, {{"simulated": [{n}, {dim}, {dtype!r}]}}, chunk_size={chunk},
                                dtype={dtype!r})
        ranges = cache.chunks({n})
        store = cache.store(ranges, {dim}, np.zeros({n}, bool))
        q = np.asarray(store[np.arange({queries})])
        search(q, np.asarray(store[np.arange(2048)]), k=100)  # faiss / BLAS set up their per-thread buffers
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the RSS of now
            f.write("5")
        before = status("VmRSS")
        t0 = time.perf_counter()
        search(q, store, k=100)
        print(json.dumps({{"before": before, "peak": status("VmHWM"), "s": time.perf_counter() - t0,
                          "block_rows": store.block_rows()}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def stores(args, work: Path) -> tuple[list[dict], dict]:
    rows, caches = [], {}
    for dim, dtype in ((512, "float32"), (512, "float16"), (2048, "float16")):
        cache, t_write = write_store(work / f"{dim}-{dtype}", args.n, dim, dtype, args.chunk)
        caches[(dim, dtype)] = cache
        probe = _rss_probe(work / f"{dim}-{dtype}", args.n, dim, dtype, args.chunk, args.queries)
        size = sum(p.stat().st_size for p in cache.dir.glob("chunk_*.npy"))
        block = probe["block_rows"] * dim * 4
        rows.append({"dim": dim, "dtype": dtype, "n": args.n, "store_bytes": size,
                     "bytes_per_image": round(size / args.n, 1), "write_s": round(t_write, 1),
                     "exact_ms_per_query": round(1e3 * probe["s"] / args.queries, 2),
                     "rss_before_search_bytes": probe["before"], "peak_rss_bytes": probe["peak"],
                     "search_extra_rss_bytes": probe["peak"] - probe["before"], "block_bytes": block,
                     "peak_rss_over_store": round(probe["peak"] / size, 3)})
        print(f"store {args.n}×{dim} {dtype}: {size / 1e9:.2f} GB written in {t_write:.0f} s; exact search "
              f"{rows[-1]['exact_ms_per_query']:.0f} ms/query; peak RSS {probe['peak'] / 1e9:.2f} GB "
              f"({probe['before'] / 1e9:.2f} GB before the search)", flush=True)
    return rows, caches


def ivfpq(args, cache: DescriptorCache) -> dict:
    store = cache.store(cache.chunks(args.n), 512, np.zeros(args.n, bool))
    train = draw(args.train, 512, seed=10**6)  # a separate draw of the model: never the database
    queries = draw(args.queries, 512, seed=10**6 + 1)
    nlist = args.nlist or int(max(1, min(round(4 * np.sqrt(args.n)), args.train // 39)))
    settings = IndexSettings(index="ivfpq", k=100, nlist=nlist, M=args.M, nbits=8, nprobe=args.nprobe)
    t0 = time.perf_counter()
    ann = build_index(settings, store, train)
    build = time.perf_counter() - t0
    rec = measure_recall(ann, queries, store)
    out = {**{k: v for k, v in ann.info.items() if k != "build_s"}, "build_s": round(build, 1), **rec}
    print(f"IVF-PQ nlist={out['nlist']} M={out['M']} nprobe={out['nprobe']}: built in {build:.0f} s, "
          f"{out['ms_per_query']:.2f} ms/query (exact {out['exact_ms_per_query']:.0f}), recall@100 "
          f"{out['recall_at_100_vs_exact']:.3f}", flush=True)
    out["nprobe_sweep"] = []
    for nprobe in sorted({max(1, nlist // 128), max(1, nlist // 32), max(1, nlist // 8), nlist // 2} - {0}):
        ann.index.nprobe = nprobe
        r = measure_recall(ann, queries, store)
        out["nprobe_sweep"].append({"nprobe": nprobe, "ms_per_query": r["ms_per_query"],
                                    "recall_at_100_vs_exact": r["recall_at_100_vs_exact"]})
    return out


def d2r_inverted_file(n: int, items: int = 67, words: int = 1024, dim: int = 128, seed: int = 0) -> dict:
    """An ASMK* inverted file of ``n`` simulated images (binary items, ``items`` per image over ``words``)."""
    from lit_retrieval.methods.detect_to_retrieve.ivf import InvertedFile
    from lit_retrieval.methods.detect_to_retrieve.kernels import Aggregated

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    w = rng.integers(0, words, n * items, dtype=np.int64)
    ids = np.repeat(np.arange(n, dtype=np.int64), items)
    order = np.argsort(w, kind="stable")  # by word, then image (ids are already increasing)
    vecs = rng.integers(0, 256, (n * items, dim // 8), dtype=np.uint8)
    ivf = InvertedFile(w[order], ids[order], vecs, np.ones(n), dim, normalize=False)
    build = time.perf_counter() - t0
    qw = rng.choice(words, items, replace=False)
    query = Aggregated(words=np.sort(qw), vecs=rng.integers(0, 256, (items, dim // 8), dtype=np.uint8), dim=dim)
    ivf.search(query, k=100)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        ivf.search(query, k=100)
        times.append(time.perf_counter() - t0)
    out = {"images": n, "items_per_image": items, "words": words, "query_ms": round(1e3 * float(np.median(times)), 1),
           "bytes_per_image": round(ivf.bytes_per_image(), 1), "build_s": round(build, 1)}
    print(f"D2R inverted file, {n} images × {items} items: {out['query_ms']:.0f} ms/query, "
          f"{out['bytes_per_image']:.0f} bytes/image", flush=True)
    return out


def extraction(images: int) -> dict:
    """ResNet101 at 1024 px, images per second on this machine's device (untrained weights: same cost)."""
    import torch

    from lit_retrieval.backbones import build_backbone

    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = build_backbone("resnet101", weights="random").eval().to(device)
    x = torch.rand(1, 3, 768, 1024, device=device)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        net.features(x)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(images):
            net.features(x)
        if device == "cuda":
            torch.cuda.synchronize()
        rate = images / (time.perf_counter() - t0)
    r1m = 1_001_001
    hours = {str(g): round(r1m / (rate * g) / 3600, 2) for g in (1, 8, 64)}
    what = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"extraction: ResNet101 1024×768 on {what}: {rate:.2f} images/s -> R1M in {hours['1']} h on 1, "
          f"{hours['8']} h on 8, {hours['64']} h on 64 such devices", flush=True)
    return {"measured_on": "gpu" if device == "cuda" else "cpu", "device": what, "backbone": "resnet101",
            "image_size": [768, 1024], "images_per_s": round(rate, 3), "r1m_hours": hours}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="database rows / simulated images")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=4096, help="rows per chunk file of the simulated stores")
    ap.add_argument("--train", type=int, default=100_000, help="IVF-PQ training vectors (a separate draw)")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--M", type=int, default=128, help="IVF-PQ codes per 512-D vector (4-D sub-vectors)")
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--extract-images", type=int, default=3, help="ResNet101 images timed for the projection")
    ap.add_argument("--dir", default=str(ROOT / ".cache" / "benchmarks" / "scale"))
    ap.add_argument("--keep", action="store_true", help="keep the simulated stores (else removed at the end)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    threads = set_threads()
    work = Path(args.dir) / str(args.n)
    print(f"simulated scale: N = {args.n}, {args.queries} queries, {threads} threads; stores under {work}")
    try:
        rows, caches = stores(args, work)
        ivf = ivfpq(args, caches[(512, "float32")])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    d2r = d2r_inverted_file(args.n)
    ext = extraction(args.extract_images)
    print()
    print(markdown_table(["store", "size GB", "bytes/image", "exact ms/query", "peak RSS GB", "peak RSS / size",
                          "RSS added by the search, MB", "one block, MB"],
                         [[f"{r['n']}×{r['dim']} {r['dtype']}", f"{r['store_bytes'] / 1e9:.2f}",
                           f"{r['bytes_per_image']:.0f}", f"{r['exact_ms_per_query']:.0f}",
                           f"{r['peak_rss_bytes'] / 1e9:.2f}", f"{r['peak_rss_over_store']:.2f}",
                           f"{r['search_extra_rss_bytes'] / 1e6:.0f}", f"{r['block_bytes'] / 1e6:.0f}"]
                          for r in rows]))
    print()
    print(markdown_table(["search", "ms/query", "recall@100 vs exact", "bytes/image"],
                         [["exact, 512-D float32", f"{ivf['exact_ms_per_query']:.1f}", "1", "2048"],
                          [f"IVF-PQ nlist={ivf['nlist']} M={ivf['M']} nprobe={ivf['nprobe']}",
                           f"{ivf['ms_per_query']:.2f}", f"{ivf['recall_at_100_vs_exact']:.3f}",
                           str(ivf["bytes_per_image"])],
                          *[[f"IVF-PQ nprobe={r['nprobe']}", f"{r['ms_per_query']:.2f}",
                             f"{r['recall_at_100_vs_exact']:.3f}", str(ivf["bytes_per_image"])]
                            for r in ivf["nprobe_sweep"]],
                          [f"D2R inverted file ({d2r['items_per_image']} items/image)", f"{d2r['query_ms']:.1f}", "",
                           f"{d2r['bytes_per_image']:.0f}"]]))
    write_json(args.json, {"n": args.n, "queries": args.queries, "threads": threads, "stores": rows, "ivfpq": ivf,
                           "d2r_inverted_file": d2r, "extraction": ext})


if __name__ == "__main__":
    main()
