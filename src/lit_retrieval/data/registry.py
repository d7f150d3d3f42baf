"""Datasets by configuration: ``load_dataset({"kind": ..., ...})`` for every format the engine evaluates.

Kinds: ``revisited`` (``root``, ``name``), ``classic`` (``gnd_file``, ``images_dir``, ``distractor_dirs``...),
``embedded`` (procedural cut-and-paste benchmark built on first use from ``seed``) and ``cocopaste`` (the
cut-and-paste benchmark built from COCO-format objects and a background folder, e.g. ``../shared/data``).
"""
from __future__ import annotations

import dataclasses

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .classic import load_classic
from .dataset import RetrievalDataset
from .errors import DataError
from .revisited import load_revisited


def _get(cfg: Mapping[str, Any], key: str, default: Any = ...) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is ...:
        raise DataError(f"dataset config of kind {cfg.get('kind')!r} needs '{key}'", None,
                        f"pass dataset.{key}=... on the command line")
    return default


def load_dataset(cfg: Mapping[str, Any]) -> RetrievalDataset:
    """The dataset of ``cfg``, with its distractors appended to the database (``distractors``, revisited
    protocol only: :mod:`.distractors`)."""
    from .distractors import add_distractors

    dataset = _load(cfg)
    if cfg.get("distractors") not in (None, "none") and dataset.protocol != "revisited":
        raise DataError(f"dataset.distractors={cfg.get('distractors')} extends revisited benchmarks (ROxford5k, "
                        f"RParis6k and the embedded ones), not {dataset.name!r} ({dataset.protocol} protocol)",
                        dataset.root, "drop dataset.distractors, or use a revisited dataset")
    return add_distractors(dataset, cfg)


def _load(cfg: Mapping[str, Any]) -> RetrievalDataset:
    kind = cfg.get("kind")
    if kind == "revisited":
        return load_revisited(_get(cfg, "root"), _get(cfg, "name"), ext=_get(cfg, "ext", ".jpg"))
    if kind == "classic":
        return load_classic(_get(cfg, "gnd_file"), _get(cfg, "images_dir"), name=_get(cfg, "name", None),
                            distractor_dirs=tuple(_get(cfg, "distractor_dirs", ())),
                            exclude_query_from_db=_get(cfg, "exclude_query_from_db", None))
    if kind == "embedded":
        from .synthetic import embedded_root

        name = _get(cfg, "name", "embedded")
        folder = embedded_root(_get(cfg, "cache_dir"), seed=int(_get(cfg, "seed", 0)), name=name, progress=True)
        return load_revisited(folder.parent, name)
    if kind == "cocopaste":
        return _load_cocopaste(cfg)
    raise DataError(f"unknown dataset kind {kind!r}", None,
                    "use dataset=revisited|classic|embedded|cocopaste (or a preset such as dataset=roxford5k)")


def _load_cocopaste(cfg: Mapping[str, Any]) -> RetrievalDataset:
    from .synthetic import SHARED_SPEC, build_from_shared, shuffle_dataset

    coco, backgrounds = Path(_get(cfg, "coco_dir")), Path(_get(cfg, "backgrounds_dir"))
    for folder, what in ((coco, "coco_dir (COCO-format objects)"), (backgrounds, "backgrounds_dir")):
        if not folder.is_dir():
            raise DataError(f"dataset=cocopaste: {what} is not a folder", folder,
                            "point dataset.coco_dir / dataset.backgrounds_dir at existing folders (by default "
                            "../shared/data/coco128 and ../shared/data/imagenet-samples)")
    seed, nq = int(_get(cfg, "seed", 0)), int(_get(cfg, "n_queries", 24))
    name = f"{_get(cfg, 'name', 'cocopaste')}-s{seed}-q{nq}"
    kw: dict[str, Any] = {}
    spec: dict[str, Any] = {"seed": seed, "n_queries": nq}
    split = _get(cfg, "split", None)
    if split is not None:  # build from one part of an image split (the others train, e.g. data=synthetic_pairs)
        fractions, part = [float(f) for f in split["fractions"]], int(split["part"])
        if not 0 <= part < len(fractions):
            raise DataError(f"dataset.split.part={part} but dataset.split.fractions has {len(fractions)} parts", None,
                            "pick the held-out part's index (e.g. 2 for fractions [0.5, 0.1, 0.4])")
        kw["split"] = (fractions, int(split.get("seed", 0)), part)
        name += f"-p{part}of" + "_".join(f"{f:g}" for f in fractions) + f"-ss{kw['split'][1]}"
    for key, into in (("n_distractors", spec), ("n_backgrounds", kw)):
        if _get(cfg, key, None) is not None:
            into[key] = int(cfg[key])
            name += f"-{key[2]}{into[key]}"
    if _get(cfg, "n_shuffled", None) is not None:  # patch-shuffled copies inside the build (default: all)
        spec["n_shuffled_negatives"] = int(cfg["n_shuffled"])
        name += f"-shf{spec['n_shuffled_negatives']}"
    out_root = Path(_get(cfg, "cache_dir"))
    if not (out_root / name / f"gnd_{name}.pkl").exists():
        build_from_shared(coco, backgrounds, out_root, name, dataclasses.replace(SHARED_SPEC, **spec), **kw)
    copies = int(_get(cfg, "shuffle_copies", 0))
    if copies:  # Chen et al.'s OxfShf construction on top: `copies` shuffled negatives per positive
        shf = f"{name}-x{copies}"
        if not (out_root / shf / f"gnd_{shf}.pkl").exists():
            shuffle_dataset(out_root, name, out_root, shf, seed=seed, copies=copies)
        name = shf
    return load_revisited(out_root, name)


def whitening_pairs(dataset: RetrievalDataset) -> tuple[np.ndarray, np.ndarray]:
    """Matching (query index, database index) pairs of a dataset's ground truth, for supervised whitening."""
    keys = ("easy", "hard") if dataset.protocol == "revisited" else ("ok",)
    qi, pi = [], []
    for i, g in enumerate(dataset.gnd):
        pos = np.concatenate([np.asarray(g.get(k, []), dtype=np.int64) for k in keys])
        qi.append(np.full(len(pos), i))
        pi.append(pos)
    qi, pi = np.concatenate(qi), np.concatenate(pi)
    if len(qi) == 0:
        raise DataError(f"dataset {dataset.name!r} has no positive pairs to learn a supervised whitening from",
                        dataset.root, "pick another whitening.dataset or whitening=pca")
    return qi, pi
