"""Local similarity (Chen et al.) on our data: Table 4 (global R-MAC vs GeM vs R-Match vs local vs local+global on the
held-out cut-and-paste benchmark and its shuffled-distractor version), Table 1 (classification loss only vs + the
localization loss), Table 5 (product quantization M = 32 / 64 / 128, without and with fine-tuning on quantized
grids) and Figs. 7-8 (fusion weight w, shortlist size K). Every number is what ``eval.py method=local_similarity``
gives (the same ``describe`` + ``score``; its four rankings are the ``stages`` of results.json)::

    python train.py experiment=local_similarity_shared hydra.run.dir=RUN
    python train.py experiment=local_similarity_shared model.lam=0 hydra.run.dir=RUN_CLS
    python train.py experiment=local_similarity_shared model.quantize.M=128 trainer.max_epochs=3 \\
        model.init_from=RUN/checkpoints/best.ckpt hydra.run.dir=RUN_PQ128          # and M = 32, 64
    python benchmarks/local_similarity_quality.py --main RUN --cls RUN_CLS --pq 32=RUN_PQ32 64=RUN_PQ64 128=RUN_PQ128
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LIT_RETRIEVAL_ROOT", str(ROOT))

DATASETS = {"cocoheld": [], "cocoheld_shf": ["dataset.shuffle_copies=3"]}
# Table 5's plain columns: a quantizer learned on a cut-and-paste draw of the training part of the image split
# (the benchmark's part 2 is never seen), as a stored gallery would be built
PQ_SOURCE = {"kind": "cocopaste", "name": "cocotrain", "seed": 1, "n_queries": 24, "n_distractors": 50,
             "n_backgrounds": 200, "n_shuffled": 0, "split": {"fractions": [0.45, 0.15, 0.4], "seed": 0, "part": 0},
             "coco_dir": str(ROOT.parent / "shared" / "data" / "coco128"),
             "backgrounds_dir": str(ROOT.parent / "shared" / "data" / "imagenet-samples"),
             "cache_dir": str(ROOT / ".cache" / "datasets")}


def fmt(m: dict) -> str:
    """mAP E / M / H (%) [95% bootstrap CI] of an ``evaluate_ranks`` output."""
    from lit_retrieval.metrics import format_maps, uncertainty

    return format_maps({p: v["map"] for p, v in m.items()}, uncertainty(m)["map_ci95"])


def delta(a: dict, b: dict) -> str:
    """Paired bootstrap interval of medium mAP(a) − mAP(b) on the same queries."""
    from lit_retrieval.metrics import compare, format_diff

    return format_diff(compare(a, b)["medium"], 1)


def history(run: str, last: int) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Mean, min and max mAP (E/M/H) per ``dataset/method`` over the last ``last`` retrieval evaluations of a run's
    callback (``retrieval.json``): a selection-free summary of a noisy SGD run."""
    import json

    import numpy as np

    hist = json.loads((Path(run) / "retrieval.json").read_text())["history"][-last:]
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for key in hist[0]:
        if key.startswith("retrieval/") and "/mAP_" in key:
            _, ds, method, m = key.split("/")
            v = np.array([h[key] for h in hist])
            out.setdefault(f"{ds}/{method}", {})[m[-1]] = (float(v.mean()), float(v.min()), float(v.max()))
    return out


