"""Kim & Yoon's Table 2a/2c on our data: R-MAC vs mean-pooled R-MAC vs regional attention (no context, context)
for S = 3..6, same backbone and regions, evaluated with ``eval.py``'s run on the given benchmarks.

    python benchmarks/regional_attention_quality.py --context RUN_CTX/checkpoints/best.ckpt \\
        --no-context RUN_NOCTX/checkpoints/best.ckpt --datasets cocopaste embedded

The checkpoints come from ``python train.py experiment=regional_attention_shared [model.context=false]``.
Prints one markdown table per dataset: mAP Easy / Medium / Hard (%) per method and S.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LIT_RETRIEVAL_ROOT", str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", required=True, help="checkpoint trained with model.context=true")
    ap.add_argument("--no-context", default=None, help="checkpoint trained with model.context=false (optional)")
    ap.add_argument("--datasets", nargs="+", default=["cocopaste", "embedded"])
    ap.add_argument("--scales", nargs="+", type=int, default=[3, 4, 5, 6])
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--out", default=str(ROOT / "logs" / "quality"))
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    from lit_retrieval.evaluate import run_eval

    methods = {
        "R-MAC (cirtorch, sum, no whitening)": lambda S: ["method=rmac", f"method.L={S}"],
        "mean-pooled R-MAC (PCA-whitened regions, Φ ≡ 1)": lambda S: [
            "method=regional_attention", f"ckpt_path={args.context}", "method.uniform=true", f"method.scales={S}"],
        "+ regional attention Φ(k)": lambda S: [
            "method=regional_attention", f"ckpt_path={args.no_context}", f"method.scales={S}"],
        "+ context Φ(k ⊕ J(V_I))": lambda S: [
            "method=regional_attention", f"ckpt_path={args.context}", f"method.scales={S}"],
    }
    if args.no_context is None:
        methods.pop("+ regional attention Φ(k)")
    for ds in args.datasets:
        rows = []
        for name, over in methods.items():
            cells = []
            for S in args.scales:
                with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                    cfg = compose("eval", overrides=[f"dataset={ds}", "backbone=efficientnet_lite0",
                                                     f"image_size={args.image_size}", "plots.enabled=false",
                                                     *over(S)])
                m = run_eval(cfg, Path(args.out) / ds / f"{len(rows)}-S{S}")["map"]
                cells.append(f"{m['easy']:.1f} / {m['medium']:.1f} / {m['hard']:.1f}")
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        print(f"\n{ds}: mAP E / M / H (%), efficientnet_lite0, image_size {args.image_size}")
        print("| method | " + " | ".join(f"S = {S}" for S in args.scales) + " |")
        print("|---|" + "---|" * len(args.scales))
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
