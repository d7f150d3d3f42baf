"""Ready-made benchmarks: the embedded (procedural) one and COCO objects on ImageNet backgrounds."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import DataError
from ..revisited import read_pickle
from .backgrounds import ImageFolderBackgrounds, list_images
from .benchmark import DEFAULT_POSITIVES, FORMAT_VERSION, BenchmarkSpec, build_benchmark, split_by_image
from .objects import CocoObjects, ObjectSubset
from .procedural import ProceduralBackgrounds, ProceduralObjects

EMBEDDED_QUERIES = 12
EMBEDDED_DISTRACTORS = 30


def build_embedded(out_root: str | Path, seed: int = 0, name: str = "embedded", n_queries: int = EMBEDDED_QUERIES,
                   n_distractors: int = EMBEDDED_DISTRACTORS, overwrite: bool = False, progress: bool = True) -> Path:
    """Procedural objects on procedural backgrounds: 12 queries with 3 easy, 2 hard and 1 junk positives,
    a patch-shuffled negative per easy/hard positive and 30 distractors; images 320-480 px (long side)."""
    n_pos = n_queries * sum(DEFAULT_POSITIVES.values())
    objects = ProceduralObjects(n_queries + 2 * n_distractors, seed=seed)
    backgrounds = ProceduralBackgrounds(n_pos + n_distractors, seed=seed, long_side=(320, 480))
    return build_benchmark(objects, backgrounds, out_root, name,
                           BenchmarkSpec(n_queries, n_distractors=n_distractors, seed=seed), overwrite, progress)


SHARED_SPEC = BenchmarkSpec(n_queries=24, n_distractors=50, image_size=384)  # dataset=cocopaste's defaults


def build_from_shared(coco_dir: str | Path, backgrounds_dir: str | Path, out_root: str | Path, name: str = "cocopaste",
                      spec: BenchmarkSpec = SHARED_SPEC, n_backgrounds: int = 200,
                      split: tuple[Sequence[float], int, int] | None = None, overwrite: bool = False,
                      progress: bool = True) -> Path:
    """COCO instances (e.g. coco128) pasted on a deterministic subset of ``n_backgrounds`` images of
    ``backgrounds_dir`` (e.g. imagenet-samples), resized to ``spec.image_size`` on the long side.

    ``split = (fractions, split_seed, part)``: use only part ``part`` of both sources, split by image with
    :func:`split_by_image` (the other parts stay free for training, e.g. ``data=synthetic_pairs``, which splits
    them the same way). ``spec``: as :func:`build_benchmark` (its seed also draws the backgrounds)."""
    seed = spec.seed
    objects: CocoObjects | ObjectSubset = CocoObjects(coco_dir)
    if split is None:
        backgrounds = ImageFolderBackgrounds(backgrounds_dir, max_images=n_backgrounds, seed=seed)
    else:
        fractions, split_seed, part = split
        objects = ObjectSubset(objects, tuple(split_by_image(objects.refs, fractions, split_seed)[part]))
        paths = split_by_image(list_images(backgrounds_dir), fractions, split_seed)[part]
        backgrounds = ImageFolderBackgrounds(paths=paths, max_images=min(n_backgrounds, len(paths)), seed=seed)
    return build_benchmark(objects, backgrounds, out_root, name, spec, overwrite, progress)


def _is_current(root: Path, name: str, seed: int) -> bool:
    path = root / f"gnd_{name}.pkl"
    if not path.is_file():
        return False
    try:
        raw = read_pickle(path)  # restricted: never runs code from the cached file
    except DataError:
        return False
    meta = raw.get("meta", {}) if isinstance(raw, dict) else {}
    return meta.get("version") == FORMAT_VERSION and meta.get("seed") == seed


def embedded_root(cache_dir: str | Path, seed: int = 0, name: str = "embedded", progress: bool = False) -> Path:
    """``<cache_dir>/<name>``, building the embedded benchmark there on first use (or when it is stale).

    The build goes to a temporary folder renamed at the end, so an interrupted build leaves nothing behind
    and concurrent callers end up with one complete copy.
    """
    cache_dir = Path(cache_dir)
    root = cache_dir / name
    if _is_current(root, name, seed):
        return root
    stale = root.exists()
    try:
        build_embedded(cache_dir, seed=seed, name=name, overwrite=stale, progress=progress)
    except OSError:  # FileExistsError included: a concurrent build may have finished first
        if not _is_current(root, name, seed):
            raise
    return root