def print_history(runs: dict[str, str], last: int) -> None:
    print(f"\nTraining callback, mean (min–max) mAP over the last {last} epochs, E / M / H (%)\n")
    print("| run | dataset | method | mAP |\n|---|---|---|---|")
    for label, run in runs.items():
        for name, m in sorted(history(run, last).items()):
            ds, method = name.split("/")
            cells = " / ".join(f"{m[p][0]:.1f}" for p in "EMH")
            spread = f"M {m['M'][1]:.1f}–{m['M'][2]:.1f}"
            print(f"| {label} | {ds} | {method} | {cells} ({spread}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--main", required=True, help="run folder of experiment=local_similarity_shared")
    ap.add_argument("--cls", default=None, help="run folder of the same with model.lam=0 (Table 1)")
    ap.add_argument("--pq", nargs="*", default=[], help="M=RUN of the quantized fine-tuning runs (Table 5)")
    ap.add_argument("--checkpoint", default="best.ckpt")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--last", type=int, default=4, help="epochs averaged from the training callback's history")
    args = ap.parse_args()
    print_history({"L_cls + 0.05 L_loc": args.main, **({"L_cls": args.cls} if args.cls else {})}, args.last)

    from hydra import compose, initialize_config_dir

    from lit_retrieval.backbones import build_backbone
    from lit_retrieval.data import load_dataset
    from lit_retrieval.backbones.weights import weights_identity
    from lit_retrieval.methods.local_similarity import Settings, describe, fused_ranks, learn_quantizer, score
    from lit_retrieval.methods.local_similarity.pq import GridQuantizer
    from lit_retrieval.methods.local_similarity.network import stored_quantizer
    from lit_retrieval.metrics import evaluate_ranks
    from lit_retrieval.methods.local_similarity.network import load_local_similarity
    from lit_retrieval.retrieval import Loading, build_method, dataset_items, extract, search

    backbone = build_backbone("efficientnet_lite0", weights="imagenet")
    key = {"backbone": backbone.name, "weights": weights_identity("imagenet", 0)}

    def ckpt(run: str) -> str:
        return str(Path(run) / "checkpoints" / args.checkpoint)

    def dataset_cfg(extra: list[str]):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("eval", overrides=["dataset=cocopaste_heldout", *extra])

    for ds_name, extra in DATASETS.items():
        cfg = dataset_cfg(extra)
        data = load_dataset(cfg.dataset)
        kw = dict(loading=Loading(args.image_size), cache_root=str(cfg.cache.dir), base_key=key)

        def maps(ranks):
            return evaluate_ranks(ranks.T, data.gnd, data.protocol)

        def run(run_dir: str, pq: int | None = None, stored: bool = False):
            """``pq``: quantized gallery grids, by the quantizer stored in the run's checkpoint (``stored``, the one
            its subnet was fine-tuned on) or by one learned on PQ_SOURCE (a training-side draw, never the benchmark)."""
            net = load_local_similarity(ckpt(run_dir), backbone)
            db, q = describe(net, data, "db", **kw), describe(net, data, "query", **kw)
            s = Settings(pq=pq)
            quantizer = None
            if pq is not None and stored:
                quantizer = GridQuantizer.from_state(stored_quantizer(ckpt(run_dir)))
            elif pq is not None:
                quantizer = learn_quantizer(net, PQ_SOURCE, data, db, pq, 8, s, kw)[0]
            return score(net, db, q, s, progress=False, quantizer=quantizer)

        print(f"\n## {ds_name}: {data.n_db} database images, {data.n_queries} queries; mAP E / M / H (%)")
        gem = build_method("gem", backbone, p=3.0).eval()
        loading = Loading(args.image_size, progress=False)
        g_db = extract(dataset_items(data, "db"), gem, backbone.normalize, loading)[0]
        g_q = extract(dataset_items(data, "query"), gem, backbone.normalize, loading)[0]
        main_out = run(args.main)
        r = main_out["rankings"]
        t4 = {"global: R-MAC (the shortlist's)": maps(r["global"]), "global: GeM": maps(search(g_q, g_db)[1]),
              "R-Match (eq. 2, same grids)": maps(r["rmatch"]), "local": maps(r["local"]),
              "local + global": maps(r["local_global"])}
        base, rm = t4["global: R-MAC (the shortlist's)"], t4["R-Match (eq. 2, same grids)"]
        print("\nTable 4 (K = all, w = 0.9); mAP [95% bootstrap CI]; Δ M: paired interval of the medium-mAP "
              "difference\n\n| similarity | mAP | Δ M vs R-MAC | Δ M vs R-Match |\n|---|---|---|---|")
        for name, m in t4.items():
            print(f"| {name} | {fmt(m)} | {'' if m is base else delta(m, base)} | "
                  f"{delta(m, rm) if name.startswith('local') else ''} |")
        info = main_out["info"]
        print(f"\n{info['pairs_per_s']} pairs/s; local scoring {info['time_s']['local_per_query']} s per query "
              f"(K = {info['K']}); R-Match {info['time_s']['rmatch_per_query']} s per query")

        sg, sl, short = main_out["s_global"], main_out["s_local"], main_out["short"]
        ws = [0.0, 0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0]
        print("\nFig. 7: fusion weight w (K = all), mAP Medium: " + ", ".join(
            f"w={w} {maps(fused_ranks(sg, short, sl, w))['medium']['map']:.1f}" for w in ws))
        Ks = [k for k in (5, 10, 20, 50, 100, 200) if k < short.shape[1]] + [short.shape[1]]
        print("Fig. 8: shortlist size K (w = 0.9), mAP Medium: " + ", ".join(
            f"K={k} {maps(fused_ranks(sg, short[:, :k], sl[:, :k], 0.9))['medium']['map']:.1f}" for k in Ks))

        if args.cls:
            rc = run(args.cls)["rankings"]
            cl, cg = maps(rc["local"]), maps(rc["local_global"])
            print("\nTable 1 (loss)\n\n| loss | local | local + global |\n|---|---|---|")
            print(f"| L_cls | {fmt(cl)} | {fmt(cg)} |")
            print(f"| L_cls + 0.05 L_loc | {fmt(t4['local'])} | {fmt(t4['local + global'])} |")
            print(f"| Δ M (+ L_loc − L_cls) | {delta(t4['local'], cl)} | {delta(t4['local + global'], cg)} |")

        if args.pq and ds_name == "cocoheld":
            print("\nTable 5 (local, product-quantized gallery grids; * = subnet fine-tuned on quantized grids)\n")
            print("| M | compression | local | local + global | local * | local + global * |")
            print("|---|---|---|---|---|---|")
            for spec in args.pq:
                M, run_dir = spec.split("=", 1)
                a = run(args.main, pq=int(M))
                b = run(run_dir, pq=int(M), stored=True)
                print(f"| {M} | {a['info']['bytes_per_image']['compression']}× | {fmt(maps(a['rankings']['local']))} "
                      f"| {fmt(maps(a['rankings']['local_global']))} | {fmt(maps(b['rankings']['local']))} | "
                      f"{fmt(maps(b['rankings']['local_global']))} |", flush=True)
            print(f"| full | 1× | {fmt(maps(r['local']))} | {fmt(maps(r['local_global']))} | | |")


if __name__ == "__main__":
    main()
