"""Salient-region aggregation (Jeong et al., Table 1 / Fig. 1 on our data): mAP E / M / H of O1_W, O1_R, O2_W,
O2_R (1st / 2nd order; whole image only / all candidate regions), each without and with regional QE, cropped and
full queries, O2_R at D = 128 / 256 / 512, against R-MAC and GeM from the same run; regions and bytes per image;
proposal and description time per image; region-matching search time per query vs a single-vector search.

The variants share one pass-1 (regions) per dataset; each row is what ``eval.py`` gives for it (2nd-order bases
and whitening learned on ``method.pca_dataset``, by default the procedural benchmark of seed 1, checked by
content against the evaluated images), with 95% bootstrap intervals over queries and the paired interval of its
medium mAP minus GeM's, e.g.

    python eval.py method=salient_regions dataset=cocopaste backbone=efficientnet_lite0 image_size=512
    python eval.py method=salient_regions method.order=1 method.regions=whole qe=regional dataset=cocopaste ...

    python benchmarks/salient_quality.py --datasets embedded cocopaste_heldout
    python benchmarks/salient_quality.py --datasets cocopaste_heldout --pca-dataset cocotrain   # real-image PCA
    python benchmarks/salient_quality.py --datasets embedded --backbone resnet101 --weights random   # smoke check
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LIT_RETRIEVAL_ROOT", str(ROOT))


SHARED = ROOT.parent / "shared" / "data"
# a cut-and-paste draw of the training part of the by-image split whose held-out part is cocopaste_heldout: real
# photographs, none of the held-out benchmark's objects or backgrounds (checked by content)
PCA_DATASETS = {"cocotrain": {"kind": "cocopaste", "name": "cocotrain", "seed": 1, "n_queries": 24,
                              "n_distractors": 50, "n_backgrounds": 200, "n_shuffled": 0,
                              "split": {"fractions": [0.45, 0.15, 0.4], "seed": 0, "part": 0},
                              "coco_dir": str(SHARED / "coco128"), "backgrounds_dir": str(SHARED / "imagenet-samples"),
                              "cache_dir": str(ROOT / ".cache" / "datasets")}}


def medium_aps(m: dict):
    """Per-query medium APs (%) of an ``evaluate_ranks`` output or a results.json (NaN: no positives)."""
    import numpy as np

    if "ap_per_query" in m:
        return np.array([np.nan if v is None else v for v in m["ap_per_query"]["medium"]], dtype=np.float64)
    return 100 * np.asarray(m["medium"]["aps"], dtype=np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["embedded", "cocopaste_heldout"])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--dims", nargs="+", type=int, default=[128, 256, 512])
    ap.add_argument("--out", default=str(ROOT / "logs" / "salient"))
    ap.add_argument("--pca-dataset", default=None, choices=sorted(PCA_DATASETS),
                    help="learn the order-2 PCA here instead of the default method.pca_dataset")
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    from lit_retrieval.backbones import build_backbone
    from lit_retrieval.data import load_dataset
    from lit_retrieval.evaluate import run_eval
    from lit_retrieval.data.provenance import LearnedSets
    from lit_retrieval.metrics import evaluate_ranks, format_diff, format_maps, paired_bootstrap, uncertainty
    from lit_retrieval.retrieval import search
    from lit_retrieval.methods.salient_regions.matching import rank, region_similarity, regional_query_expansion
    from lit_retrieval.methods.salient_regions.pipeline import (SalientRegions, Settings, describe_dataset,
                                                                fallback_summary)

    common = [f"backbone={args.backbone}", f"backbone.weights={args.weights}", f"image_size={args.image_size}"]

    def cfg_for(ds: str, *over: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("eval", overrides=[f"dataset={ds}", *common, *over])

    for ds in args.datasets:
        cfg = cfg_for(ds, "method=salient_regions")
        dataset = load_dataset(cfg.dataset)
        backbone = build_backbone(args.backbone, weights=args.weights)
        runner = SalientRegions(backbone, Settings.from_cfg(cfg.method), args.image_size)
        pca_dataset = load_dataset(PCA_DATASETS[args.pca_dataset] if args.pca_dataset else cfg.method.pca_dataset)
        learned = LearnedSets(dataset)
        rec = learned.check_dataset("salient_pca", pca_dataset, "method.pca_dataset")
        print(f"\n{ds}: mAP E / M / H (%) [95% bootstrap CI], {args.backbone} ({args.weights}), image_size "
              f"{args.image_size}, {dataset.n_db} database images, {dataset.n_queries} queries; order-2 PCA learned "
              f"on {rec['dataset']} ({rec['n_images']} images, overlap {rec['overlap']}); Δ M: medium mAP minus "
              "GeM's, paired over the same queries")
        print("| method | D | regions / image | bytes / image | mAP | Δ M | + regional QE (N_QE = 10) | Δ M |")
        print("|---|---|---|---|---|---|---|---|")
        glob = {name: run_eval(cfg_for(ds, f"method={name}", "plots.enabled=false"), Path(args.out) / ds / name)
                for name in ("rmac", "gem")}
        ref = medium_aps(glob["gem"])
        dim = 1280 if args.backbone == "efficientnet_lite0" else 2048
        for name, r in glob.items():
            delta = "" if name == "gem" else format_diff(paired_bootstrap(medium_aps(r), ref), 1)
            print(f"| {'R-MAC' if name == 'rmac' else 'GeM'} (global) | {dim} | 1 | {dim * 4} | "
                  f"{format_maps(r['map'], r['map_ci95'])} | {delta} | | |", flush=True)
        variants = [Settings(order=1, regions="whole"), Settings(order=1, regions="all"),
                    Settings(order=2, regions="whole"), *[Settings(order=2, regions="all", dim=d) for d in args.dims],
                    Settings(order=2, regions="all", query="full")]
        speed = {}
        for s in variants:
            runner.s = replace(s, threshold=runner.s.threshold, n_min_fraction=runner.s.n_min_fraction)
            d = describe_dataset(runner, dataset, pca_dataset)
            t = time.perf_counter()
            scores, best = region_similarity(d.queries, d.db)
            _, ranks = rank(scores)
            t_search = (time.perf_counter() - t) / dataset.n_queries
            qe = regional_query_expansion(d.db, ranks, best, 10)
            ranks_qe = rank(region_similarity(qe, d.db)[0])[1]
            m0 = evaluate_ranks(ranks.T, dataset.gnd, dataset.protocol)
            m1 = evaluate_ranks(ranks_qe.T, dataset.gnd, dataset.protocol)
            D = d.db.vectors.shape[2]
            per = float(d.db.counts.mean())
            cells = []
            for m in (m0, m1):
                cells += [format_maps({p: v["map"] for p, v in m.items()}, uncertainty(m)["map_ci95"]),
                          format_diff(paired_bootstrap(medium_aps(m), ref), 1)]
            print(f"| {s.variant} | {D} | {per:.2f} | "
                  f"{per * D * 4:.0f} | " + " | ".join(cells) + " |", flush=True)
            if s.variant == "O2_R" and D == max(args.dims):
                t = time.perf_counter()
                search(d.queries.select(d.queries.counts - 1).vectors[:, 0],
                       d.db.select(d.db.counts - 1).vectors[:, 0])
                speed = {"search": t_search, "global": (time.perf_counter() - t) / dataset.n_queries, "regions": per}
        per_image = {k: runner.timer.get(k, 0.0) / max(runner.counts.get(k, 0), 1) for k in ("propose", "describe")}
        fb = fallback_summary(d.db_props)
        kept = "-" if fb["cells_kept_mean"] is None else f"{100 * fb['cells_kept_mean']:.1f}%"
        print(f"\n{ds}: {100 * fb['fraction']:.0f}% of database images had fewer than N_min = {runner.s.n_min} "
              f"Hessian-affine keypoints and took the largest α cells (method.n_min_fraction = "
              f"{runner.s.n_min_fraction}: a mean {kept} of the cells, {fb['cells_mean']} cells; every cell on "
              f"{fb['all_cells']} images)")
        print(f"\n{ds} speed: region proposal (backbone + keypoints + k-means + regions + 1st order) "
              f"{per_image['propose']:.3f} s per image; 2nd-order pass (backbone + eqs. 4-5) "
              f"{per_image['describe']:.3f} s per image; O2_R (D = {max(args.dims)}) search "
              f"{1e3 * speed['search']:.2f} ms per query over {dataset.n_db} images × {speed['regions']:.1f} "
              f"regions vs {1e3 * speed['global']:.2f} ms for a single-vector search")


if __name__ == "__main__":
    main()
