"""Frozen-feature training: seconds per training step with cached maps vs the backbone in the step, and the store's
size per item.

For each learned model on its frozen backbone, one full training step (forward, loss, backward, optimiser step,
``zero_grad``) on a batch of the shared experiments' shapes, fed either images (``data.features=online``: the
frozen backbone runs in the step) or the backbone's maps as the feature store serves them
(``data.features=cached``: float16 on disk, read back as float32). Medians of ``--repeats`` interleaved calls after
one warm-up; the ratio is measured in the same run. The store size is measured on a real pool written to a
temporary folder (``--pool`` items).

- regional attention, retrieval objective: ``--pairs`` query/gallery pairs (224² queries, 448² galleries) plus a
  patch-shuffled copy of each gallery, InfoNCE (``experiment=regional_attention_shared``);
- regional attention, classification objective: ``--crops`` 512² crops through the frozen classifier (eq. 4;
  ``experiment=regional_attention_shared_cls``);
- local similarity's localization subnet: ``--ls-pairs`` pairs (224² queries, 448² galleries), every query against
  every gallery, eq. 8 (``experiment=local_similarity_shared``);
- the landmark detector's neck, RPN and box head (Faster R-CNN on the frozen EfficientNet-Lite0 trunk):
  ``--boxes`` synthetic images of long side 384 resized to the detector's 320-px input, one box each, the shared
  experiment's heads (``experiment=landmark_detector_shared``).

Target: at least 20× fewer seconds per step cached for the attention and the localization subnet (the detector's
RoI heads cost more than its trunk, so caching cannot reach that there: its ratio is reported, not checked). Prints
markdown tables; ``--json OUT`` writes the numbers;
exits 1 when a target is missed (``--no-check``: 0).

    .venv/bin/python benchmarks/frozen_features_speed.py
    .venv/bin/python benchmarks/frozen_features_speed.py --repeats 2 --pairs 4 --crops 2 --pool 4 --boxes 2  # smoke
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from _timing import load_note, markdown_table, median_times, set_threads
from lit_retrieval.data.features import FeatureStore, fill_store
from lit_retrieval.data.pairs import SyntheticPairs
from lit_retrieval.data.synthetic.procedural import ProceduralBackgrounds, ProceduralObjects
from lit_retrieval.methods.detect_to_retrieve.detector.data import (DetectionDataset, SyntheticBoxes, cached_boxes,
                                                                    collate_detection)
from lit_retrieval.methods.detect_to_retrieve.detector.module import LandmarkDetectorModule
from lit_retrieval.methods.local_similarity.module import LocalSimilarityModule
from lit_retrieval.methods.regional_attention.module import RegionalAttentionModule

TARGET = 20.0


def attention_module(loss: str) -> RegionalAttentionModule:
    torch.manual_seed(0)
    m = RegionalAttentionModule(backbone={"name": "efficientnet_lite0", "weights": "imagenet"},
                                optimizer={"name": "adam", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4},
                                scheduler={"factor": 0.1, "patience": 1, "min_lr": 1e-4}, whitening={"kind": "none"},
                                loss=loss)
    return m.train()


def local_similarity_module() -> LocalSimilarityModule:
    torch.manual_seed(0)
    return LocalSimilarityModule(backbone={"name": "efficientnet_lite0", "weights": "imagenet"},
                                 optimizer={"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-2}).train()


def detector_module() -> LandmarkDetectorModule:
    """The detector of ``experiment=landmark_detector_shared`` (its ``model.detector.kwargs``)."""
    torch.manual_seed(0)
    kwargs = {"min_size": 320, "max_size": 512, "channels": 128, "representation_size": 256,
              "box_batch_size_per_image": 64, "anchor_sizes": [64, 128, 192, 256, 384]}
    return LandmarkDetectorModule(detector={"arch": "fasterrcnn_lite0", "kwargs": kwargs},
                                  backbone={"name": "efficientnet_lite0", "weights": "imagenet"},
                                  optimizer={"lr": 0.01}).train()


def step_fn(module, batch, opt: torch.optim.Optimizer):
    if isinstance(module, LocalSimilarityModule):
        fn = lambda b: (module._step(b, "train"),)  # noqa: E731
    elif isinstance(module, LandmarkDetectorModule):
        fn = lambda b: (sum(module._run(*b).values()),)  # noqa: E731
    else:
        fn = module._retrieval if isinstance(batch, dict) else module._classification

    def step():
        loss = fn(batch)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def to_maps(module: RegionalAttentionModule, batch):
    """The batch as the feature store serves it: the frozen maps rounded to float16, read back as float32."""
    enc = module.frozen_encoder()
    conv = lambda x: enc(x).half().float()  # noqa: E731
    if isinstance(batch, dict):
        hw = torch.tensor([list(batch["gallery"].shape[-2:])] * len(batch["gallery"]))
        return {**{k: conv(v) if v.ndim == 4 else v for k, v in batch.items()}, "gallery_hw": hw}
    return conv(batch[0]), batch[1]


def store_size(pairs: SyntheticPairs, module: RegionalAttentionModule) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(tmp, {"pool": "benchmark"}, len(pairs), ("query", "gallery", "shuffled"))
        fill_store(store, pairs.__getitem__, module.frozen_encoder(), "pool", progress=False)
        per_item = store.nbytes() / len(pairs)
    return {"items": len(pairs), "mb_per_item": per_item / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=16, help="pairs per retrieval batch (the shared experiment's)")
    ap.add_argument("--crops", type=int, default=8, help="crops per classification batch (the shared experiment's)")
    ap.add_argument("--ls-pairs", type=int, default=8,
                    help="pairs per local-similarity batch (the shared experiment's)")
    ap.add_argument("--boxes", type=int, default=4, help="images per detector batch (the shared experiment's)")
    ap.add_argument("--pool", type=int, default=16, help="items of the pool whose store size is measured")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--no-check", action="store_true", help="exit 0 even when a target is missed")
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    print(load_note(threads))

    objects, backgrounds = ProceduralObjects(args.pairs, seed=10), ProceduralBackgrounds(32, seed=10)
    pairs = SyntheticPairs(objects, backgrounds, syntheses=1, gallery_size=448, query_size=224, resample=False,
                           shuffled=True)
    items = [pairs[i] for i in range(args.pairs)]
    pair_batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    crop_batch = (torch.rand(args.crops, 3, 512, 512), torch.randint(0, 1000, (args.crops,)))

    ls_batch = {k: (v[: args.ls_pairs] if k != "shuffled" else None) for k, v in pair_batch.items()}
    ls_batch = {k: v for k, v in ls_batch.items() if v is not None}
    boxes = SyntheticBoxes(ProceduralObjects(args.boxes, seed=10), backgrounds, image_size=384, resample=False)
    detector = detector_module()
    with tempfile.TemporaryDirectory() as tmp:
        stored = cached_boxes(boxes, detector.frozen_encoder(), {"dir": tmp, "dtype": "float16", "chunk_size": 8},
                              "benchmark boxes", train=True, hflip_prob=0.5)
        box_batch = collate_detection([DetectionDataset(boxes, train=True)[i] for i in range(len(boxes))])
        box_cached = collate_detection([stored[i] for i in range(len(boxes))])
        box_mb = stored.store.nbytes() / len(boxes) / 1e6
    rows, results = [], {}
    for name, loss, batch in (("regional attention, retrieval objective", "retrieval", pair_batch),
                              ("regional attention, classification objective", "classification", crop_batch),
                              ("local similarity, localization subnet", None, ls_batch),
                              ("landmark detector, neck + RPN + box head", "detector", box_batch)):
        if loss == "detector":
            module, trained, cached = detector, [p for p in detector.net.parameters() if p.requires_grad], box_cached
        else:
            module = attention_module(loss) if loss else local_similarity_module()
            trained = (module.net.attention if loss else module.net.subnet).parameters()
            cached = to_maps(module, batch)
        opt = torch.optim.AdamW(trained, lr=1e-3)
        t = median_times({"online": step_fn(module, batch, opt), "cached": step_fn(module, cached, opt)},
                         repeats=args.repeats)
        ratio = t["online"] / t["cached"]
        checked = loss != "detector"
        results[name] = {"online_s": t["online"], "cached_s": t["cached"], "ratio": ratio, "checked": checked,
                         "batch": len(batch["query"]) if isinstance(batch, dict) else len(batch[0])}
        rows.append([name, results[name]["batch"], f"{t['online']:.3f}", f"{t['cached']:.4f}", f"{ratio:.1f}×",
                     ("met" if ratio >= TARGET else "**MISSED**") if checked else "not a target"])
    print("\nseconds per training step (median), frozen backbone in the step vs cached maps")
    print(markdown_table(["model", "batch", "online s/step", "cached s/step", "fewer seconds", f"≥ {TARGET:.0f}×"],
                         rows))
    pool = SyntheticPairs(ProceduralObjects(args.pool, seed=10), backgrounds, syntheses=1, gallery_size=448,
                          query_size=224, resample=False, shuffled=True)
    size = store_size(pool, attention_module("retrieval"))
    results["store"] = size
    results["detector_store"] = {"items": len(boxes), "mb_per_item": box_mb}
    print(f"\nstore size: {size['mb_per_item']:.2f} MB per pair (224² query, 448² gallery and its shuffled copy, "
          f"efficientnet_lite0 maps, float16), {size['items']} items measured; {box_mb:.2f} MB per detector image "
          f"(the trunk maps of the image and of its flip), {len(boxes)} images measured")
    if args.json:
        args.json.write_text(json.dumps({"threads": threads, **results}, indent=2))
        print(f"wrote {args.json}")
    missed = [name for name, r in results.items() if r.get("checked") and r["ratio"] < TARGET]
    return 1 if missed and not args.no_check else 0


if __name__ == "__main__":
    sys.exit(main())
