"""Detect-to-Retrieve retrieval on a dataset: ``eval.py method=d2r`` and the detector's training callback.

Per database image (at ``image_size``): the regions are the whole image (always region 0) and the detector's
boxes with score ≥ ``threshold`` (or the R-MAC boxes, or none); local features are extracted on the whole image
and re-extracted on every box crop (:func:`~.features.region_descriptors`), projected by the codebook's PCA and
encoded by the kernel / aggregation variant (:mod:`.database`). Queries are whole (not regional) and preprocessed by
the project's rule for every method (cirtorch's, :func:`~lit_retrieval.data.images.crop_query`): cropped to their
box, then shrunk by the full image's scale, so the crop's long side is ``image_size·max(crop)/max(image)``. The
codebook (PCA + faiss k-means) is learned on another image set than the one evaluated (by default
``../shared/data/imagenet-samples``; the database only when none is given) and cached on disk.

``eval.py method=d2r`` reports the configured variant and, as ``stages``, the same kernel without boxes and with
regional search (max, avg), so one run gives a Table 1 row; ``benchmarks/d2r_quality.py`` sweeps thresholds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ...data import RetrievalDataset
from ...data.synthetic.backgrounds import list_images
from ...data.synthetic.benchmark import split_by_image
from ...retrieval import dataset_items
from ...retrieval.extractor import backbone_key, loader_workers
from ...retrieval.interface import PictureContext, PipelineRetriever, Rankings
from ...retrieval.extract import ImageItem, image_loader
from .boxes import rmac_boxes, select_boxes
from ...data.provenance import LearnedSets, default_hasher
from .codebook import Codebook, learn_codebook
from .database import Database, check_variant, encode_image, encode_query, normalization, variant_name
from .features import BOX_FEATURES, ActivationFeatures, crop, region_descriptors

log = logging.getLogger(__name__)
BOX_SOURCES = ("detector", "rmac", "none")
BOX_NAMES = {"detector": "D2R", "rmac": "RMACB", "none": ""}  # the paper's prefixes (D2R-R-ASMK*, RMACB-R-ASMK*)


@dataclass(frozen=True)
class Settings:
    """One D2R variant and its features and codebook (``conf/method/d2r.yaml``)."""

    kernel: str = "asmk_star"            # vlad | asmk | asmk_star
    aggregation: str = "r_asmk"          # none | search_max | search_avg | r_vlad | naive_r_asmk | r_asmk
    boxes: str = "detector"              # detector | rmac | none (region selection besides the whole image)
    threshold: float = 0.1               # detection score threshold
    max_boxes: int | None = None         # at most this many detector boxes per image, by score (None: all)
    rmac_levels: int = 2                 # R-MAC boxes: grid levels 1..L
    normalize: str = "paper"             # paper | delf | gamma (where γ of eq. 1 applies, database.uses_gamma)
    scales: tuple[float, ...] = (0.7071, 1.0, 1.4142)
    max_features: int = 1000             # per region, the strongest activations by L2 norm
    box_features: str = "reextract"      # reextract (on each box crop, DELF's code) | select (from the whole image)
    K: int = 1024                        # visual words
    dim: int = 128                       # PCA dimension of the local descriptors
    niter: int = 10                      # k-means iterations (the reference ASMK code's)
    codebook_dir: str | None = None      # image folder the codebook is learned on (None: the evaluated database)
    codebook_images: int = 300           # images drawn from it
    codebook_per_image: int = 150        # descriptors drawn per image
    codebook_fractions: tuple[float, ...] | None = None  # split codebook_dir by image (as the synthetic data) ...
    codebook_parts: tuple[int, ...] = (0, 1)             # ... and keep these parts (e.g. the training ones)
    codebook_split_seed: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_variant(self.kernel, self.aggregation)
        bad = []
        try:  # the named option (booleans of earlier configs: true = gamma, false = delf)
            object.__setattr__(self, "normalize", normalization(self.normalize))
        except ValueError as err:
            bad.append(str(err))
        if self.boxes not in BOX_SOURCES:
            bad.append(f"boxes={self.boxes!r} (one of {BOX_SOURCES})")
        if not 0.0 <= self.threshold <= 1.0:
            bad.append(f"threshold={self.threshold} (a detection score in [0, 1])")
        if self.max_boxes is not None and self.max_boxes < 0:
            bad.append(f"max_boxes={self.max_boxes} (>= 0, or null for every box above the threshold)")
        if self.rmac_levels < 1:
            bad.append(f"rmac_levels={self.rmac_levels} (>= 1)")
        if min(self.K, self.dim, self.niter, self.max_features, self.codebook_images, self.codebook_per_image) < 1:
            bad.append("K, dim, niter, max_features, codebook_images, codebook_per_image must all be >= 1")
        if not self.scales or min(self.scales) <= 0:
            bad.append(f"scales={list(self.scales)} (positive factors)")
        if self.box_features not in BOX_FEATURES:
            bad.append(f"features.regions={self.box_features!r} (one of {BOX_FEATURES})")
        if bad:
            raise ValueError("method=d2r: bad setting(s): " + "; ".join(bad))

    @property
    def regional(self) -> bool:
        return self.aggregation != "none" and self.boxes != "none"

    def feature_key(self) -> dict[str, Any]:
        return {"scales": list(self.scales), "max_features": self.max_features}

    def codebook_key(self) -> dict[str, Any]:
        return {**self.feature_key(), "K": self.K, "dim": self.dim, "niter": self.niter, "seed": self.seed,
                "images": self.codebook_images, "per_image": self.codebook_per_image}


@dataclass
class Encoded:
    """A database encoded for several variants at once: ``items[name][i]`` the stored items of image ``i``."""

    items: dict[str, list[list[Any]]] = field(default_factory=dict)
    boxes: list[np.ndarray] = field(default_factory=list)    # regions besides the whole image, xyxy pixels
    scores: list[np.ndarray] = field(default_factory=list)   # their detection scores (1 for R-MAC boxes)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ codebook
def codebook_images(s: Settings) -> list[Path]:
    """The images of ``codebook_dir``, restricted to ``codebook_parts`` of the by-image split ``codebook_fractions``
    (the partition ``data=synthetic_*`` and the cut-and-paste benchmarks make of the same folder)."""
    root = Path(str(s.codebook_dir))
    try:
        paths = list_images(root)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"codebook images: {err}. Fix: point method.codebook.dir at a folder of .jpg/.png "
                                "images of ANOTHER dataset than the evaluated one (the paper learns the Oxford "
                                "codebook on Paris), or method.codebook.dir=null to use the database") from err
    if not paths:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png images under {root} (method.codebook.dir)")
    if s.codebook_fractions is None:
        return paths
    parts = split_by_image(paths, s.codebook_fractions, s.codebook_split_seed, key=str)
    return [p for i in s.codebook_parts for p in parts[i]]


def learn_or_load_codebook(extractor: ActivationFeatures, s: Settings, paths: Sequence[Path], image_size: int,
                           device: Any, cache_dir: str | None, base_key: Mapping[str, Any], source: str,
                           progress: bool = True) -> Codebook:
    """The PCA + k-means codebook of ``s`` learned on ``codebook_images`` of ``paths`` (a seeded random choice), cached
    under ``cache_dir`` by its whole key (backbone, weights, features, settings, the image list)."""
    rng = np.random.default_rng(s.seed)
    pick = sorted(rng.choice(len(paths), size=min(s.codebook_images, len(paths)), replace=False).tolist())
    chosen = [Path(paths[i]) for i in pick]
    content = default_hasher().keys(chosen, missing_ok=True)  # the images by content, not by name
    key = {**base_key, **s.codebook_key(), "image_size": image_size,
           "images_digest": hashlib.sha1("\n".join(content).encode()).hexdigest(), "version": 2}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "d2r_codebooks" / f"{digest}.npz" if cache_dir else None
    if path is not None and path.is_file():
        cb = Codebook.load(path)
        cb.check(extractor.backbone.out_channels)
        return cb
    t0 = time.perf_counter()
    descs = []
    for _, img in tqdm(image_loader([ImageItem(p) for p in chosen], range(len(chosen)), image_size), total=len(chosen),
                       desc=f"codebook features ({source})", disable=not progress):
        d = extractor(img.to(device))[0]
        if len(d) > s.codebook_per_image:
            d = d[np.sort(rng.choice(len(d), s.codebook_per_image, replace=False))]
        descs.append(d)
    cb = learn_codebook(np.concatenate(descs), dim=s.dim, K=s.K, niter=s.niter, seed=s.seed)
    cb.source = source
    log.info("D2R codebook: K=%d, %d-D, %d descriptors of %d images (%s) in %.1f s", s.K, s.dim,
             sum(len(d) for d in descs), len(chosen), source, time.perf_counter() - t0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cb.save(path)
    return cb


# ------------------------------------------------------------------------------------------------ regions
def image_boxes(image: torch.Tensor, s: Settings, detector: torch.nn.Module | None,
                threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Regions of one database image besides the whole image: ``(boxes n×4 xyxy pixels, scores n)``."""
    H, W = image.shape[-2:]
    if s.boxes == "none":
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    if s.boxes == "rmac":
        b = rmac_boxes(H, W, s.rmac_levels).astype(np.float32)
        return b, np.ones(len(b), np.float32)
    if detector is None:
        raise ValueError("method.boxes=detector needs a detector: pass ckpt_path=RUN/checkpoints/best.ckpt "
                         "(python train.py model=landmark_detector), or method.boxes=rmac|none")
    from .detector.models import detect

    boxes, scores = detect(detector, [image])[0]
    return select_boxes(boxes.cpu().numpy(), scores.cpu().numpy(), s.threshold if threshold is None else threshold,
                        s.max_boxes)


