"""D2R indexing speed: seconds per database image to encode the regions of ``eval.py method=d2r`` at the shared
experiment's settings (``efficientnet_lite0`` at 512 px, features at scales 0.7071 / 1 / 1.4142, at most 1000 per
region, a 1024-word ASMK* codebook of 128-D, the ``fasterrcnn_lite0`` detector keeping at most 3 boxes per image),
the boxes' features re-extracted on each crop (``method.features.regions=reextract``, DELF's code and this
project's default: the figure before) against selected from the whole image's multi-scale features
(``method.features.regions=select``), in the same run on the same images; and where the time goes.

The detector is built untrained (its boxes' scores are arbitrary: at most 3 boxes per image are kept either way, as
a trained one gives about 3 at the 0.1 threshold) and the codebook is k-means on a few images: neither changes the
per-image cost. Images: ImageNet samples from ``../shared/data/imagenet-samples`` (about 500×375, used as they
are: below 512 px nothing is resized), else the embedded benchmark's database (generated once into ``.cache/``).

    python benchmarks/d2r_speed.py --json OUT.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table, set_threads, write_json  # noqa: E402

from lit_retrieval.backbones import build_backbone  # noqa: E402
from lit_retrieval.data.synthetic import build_embedded  # noqa: E402
from lit_retrieval.data import load_dataset  # noqa: E402
from lit_retrieval.methods.detect_to_retrieve.codebook import learn_codebook  # noqa: E402
from lit_retrieval.methods.detect_to_retrieve.detector.models import build_detector  # noqa: E402
from lit_retrieval.methods.detect_to_retrieve.features import ActivationFeatures, crop  # noqa: E402
from lit_retrieval.methods.detect_to_retrieve.pipeline import (RegionEncoder, Settings, encode_database,  # noqa: E402
                                                              image_boxes)
from lit_retrieval.retrieval import ImageItem, dataset_items, image_loader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _detector_trunk_s(detector, images) -> float:
    """Seconds per image of the detector's frozen trunk alone, on the input its own transform makes (the pass
    that could be shared with the whole-image features if both ran at one resolution)."""
    from lit_retrieval.methods.detect_to_retrieve.detector.models import detector_input

    inputs = [detector_input(detector, img, torch.zeros(0, 4))[0] for img in images]
    with torch.inference_mode():
        t0 = time.perf_counter()
        for x in inputs:
            detector.backbone.trunk(x[None])
        return (time.perf_counter() - t0) / len(images)


def _crop_passes_s(backbone, images, boxes, scales) -> tuple[float, float]:
    """Seconds per image of the box crops' backbone passes: each crop at each scale alone (what re-extraction
    does), against the crops of one scale zero-padded to the largest and passed as one batch."""
    def resized(img, b, s):
        c = crop(img, b)[None]
        size = (max(1, round(s * c.shape[-2])), max(1, round(s * c.shape[-1])))
        return F.interpolate(c, size=size, mode="bilinear", antialias=True, align_corners=False)[0]

    work = [[[resized(img, b, s) for b in bs] for s in scales] for img, bs in zip(images, boxes) if len(bs)]
    with torch.inference_mode():
        t0 = time.perf_counter()
        for per_scale in work:
            for crops in per_scale:
                for c in crops:
                    backbone.features(c[None])
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        for per_scale in work:
            for crops in per_scale:
                h, w = max(c.shape[-2] for c in crops), max(c.shape[-1] for c in crops)
                backbone.features(torch.stack([F.pad(c, (0, w - c.shape[-1], 0, h - c.shape[-2])) for c in crops]))
        batched = time.perf_counter() - t0
    return one / len(images), batched / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12, help="database images timed per mode")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--json", metavar="OUT", help="write the table as JSON")
    args = ap.parse_args()
    threads = set_threads()
    samples = ROOT.parent / "shared" / "data" / "imagenet-samples"
    if samples.is_dir():
        items = [ImageItem(p) for p in sorted(samples.glob("*.JPEG"))[:args.images]]
    else:
        root = ROOT / ".cache" / "benchmarks" / "d2r_speed"
        if not (root / "embedded").exists():
            build_embedded(root, seed=0, name="embedded", progress=False)
        items = dataset_items(load_dataset({"kind": "revisited", "root": str(root), "name": "embedded"}), "db")
        items = items[:args.images]
    backbone = build_backbone("efficientnet_lite0").eval()
    detector = build_detector("fasterrcnn_lite0", channels=128, representation_size=256,  # the shared experiment's
                              anchor_sizes=[64, 128, 192, 256, 384], min_size=320, max_size=512).eval()
    images = [img for _, img in image_loader(items, range(len(items)), args.image_size, 0, False, False)]
    base = Settings(boxes="detector", max_boxes=3, K=1024, dim=128, codebook_images=len(images))
    extractor = ActivationFeatures(backbone, scales=base.scales, max_features=base.max_features)
    codebook = learn_codebook(np.concatenate([extractor(img)[0] for img in images]), base.dim, base.K, base.niter)
    print(f"{len(images)} images at {args.image_size} px, {threads} threads; codebook K={base.K}, {base.dim}-D")

    t0 = time.perf_counter()
    n_boxes = [len(image_boxes(img, base, detector)[0]) for img in images]
    t_detect = (time.perf_counter() - t0) / len(images)
    t0 = time.perf_counter()
    for img in images:
        extractor(img)
    t_whole = (time.perf_counter() - t0) / len(images)
    t_trunk = _detector_trunk_s(detector, images)
    t_crops, t_batched = _crop_passes_s(backbone, images, [image_boxes(img, base, detector)[0] for img in images],
                                        base.scales)
    stages = {"detector": round(t_detect, 3), "detector_trunk": round(t_trunk, 3),
              "whole_image_features": round(t_whole, 3), "box_crops_one_at_a_time": round(t_crops, 3),
              "box_crops_batched_per_scale": round(t_batched, 3)}
    rows, report = [], {"images": len(images), "boxes_per_image": float(np.mean(n_boxes)), "threads": threads,
                        "stages_s_per_image": stages}
    for mode in ("reextract", "select"):
        s = Settings(**{**base.__dict__, "box_features": mode})
        enc = RegionEncoder(s, extractor, codebook, detector)
        t0 = time.perf_counter()
        encode_database(list(enumerate(images)), len(images), enc, [("asmk_star", "r_asmk")], progress=None)
        per_image = (time.perf_counter() - t0) / len(images)
        report["s_per_image_before" if mode == "reextract" else "s_per_image"] = round(per_image, 3)
        rows.append([f"`method.features.regions={mode}`", f"{per_image:.3f}"])
    print(markdown_table(["boxes' features", "s per database image"], rows))
    print(f"\nper image: detector {t_detect:.3f} s ({np.mean(n_boxes):.1f} boxes; its trunk pass {t_trunk:.3f} s), "
          f"whole-image features at {len(base.scales)} scales {t_whole:.3f} s; box crops' backbone passes "
          f"{t_crops:.3f} s one at a time, {t_batched:.3f} s batched per scale (zero-padded to the largest crop)")
    print(f"target ≤ 0.4 s per image with selection: "
          f"{'met' if report['s_per_image'] <= 0.4 else 'missed'} ({report['s_per_image']:.3f} s; re-extraction "
          f"{report['s_per_image_before']:.3f} s)")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
