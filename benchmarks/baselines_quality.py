"""The non-learned baselines and the learned whitenings, with 95% bootstrap intervals and paired differences.

For each benchmark: mac / spoc / gem / crow / rmac without whitening, then GeM with PCA-whitening learned on a
disjoint set (the default, a procedural benchmark of another seed), PCA-whitening learned on the evaluated
database itself (transductive: shown to say what that would have reported), and supervised Lw whitening. Every
mAP comes with its bootstrap interval over queries, and every row with the paired interval of its medium mAP
minus GeM's (no whitening) on the same queries.

    python benchmarks/baselines_quality.py                      # embedded and cocoheld (../shared/data)
    python benchmarks/baselines_quality.py --datasets embedded --json OUT.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ROWS = {  # name -> eval.py overrides
    "mac": ["method=mac"],
    "spoc": ["method=spoc"],
    "gem (p = 3)": ["method=gem"],
    "crow": ["method=crow"],
    "rmac (L = 3, cirtorch)": ["method=rmac"],
    "gem + PCA-whitening (disjoint set, default)": ["method=gem", "whitening=pca"],
    "gem + PCA-whitening on the evaluated database (transductive)": ["method=gem", "whitening=pca",
                                                                    "whitening.dataset.kind=transductive"],
    "gem + Lw whitening (disjoint set, default)": ["method=gem", "whitening=lw"],
}
REFERENCE = "gem (p = 3)"
DATASETS = {"embedded": ["dataset=embedded"], "cocoheld": ["dataset=cocopaste_heldout"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--json", default=None, help="also write every result here")
    args = ap.parse_args()

    import numpy as np
    from hydra import compose, initialize_config_dir

    from lit_retrieval.evaluate import run_eval
    from lit_retrieval.metrics import format_ci, format_diff, paired_bootstrap

    def aps(res: dict, proto: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in res["ap_per_query"][proto]], dtype=np.float64)

    out: dict[str, dict[str, dict]] = {}
    for ds_name in args.datasets:
        out[ds_name] = {}
        for row, overrides in ROWS.items():
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose("eval", overrides=[*DATASETS[ds_name], *overrides, f"backbone={args.backbone}",
                                                 f"image_size={args.image_size}", "plots.enabled=false",
                                                 "num_workers=0"])
            with tempfile.TemporaryDirectory() as run_dir:
                out[ds_name][row] = run_eval(cfg, run_dir)
        ref = out[ds_name][REFERENCE]
        first = next(iter(out[ds_name].values()))
        print(f"\n## {ds_name}: {first['n_queries']} queries, {first['n_db']} database images; mAP (%) with its 95% "
              f"bootstrap interval; Δ M = medium mAP minus {REFERENCE}'s, paired over the same queries\n")
        print("| method | easy | medium | hard | Δ M vs GeM | whitening learned on (overlap) |")
        print("|---|---|---|---|---|---|")
        for row, res in out[ds_name].items():
            cells = [format_ci(res["map"][p], res["map_ci95"][p]) for p in ("easy", "medium", "hard")]
            diff = "" if row == REFERENCE else format_diff(paired_bootstrap(aps(res, "medium"), aps(ref, "medium")))
            w = res["whitening"]
            seen = "—" if w["kind"] == "none" else f"{w['dataset']}, {w['n_images']} images ({w['overlap']})"
            print(f"| {row} | " + " | ".join(cells) + f" | {diff} | {seen} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
