"""Revisited benchmarks (ROxford5k, RParis6k and anything in their format) and the ground-truth checks
shared with the classic loader.

Layout (as distributed on the revisitop site, http://cmp.felk.cvut.cz/revisitop/)::

    <root>/<name>/gnd_<name>.pkl      # dict: imlist, qimlist, gnd
    <root>/<name>/jpg/<image name><ext>

``gnd[i]`` is a dict with ``easy``, ``hard``, ``junk`` (0-based indices into ``imlist``) and optionally
``bbx`` = ``[x1, y1, x2, y2]``, the query box in pixels of the full query image.

The pickle is read with a restricted unpickler (plain containers, numbers, strings and numpy arrays
only), so a ground-truth file cannot run code.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_pickle
from .dataset import RetrievalDataset
from .errors import GroundTruthError, ImageLoadError
from .images import bbx_problem

__all__ = ["load_revisited", "write_revisited", "parse_revisited"]

PathLike = str | os.PathLike[str]
Box = tuple[float, float, float, float]

REVISITED_KEYS = ("easy", "hard", "junk")
_REVISITOP = "http://cmp.felk.cvut.cz/revisitop/"
_FIX_GND = "repair or regenerate the ground-truth file (0-based indices into imlist, one gnd entry per query)"
_MAX_LISTED = 5


def load_revisited(root: PathLike, name: str, ext: str = ".jpg", check_images: bool = True) -> RetrievalDataset:
    """Read ``<root>/<name>/gnd_<name>.pkl`` into a ``RetrievalDataset`` (protocol ``"revisited"``).

    Args:
        root: folder holding one sub-folder per dataset (``dataset.root``).
        name: dataset name, e.g. ``"roxford5k"``; also the folder and pickle name.
        ext: image file extension appended to every name of ``imlist`` / ``qimlist``.
        check_images: check up front that every database and query image exists (fast; all the
            missing ones are reported in one error). Off: only the ground truth is read.

    Raises:
        GroundTruthError: missing/unreadable pickle, missing keys, inconsistent lengths, indices out
            of range, malformed boxes.
        ImageLoadError: ``jpg/`` folder or image files missing (with ``check_images``).
    """
    ds_dir = Path(root) / name
    gnd_file = ds_dir / f"gnd_{name}.pkl"
    if not gnd_file.is_file():
        raise GroundTruthError(
            f"ground-truth file of dataset {name!r} not found",
            gnd_file,
            f"set dataset.root to the folder that holds {name}/, laid out as <root>/{name}/gnd_{name}.pkl "
            f"+ <root>/{name}/jpg/ (gnd_roxford5k.pkl / gnd_rparis6k.pkl and the images come from {_REVISITOP})",
        )
    raw = read_pickle(gnd_file)
    imlist, qimlist, gnd, bbxs = parse_revisited(raw, gnd_file)
    jpg_dir = ds_dir / "jpg"
    db_paths = [jpg_dir / f"{im}{ext}" for im in imlist]
    query_paths = [jpg_dir / f"{im}{ext}" for im in qimlist]
    if check_images:
        fix = f"put the images of {name} in {jpg_dir} as <image name>{ext} (check dataset.root / dataset name / ext)"
        if not jpg_dir.is_dir():
            raise ImageLoadError("image folder not found", jpg_dir, fix)
        check_files_exist(db_paths + query_paths, jpg_dir, fix)
    return RetrievalDataset(
        name=name, db_paths=db_paths, query_paths=query_paths, query_bbx=list(bbxs), gnd=gnd,
        protocol="revisited", root=ds_dir, sources=generation_sources(raw), object_boxes=pasted_boxes(raw, imlist),
    )


def pasted_boxes(raw: Mapping[str, Any], imlist: Sequence[str]) -> dict[int, list[list[float]]]:
    """Database index -> boxes of the objects pasted on that image (the ``pastes`` records of a cut-and-paste
    benchmark, visible ones only); empty for other datasets."""
    pastes = raw.get("pastes") if isinstance(raw, Mapping) else None
    if not isinstance(pastes, Mapping):
        return {}
    index = {name: i for i, name in enumerate(imlist)}
    out: dict[int, list[list[float]]] = {}
    for name, records in pastes.items():
        boxes = [[float(v) for v in r["box"]] for r in records if isinstance(r, Mapping)
                 and r.get("box") is not None and float(r.get("visible", 1.0)) > 0]
        if boxes and name in index:
            out[index[name]] = boxes
    return out


def generation_sources(raw: Mapping[str, Any]) -> list[str]:
    """The backgrounds and object source images a cut-and-paste benchmark was built from (its ``pastes`` and
    ``meta`` records), as file paths or procedural identities; empty for other datasets."""
    out: list[str] = []
    pastes = raw.get("pastes") if isinstance(raw, Mapping) else None
    if isinstance(pastes, Mapping):
        for records in pastes.values():
            for r in records if isinstance(records, Sequence) else ():
                if isinstance(r, Mapping):
                    out += [str(r[k]) for k in ("background", "source") if isinstance(r.get(k), str)]
    meta = raw.get("meta") if isinstance(raw, Mapping) else None
    if isinstance(meta, Mapping):
        for k in ("query_sources", "distractor_sources"):
            if isinstance(meta.get(k), Sequence):
                out += [str(v) for v in meta[k] if isinstance(v, str)]
    return list(dict.fromkeys(out))


def write_revisited(
    root: PathLike,
    name: str,
    imlist: Sequence[str],
    qimlist: Sequence[str],
    gnd: Sequence[Mapping[str, Any]],
) -> Path:
    """Write ``<root>/<name>/gnd_<name>.pkl`` atomically (temporary file, then ``os.replace``).

    The input is validated exactly as ``load_revisited`` validates it, so nothing unreadable is
    written. Each entry is stored as ``easy``/``hard``/``junk`` lists of ``int`` plus ``bbx`` (list of
    ``float``) when given; other keys are not written. Images are not touched: they belong in
    ``<root>/<name>/jpg/``. Returns the pickle path.
    """
    ds_dir = Path(root) / name
    gnd_file = ds_dir / f"gnd_{name}.pkl"
    raw = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}
    ims, qims, arrays, bbxs = parse_revisited(raw, gnd_file)
    entries: list[dict[str, Any]] = []
    for arr, box in zip(arrays, bbxs):
        entry: dict[str, Any] = {k: arr[k].tolist() for k in REVISITED_KEYS}
        if box is not None:
            entry["bbx"] = list(box)
        entries.append(entry)
    ds_dir.mkdir(parents=True, exist_ok=True)
    atomic_pickle({"imlist": ims, "qimlist": qims, "gnd": entries}, gnd_file)
    return gnd_file


def parse_revisited(
    raw: object, gnd_file: Path
) -> tuple[list[str], list[str], list[dict[str, np.ndarray]], list[Box | None]]:
    """Validate a revisited ground-truth dict; return ``imlist, qimlist, gnd arrays, query boxes``."""
    data = require_mapping(raw, ("imlist", "qimlist", "gnd"), gnd_file)
    imlist = name_list(data["imlist"], "imlist", gnd_file)
    qimlist = name_list(data["qimlist"], "qimlist", gnd_file)
    entries = entry_list(data["gnd"], len(qimlist), "qimlist", gnd_file)
    gnd: list[dict[str, np.ndarray]] = []
    bbxs: list[Box | None] = []
    for i, entry in enumerate(entries):
        entry = require_mapping(entry, REVISITED_KEYS, gnd_file, where=f"gnd[{i}]")
        gnd.append(disjoint_lists({k: index_array(entry[k], len(imlist), f"gnd[{i}][{k!r}]", gnd_file)
                                   for k in REVISITED_KEYS}, i, gnd_file))
        bbxs.append(entry_bbx(entry, i, gnd_file))
    return imlist, qimlist, gnd, bbxs


# ---------------------------------------------------------------- shared ground-truth checks


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain data and numpy arrays (no arbitrary code)."""

    ALLOWED = frozenset({
        ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
        ("collections", "OrderedDict"), ("_codecs", "encode"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data and numpy arrays)")
        return super().find_class(module, name)


def read_pickle(path: Path) -> object:
    """Load a ground-truth pickle with the restricted unpickler (Python 2 pickles are retried as latin1)."""
    for encoding in ("ASCII", "latin1"):
        try:
            with open(path, "rb") as f:
                return _SafeUnpickler(f, encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except Exception as err:  # truncated, not a pickle, forbidden class...: all mean "bad file"
            raise GroundTruthError(
                f"ground-truth pickle cannot be read ({type(err).__name__}: {err})",
                path,
                "re-download the file, or rewrite it as a pickled dict of lists/numpy arrays",
            ) from err
    raise GroundTruthError("ground-truth pickle has undecodable text", path,
                           "rewrite it with Python 3 as a pickled dict of lists/numpy arrays")


def require_mapping(raw: object, keys: Sequence[str], file: Path, where: str = "top level") -> Mapping[str, Any]:
    """``raw`` as a mapping that has all ``keys``, else a ``GroundTruthError``."""
    if not isinstance(raw, Mapping):
        raise GroundTruthError(f"{where} of the ground truth is a {type(raw).__name__}, expected a dict", file,
                               _FIX_GND)
    missing = [k for k in keys if k not in raw]
    if missing:
        raise GroundTruthError(
            f"{where} of the ground truth lacks key(s) {missing} (has {sorted(map(str, raw))})", file,
            f"add {missing} to {where}; expected keys: {list(keys)}",
        )
    return raw


def name_list(values: object, key: str, file: Path) -> list[str]:
    """A list of non-empty image names (strings), else a ``GroundTruthError``."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise GroundTruthError(f"{key!r} is a {type(values).__name__}, expected a list of image names", file,
                               _FIX_GND)
    if len(values) == 0:
        raise GroundTruthError(f"{key!r} is empty", file, _FIX_GND)
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v:
            raise GroundTruthError(f"{key}[{i}] = {v!r} is not a non-empty image name", file, _FIX_GND)
        if os.path.isabs(v) or v.startswith(("/", "\\")) or ".." in v.replace("\\", "/").split("/"):
            raise GroundTruthError(
                f"{key}[{i}] = {v!r} points outside the dataset's image folder (absolute, or with '..')", file,
                "image names are relative to <root>/<name>/jpg/ and stay inside it: drop the leading '/' or the "
                "'..' parts")
    return list(values)


def entry_list(values: object, n_queries: int, query_key: str, file: Path) -> list[object]:
    """``gnd`` as a list with one entry per query, else a ``GroundTruthError``."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        raise GroundTruthError(f"'gnd' is a {type(values).__name__}, expected a list of per-query dicts", file,
                               _FIX_GND)
    if len(values) != n_queries:
        raise GroundTruthError(f"'gnd' has {len(values)} entries but {query_key!r} has {n_queries} queries", file,
                               _FIX_GND)
    return list(values)


def index_array(values: object, n_db: int, label: str, file: Path) -> np.ndarray:
    """Database indices as a 1-D ``int64`` array, each in ``[0, n_db)``, else a ``GroundTruthError``.

    A bare integer is read as a one-element list (MATLAB conversions produce those).
    """
    try:
        arr = np.atleast_1d(np.asarray(values))
    except (ValueError, TypeError) as err:
        raise GroundTruthError(f"{label} is not a list of indices ({err})", file, _FIX_GND) from err
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise GroundTruthError(f"{label} has shape {arr.shape}, expected a flat list of indices", file, _FIX_GND)
    if arr.dtype.kind == "f":
        if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise GroundTruthError(f"{label} holds non-integer values", file, _FIX_GND)
    elif arr.dtype.kind not in "iu":
        raise GroundTruthError(f"{label} holds {arr.dtype} values, expected integer indices", file, _FIX_GND)
    out = arr.astype(np.int64)
    bad = out[(out < 0) | (out >= n_db)]
    if bad.size:
        raise GroundTruthError(
            f"{label} has index {int(bad[0])} out of range [0, {n_db}) ({bad.size} bad index(es))", file,
            "indices must be 0-based positions in imlist (convert 1-based MATLAB indices with -1)",
        )
    values_, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        dup = values_[counts > 1]
        raise GroundTruthError(
            f"{label} lists index {int(dup[0])} {int(counts[counts > 1][0])} times ({dup.size} repeated "
            "index(es)): a repeated positive would be counted twice by the mAP", file,
            "list each database image at most once per query")
    return out


def disjoint_lists(entry: dict[str, np.ndarray], i: int, file: Path) -> dict[str, np.ndarray]:
    """``entry`` (``easy``/``hard``/``junk`` or ``ok``/``junk`` index arrays of query ``i``) when no database image
    is in two of its lists, else a ``GroundTruthError`` (an image both positive and junk would be ignored and
    counted at once)."""
    keys = list(entry)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            both = np.intersect1d(entry[keys[a]], entry[keys[b]])
            if both.size:
                raise GroundTruthError(
                    f"gnd[{i}]: database index {int(both[0])} is both {keys[a]!r} and {keys[b]!r} "
                    f"({both.size} such index(es))", file,
                    f"put each database image in at most one of {keys} for a query")
    return entry


def entry_bbx(entry: Mapping[str, Any], i: int, file: Path) -> Box | None:
    """The optional query box of ``gnd[i]`` as 4 floats, or ``None``; malformed -> ``GroundTruthError``."""
    box = entry.get("bbx")
    if box is None:
        return None
    problem = bbx_problem(box)
    if problem is not None:
        raise GroundTruthError(f"gnd[{i}]['bbx']: {problem}", file,
                               "boxes must be [x1, y1, x2, y2] in pixels of the full query image")
    x1, y1, x2, y2 = (float(v) for v in (box.tolist() if isinstance(box, np.ndarray) else box))
    return (x1, y1, x2, y2)


def check_files_exist(paths: Sequence[Path], folder: Path, fix: str) -> None:
    """One ``ImageLoadError`` listing how many of ``paths`` are missing and the first few."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        shown = ", ".join(_relative(p, folder) for p in missing[:_MAX_LISTED])
        more = ", ..." if len(missing) > _MAX_LISTED else ""
        raise ImageLoadError(f"{len(missing)} of {len(paths)} image files are missing: {shown}{more}", folder, fix)


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)
