"""Build a revisited-format retrieval benchmark by cut-and-paste.

Queries are the source images of objects (gnd ``bbx`` = the object's box there). Each query's positives
are pastes of its object onto other backgrounds, labelled ``easy`` / ``hard`` / ``junk`` by the paste
preset; hard negatives are 10x10 patch-shuffled copies of the easy and hard positives; distractors are
backgrounds with other objects pasted (or nothing). Everything is split by source image, never by
instance: one object per query source image, and distractor objects come from other source images.

Layout written (the revisited format, plus extra keys)::

    <out_root>/<name>/jpg/q_0000.jpg ... db_00000.jpg ...
    <out_root>/<name>/gnd_<name>.pkl = {
        "imlist": [...], "qimlist": [...],
        "gnd": [{"bbx": [x1, y1, x2, y2], "easy": [...], "hard": [...], "junk": [...]}, ...],
        "boxes": {db name: [x1, y1, x2, y2]},       # pasted query object, for every positive (incl. junk)
        "pastes": {db name: [{role, query, label, ann_id, image_id, source, category, box, visible,
                              transform, background}, ...]},   # every pasted object of every db paste
        "shuffled": {db name: name of the positive it scrambles},
        "meta": {"version", "seed", "params", "sources", "query_sources", "distractor_sources"},
    }

Boxes are in output pixels with exclusive ends (PIL crop convention). Same inputs and seed give
byte-identical files.
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence, TypeVar

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .backgrounds import BackgroundSource, resize_long_side
from .compositor import PRESETS, PasteParams, paste
from .objects import ObjectInstance, ObjectRef, ObjectSource
from ...atomic import atomic_pickle, make_temp_dir
from .shuffle import publish_dir, shuffle_patches

FORMAT_VERSION = 1
LABELS = ("easy", "hard", "junk")
DEFAULT_POSITIVES: dict[str, int] = {"easy": 3, "hard": 2, "junk": 1}
_PLAN, _QUERY, _POSITIVE, _DISTRACTOR, _SHUFFLE = 0, 1, 2, 3, 4  # rng stream tags

T = TypeVar("T")


def _image_key(item: Any) -> Hashable:
    if isinstance(item, ObjectRef):
        return item.source
    if isinstance(item, Path):
        return str(item)
    return item


def split_by_image(items: Sequence[T], fractions: Sequence[float], seed: int = 0,
                   key: Callable[[T], Hashable] | None = None) -> list[list[T]]:
    """Split ``items`` into parts of about ``fractions`` of their *source images*, never splitting an image.

    ``key`` maps an item to its image (default: ``ObjectRef.source``, or the item itself, e.g. a path), so
    all instances of one image land in the same part. Fractions must sum to 1; deterministic given
    ``seed`` and independent of the order of ``items``; each part keeps the items' original order.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or len(fr) == 0 or (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
    key = key or _image_key
    keys = sorted({key(it) for it in items}, key=str)
    order = np.random.default_rng(seed).permutation(len(keys))
    bounds = np.round(np.cumsum(fr) * len(keys)).astype(int)
    part_of = {keys[k]: int(np.searchsorted(bounds, rank, side="right")) for rank, k in enumerate(order)}
    parts: list[list[T]] = [[] for _ in fr]
    for it in items:
        parts[part_of[key(it)]].append(it)
    return parts


@dataclass
class _Task:
    """One planned database paste."""

    kind: int  # _POSITIVE or _DISTRACTOR
    index: int  # rank among tasks of that kind (seeds its rng)
    background: int
    query: int | None = None
    label: str | None = None
    objects: list[ObjectRef] = field(default_factory=list)
    shuffle: bool = False


def _choose_queries(refs: Sequence[ObjectRef], n: int, rng: np.random.Generator) -> list[ObjectRef]:
    """One object (the largest) from each of ``n`` random source images."""
    by_source: dict[str, list[ObjectRef]] = {}
    for r in refs:
        by_source.setdefault(r.source, []).append(r)
    sources = sorted(by_source)
    if len(sources) < n:
        raise ValueError(f"{n} queries need {n} source images with usable objects, but the source has {len(sources)}; "
                         "ask for fewer queries or add images")
    picked = [sources[i] for i in rng.permutation(len(sources))[:n]]
    return [min(by_source[s], key=lambda r: (-r.area, r.ann_id)) for s in picked]


