"""R-MAC → +AML → +AML+QE (Tolias et al., Table 2 / Fig. 4 on our data): mAP E / M / H of the initial ranking,
after AML re-ranking and after AML query expansion, for MAC and R-MAC filtering; mAP vs the number N of
re-ranked images (the shape of Fig. 4, also written as a PNG); the cost of the Sec. 7 quantization
(mAP and bytes per image, quantized vs raw float32 maps); and the reference-code options and the α-weighted
window QE against the paper's defaults, with bootstrap intervals (``--variants``). Each row is one ``eval.py``
run, e.g.

    python eval.py method=rmac rerank=aml qe=aml dataset=cocopaste backbone=efficientnet_lite0 image_size=512

    python benchmarks/aml_quality.py --datasets cocopaste embedded
    python benchmarks/aml_quality.py --datasets embedded --variants-only
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LIT_RETRIEVAL_ROOT", str(ROOT))


PROTOCOLS = ("easy", "medium", "hard")
# (label, overrides): the paper's defaults, then one change each (conf/rerank/aml.yaml, conf/qe/aml.yaml)
VARIANTS = (
    ("R-MAC (paper defaults)", ("method=rmac",)),
    ("R-MAC, qe.weighting=alpha (α = 3)", ("method=rmac", "qe.weighting=alpha")),
    ("R-MAC, rerank.root=aml_c", ("method=rmac", "rerank.root=aml_c")),
    ("R-MAC, rerank.window_power=2", ("method=rmac", "rerank.window_power=2")),
    ("MAC (paper defaults)", ("method=mac",)),
    ("MAC, rerank.window_power=2", ("method=mac", "rerank.window_power=2")),
    ("MAC, root=aml_c + window_power=2 (test.m)", ("method=mac", "rerank.root=aml_c", "rerank.window_power=2")),
)


def variants_table(run, ds: str) -> None:
    """Per variant: mAP E / M / H [95% CI] of each stage and the paired differences to the initial ranking."""
    from lit_retrieval.metrics import format_ci, format_diff

    print(f"\n{ds}: reference options and window-QE weighting, mAP E / M / H (%) [95% bootstrap CI]; "
          "differences are paired bootstrap intervals against the initial ranking")
    print("| variant | stage | mAP E / M / H | − initial E / M / H |\n|---|---|---|---|")
    for label, over in VARIANTS:
        r = run(ds, "var-" + "-".join(o.split("=")[-1] for o in over), *over, "rerank=aml", "qe=aml",
                "plots.enabled=false")
        for stage, maps in r["stages"].items():
            ci = r["stages_ci95"][stage]
            diff = r["stage_differences"].get(f"{stage} - initial")
            print(f"| {label} | {stage} | " + " · ".join(format_ci(maps[p], ci[p]) for p in PROTOCOLS) + " | "
                  + ("—" if diff is None else " · ".join(format_diff(diff[p]) for p in PROTOCOLS)) + " |",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["cocopaste", "embedded"])
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--n-sweep", nargs="+", type=int, default=[5, 10, 25, 50, 100, 200, 1000])
    ap.add_argument("--out", default=str(ROOT / "logs" / "aml"))
    ap.add_argument("--variants-only", action="store_true", help="only the reference-option / QE-weighting table")
    ap.add_argument("--no-variants", action="store_true", help="skip the reference-option / QE-weighting table")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hydra import compose, initialize_config_dir

    from lit_retrieval.evaluate import run_eval
    from lit_retrieval.metrics import format_diff, format_maps

    def run(ds: str, tag: str, *over: str) -> dict:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("eval", overrides=[f"dataset={ds}", "backbone=efficientnet_lite0",
                                             f"image_size={args.image_size}", *over])
        return run_eval(cfg, Path(args.out) / ds / tag)

    for ds in args.datasets:
        if not args.no_variants:
            variants_table(run, ds)
        if args.variants_only:
            continue
        print(f"\n{ds}: mAP E / M / H (%) [95% bootstrap CI], efficientnet_lite0, image_size {args.image_size}, "
              "N = all, t = 3, s = 1.1; Δ M: paired bootstrap interval of the medium-mAP change from the initial "
              "ranking")
        print("| filtering | initial | + AML | + AML + QE | Δ M AML | Δ M AML + QE | stored bytes / image "
              "(float32) | s / query |")
        print("|---|---|---|---|---|---|---|---|")
        results = {}
        for method in ("mac", "rmac"):
            for quant in (True, False):
                r = run(ds, f"{method}-q{int(quant)}", f"method={method}", "rerank=aml", "qe=aml",
                        f"rerank.store.quantize={str(quant).lower()}", f"plots.enabled={str(quant).lower()}")
                results[(method, quant)] = r
                st, ci, diffs, info = r["stages"], r["stages_ci95"], r["stage_differences"], r["rerank"]
                b = info["bytes_per_image"]
                print(f"| {method.upper().replace('RMAC', 'R-MAC')}{'' if quant else ' (raw maps)'} | "
                      + " | ".join(format_maps(st[s], ci[s]) for s in ("initial", "aml", "aml_qe")) + " | "
                      + " | ".join(format_diff(diffs[f"{s} - initial"]["medium"], 1) for s in ("aml", "aml_qe"))
                      + f" | {b['stored'] / 1024:.0f} kB ({b['raw_float32'] / 1024:.0f} kB) | "
                      f"{info['time_s']['per_query']:.3f} |", flush=True)
        curves = {"AML": [], "AML + QE": []}
        ns = [n for n in args.n_sweep if n <= results[("rmac", True)]["n_db"]] + [results[("rmac", True)]["n_db"]]
        ns = sorted(set(ns))
        print(f"\n{ds}: R-MAC mAP Medium (%) vs N re-ranked (0 = no re-ranking)")
        print("| N | " + " | ".join(str(n) for n in [0, *ns]) + " |\n|---|" + "---|" * (len(ns) + 1))
        for n in ns:
            st = run(ds, f"rmac-n{n}", "method=rmac", "rerank=aml", "qe=aml", f"rerank.n={n}",
                     "plots.enabled=false")["stages"]
            curves["AML"].append(st["aml"]["medium"])
            curves["AML + QE"].append(st["aml_qe"]["medium"])
        base = results[("rmac", True)]["stages"]["initial"]["medium"]
        for name, c in curves.items():
            print(f"| {name} | {base:.1f} | " + " | ".join(f"{v:.1f}" for v in c) + " |")
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        for name, c in curves.items():
            ax.plot([0, *ns], [base, *c], marker="o", label=name)
        ax.set(xscale="symlog", xlabel="N re-ranked", ylabel="mAP Medium (%)", title=f"R-MAC + AML on {ds}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png = Path(args.out) / ds / "map_vs_n.png"
        fig.savefig(png)
        plt.close(fig)
        print(f"(plot: {png})", flush=True)


if __name__ == "__main__":
    main()
