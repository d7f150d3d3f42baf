"""Regional attention (Kim & Yoon) speed on CPU: training step vs frozen backbone, descriptor vs plain R-MAC.

1. Training step (train.py's: ``net.classify(x)`` at the train scale, cross-entropy on random labels, backward,
   SGD step on ``net.attention`` and ``zero_grad``) vs the frozen backbone alone (``no_grad``), on a batch of
   ``--batch`` ``--size``² crops; the extra time is broken down by timing the pieces alone on the same map.
2. Descriptor at the test scale on one ``--test-size``-long-side 4:3 image (the paper's 0.095 s -> 0.123 s,
   +29 %): plain R-MAC (same regions and regional PCA-whitening, uniform weights: region max -> L2 -> whitening
   -> L2 -> mean -> L2) vs the regional-attention descriptor (the same + region means, context, Φ), both on a
   cached feature map (the backbone's ``forward`` is swapped for one returning the map) and end to end.

Medians of ``--repeats`` interleaved calls after one warm-up. Prints markdown tables; always exits 0 (the
tables say met / MISSED).

    .venv/bin/python benchmarks/regional_attention_speed.py                        # efficientnet_lite0
    .venv/bin/python benchmarks/regional_attention_speed.py --backbone resnet101   # random weights
    .venv/bin/python benchmarks/regional_attention_speed.py --repeats 2 --size 128 --test-size 256  # smoke run
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

from _timing import load_note, markdown_table, median_times, set_threads
from lit_retrieval.backbones import build_backbone
from lit_retrieval.methods.regional_attention import RegionalAttentionNet, UniformRegions
from lit_retrieval.methods.regional_attention.attention import attention_input
from lit_retrieval.pooling import l2n, region_max, region_mean
from lit_retrieval.regions import sample_regions
from lit_retrieval.whitening import Whitening

TRAIN_TARGET, DESC_TARGET = 1.25, 0.15  # step / backbone ratio; end-to-end descriptor overhead


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def ms(t: float) -> str:
    return f"{t * 1e3:.1f}"


def on_map(net: RegionalAttentionNet, fmap: torch.Tensor, fn):
    """``fn`` with the backbone's forward replaced by one returning the cached ``fmap`` (the rest runs as is)."""
    def run():
        net.backbone.forward = lambda _x: fmap
        try:
            return fn()
        finally:
            del net.backbone.forward
    return run