def _background_order(n_available: int, n_needed: int, rng: np.random.Generator) -> list[int]:
    order = rng.permutation(n_available).tolist()
    if n_needed > n_available:
        warnings.warn(f"{n_needed} database images but only {n_available} backgrounds: some backgrounds are reused",
                      stacklevel=3)
        order = (order * (n_needed // n_available + 1))
    return order[:n_needed]


def _plan(queries: list[ObjectRef], pool: list[ObjectRef], n_backgrounds: int, positives: Mapping[str, int],
          n_shuffled: int | None, n_distractors: int, distractor_objects: tuple[int, int],
          rng: np.random.Generator) -> list[_Task]:
    n_pos = len(queries) * sum(positives.values())
    bgs = iter(_background_order(n_backgrounds, n_pos + n_distractors, rng))
    tasks = [_Task(_POSITIVE, 0, next(bgs), q, label, [ref])
             for q, ref in enumerate(queries) for label in LABELS for _ in range(positives.get(label, 0))]
    for i, t in enumerate(tasks):
        t.index = i
    candidates = [t for t in tasks if t.label in ("easy", "hard")]
    if n_shuffled is None or n_shuffled >= len(candidates):
        chosen = candidates
    else:
        chosen = [candidates[i] for i in np.sort(rng.choice(len(candidates), size=n_shuffled, replace=False))]
    for t in chosen:
        t.shuffle = True
    lo, hi = distractor_objects
    for i in range(n_distractors):
        k = min(int(rng.integers(lo, hi + 1)), len(pool))
        objs = [pool[j] for j in np.sort(rng.choice(len(pool), size=k, replace=False))] if k else []
        tasks.append(_Task(_DISTRACTOR, i, next(bgs), objects=objs))
    return tasks


def _save_jpg(image: np.ndarray, path: Path, quality: int) -> None:
    Image.fromarray(image).save(path, quality=quality)


def _write_query(objects: ObjectSource, ref: ObjectRef, path: Path, quality: int) -> None:
    """The full source image: its bytes when it is a JPEG file already, else encoded."""
    src = objects.source_file(ref)
    if src is not None and src.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(src, path)
    else:
        _save_jpg(objects.source_image(ref), path, quality)


def _paste_record(ref: ObjectRef, role: str, query: int | None, label: str | None, box: list[int] | None,
                  info: dict[str, Any], background: str) -> dict[str, Any]:
    return {"role": role, "query": query, "label": label, "ann_id": ref.ann_id, "image_id": ref.image_id,
            "source": ref.source, "category": ref.category, "box": box, "visible": round(info["visible"], 6),
            "transform": info["transform"], "background": background}


@dataclass(frozen=True)
class BenchmarkSpec:
    """What a generated benchmark holds (:func:`build_benchmark`).

    Attributes:
        n_queries: number of queries, each from a different source image.
        positives_per_query: pastes per label, default ``{"easy": 3, "hard": 2, "junk": 1}``.
        n_shuffled_negatives: how many easy/hard positives get a patch-shuffled copy (``None``: all).
        n_distractors: database images without any query object.
        distractor_objects: (min, max) other objects pasted on each distractor.
        image_size: longer side of database images (backgrounds are resized); ``None`` keeps their size.
            Query images are the source images, unchanged.
        seed: everything is determined by it.
        presets: paste parameters per label (``easy``, ``hard``, ``junk``, ``distractor``), default ``PRESETS``.
        grid: patch-shuffle grid.
        jpeg_quality: of every written image.
    """

    n_queries: int
    positives_per_query: Mapping[str, int] | None = None
    n_shuffled_negatives: int | None = None
    n_distractors: int = 30
    distractor_objects: tuple[int, int] = (0, 2)
    image_size: int | None = None
    seed: int = 0
    presets: Mapping[str, PasteParams] | None = None
    grid: int = 10
    jpeg_quality: int = 90


def build_benchmark(objects: ObjectSource, backgrounds: BackgroundSource, out_root: str | Path, name: str,
                    spec: BenchmarkSpec, overwrite: bool = False, progress: bool = True) -> Path:
    """Build ``<out_root>/<name>`` (see the module docstring) as ``spec`` says and return that folder.

    Args:
        objects: instance source; queries and distractor objects are drawn from it, split by source image.
        backgrounds: background source (``keys`` / ``load``); each database image gets its own background
            while there are enough (a warning says when some must be reused).
        spec: the queries, positives, distractors, sizes and seed (:class:`BenchmarkSpec`).
        overwrite: replace an existing ``<out_root>/<name>``.
        progress: show a tqdm bar.

    The folder is built in a temporary sibling and renamed at the end: it is either complete or absent.
    """
    n_queries, positives_per_query, n_shuffled_negatives = spec.n_queries, spec.positives_per_query, \
        spec.n_shuffled_negatives
    n_distractors, distractor_objects, image_size, seed = spec.n_distractors, spec.distractor_objects, \
        spec.image_size, spec.seed
    presets, grid, jpeg_quality = spec.presets, spec.grid, spec.jpeg_quality
    positives = dict(DEFAULT_POSITIVES if positives_per_query is None else positives_per_query)
    unknown = set(positives) - set(LABELS)
    if unknown or any(v < 0 for v in positives.values()):
        raise ValueError(f"positives_per_query takes non-negative counts for {LABELS}, got {positives}")
    if n_queries < 1 or n_distractors < 0 or not 0 <= distractor_objects[0] <= distractor_objects[1]:
        raise ValueError("need n_queries >= 1, n_distractors >= 0 and 0 <= min <= max distractor_objects")
    presets = {**PRESETS, **(presets or {})}
    refs = list(objects.refs)
    if not refs:
        raise ValueError(f"the object source {objects.describe()} has no usable objects")
    bg_keys = list(backgrounds.keys)
    if not bg_keys:
        raise ValueError(f"the background source {backgrounds.describe()} is empty")

    rng = np.random.default_rng([seed, _PLAN])
    queries = _choose_queries(refs, n_queries, rng)
    query_sources = {r.source for r in queries}
    pool = [r for r in refs if r.source not in query_sources]
    if distractor_objects[1] > 0 and n_distractors and not pool:
        warnings.warn("every source image is used by a query: distractors get no objects", stacklevel=2)
    tasks = _plan(queries, pool, len(bg_keys), positives, n_shuffled_negatives, n_distractors, distractor_objects, rng)
    n_db = len(tasks) + sum(t.shuffle for t in tasks)
    db_order = rng.permutation(n_db)  # db slot j of the planned items -> final index
    names = [f"db_{i:05d}" for i in range(n_db)]
    qnames = [f"q_{i:04d}" for i in range(n_queries)]

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{name}.tmp-", out_root)
    gnd = [{"bbx": [float(v) for v in r.bbox], "easy": [], "hard": [], "junk": []} for r in queries]
    boxes: dict[str, list[int]] = {}
    pastes: dict[str, list[dict[str, Any]]] = {}
    shuffled: dict[str, str] = {}
    try:
        jpg = tmp / "jpg"
        jpg.mkdir()
        bar = tqdm(total=n_queries + n_db, desc=f"building {name}", disable=not progress)
        loaded: dict[int, ObjectInstance] = {}
        for q, ref in enumerate(queries):
            _write_query(objects, ref, jpg / f"{qnames[q]}.jpg", jpeg_quality)
            loaded[q] = objects.load(ref)
            bar.update()
        slot = 0
        for t in tasks:
            image = resize_long_side(backgrounds.load(t.background), image_size)
            bg_key = bg_keys[t.background]
            db_name = names[db_order[slot]]
            records = []
            if t.kind == _POSITIVE:
                assert t.query is not None and t.label is not None
                prng = np.random.default_rng([seed, _POSITIVE, t.index])
                image, box, info = paste(image, loaded[t.query], prng, presets[t.label])
                if box is None:
                    raise RuntimeError(f"{t.label} paste of query {t.query} left nothing visible; check the presets")
                records.append(_paste_record(t.objects[0], "query", t.query, t.label, box, info, bg_key))
                gnd[t.query][t.label].append(int(db_order[slot]))
                boxes[db_name] = box
            else:
                drng = np.random.default_rng([seed, _DISTRACTOR, t.index])
                for ref in t.objects:
                    image, box, info = paste(image, objects.load(ref), drng, presets["distractor"])
                    records.append(_paste_record(ref, "distractor", None, None, box, info, bg_key))
            pastes[db_name] = records
            _save_jpg(image, jpg / f"{db_name}.jpg", jpeg_quality)
            slot += 1
            bar.update()
            if t.shuffle:
                shf_name = names[db_order[slot]]
                srng = np.random.default_rng([seed, _SHUFFLE, t.index])
                _save_jpg(shuffle_patches(image, grid, srng), jpg / f"{shf_name}.jpg", jpeg_quality)
                shuffled[shf_name] = db_name
                slot += 1
                bar.update()
        bar.close()
        for entry in gnd:
            for label in LABELS:
                entry[label] = sorted(entry[label])
        data = {
            "imlist": names,
            "qimlist": qnames,
            "gnd": gnd,
            "boxes": dict(sorted(boxes.items())),
            "pastes": dict(sorted(pastes.items())),
            "shuffled": dict(sorted(shuffled.items())),
            "meta": {
                "version": FORMAT_VERSION,
                "seed": seed,
                "params": {"n_queries": n_queries, "positives_per_query": positives,
                           "n_shuffled_negatives": n_shuffled_negatives, "n_distractors": n_distractors,
                           "distractor_objects": list(distractor_objects), "image_size": image_size, "grid": grid,
                           "jpeg_quality": jpeg_quality, "presets": {k: asdict(v) for k, v in sorted(presets.items())}},
                "sources": {"objects": objects.describe(), "backgrounds": backgrounds.describe()},
                "query_sources": [r.source for r in queries],
                "distractor_sources": sorted({r.source for t in tasks for r in t.objects if t.kind == _DISTRACTOR}),
            },
        }
        atomic_pickle(data, tmp / f"gnd_{name}.pkl")
        publish_dir(tmp, out_root / name, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_root / name