# ------------------------------------------------------------------------------------------------ encoding
def stage_variants(s: Settings) -> list[tuple[str, str]]:
    """The (kernel, aggregation) variants one run encodes: the same kernel without boxes, with regional search
    (max, avg), then the configured variant last (when boxes are used)."""
    out = [(s.kernel, "none")]
    if s.regional:
        out += [(s.kernel, a) for a in ("search_max", "search_avg") if a != s.aggregation]
        out.append((s.kernel, s.aggregation))
    return out


@dataclass
class RegionEncoder:
    """What turns a database image into projected region descriptors: the settings (boxes, threshold), the
    local-feature extractor, the codebook (its PCA) and the detector (``None`` where no box comes from one)."""

    settings: Settings
    extractor: ActivationFeatures
    codebook: Codebook
    detector: torch.nn.Module | None = None


def encode_database(images: Iterable[tuple[int, torch.Tensor | None]], n: int, encoder: RegionEncoder,
                    variants: Sequence[tuple[str, str]], keep_regions: bool = False,
                    progress: str | None = "database",
                    whole: dict[int, np.ndarray] | None = None) -> tuple[Encoded, list[list[np.ndarray]] | None]:
    """Stream the database once: regions, local features (re-extracted per box crop), PCA, then the stored items
    of every variant. ``keep_regions``: also return the projected region descriptors (for threshold sweeps).
    ``progress``: the progress bar's label (``None``: no bar). ``whole``: a memo of the projected whole-image
    descriptors by image index, read and filled (the training callback's: the retrieval backbone is frozen, only
    the boxes change between evaluations)."""
    s, extractor, codebook, detector = encoder.settings, encoder.extractor, encoder.codebook, encoder.detector
    enc = Encoded(items={f"{k}/{a}": [None] * n for k, a in variants})
    enc.boxes, enc.scores, enc.sizes = [None] * n, [None] * n, [(0, 0)] * n
    kept: list[list[np.ndarray]] | None = [None] * n if keep_regions else None
    empty = np.zeros((0, codebook.dim), np.float32)
    for i, img in tqdm(images, total=n, desc=f"D2R {progress}", disable=progress is None):
        if img is None:  # unreadable, skipped: no descriptors (scores 0 against every query)
            enc.skipped.append(i)
            regions = [empty]
            enc.boxes[i], enc.scores[i] = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        else:
            enc.sizes[i] = tuple(img.shape[-2:])
            boxes, scores = image_boxes(img, s, detector) if s.regional else (np.zeros((0, 4), np.float32),
                                                                             np.zeros(0, np.float32))
            enc.boxes[i], enc.scores[i] = boxes, scores
            if whole is not None and i in whole and s.box_features == "reextract":
                regions = [whole[i]] + [codebook.project(extractor(crop(img, b))[0]) for b in boxes]
            else:
                regions = [codebook.project(d) for d in region_descriptors(extractor, img, boxes, s.box_features)]
            if whole is not None:
                whole[i] = regions[0]
        for k, a in variants:
            enc.items[f"{k}/{a}"][i] = encode_image(regions, codebook.centroids, k, a)
        if kept is not None:
            kept[i] = regions
    return enc, kept


