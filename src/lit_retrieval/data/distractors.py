"""Distractor images appended to a benchmark's database: revisitop's R1M (``dataset.distractors=revisitop1m``) and
a procedural set of any size for tests and scale checks (``dataset.distractors=procedural``).

The large-scale protocol of Radenović et al. (CVPR 2018) evaluates ROxford5k / RParis6k against their database
plus 1,001,001 distractor images. revisitop's layout is ``<distractors_root>/revisitop1m/revisitop1m.txt`` (one
image path per line, relative to ``jpg/``) and ``<distractors_root>/revisitop1m/jpg/``; the distractors come after
the database, so that every ground-truth index is unchanged (a distractor is a negative for every query).
``dataset.distractors_limit=N`` keeps the first ``N`` lines (e.g. an R100k subset).

A procedural set (``dataset.distractors_count``, ``dataset.distractors_seed``) is generated once into the same
layout under ``<distractors_dir>/distractors/`` from the embedded backgrounds' generator, so that it shares no content
with any embedded benchmark (another seed stream) and is read by the same code as R1M.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..atomic import atomic_write, make_temp_dir
from .dataset import RetrievalDataset
from .errors import DataError, ImageLoadError

KINDS = ("revisitop1m", "procedural")
R1M_SIZE = 1_001_001
_REVISITOP1M = "http://ptak.felk.cvut.cz/revisitop/revisitop1m/"
_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_PROCEDURAL_SEED_OFFSET = 0x5EED_D157  # another seed stream than any embedded benchmark's backgrounds


@dataclasses.dataclass(frozen=True)
class Distractors:
    """Where a dataset's distractors start in its database (``start``: the benchmark's own size), their set's
    name and folder (cache keys of their descriptors are their own, shared by every benchmark they extend)."""

    name: str
    root: Path
    start: int
    count: int
    base_name: str


def read_list(folder: Path, name: str, limit: int | None = None) -> list[Path]:
    """The image paths of ``<folder>/<name>.txt`` (relative to ``<folder>/jpg``; ``.jpg`` appended to a line
    without an image extension), the first ``limit`` of them, checked to exist."""
    listing = folder / f"{name}.txt"
    if not listing.is_file():
        raise DataError(f"distractor list {listing.name} not found", listing,
                        f"put revisitop's {name}.txt ({_REVISITOP1M}{name}.txt) in {folder}, with the images under "
                        f"{folder / 'jpg'} (dataset.distractors_root: the folder holding {name}/)")
    lines = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
    if limit is not None:
        lines = lines[: int(limit)]
    jpg = folder / "jpg"
    if not jpg.is_dir():
        raise ImageLoadError("distractor image folder not found", jpg,
                             f"extract revisitop's {name}.*.tar.gz archives into {jpg} (see {_REVISITOP1M})")
    paths = [jpg / (ln if ln.endswith(_EXTS) else ln + ".jpg") for ln in lines]
    missing = [p for p in paths[:: max(1, len(paths) // 1000)] if not p.is_file()]  # a sample: 1M stat calls
    if missing:                                                                     # would take minutes
        raise ImageLoadError(f"distractor images listed in {listing.name} are missing (e.g. "
                             f"{missing[0].relative_to(jpg)})", jpg, f"extract every archive of {name} into {jpg}")
    return paths


def procedural_distractors(cache_dir: str | Path, count: int, seed: int = 0, long_side: int = 160,
                           progress: bool = True) -> Path:
    """The folder of a procedural distractor set in revisitop's layout (``procedural-<count>-s<seed>/`` with
    its ``.txt`` list and ``jpg/``), generated on first use, atomically (a folder renamed into place)."""
    from PIL import Image
    from tqdm.auto import tqdm

    from .synthetic.procedural import procedural_background

    name = f"procedural-{int(count)}-s{int(seed)}"
    folder = Path(cache_dir) / "distractors" / name
    if (folder / f"{name}.txt").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{name}.", folder.parent)
    (tmp / "jpg").mkdir()
    rng = np.random.default_rng([_PROCEDURAL_SEED_OFFSET, int(seed)])
    lines = []
    for i in tqdm(range(int(count)), desc=f"building {name}", disable=not progress, leave=False):
        w = int(long_side)
        h = int(rng.integers(w * 3 // 5, w + 1))
        rel = f"{i // 1000:04d}/{i:07d}.jpg"
        (tmp / "jpg" / rel).parent.mkdir(exist_ok=True)
        Image.fromarray(procedural_background(rng, w, h)).save(tmp / "jpg" / rel, quality=90)
        lines.append(rel)
    atomic_write(tmp / f"{name}.txt", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    try:
        tmp.rename(folder)
    except OSError:  # another process built it meanwhile
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def add_distractors(dataset: RetrievalDataset, cfg: Mapping[str, Any]) -> RetrievalDataset:
    """``dataset`` with the distractors of ``cfg`` (``distractors``, ``distractors_root``, ``distractors_limit``;
    ``distractors_count`` / ``distractors_seed`` / ``cache_dir`` for ``procedural``) after its database."""
    kind = cfg.get("distractors")
    if kind in (None, "none"):
        return dataset
    if kind not in KINDS:
        raise DataError(f"unknown distractor set {kind!r}", None,
                        f"pass dataset.distractors={'|'.join(KINDS)} (or null for none)")
    limit = cfg.get("distractors_limit")
    if kind == "revisitop1m":
        root = cfg.get("distractors_root") or (dataset.root.parent if dataset.root is not None else None)
        if root is None:
            raise DataError("dataset.distractors=revisitop1m needs the folder holding revisitop1m/", None,
                            "pass dataset.distractors_root=DIR")
        folder, name = Path(str(root)) / "revisitop1m", "revisitop1m"
    else:
        count = cfg.get("distractors_count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise DataError(f"dataset.distractors=procedural needs dataset.distractors_count, a positive number of "
                            f"images (got {count!r})", None, "pass e.g. dataset.distractors_count=1000")
        cache_dir = cfg.get("distractors_dir") or cfg.get("cache_dir")
        if cache_dir is None:
            raise DataError("dataset.distractors=procedural needs a folder to generate into", None,
                            "pass dataset.distractors_dir=DIR")
        folder = procedural_distractors(cache_dir, count, int(cfg.get("distractors_seed") or 0))
        name = folder.name
    paths = read_list(folder, name, limit)
    label = name if limit is None else f"{name}[:{len(paths)}]"
    return dataclasses.replace(dataset, name=f"{dataset.name}+{label}", db_paths=list(dataset.db_paths) + paths,
                               distractors=Distractors(label, folder, dataset.n_db, len(paths), dataset.name))


__all__ = ["Distractors", "KINDS", "R1M_SIZE", "add_distractors", "procedural_distractors", "read_list"]
