"""Kim & Yoon's Table 2a/2c on our data: R-MAC vs mean-pooled R-MAC vs regional attention (no context, context)
for S = 3..6, same backbone and regions, evaluated with ``eval.py``'s run on the given benchmarks.

    python benchmarks/regional_attention_quality.py --context RUN_CTX/checkpoints/best.ckpt \\
        --no-context RUN_NOCTX/checkpoints/best.ckpt --datasets cocopaste_heldout embedded

The checkpoints come from ``python train.py experiment=regional_attention_shared [model.context=false]`` (chosen
on the validation benchmark ``cocoval``; ``cocopaste_heldout`` is the held-out part of the same image split).
Prints one markdown table per dataset: mAP Easy / Medium / Hard (%) [95% bootstrap CI] per method and S, then the
paired bootstrap intervals of the medium-mAP differences that the paper's claims rest on.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LIT_RETRIEVAL_ROOT", str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", required=True, help="checkpoint trained with model.context=true")
    ap.add_argument("--no-context", default=None, help="checkpoint trained with model.context=false (optional)")
    ap.add_argument("--datasets", nargs="+", default=["cocopaste_heldout", "embedded"])
    ap.add_argument("--scales", nargs="+", type=int, default=[3, 4, 5, 6])
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--out", default=str(ROOT / "logs" / "quality"))
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    from lit_retrieval.evaluate import run_eval
    from lit_retrieval.metrics import format_diff, format_maps, paired_bootstrap

    def medium(r: dict) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in r["ap_per_query"]["medium"]], dtype=np.float64)

    rmac, uniform, att, ctx = ("R-MAC (cirtorch, sum, no whitening)", "mean-pooled R-MAC (PCA-whitened regions, Φ ≡ 1)",
                               "+ regional attention Φ(k)", "+ context Φ(k ⊕ J(V_I))")
    methods = {
        rmac: lambda S: ["method=rmac", f"method.L={S}"],
        uniform: lambda S: [
            "method=regional_attention", f"ckpt_path={args.context}", "method.uniform=true", f"method.scales={S}"],
        att: lambda S: [
            "method=regional_attention", f"ckpt_path={args.no_context}", f"method.scales={S}"],
        ctx: lambda S: [
            "method=regional_attention", f"ckpt_path={args.context}", f"method.scales={S}"],
    }
    if args.no_context is None:
        methods.pop(att)
    for ds in args.datasets:
        res: dict[str, dict[int, dict]] = {}
        for i, (name, over) in enumerate(methods.items()):
            for S in args.scales:
                with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                    cfg = compose("eval", overrides=[f"dataset={ds}", "backbone=efficientnet_lite0",
                                                     f"image_size={args.image_size}", "plots.enabled=false",
                                                     *over(S)])
                res.setdefault(name, {})[S] = run_eval(cfg, Path(args.out) / ds / f"{i}-S{S}")
        some = res[ctx][args.scales[0]]
        learned = {k: v for k, v in some.get("learned", {}).items()}
        print(f"\n{ds}: mAP E / M / H (%) [95% bootstrap CI], efficientnet_lite0, image_size {args.image_size}; "
              + "; ".join(f"{k} learned on {v['dataset']} ({v['n_images']} images, overlap {v['overlap']})"
                          for k, v in learned.items()))
        print("| method | " + " | ".join(f"S = {S}" for S in args.scales) + " |")
        print("|---|" + "---|" * len(args.scales))
        for name, by_s in res.items():
            print(f"| {name} | " + " | ".join(format_maps(by_s[S]["map"], by_s[S]["map_ci95"])
                                             for S in args.scales) + " |")
        print(f"\n{ds}: medium-mAP differences, paired bootstrap 95% intervals over the same queries")
        print("| difference | " + " | ".join(f"S = {S}" for S in args.scales) + " |")
        print("|---|" + "---|" * len(args.scales))
        pairs = [(ctx, uniform), (ctx, rmac)] + ([(att, uniform), (ctx, att)] if att in res else [])
        for a, b in pairs:
            print(f"| {a.lstrip('+ ')} − {b.lstrip('+ ').split(' (')[0]} | " + " | ".join(
                format_diff(paired_bootstrap(medium(res[a][S]), medium(res[b][S])), 1) for S in args.scales)
                + " |", flush=True)


if __name__ == "__main__":
    main()