def encode_queries(images: Iterable[tuple[int, torch.Tensor | None]], n: int, extractor: ActivationFeatures,
                   codebook: Codebook, kernels: Sequence[str], progress: bool = True) -> tuple[dict, list[int]]:
    """The whole cropped queries (as :func:`~lit_retrieval.retrieval.extract.image_loader` loads them at
    ``image_size``: the project's crop-and-scale rule), per kernel: ``({kernel: [representation]}, skipped)``."""
    out: dict[str, list[Any]] = {k: [None] * n for k in kernels}
    skipped = []
    empty = np.zeros((0, codebook.dim), np.float32)
    for i, img in tqdm(images, total=n, desc="D2R queries", disable=not progress):
        if img is None:
            skipped.append(i)
        d = empty if img is None else codebook.project(extractor(img)[0])
        for k in kernels:
            out[k][i] = encode_query(d, codebook.centroids, k)
    return out, skipped


def rank_variants(enc: Encoded, queries: Mapping[str, list[Any]], s: Settings) -> tuple[dict[str, np.ndarray],
                                                                                     dict[str, Any]]:
    """Rankings (n_queries × n_db) of every encoded variant and their search statistics."""
    ranks, stats = {}, {}
    for name, items in enc.items.items():
        kernel, aggregation = name.split("/")
        db = Database.build(items, kernel, aggregation, normalize=s.normalize)
        t0 = time.perf_counter()
        ranks[name] = db.rank(queries[kernel])
        t = time.perf_counter() - t0
        stats[name] = {"variant": variant_name(kernel, aggregation, BOX_NAMES[s.boxes]),
                       "items_per_image": round(float(db.items_per_image), 3),
                       "relative_size": round(float(db.relative_size), 3),
                       "bytes_per_image": round(float(db.bytes_per_image), 1),
                       "query_ms": round(1000 * t / max(1, len(queries[kernel])), 3)}
    return ranks, stats


