"""Detect-to-Retrieve (Teichmann et al.) on our data: the detector's AP@0.5 on held-out synthetic boxes, regions per
image vs threshold, Table 1 / Fig. 4 (ASMK* vs D2R-ASMK* (regional search, max / avg) vs D2R-R-ASMK* across
detection thresholds, with relative database size), R-VLAD and Naive-R-ASMK as regions grow, RMAC boxes (1-3
levels) vs detector boxes, and speed / memory (aggregation time per image, inverted-file query time, bytes per image
of D2R-R-ASMK* over ASMK*).

The benchmark is the held-out cut-and-paste one (``cocoheld``: part 2 of the by-image split of ../shared/data, the
detector trained on parts 0/1), the codebook is learned on the training part of imagenet-samples (never the
evaluated images). Every variant uses the functions of ``eval.py method=d2r``::

    python train.py experiment=landmark_detector_shared hydra.run.dir=RUN
    python benchmarks/d2r_quality.py --detector RUN/checkpoints/best.ckpt
    python benchmarks/d2r_quality.py --detector RUN/checkpoints/best.ckpt --low 0.1 --max-boxes 3 --rmac-levels 2
                                                            # eval.py's defaults, about 12 min on 2 cores
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LIT_RETRIEVAL_ROOT", str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
SPLIT = {"fractions": (0.45, 0.15, 0.4), "seed": 0}  # as the *_shared experiments (part 2 = cocoheld)
THRESHOLDS = (0.7, 0.5, 0.3, 0.1)


def benchmark(cache: Path):
    from lit_retrieval.data import load_dataset

    return load_dataset({"kind": "cocopaste", "name": "cocoheld", "seed": 0, "n_queries": 16, "n_distractors": 50,
                         "n_backgrounds": 200, "n_shuffled": 0, "shuffle_copies": 0,
                         "split": {**SPLIT, "part": 2}, "coco_dir": str(SHARED / "coco128"),
                         "backgrounds_dir": str(SHARED / "imagenet-samples"), "cache_dir": str(cache / "datasets")})


def detector_ap(net, n_syntheses: int = 4) -> dict:
    """AP@0.5 (COCOeval) on boxes pasted from the held-out part 2 objects onto part 2 backgrounds."""
    import numpy as np
    import torch

    from lit_retrieval.data.pairs import make_backgrounds, make_objects, split_sources
    from lit_retrieval.methods.detect_to_retrieve.detector.ap import coco_ap
    from lit_retrieval.methods.detect_to_retrieve.detector.data import SyntheticBoxes, box_paste_params

    objs, bgs = split_sources(make_objects({"kind": "coco", "dir": str(SHARED / "coco128")}),
                              make_backgrounds({"kind": "folder", "dir": str(SHARED / "imagenet-samples")}),
                              SPLIT["fractions"], SPLIT["seed"])
    data = SyntheticBoxes(objs[2], bgs[2], syntheses=n_syntheses, image_size=384, paste=box_paste_params(), seed=123,
                          resample=False)
    gts, dets = [], []
    net.eval()
    with torch.inference_mode():
        for i in range(len(data)):
            img, boxes, _ = data.load(i)
            out = net([torch.from_numpy(img).permute(2, 0, 1).float() / 255])[0]
            gts.append(boxes)
            dets.append((out["boxes"].numpy(), out["scores"].numpy()))
    ap = coco_ap(gts, dets)
    n_at = {t: float(np.mean([(s >= t).sum() for _, s in dets])) for t in THRESHOLDS}
    return {**ap, "images": len(data), "boxes_per_image": n_at}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", required=True,
                    help="RUN/checkpoints/best.ckpt of experiment=landmark_detector_shared")
    ap.add_argument("--cache", default=str(ROOT / ".cache"), help="dataset and codebook cache folder")
    ap.add_argument("--low", type=float, default=0.01, help="lowest threshold, for the many-regions degradation")
    ap.add_argument("--K", type=int, default=1024)
    ap.add_argument("--max-boxes", type=int, default=None,
                    help="at most this many detector boxes per image, by score, in every row (eval.py's "
                         "detector.max_boxes; default: every box above the threshold, the paper's rule)")
    ap.add_argument("--rmac-levels", type=int, default=3, help="RMAC boxes of levels 1 .. this (3: 21 regions per "
                    "image, about 20 s per image on 2 cores)")
    args = ap.parse_args()

    import numpy as np

    from lit_retrieval.backbones import build_backbone
    from lit_retrieval.methods.detect_to_retrieve.boxes import rmac_boxes
    from lit_retrieval.methods.detect_to_retrieve.database import Database, encode_image, variant_name
    from lit_retrieval.methods.detect_to_retrieve.features import ActivationFeatures
    from lit_retrieval.methods.detect_to_retrieve.pipeline import (RegionEncoder, Settings, codebook_paths,
                                                                   encode_database, encode_queries,
                                                                   learn_or_load_codebook)
    from lit_retrieval.data.provenance import LearnedSets
    from lit_retrieval.methods.detect_to_retrieve.detector.models import load_detector
    from lit_retrieval.metrics import compare, evaluate_ranks, format_diff, uncertainty
    from lit_retrieval.retrieval import dataset_items
    from lit_retrieval.retrieval.extract import image_loader

    cache = Path(args.cache)
    net = load_detector(args.detector)[0]
    det = detector_ap(net)
    print(f"\nDetector AP@0.5 on held-out synthetic boxes ({det['images']} images, {det['n_gt']} boxes): "
          f"{100 * det['AP50']:.1f} (AP {100 * det['AP']:.1f}); detections per image at threshold "
          + ", ".join(f"{t}: {n:.2f}" for t, n in det["boxes_per_image"].items()))

    data = benchmark(cache)
    backbone = build_backbone("efficientnet_lite0")
    s = Settings(K=args.K, threshold=args.low, max_boxes=args.max_boxes, codebook_dir=str(SHARED / "imagenet-samples"),
                 codebook_fractions=SPLIT["fractions"], codebook_split_seed=SPLIT["seed"], codebook_parts=(0,))
    ext = ActivationFeatures(backbone, s.scales, s.max_features)
    paths, source = codebook_paths(s, data)
    codebook_rec = LearnedSets(data).check_files("d2r_codebook", source, paths, "method.codebook.dir")
    key = {"backbone": backbone.name, "weights": "imagenet"}
    cb = learn_or_load_codebook(ext, s, paths, 512, "cpu", str(cache), key, source)
    db_items, q_items = dataset_items(data, "db"), dataset_items(data, "query")
    # queries as every method loads them: cropped to the box, shrunk by the full image's scale
    queries, _ = encode_queries(image_loader(q_items, range(len(q_items)), 512), len(q_items), ext, cb,
                                ["vlad", "asmk", "asmk_star"])

    def describe(settings: Settings):
        t0 = time.perf_counter()
        enc, regions = encode_database(image_loader(db_items, range(len(db_items)), 512), len(db_items),
                                       RegionEncoder(settings, ext, cb, net), [("asmk_star", "none")],
                                       keep_regions=True)
        return enc, regions, (time.perf_counter() - t0) / len(db_items)

    def evaluate(regions, kernel: str, aggregation: str, normalize: str | bool = "paper"):
        t0 = time.perf_counter()
        items = [encode_image(r, cb.centroids, kernel, aggregation) for r in regions]
        t_agg = (time.perf_counter() - t0) / len(regions)
        db = Database.build(items, kernel, aggregation, normalize=normalize)
        t1 = time.perf_counter()
        ranks = db.rank(queries[kernel])
        t_q = (time.perf_counter() - t1) / len(queries[kernel])
        m = evaluate_ranks(ranks.T, data.gnd, data.protocol)
        return {"M": m["medium"]["map"], "H": m["hard"]["map"], "size": db.relative_size,
                "bytes": db.bytes_per_image, "t_agg": t_agg, "t_q": t_q, "metrics": m,
                "ci": uncertainty(m)["map_ci95"]}

    def mh(r: dict) -> str:
        """mAP Medium / Hard with their 95% bootstrap intervals."""
        return " / ".join(f"{r[k]:.1f} [{r['ci'][p][0]:.0f}, {r['ci'][p][1]:.0f}]"
                          for k, p in (("M", "medium"), ("H", "hard")))

    def vs(r: dict, ref: dict) -> str:
        """Paired bootstrap interval of the medium-mAP difference to ``ref`` (same queries)."""
        return format_diff(compare(r["metrics"], ref["metrics"])["medium"], 1)

    enc, regions, t_describe = describe(s)

    def at(t: float):
        return [[r[0]] + [r[1 + j] for j in np.flatnonzero(sc >= t)] for r, sc in zip(regions, enc.scores)]

    whole = [[r[0]] for r in regions]
    print(f"\ncocoheld: {data.n_db} images, {data.n_queries} queries; codebook K={cb.K} on {source} "
          f"({codebook_rec['n_images']} images, overlap with the benchmark {codebook_rec['overlap']}); "
          f"features + regions at threshold {args.low}"
          + ("" if args.max_boxes is None else f", at most {args.max_boxes} boxes per image (every row)")
          + f": {t_describe:.2f} s per image\n")
    print("Table 1 / Fig. 4 (mAP Medium / Hard, % [95% bootstrap CI]; Δ M: paired interval of the medium-mAP "
          "difference to ASMK*; size = stored items per image relative to ASMK*)\n")
    print("| method | threshold | regions/image | mAP M / H | Δ M vs ASMK* | size |\n|---|---|---|---|---|---|")
    base = evaluate(whole, "asmk_star", "none")
    print(f"| ASMK* | — | 1 | {mh(base)} | | 1 |")
    rows = {}
    thresholds = tuple(sorted(set(THRESHOLDS) | {args.low}, reverse=True))
    for agg in ("search_max", "search_avg", "r_asmk"):
        for t in thresholds:
            reg = at(t)
            r = evaluate(reg, "asmk_star", agg)
            rows[(agg, t)] = r
            n = np.mean([len(x) for x in reg])
            print(f"| {variant_name('asmk_star', agg, 'D2R')} | {t} | {n:.2f} | {mh(r)} | {vs(r, base)} | "
                  f"{r['size']:.2f} |", flush=True)

    print("\nSimple regional aggregation as regions grow (mAP M / H, % [95% bootstrap CI]; below each row the paired "
          "interval of its medium mAP minus the same kernel without boxes)\n")
    print("| method | no boxes | " + " | ".join(f"thr {t}" for t in thresholds) + " |")
    print("|---|---|" + "---|" * len(thresholds))
    for kernel, agg in (("vlad", "r_vlad"), ("asmk", "naive_r_asmk"), ("asmk", "r_asmk"), ("asmk_star", "r_asmk")):
        b = evaluate(whole, kernel, "none")
        cells, deltas = [mh(b)], [""]
        for t in thresholds:
            r = rows.get((agg, t)) if kernel == "asmk_star" else evaluate(at(t), kernel, agg)
            cells.append(mh(r))
            deltas.append(vs(r, b))
        print(f"| {variant_name(kernel, agg, 'D2R')} | " + " | ".join(cells) + " |")
        print("| Δ M | " + " | ".join(deltas) + " |", flush=True)

    print(f"\nRMAC boxes (levels 1-{args.rmac_levels}) vs detector boxes, ASMK* (mAP M / H, % [95% bootstrap CI]; "
          "Δ M: paired interval of the R-ASMK* medium mAP minus ASMK*)\n")
    print("| regions | regions/image | regional search (max) | R-ASMK* | Δ M R-ASMK* vs ASMK* | size (search) |\n"
          "|---|---|---|---|---|---|")
    levels = args.rmac_levels
    rmac_enc, rmac_regions, _ = describe(Settings(**{**s.__dict__, "boxes": "rmac", "rmac_levels": levels}))
    for L in range(1, levels + 1):  # rmac_boxes lists level 1, then 2, ...: level L is a prefix of the full list
        sub = [r[:1 + len(rmac_boxes(h, w, L))] for r, (h, w) in zip(rmac_regions, rmac_enc.sizes)]
        a, b = evaluate(sub, "asmk_star", "search_max"), evaluate(sub, "asmk_star", "r_asmk")
        n = np.mean([len(x) for x in sub])
        print(f"| RMACB L={L} | {n:.2f} | {mh(a)} | {mh(b)} | {vs(b, base)} | {a['size']:.2f} |")
    for t in (0.5, 0.1):
        a, b = rows[("search_max", t)], rows[("r_asmk", t)]
        n = np.mean([len(x) for x in at(t)])
        print(f"| D2R thr {t} | {n:.2f} | {mh(a)} | {mh(b)} | {vs(b, base)} | {a['size']:.2f} |")

    r = rows[("r_asmk", 0.1)]
    print("\nSpeed and memory (threshold 0.1)\n")
    print(f"- aggregation (quantisation + R-ASMK*) per image: {1000 * r['t_agg']:.1f} ms "
          f"(ASMK*: {1000 * base['t_agg']:.1f} ms); features + detection per image: {t_describe:.2f} s")
    print(f"- inverted-file query time: {1000 * r['t_q']:.2f} ms (ASMK*: {1000 * base['t_q']:.2f} ms) "
          f"over {data.n_db} images")
    print(f"- bytes per image: ASMK* {base['bytes']:.0f}, D2R-R-ASMK* {r['bytes']:.0f} "
          f"(ratio {r['bytes'] / base['bytes']:.2f}; the paper: 2.7x at R1M), "
          f"D2R-ASMK* (search) {rows[('search_max', 0.1)]['bytes']:.0f}")


if __name__ == "__main__":
    main()
