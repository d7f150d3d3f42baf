"""Patch shuffle: Chen et al.'s OxfShf / ParShf hard negatives (same pixels, scrambled layout).

``shuffle_patches`` permutes the cells of a grid; ``shuffle_dataset`` copies a revisited-format dataset
and extends its database with patch-shuffled copies of every query's positives, as negatives.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ...atomic import atomic_pickle, make_temp_dir
from ..revisited import read_pickle

SHUFFLED_PREFIX = "shf_"


def shuffle_patches(img: np.ndarray, grid: int = 10, rng: np.random.Generator | None = None) -> np.ndarray:
    """Split ``img`` (h, w[, c]) into ``grid`` x ``grid`` equal patches and permute them randomly.

    Patches are ``h // grid`` x ``w // grid`` px; the remainder strips (fewer than ``grid`` px at the right
    and bottom) stay in place, so the output has the input's shape and exactly its pixels. The
    permutation is never the identity.
    """
    if rng is None:
        rng = np.random.default_rng()
    if grid < 2:
        raise ValueError(f"grid must be >= 2, got {grid}")
    h, w = img.shape[:2]
    ph, pw = h // grid, w // grid
    if ph == 0 or pw == 0:
        raise ValueError(f"image of {w}x{h} px is smaller than a {grid}x{grid} grid; use a smaller grid")
    x = np.asarray(img)[: ph * grid, : pw * grid]
    rest = x.shape[2:]
    patches = x.reshape(grid, ph, grid, pw, *rest).swapaxes(1, 2).reshape(grid * grid, ph, pw, *rest)
    perm = rng.permutation(grid * grid)
    if np.array_equal(perm, np.arange(grid * grid)):
        perm = np.roll(perm, 1)
    out = np.array(img, copy=True)
    out[: ph * grid, : pw * grid] = patches[perm].reshape(grid, grid, ph, pw, *rest).swapaxes(1, 2).reshape(x.shape)
    return out


def _positives(entry: dict[str, Any]) -> list[int]:
    """Positive database indices of a gnd entry: revisited easy + hard, or classic ok."""
    if "easy" in entry or "hard" in entry:
        return [int(i) for key in ("easy", "hard") for i in entry.get(key, [])]
    if "ok" in entry:
        return [int(i) for i in entry["ok"]]
    raise ValueError(f"gnd entry has none of 'easy', 'hard', 'ok' (keys: {sorted(entry)})")


def read_gnd(root: str | Path, name: str) -> dict[str, Any]:
    """Read ``<root>/<name>/gnd_<name>.pkl`` with clear errors."""
    path = Path(root) / name / f"gnd_{name}.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"ground truth {path} does not exist; expected the revisited layout "
                                f"<root>/<name>/gnd_<name>.pkl")
    data = read_pickle(path)  # the restricted unpickler: a ground-truth file cannot run code
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= set(data):
        raise ValueError(f"ground truth {path} must be a dict with 'imlist', 'qimlist' and 'gnd'")
    return data


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def publish_dir(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Move a finished build folder ``tmp`` to ``dst`` (rename; the old ``dst`` is removed if ``overwrite``)."""
    if dst.exists():
        if not overwrite:
            raise FileExistsError(f"{dst} already exists; remove it or pass overwrite=True (--overwrite)")
        old = make_temp_dir(f".{dst.name}.old-", dst.parent)
        os.rename(dst, old)  # onto the fresh empty folder
        os.rename(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dst)


def shuffle_dataset(src_root: str | Path, src_name: str, dst_root: str | Path, dst_name: str, seed: int = 0,
                    grid: int = 10, overwrite: bool = False, progress: bool = True, copies: int = 1) -> Path:
    """Copy a revisited-format dataset and append ``copies`` patch-shuffled copies of each query's positives
    (Chen et al.'s OxfShf / ParShf: 3 per positive).

    The copies (named ``shf_<original>``, then ``shf<c>_<original>`` for the c-th extra copy) are negatives:
    they are appended to ``imlist`` and appear in no ``easy``/``hard``/``junk``/``ok`` list, so existing indices and
    ground truth stay valid. Extra keys of the source pickle are kept; ``shuffled`` maps each copy to its original.
    Returns ``<dst_root>/<dst_name>``.
    """
    src = Path(src_root) / src_name
    data = read_gnd(src_root, src_name)
    imlist = list(data["imlist"])
    originals = [imlist[i] for i in sorted({i for entry in data["gnd"] for i in _positives(entry)})]
    dst_root = Path(dst_root)
    dst_root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{dst_name}.tmp-", dst_root)
    try:
        (tmp / "jpg").mkdir()
        for f in sorted((src / "jpg").iterdir()):
            _link_or_copy(f, tmp / "jpg" / f.name)
        shuffled = {}
        if copies < 1:
            raise ValueError(f"shuffle_dataset: copies={copies} must be >= 1")
        for k, name in enumerate(tqdm(originals, desc=f"shuffling {src_name}", disable=not progress)):
            path = src / "jpg" / f"{name}.jpg"
            if not path.is_file():
                raise FileNotFoundError(f"{path} (database image {name!r} of {src_name}) is missing; the dataset is "
                                        f"incomplete")
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
            for c in range(copies):
                out = shuffle_patches(pixels, grid, np.random.default_rng([seed, k] if c == 0 else [seed, k, c]))
                new = f"{SHUFFLED_PREFIX}{name}" if c == 0 else f"{SHUFFLED_PREFIX[:-1]}{c}_{name}"
                Image.fromarray(out).save(tmp / "jpg" / f"{new}.jpg", quality=90)
                shuffled[new] = name
        result = {**data, "imlist": imlist + list(shuffled), "shuffled": {**data.get("shuffled", {}), **shuffled}}
        result["meta"] = {**data.get("meta", {}), "shuffled_from": src_name, "shuffle_seed": seed, "shuffle_grid": grid,
                          "shuffle_copies": copies}
        atomic_pickle(result, tmp / f"gnd_{dst_name}.pkl")
        publish_dir(tmp, dst_root / dst_name, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst_root / dst_name
