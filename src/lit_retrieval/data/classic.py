"""Classic benchmarks: Oxford5k, Paris6k, INRIA Holidays (and Oxford105k/Paris106k with distractors).

Ground truth is a JSON (as in ``shared/data/gnd-classic``) or pickle dict with ``imlist`` (database
image names), ``qidx`` (each query's position in ``imlist``) and/or ``qimlist`` (query names), and
``gnd[i]`` with ``ok`` (positives) and ``junk`` (ignored) 0-based indices into ``imlist``, plus an
optional query box ``bbx`` = ``[x1, y1, x2, y2]`` (Oxford/Paris).

Queries are database images. What happens to the query image itself:

* Oxford5k / Paris6k (official protocol): the query stays in the database and is one of its own
  positives (it is in its ``ok`` list in the official ground truth).
* Holidays (official protocol): the query is excluded from its own ranking. This is done by moving the
  query's index from ``ok`` to ``junk`` (junk images are ignored by the evaluation), which is what
  ``exclude_query_from_db`` does; it is on by default for any dataset whose name contains
  ``holidays``. The ``gnd-classic`` Holidays file already has each query in its own junk list.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import RetrievalDataset
from .errors import DataError, GroundTruthError, ImageLoadError
from .revisited import (
    Box,
    check_files_exist,
    disjoint_lists,
    entry_bbx,
    entry_list,
    index_array,
    name_list,
    read_pickle,
    require_mapping,
)

__all__ = ["load_classic", "parse_classic", "exclude_query", "list_images", "IMAGE_EXTENSIONS"]

PathLike = str | os.PathLike[str]
CLASSIC_KEYS = ("ok", "junk")
#: distractor image extensions (matched case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_FIX_GND = "repair or regenerate the ground-truth file (0-based indices into imlist, one gnd entry per query)"


def load_classic(
    gnd_file: PathLike,
    images_dir: PathLike,
    name: str | None = None,
    ext: str = ".jpg",
    distractor_dirs: Sequence[PathLike] = (),
    check_images: bool = True,
    exclude_query_from_db: bool | None = None,
) -> RetrievalDataset:
    """Read a classic benchmark into a ``RetrievalDataset`` (protocol ``"classic"``).

    Args:
        gnd_file: ``.json`` or ``.pkl`` ground truth (see the module docstring).
        images_dir: folder of the database images, ``<images_dir>/<imlist name><ext>``.
        name: dataset name; default: the file name without ``gnd_`` and suffix (``gnd_oxford5k.json`` ->
            ``oxford5k``).
        ext: image extension appended to every ``imlist`` name.
        distractor_dirs: folders of extra database images (e.g. Flickr100k for Oxford105k), appended
            after ``imlist`` in order: each folder's ``.jpg/.jpeg/.png`` files (any case), recursively,
            sorted by relative path, hidden files skipped. They are never positives.
        check_images: check up front that every ``imlist`` image exists.
        exclude_query_from_db: move each query's own index from ``ok`` to ``junk``; ``None`` = on for
            names containing ``holidays``, off otherwise.

    Raises:
        GroundTruthError: missing/unreadable file, missing keys, inconsistent lengths, indices out of
            range, ``qidx`` disagreeing with ``qimlist``, malformed boxes.
        ImageLoadError: images folder / images / distractor folders missing, or a distractor folder
            without images.
    """
    gnd_file = Path(gnd_file)
    images_dir = Path(images_dir)
    if name is None:
        name = gnd_file.stem.removeprefix("gnd_")
    if exclude_query_from_db is None:
        exclude_query_from_db = "holidays" in name.lower()
    imlist, qidx, gnd, bbxs = parse_classic(read_classic_file(gnd_file), gnd_file)
    if exclude_query_from_db:
        gnd = exclude_query(gnd, qidx)
    db_paths = [images_dir / f"{im}{ext}" for im in imlist]
    if check_images:
        fix = f"put the {name} images in {images_dir} as <image name>{ext} (check dataset.root / images dir / ext)"
        if not images_dir.is_dir():
            raise ImageLoadError("image folder not found", images_dir, fix)
        check_files_exist(db_paths, images_dir, fix)
    query_paths = [db_paths[q] for q in qidx]
    db_paths = db_paths + _distractors(distractor_dirs, db_paths)
    return RetrievalDataset(
        name=name, db_paths=db_paths, query_paths=query_paths, query_bbx=list(bbxs), gnd=gnd,
        protocol="classic", root=images_dir,
    )


def read_classic_file(gnd_file: Path) -> object:
    """The raw ground-truth object of a ``.json`` or ``.pkl`` file."""
    if not gnd_file.is_file():
        raise GroundTruthError(
            "ground-truth file not found", gnd_file,
            "set the ground-truth path (classic Oxford5k/Paris6k/Holidays files: gnd_<name>.json or .pkl "
            "with imlist, qidx/qimlist and gnd)",
        )
    suffix = gnd_file.suffix.lower()
    if suffix == ".json":
        try:
            with open(gnd_file, encoding="utf-8") as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise GroundTruthError(f"ground-truth JSON cannot be parsed ({err})", gnd_file,
                                   "re-download or regenerate the file") from err
    if suffix in (".pkl", ".pickle"):
        return read_pickle(gnd_file)
    raise GroundTruthError(f"unknown ground-truth file type {suffix!r}", gnd_file,
                           "use a .json or .pkl file with keys imlist, qidx/qimlist, gnd")


def parse_classic(
    raw: object, gnd_file: Path
) -> tuple[list[str], np.ndarray, list[dict[str, np.ndarray]], list[Box | None]]:
    """Validate a classic ground-truth dict; return ``imlist, qidx (int64), gnd arrays, query boxes``."""
    data = require_mapping(raw, ("imlist", "gnd"), gnd_file)
    imlist = name_list(data["imlist"], "imlist", gnd_file)
    qidx = _query_indices(data, imlist, gnd_file)
    entries = entry_list(data["gnd"], len(qidx), "qidx", gnd_file)
    gnd: list[dict[str, np.ndarray]] = []
    bbxs: list[Box | None] = []
    for i, entry in enumerate(entries):
        entry = require_mapping(entry, CLASSIC_KEYS, gnd_file, where=f"gnd[{i}]")
        gnd.append(disjoint_lists({k: index_array(entry[k], len(imlist), f"gnd[{i}][{k!r}]", gnd_file)
                                   for k in CLASSIC_KEYS}, i, gnd_file))
        bbxs.append(entry_bbx(entry, i, gnd_file))
    return imlist, qidx, gnd, bbxs


def exclude_query(gnd: Sequence[Mapping[str, np.ndarray]], qidx: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Copy of ``gnd`` where each query's own index is removed from ``ok`` and present in ``junk``."""
    out: list[dict[str, np.ndarray]] = []
    for entry, q in zip(gnd, qidx):
        new = dict(entry)
        new["ok"] = entry["ok"][entry["ok"] != q]
        junk = entry["junk"]
        new["junk"] = junk if np.any(junk == q) else np.append(junk, np.int64(q)).astype(np.int64)
        out.append(new)
    return out


