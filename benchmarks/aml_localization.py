"""AML localization quality (Tolias et al., Table 1 left, on our data): for every (query, positive) pair of a
cut-and-paste benchmark, the window AML finds vs the globally optimal one of exhaustive search (mean IoU, % of
windows evaluated) for t ∈ {1..5} and s ∈ {1.1, 1.5, 2.0}; and the IoU of the localized window to the box
where the query object was really pasted (which the benchmark records).

    python benchmarks/aml_localization.py --datasets cocopaste embedded

efficientnet_lite0 maps at image_size 512 (16×16 cells for a square image), quantized as ``rerank=aml`` stores
them (Sec. 7); queries are the cropped query boxes' MAC vectors.
"""
from __future__ import annotations

import argparse
import os
import pickle
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LIT_RETRIEVAL_ROOT", str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["cocopaste", "embedded"])
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--steps", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    ap.add_argument("--ratios", nargs="+", type=float, default=[1.1, 1.5, 2.0])
    args = ap.parse_args()

    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir
    from PIL import Image

    from lit_retrieval import pooling
    from lit_retrieval.backbones import build_backbone
    from lit_retrieval.boxes import Boxes, paired_iou as iou
    from lit_retrieval.data import load_dataset
    from lit_retrieval.methods.aml import (AMLSettings, count_all_windows, localize, localize_exhaustive,
                                           power_integral, quantize)
    from lit_retrieval.retrieval import ImageItem, image_loader

    torch.set_grad_enabled(False)
    for ds_name in args.datasets:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("eval", overrides=[f"dataset={ds_name}", "backbone=efficientnet_lite0"])
        ds = load_dataset(cfg.dataset)
        with open(Path(ds.root) / f"gnd_{ds.name}.pkl", "rb") as f:
            pasted = pickle.load(f)["boxes"]
        bb = build_backbone("efficientnet_lite0", weights=str(cfg.backbone.weights)).eval()

        def feats(items):
            return {i: bb(bb.normalize(img.unsqueeze(0)))[0] for i, img in image_loader(items, range(len(items)),
                                                                                         args.image_size)}

        q_items = [ImageItem(Path(p), tuple(b) if b is not None else None) for p, b in zip(ds.query_paths,
                                                                                           ds.query_bbx)]
        q_mac = {i: pooling.l2n(pooling.mac(f[None]))[0] for i, f in feats(q_items).items()}
        pairs = [(qi, int(d)) for qi, g in enumerate(ds.gnd) for d in np.concatenate([g["easy"], g["hard"]])]
        dbs = sorted({d for _, d in pairs})
        maps = feats([ImageItem(Path(ds.db_paths[d])) for d in dbs])
        levels = {d: torch.from_numpy(quantize(maps[j])[0].astype(np.float32)) for j, d in enumerate(dbs)}
        t0 = time.perf_counter()
        rows: dict[tuple[int, float], list[tuple[float, float]]] = {}
        true_iou, whole_iou = [], []
        for qi, d in pairs:
            b = ds.query_bbx[qi]
            q_ratio = (b[3] - b[1]) / (b[2] - b[0]) if b is not None else None
            sat = power_integral(levels[d][None])
            H, W = sat.shape[1] - 1, sat.shape[2] - 1
            opt = localize_exhaustive(sat, q_mac[qi]).boxes.numpy()
            n_all = count_all_windows(H, W)
            for t in args.steps:
                for s in args.ratios:
                    loc = localize(sat, q_mac[qi], q_ratio, AMLSettings(step=t, max_ratio=s))
                    rows.setdefault((t, s), []).append((float(iou(loc.boxes.numpy(), opt)[0]),
                                                        100.0 * float(loc.evaluated[0]) / n_all))
            name = Path(ds.db_paths[d]).stem
            if name in pasted:
                loc = localize(sat, q_mac[qi], q_ratio, AMLSettings(step=3, max_ratio=1.1))
                with Image.open(ds.db_paths[d]) as im:
                    w0, h0 = im.size
                truth = Boxes.of(np.array([pasted[name]], np.float64), size=(h0, w0)).to_cells((H, W)).numpy("yxyx")
                true_iou.append(float(iou(loc.boxes.numpy(), truth)[0]))
                whole_iou.append(float(iou(np.array([[0, 0, H, W]]), truth)[0]))
        elapsed = time.perf_counter() - t0
        print(f"\n{ds_name}: {len(pairs)} (query, positive) pairs, efficientnet_lite0 at {args.image_size}, "
              f"quantized maps ({elapsed:.0f} s)")
        print("AML vs exhaustive search: mean IoU with the optimal window (%) / windows evaluated (% of exhaustive)")
        print("| t | " + " | ".join(f"s = {s}: IoU | %W" for s in args.ratios) + " |")
        print("|---|" + "---|---|" * len(args.ratios))
        for t in args.steps:
            cells = []
            for s in args.ratios:
                v = np.array(rows[(t, s)])
                cells.append(f"{100 * v[:, 0].mean():.1f} | {v[:, 1].mean():.2f}")
            print(f"| {t} | " + " | ".join(cells) + " |")
        if true_iou:
            print("IoU of the AML window (t = 3, s = 1.1) with the true pasted box: "
                  f"mean {100 * np.mean(true_iou):.1f}%, median {100 * np.median(true_iou):.1f}%, "
                  f"≥ 50% for {100 * np.mean(np.array(true_iou) >= .5):.0f}%"
                  f" of {len(true_iou)} pairs (the whole image: mean {100 * np.mean(whole_iou):.1f}%)", flush=True)


if __name__ == "__main__":
    main()