# ------------------------------------------------------------------------------------------------ eval.py
def check_config(cfg: Any) -> None:
    """Fail before any work on settings that cannot run with ``method=d2r``."""
    s = settings_from_eval(cfg)
    if s.regional and s.boxes == "detector" and not cfg.get("ckpt_path"):
        raise ValueError(f"method=d2r method.aggregation={s.aggregation} with detector boxes needs a trained detector: "
                         "pass ckpt_path=RUN/checkpoints/best.ckpt (python train.py model=landmark_detector), or "
                         "method.aggregation=none (ASMK* on whole images), or method.boxes=rmac (R-MAC boxes)")
    for what, value in (("whitening", cfg.whitening.kind), ("qe", cfg.qe.kind), ("rerank", cfg.rerank.kind)):
        if value != "none":
            raise ValueError(f"method=d2r matches aggregated local features: drop {what}={value} (keep {what}=none)")
    if [float(v) for v in cfg.scales] != [1.0]:
        raise ValueError("method=d2r has its own feature scales (method.scales): drop scales=... (keep [1])")


METHOD_KEYS = ("name", "kernel", "aggregation", "detector", "boxes", "rmac_levels", "normalize", "features",
               "codebook")


def settings_from_method(m: Mapping[str, Any], seed: int = 0) -> Settings:
    """:class:`Settings` from a ``conf/method/d2r.yaml`` section (``eval.py``'s ``method``, and the detector's
    training callback, ``model.retrieval``); keys left out keep the :class:`Settings` defaults."""
    unknown = set(m) - set(METHOD_KEYS)
    if unknown:
        raise ValueError(f"method=d2r: unknown setting(s) {sorted(unknown)} (the keys of conf/method/d2r.yaml: "
                         f"{list(METHOD_KEYS)})")
    kw: dict[str, Any] = {k: m[k] for k in ("kernel", "aggregation", "boxes", "normalize") if k in m}
    if "rmac_levels" in m:
        kw["rmac_levels"] = int(m["rmac_levels"])
    det, feats, cb = m.get("detector") or {}, m.get("features") or {}, m.get("codebook") or {}
    if "threshold" in det:
        kw["threshold"] = float(det["threshold"])
    if "max_boxes" in det:
        kw["max_boxes"] = None if det["max_boxes"] is None else int(det["max_boxes"])
    if "scales" in feats:
        kw["scales"] = tuple(float(v) for v in feats["scales"])
    if "max_features" in feats:
        kw["max_features"] = int(feats["max_features"])
    if "regions" in feats:
        kw["box_features"] = str(feats["regions"])
    for key, field_name in (("K", "K"), ("dim", "dim"), ("niter", "niter"), ("n_images", "codebook_images"),
                            ("per_image", "codebook_per_image")):
        if key in cb:
            kw[field_name] = int(cb[key])
    if "dir" in cb:
        kw["codebook_dir"] = None if cb["dir"] is None else str(cb["dir"])
    return Settings(seed=int(seed), **kw, **_split(cb.get("split")))