def plain_rmac(net: RegionalAttentionNet, x: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
    """UniformRegions' descriptor without the region means it does not need: max -> P -> mean -> L2."""
    boxes, _ = sample_regions(net.grid, tuple(x.shape[-2:]), tuple(fmap.shape[-2:]), net.backbone.stride,
                              net.scales)
    return l2n(net.post_process(region_max(fmap, boxes)).mean(dim=1))


def training(net: RegionalAttentionNet, args: argparse.Namespace, gen: torch.Generator) -> float:
    bb = net.backbone
    x = bb.normalize(torch.rand(args.batch, 3, args.size, args.size, generator=gen))
    y = torch.randint(0, 1000, (args.batch,), generator=gen)
    opt = torch.optim.SGD(net.attention.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-5)
    net.train()

    def step() -> None:
        F.cross_entropy(net.classify(x), y).backward()
        opt.step()
        opt.zero_grad()

    def backbone_alone() -> None:
        with torch.no_grad():
            bb(x)

    t = median_times({"bb": backbone_alone, "step": step}, args.repeats)

    # Breakdown: each piece alone on the same (no-grad) feature map, as the step runs it.
    with torch.no_grad():
        fmap = bb(x)
    sample = lambda: sample_regions(net.grid, tuple(x.shape[-2:]), tuple(fmap.shape[-2:]), bb.stride,  # noqa: E731
                                    net.train_scales)[0]
    boxes = sample()
    mx = region_max(fmap, boxes)
    a_in = attention_input(region_mean(fmap, boxes), fmap.mean(dim=(-2, -1)))
    w0 = net.attention(a_in).detach()

    def head() -> None:
        w = w0.clone().requires_grad_()
        F.cross_entropy(bb.head(net._aggregate(w, mx)), y).backward()

    parts = {"region max-pooling (`region_max` + region sampling)": lambda: region_max(fmap, sample()),
             "region mean-pooling (`region_mean`, whole-map mean, concat)":
                 lambda: attention_input(region_mean(fmap, boxes), fmap.mean(dim=(-2, -1))),
             "attention MLP Φ forward + backward": lambda: net.attention(a_in).sum().backward(),
             "head: weighted mean, frozen classifier, cross-entropy, forward + backward": head,
             "SGD step + zero_grad": lambda: (opt.step(), opt.zero_grad())}
    tp = median_times(parts, args.repeats)
    extra = t["step"] - t["bb"]
    ratio = t["step"] / t["bb"]
    print(f"### 1. training step vs frozen backbone forward ({args.batch}×3×{args.size}×{args.size}, "
          f"map {'×'.join(map(str, fmap.shape))}, S={net.train_scales}: {len(boxes)} regions)\n")
    print(markdown_table(["measure", "ms", "ratio to backbone", "target", ""], [
        ["frozen backbone forward alone (`no_grad`)", ms(t["bb"]), "1.00×", "", ""],
        ["training step (classify, CE, backward, SGD step, zero_grad)", ms(t["step"]), f"{ratio:.2f}×",
         f"≤ {TRAIN_TARGET:g}×", verdict(ratio <= TRAIN_TARGET)]]))
    print("\nwhere the extra time goes (each piece timed alone on the same feature map):\n")
    rows = [[k, ms(v), f"{v / extra * 100:.0f} %" if extra > 0 else "-"] for k, v in tp.items()]
    rest = extra - sum(tp.values())
    rows += [["rest (step − backbone − pieces: autograd, dispatch, noise)", ms(rest), f"{rest / extra * 100:.0f} %"
              if extra > 0 else "-"], ["**extra time of the step over the backbone**", ms(extra), "100 %"]]
    print(markdown_table(["piece", "ms", "share of the extra"], rows))
    return ratio


def descriptor(net: RegionalAttentionNet, args: argparse.Namespace, gen: torch.Generator) -> float:
    bb = net.backbone
    H, W = round(args.test_size * 3 / 4), args.test_size
    x = bb.normalize(torch.rand(1, 3, H, W, generator=gen))
    net.eval()
    with torch.inference_mode():
        fmap = bb(x)
        R = len(sample_regions(net.grid, (H, W), tuple(fmap.shape[-2:]), bb.stride, net.scales)[0])
        # Correctness: the cached-map paths give the real descriptors.
        d_plain = float((plain_rmac(net, x, bb(x)) - UniformRegions(net)(x)).abs().max())
        d_att = float((on_map(net, fmap, lambda: net(x))() - net(x)).abs().max())
        t = median_times({
            "bb": lambda: bb(x),
            "plain_map": lambda: plain_rmac(net, x, fmap),
            "uniform_map": on_map(net, fmap, lambda: UniformRegions(net)(x)),
            "att_map": on_map(net, fmap, lambda: net(x)),
            "plain_e2e": lambda: plain_rmac(net, x, bb(x)),
            "att_e2e": lambda: net(x),
        }, args.repeats)
    over_map = t["att_map"] / t["plain_map"] - 1
    over_e2e = t["att_e2e"] / t["plain_e2e"] - 1
    over_est = (t["att_map"] - t["plain_map"]) / (t["bb"] + t["plain_map"])
    print(f"\n### 2. descriptor: regional attention vs plain R-MAC (1×3×{H}×{W}, map "
          f"{'×'.join(map(str, fmap.shape))}, S={net.scales}: {R} regions, whitening {net.white_proj.shape[0]}"
          f"×{net.white_proj.shape[1]})\n")
    print("'map only' rows run on a cached feature map: the backbone's forward is replaced by one that returns "
          "the map computed beforehand, everything else is the real code.\n")
    print(markdown_table(["descriptor", "ms", "overhead vs plain R-MAC", "target", ""], [
        ["backbone forward alone", ms(t["bb"]), "", "", ""],
        ["plain R-MAC, map only (region max -> L2 -> whitening -> L2 -> mean -> L2)", ms(t["plain_map"]),
         "", "", ""],
        ["`UniformRegions(net)` as implemented, map only (also pools region means)", ms(t["uniform_map"]),
         f"{(t['uniform_map'] / t['plain_map'] - 1) * 100:+.0f} %", "", ""],
        ["regional attention `net(x)`, map only (+ region means, context, Φ)", ms(t["att_map"]),
         f"{over_map * 100:+.0f} %", "", ""],
        ["plain R-MAC, end to end (backbone + map)", ms(t["plain_e2e"]), "", "", ""],
        ["regional attention, end to end (paper: +29 %)", ms(t["att_e2e"]), f"{over_e2e * 100:+.1f} %",
         f"≤ +{DESC_TARGET * 100:g} %", verdict(over_e2e <= DESC_TARGET)],
        ["estimate from the pieces: (att map − plain map) / (backbone + plain map)", "",
         f"{over_est * 100:+.1f} %", "", ""]]))
    print(f"\ncached-map paths vs the real ones, max |Δ|: plain R-MAC vs `UniformRegions` {d_plain:.1e}, "
          f"attention {d_att:.1e}")
    return over_e2e


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0",
                    help="efficientnet_lite0 (ImageNet weights) or resnet101 (random weights)")
    ap.add_argument("--size", type=int, default=512, help="training crop side")
    ap.add_argument("--batch", type=int, default=4, help="training batch size")
    ap.add_argument("--test-size", type=int, default=1024, help="long side of the 4:3 test image")
    ap.add_argument("--scales-train", type=int, default=4, help="R-MAC scale S at training")
    ap.add_argument("--scales-test", type=int, default=5, help="R-MAC scale S of the descriptor")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls of each measure (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    print(f"regional attention speed, {args.backbone}; {load_note(threads)}\n")

    weights = "imagenet" if args.backbone == "efficientnet_lite0" else "random"
    bb = build_backbone(args.backbone, weights=weights)
    net = RegionalAttentionNet(bb, scales=args.scales_test, train_scales=args.scales_train)
    rng = np.random.default_rng(args.seed)  # whitening on random regional vectors: only its cost matters
    X = np.abs(rng.standard_normal((4000, bb.out_channels)))
    net.set_whitening(Whitening.learn(X / np.linalg.norm(X, axis=1, keepdims=True), "pca"))
    gen = torch.Generator().manual_seed(args.seed)

    ratio = training(net, args, gen)
    over = descriptor(net, args, gen)
    print(f"\nsummary: training step {ratio:.2f}× the backbone (target ≤ {TRAIN_TARGET:g}×) "
          f"{verdict(ratio <= TRAIN_TARGET)}; descriptor overhead {over * 100:+.1f} % end to end "
          f"(target ≤ +{DESC_TARGET * 100:g} %) {verdict(over <= DESC_TARGET)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
