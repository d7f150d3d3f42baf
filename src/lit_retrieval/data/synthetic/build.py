"""CLI: build a cut-and-paste benchmark, or a patch-shuffled variant of an existing dataset.

Examples::

    python -m lit_retrieval.data.synthetic.build --objects procedural --out data --name embedded
    python -m lit_retrieval.data.synthetic.build --objects coco:../shared/data/coco128 \\
        --backgrounds ../shared/data/imagenet-samples --out data --name cocopaste --queries 24 --seed 0
    python -m lit_retrieval.data.synthetic.build --shuffle-from data/roxford5k --out data --name roxford5k_shf
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .backgrounds import ImageFolderBackgrounds
from .benchmark import DEFAULT_POSITIVES, LABELS, BenchmarkSpec, build_benchmark
from .objects import CocoObjects
from .procedural import ProceduralBackgrounds, ProceduralObjects
from .shuffle import shuffle_dataset


def _positives(text: str) -> dict[str, int]:
    try:
        counts = {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. easy=3,hard=2,junk=1, got {text!r}") from None
    if set(counts) - set(LABELS):
        raise argparse.ArgumentTypeError(f"labels must be among {LABELS}, got {sorted(counts)}")
    return counts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lit_retrieval.data.synthetic.build",
        description="Build a revisited-format cut-and-paste retrieval benchmark (<out>/<name>/jpg/*.jpg + "
                    "gnd_<name>.pkl), or with --shuffle-from a copy of an existing dataset whose database is "
                    "extended with 10x10 patch-shuffled copies of the positives (as negatives).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--objects", default="procedural",
                   help="'procedural' (the embedded generated objects) or 'coco:DIR' with "
                   "DIR/annotations/instances.json "
                        "and DIR/images/")
    p.add_argument("--backgrounds", default=None,
                   help="folder of background images (recursive .jpg/.jpeg/.png) or 'procedural'; default: procedural "
                        "for procedural objects, required for coco")
    p.add_argument("--shuffle-from", default=None, metavar="ROOT/NAME",
                   help="instead of building, copy the revisited dataset ROOT/NAME and add patch-shuffled negatives")
    p.add_argument("--out", required=True, type=Path, help="output root; the dataset goes to OUT/NAME")
    p.add_argument("--name", required=True, help="dataset name (folder and gnd_<name>.pkl)")
    p.add_argument("--queries", type=int, default=12, help="number of queries (one per source image)")
    p.add_argument("--positives", type=_positives, default=DEFAULT_POSITIVES,
                   help="pastes per query and label, e.g. easy=3,hard=2,junk=1")
    p.add_argument("--shuffled", type=int, default=None,
                   help="number of patch-shuffled negatives (default: one per easy/hard positive)")
    p.add_argument("--distractors", type=int, default=30, help="database images without query objects")
    p.add_argument("--max-backgrounds", type=int, default=200,
                   help="deterministic subset of a background folder to use (keeps builds fast)")
    p.add_argument("--image-size", type=int, default=None,
                   help="longer side of database images; default: 384 for a background folder, native for procedural")
    p.add_argument("--grid", type=int, default=10, help="patch-shuffle grid (grid x grid patches)")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed and inputs give identical files")
    p.add_argument("--overwrite", action="store_true", help="replace OUT/NAME if it exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    progress = not args.no_progress
    if args.shuffle_from:
        src = Path(args.shuffle_from)
        out = shuffle_dataset(src.parent, src.name, args.out, args.name, seed=args.seed, grid=args.grid,
                              overwrite=args.overwrite, progress=progress)
        print(out)
        return out
    n_db = args.queries * sum(args.positives.values()) + args.distractors
    if args.backgrounds is None and args.objects != "procedural":
        parser().error("--backgrounds is required with coco objects (a folder, or 'procedural')")
    if args.objects == "procedural":
        objects = ProceduralObjects(args.queries + 2 * args.distractors, seed=args.seed)
    elif args.objects.startswith("coco:"):
        objects = CocoObjects(args.objects[len("coco:"):])
    else:
        parser().error(f"--objects must be 'procedural' or 'coco:DIR', got {args.objects!r}")
    image_size = args.image_size
    if args.backgrounds in (None, "procedural"):
        backgrounds = ProceduralBackgrounds(n_db, seed=args.seed)
    else:
        backgrounds = ImageFolderBackgrounds(args.backgrounds, max_images=args.max_backgrounds, seed=args.seed)
        image_size = image_size or 384
    spec = BenchmarkSpec(args.queries, positives_per_query=args.positives, n_shuffled_negatives=args.shuffled,
                         n_distractors=args.distractors, image_size=image_size, seed=args.seed, grid=args.grid)
    out = build_benchmark(objects, backgrounds, args.out, args.name, spec, overwrite=args.overwrite,
                          progress=progress)
    print(out)
    return out


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