def settings_from_eval(cfg: Any) -> Settings:
    return settings_from_method(cfg.method, seed=int(cfg.seed))


def _split(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """``method.codebook.split: {fractions, seed, parts}`` as Settings fields (null: the whole folder)."""
    if spec is None:
        return {}
    return {"codebook_fractions": tuple(float(f) for f in spec["fractions"]),
            "codebook_split_seed": int(spec.get("seed", 0)),
            "codebook_parts": tuple(int(p) for p in spec.get("parts", (0, 1)))}


def codebook_paths(s: Settings, dataset: RetrievalDataset) -> tuple[list[Path], str]:
    """The codebook's images: ``codebook_dir`` when given (and present), else the database (logged)."""
    if s.codebook_dir is not None and Path(s.codebook_dir).is_dir():
        parts = "" if s.codebook_fractions is None else f" (parts {list(s.codebook_parts)})"
        return codebook_images(s), f"{s.codebook_dir}{parts}"
    if s.codebook_dir is not None:
        log.warning("method.codebook.dir=%s is absent: learning the codebook on the evaluated database instead",
                    s.codebook_dir)
    return [Path(p) for p in dataset.db_paths], f"{dataset.name} database"


def check_codebook_set(learned: LearnedSets, s: Settings, dataset: RetrievalDataset, paths: Sequence[Path],
                       source: str) -> dict[str, Any]:
    """The codebook's images against the evaluated ones, by content (the evaluated database itself when
    ``method.codebook.dir`` is null or absent: transductive, warned)."""
    if s.codebook_dir is None or not Path(s.codebook_dir).is_dir():
        return learned.transductive("d2r_codebook", "method.codebook.dir")
    return learned.check_files("d2r_codebook", source, paths, "method.codebook.dir (or method.codebook.split)")


@dataclass
class D2RIndex:
    """An indexed database: its settings, detector, feature extractor and codebook, the encoded items of every
    variant, where the codebook was learned, and the seconds the codebook and the database took."""

    settings: Settings
    detector: torch.nn.Module | None
    extractor: ActivationFeatures
    codebook: Codebook
    encoded: Encoded
    variants: list[tuple[str, str]]
    codebook_source: str
    seconds: dict[str, float]


def index_d2r(cfg: Any, dataset: RetrievalDataset, backbone: torch.nn.Module, num_workers: int,
              base_key: Mapping[str, Any], learned: LearnedSets | None = None) -> D2RIndex:
    """``eval.py``'s first step: the codebook (learned on another image set, checked by content) and the
    database's regions encoded for the configured variant and its stages."""
    s = settings_from_eval(cfg)
    device = cfg.device
    detector = None
    if s.regional and s.boxes == "detector":
        from .detector.models import load_detector

        detector = load_detector(str(cfg.ckpt_path), map_location="cpu")[0].to(device)
    extractor = ActivationFeatures(backbone, scales=s.scales, max_features=s.max_features)
    cache_dir = str(cfg.cache.dir) if cfg.cache.enabled else None
    t0 = time.perf_counter()
    paths, source = codebook_paths(s, dataset)
    check_codebook_set(learned if learned is not None else LearnedSets(dataset), s, dataset, paths, source)
    codebook = learn_or_load_codebook(extractor, s, paths, int(cfg.image_size), device, cache_dir, base_key, source)
    t_codebook = time.perf_counter() - t0
    variants = stage_variants(s)
    skip_bad, exif = bool(cfg.skip_bad_images), bool(cfg.get("exif_transpose", False))
    db_items = dataset_items(dataset, "db")
    t1 = time.perf_counter()
    enc, _ = encode_database(_on(device, image_loader(db_items, range(len(db_items)), int(cfg.image_size),
                                                      num_workers, skip_bad, exif)),
                             len(db_items), RegionEncoder(s, extractor, codebook, detector), variants)
    return D2RIndex(s, detector, extractor, codebook, enc, variants, source,
                    {"codebook": t_codebook, "database": time.perf_counter() - t1})


def search_d2r(cfg: Any, index: D2RIndex, dataset: RetrievalDataset, num_workers: int) -> dict[str, Any]:
    """``eval.py``'s second step: ``dataset``'s queries against ``index``: ``ranks`` of the configured variant,
    ``stages`` and ``info``."""
    s, extractor, codebook, enc, variants = index.settings, index.extractor, index.codebook, index.encoded, \
        index.variants
    device, skip_bad, exif = cfg.device, bool(cfg.skip_bad_images), bool(cfg.get("exif_transpose", False))
    t_codebook, t_db, source, detector = index.seconds["codebook"], index.seconds["database"], \
        index.codebook_source, index.detector
    q_items = dataset_items(dataset, "query")
    # queries as every method loads them: cropped to the box, shrunk by the full image's scale (crop_query)
    queries, q_skipped = encode_queries(_on(device, image_loader(q_items, range(len(q_items)), int(cfg.image_size),
                                                                  num_workers, skip_bad, exif)),
                                        len(q_items), extractor, codebook, sorted({k for k, _ in variants}))
    t2 = time.perf_counter()
    ranks, stats = rank_variants(enc, queries, s)
    t_search = time.perf_counter() - t2
    n_regions = np.array([len(b) + 1 for b in enc.boxes])
    main = f"{s.kernel}/{s.aggregation if s.regional else 'none'}"
    info = {"variant": stats[main]["variant"], "settings": {k: (list(v) if isinstance(v, tuple) else v)
                                                             for k, v in s.__dict__.items()},
            "detector": None if detector is None else str(cfg.ckpt_path),
            "codebook": {"source": source, "K": s.K, "dim": s.dim},
            "regions_per_image": round(float(n_regions.mean()), 3), "variants": stats,
            "time_s": {"codebook": round(t_codebook, 3), "database": round(t_db, 3), "search": round(t_search, 4),
                       "aggregation_per_image": round(t_db / max(1, len(enc.boxes)), 4)}}
    stages = {stats[n]["variant"]: ranks[n] for n in ranks}
    return {"ranks": ranks[main], "stages": stages, "info": info, "boxes": enc.boxes, "box_scores": enc.scores,
            "db_skipped": enc.skipped, "q_skipped": q_skipped}


def run_d2r(cfg: Any, dataset: RetrievalDataset, backbone: torch.nn.Module, num_workers: int,
            base_key: Mapping[str, Any], learned: LearnedSets | None = None) -> dict[str, Any]:
    """The whole method for ``eval.py``: :func:`index_d2r` then :func:`search_d2r`."""
    return search_d2r(cfg, index_d2r(cfg, dataset, backbone, num_workers, base_key, learned), dataset, num_workers)


def _on(device: Any, loader: Iterable[tuple[int, torch.Tensor | None]]) -> Iterable[tuple[int, torch.Tensor | None]]:
    for i, img in loader:
        yield i, (None if img is None else img.to(device))


class D2RRetriever(PipelineRetriever):
    """``method=d2r`` (Teichmann et al.): detected regions, aggregated match kernels, inverted-file search.

    ``eval.py`` runs :meth:`rank` (the detector read from ``ckpt_path``). The detector's training callback runs the
    same retriever with the network being trained (:meth:`for_network`, then called on each benchmark): ASMK* on
    whole images, D2R-ASMK* (regional search, max) and D2R-R-ASMK*. There the codebook is learned once, on
    ``method.codebook.dir`` or else on the first benchmark evaluated (a validation one), and kept for every other;
    the whole-image region and the queries are memoised per dataset: the retrieval backbone is frozen, only the
    boxes change between evaluations."""

    check_config = staticmethod(check_config)
    reads_checkpoint = True  # ckpt_path: the landmark detector
    checkpoint_component = "detector_training_data"  # its training images, in results.json "learned"

    @classmethod
    def for_network(cls, detector: torch.nn.Module, backbone: torch.nn.Module, settings: Settings,
                    base_key: Mapping[str, Any]) -> D2RRetriever:
        """The retriever of a detector in training (``backbone``: the frozen local-feature extractor)."""
        self = cls("d2r")
        self.detector, self.backbone, self.base_key = detector, backbone, dict(base_key)
        self.s = Settings(**{**settings.__dict__, "boxes": "detector", "aggregation": "r_asmk"})
        k = self.s.kernel
        self.names = {"none": k, "search_max": f"d2r_{k}", "r_asmk": f"d2r_r_{k}"}  # e.g. d2r_r_asmk_star
        self._memo: dict[str, Any] = {}
        self._codebook: Codebook | None = None
        self.codebook_source: str | None = None
        return self

    def __call__(self, data: RetrievalDataset, image_size: int, device: torch.device, cache_dir: str | None,
                 progress: bool) -> dict[str, np.ndarray]:
        extractor = ActivationFeatures(self.backbone, scales=self.s.scales, max_features=self.s.max_features)
        key = f"{data.name}:{data.root}:{image_size}"
        if key not in self._memo:
            if self._codebook is None:
                # learned once: on codebook_dir, or on the first benchmark evaluated (a validation one) and kept
                # for the others, so a test benchmark never learns its own codebook
                paths, source = codebook_paths(self.s, data)
                self._codebook = learn_or_load_codebook(extractor, self.s, paths, image_size, device, cache_dir,
                                                        self.base_key, source, progress)
                self.codebook_source = source
            cb = self._codebook
            q_items = dataset_items(data, "query")
            queries, _ = encode_queries(_on(device, image_loader(q_items, range(len(q_items)), image_size)),
                                        len(q_items), extractor, cb, [self.s.kernel], progress)
            self._memo[key] = (cb, queries, {})
        cb, queries, whole = self._memo[key]
        db_items = dataset_items(data, "db")
        variants = [(self.s.kernel, a) for a in self.names]
        enc, _ = encode_database(_on(device, image_loader(db_items, range(len(db_items)), image_size)),
                                 len(db_items), RegionEncoder(self.s, extractor, cb, self.detector), variants,
                                 progress="database" if progress else None, whole=whole)
        ranks, _ = rank_variants(enc, queries, self.s)
        return {self.names[n.split("/")[1]]: r for n, r in ranks.items()}


    def index(self, cfg: Any, dataset: RetrievalDataset, backbone: torch.nn.Module, learned: LearnedSets,
              out_dir: Any = None) -> D2RIndex:
        """The codebook and the encoded database (:func:`index_d2r`)."""
        return index_d2r(cfg, dataset, backbone, loader_workers(cfg.num_workers, cfg.device),
                         backbone_key(cfg, backbone), learned)

    def search(self, cfg: Any, index: D2RIndex, dataset: RetrievalDataset) -> dict[str, Any]:
        """``dataset``'s queries against ``index`` (:func:`search_d2r`)."""
        return search_d2r(cfg, index, dataset, loader_workers(cfg.num_workers, cfg.device))

    def rank(self, cfg: Any, dataset: RetrievalDataset, backbone: torch.nn.Module, learned: LearnedSets,
             out_dir: Any, t0: float) -> Rankings:
        out = self.search(cfg, self.index(cfg, dataset, backbone, learned, out_dir), dataset)
        t_search = out["info"]["time_s"]["search"]
        return Rankings(out["ranks"], out["stages"], {"d2r": out["info"]}, out["db_skipped"], out["q_skipped"],
                        {"extract": time.perf_counter() - t0 - t_search, "search_qe": t_search}, pictures=out)

    def pictures(self, cfg: Any, rankings: Rankings, ctx: PictureContext) -> None:
        out = rankings.pictures
        if out["info"]["regions_per_image"] > 1:
            from .viz import save_regions

            ctx.draw("d2r_regions.png", save_regions, ctx.dataset, out["boxes"], out["box_scores"],
                     ctx.out_dir / "d2r_regions.png", image_size=ctx.image_size, title=out["info"]["variant"])