def list_images(folder: PathLike) -> list[Path]:
    """Image files (``IMAGE_EXTENSIONS``, any case) under ``folder``, recursive, sorted by relative path.

    Hidden files and folders (name starting with ``.``, e.g. macOS ``._x.jpg``) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageLoadError("distractor folder not found", folder,
                             "check the distractor_dirs paths (e.g. the extracted Flickr100k folder)")
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith(".") and fn.lower().endswith(IMAGE_EXTENSIONS):
                path = Path(dirpath) / fn
                found.append((path.relative_to(folder).as_posix(), path))
    if not found:
        raise ImageLoadError(f"distractor folder has no {'/'.join(IMAGE_EXTENSIONS)} images", folder,
                             "point distractor_dirs at the folder that holds the extracted images")
    return [p for _, p in sorted(found)]


def _query_indices(data: Mapping[str, Any], imlist: list[str], gnd_file: Path) -> np.ndarray:
    """``qidx`` from the file, checked against ``qimlist`` when both are given (derived from it otherwise)."""
    if "qidx" not in data and "qimlist" not in data:
        raise GroundTruthError("the ground truth has neither 'qidx' nor 'qimlist'", gnd_file,
                               "add 'qidx' (query positions in imlist) or 'qimlist' (query image names)")
    qimlist = name_list(data["qimlist"], "qimlist", gnd_file) if "qimlist" in data else None
    if "qidx" in data:
        qidx = index_array(data["qidx"], len(imlist), "qidx", gnd_file)
        if qimlist is not None:
            if len(qimlist) != len(qidx):
                raise GroundTruthError(f"'qidx' has {len(qidx)} entries but 'qimlist' has {len(qimlist)}",
                                       gnd_file, _FIX_GND)
            for i, (q, qname) in enumerate(zip(qidx, qimlist)):
                if imlist[q] != qname:
                    raise GroundTruthError(
                        f"query {i}: qimlist names {qname!r} but imlist[qidx[{i}]={q}] is {imlist[q]!r}", gnd_file,
                        "make qidx the 0-based positions of the qimlist names in imlist",
                    )
        return qidx
    position = {im: i for i, im in reversed(list(enumerate(imlist)))}  # first occurrence wins
    absent = [q for q in qimlist if q not in position]
    if absent:
        raise GroundTruthError(f"{len(absent)} query name(s) are not in imlist, e.g. {absent[:3]}", gnd_file,
                               "classic queries must be database images: add them to imlist or fix qimlist")
    return np.array([position[q] for q in qimlist], dtype=np.int64)


def _distractors(dirs: Sequence[PathLike], db_paths: Sequence[Path]) -> list[Path]:
    """The distractor images of all ``dirs``; none may be one of the dataset's own images."""
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]  # a single folder given where a list is expected
    extra = [p for d in dirs for p in list_images(d)]
    if extra:
        own = {os.path.normcase(os.path.abspath(p)) for p in db_paths}
        clash = [p for p in extra if os.path.normcase(os.path.abspath(p)) in own]
        if clash:
            raise DataError(
                f"{len(clash)} distractor image(s) are dataset images, e.g. {clash[0]}", clash[0].parent,
                "distractor_dirs must not include the dataset's own image folder",
            )
    return extra
