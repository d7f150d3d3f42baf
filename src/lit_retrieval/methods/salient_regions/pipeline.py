"""``eval.py method=salient_regions``: Jeong et al.'s candidate regions, region descriptors and region matching.

Pass 1 (every image): feature map -> α, β (eqs. 1-2) -> salient points (Hessian-affine keypoints sorted by α,
or, with fewer than ``N_min`` keypoints, the largest α cells: ``N_min`` of them, at most ``method.n_min_fraction``
of the map's cells) -> global k-means into L clusters -> power-set convex-hull regions on the feature
map -> 1st-order descriptors (eq. 3 for the PCA of eq. 4, eq. 9 for the O1 variants).
Order 2 adds pass 2: the eq. 4 basis ``U¹`` is learned from the eq. 3 region descriptors of the PCA image set
(``method.pca_dataset``: by default a disjoint procedural benchmark), every image's feature map is recomputed
(deterministic; nothing big is kept in memory between passes), projected, 2nd-order pooled (eq. 5), and
PCA-whitened to ``D`` (eq. 6) with the whitening learned on the PCA set's region descriptors.
Queries with a box are cropped and described by their whole region only (the paper's protocol);
``method.query=full`` keeps them uncropped with all their regions.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

from ...backbones import Backbone
from ...data import RetrievalDataset, load_dataset
from ...data.provenance import LearnedSets, is_transductive
from ...retrieval import ImageItem, dataset_items, image_loader, search
from ...retrieval.extractor import loader_workers
from ...retrieval.interface import PictureContext, Rankings, rerank
from ...whitening import Whitening, pca_basis
from .descriptors import DEFAULT_EIG_FLOOR, first_order, project_local, second_order
from .keypoints import DEFAULT_N_MIN_FRACTION, hessian_affine_keypoints, salient_points
from .matching import RegionSet, rank, region_similarity, regional_query_expansion
from .regions import candidate_regions, global_kmeans
from .weights import channel_weights, spatial_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """``conf/method/salient_regions.yaml``: ``order`` 1|2 (O1: eq. 9, O2: eqs. 4-6), ``regions`` all|whole
    (R: all candidate regions, W: the whole image ``R_M`` only), ``query`` cropped|full."""

    order: int = 2
    regions: str = "all"
    query: str = "cropped"
    clusters: int = 3
    n_max: int = 4000
    n_min: int = 300
    n_min_fraction: float | None = DEFAULT_N_MIN_FRACTION
    reduced_dim: int = 128
    dim: int = 512
    beta_eps: float = 1e-6
    eig_floor: float = DEFAULT_EIG_FLOOR
    detector: str = "hessian_affine"
    threshold: float | None = None
    affine: bool = True
    max_keypoints: int = 8000

    def __post_init__(self) -> None:
        bad = []
        if self.order not in (1, 2):
            bad.append(f"method.order={self.order} (1 or 2)")
        if self.regions not in ("all", "whole"):
            bad.append(f"method.regions={self.regions!r} ('all' or 'whole')")
        if self.query not in ("cropped", "full"):
            bad.append(f"method.query={self.query!r} ('cropped' or 'full')")
        if self.detector not in ("hessian_affine", "none"):
            bad.append(f"method.keypoints.detector={self.detector!r} ('hessian_affine' or 'none': α maxima only)")
        if not 1 <= self.clusters <= 6:
            bad.append(f"method.clusters={self.clusters} (L in 1..6: 2^L regions)")
        if not 0 < self.n_min <= self.n_max:
            bad.append(f"method.n_min={self.n_min}, method.n_max={self.n_max} (0 < n_min <= n_max)")
        if self.n_min_fraction is not None and not 0 < self.n_min_fraction <= 1:
            bad.append(f"method.n_min_fraction={self.n_min_fraction} (in (0, 1], or null: N_min cells uncapped)")
        if not (self.eig_floor > 0 and self.beta_eps > 0):
            bad.append(f"method.eig_floor={self.eig_floor}, method.beta_eps={self.beta_eps} (both > 0)")
        if self.reduced_dim < 1 or self.dim < 1:
            bad.append(f"method.reduced_dim={self.reduced_dim}, method.dim={self.dim} (positive)")
        if bad:
            raise ValueError("method=salient_regions: bad setting(s): " + "; ".join(bad))

    @classmethod
    def from_cfg(cls, m: DictConfig) -> "Settings":
        kp = m.get("keypoints") or {}
        frac = m.get("n_min_fraction", DEFAULT_N_MIN_FRACTION)
        return cls(order=int(m.order), regions=str(m.regions), query=str(m.query), clusters=int(m.clusters),
                   n_max=int(m.n_max), n_min=int(m.n_min), n_min_fraction=None if frac is None else float(frac),
                   reduced_dim=int(m.reduced_dim), dim=int(m.dim),
                   beta_eps=float(m.beta_eps), eig_floor=float(m.eig_floor),
                   detector=str(kp.get("detector", "hessian_affine")),
                   threshold=None if kp.get("threshold") is None else float(kp.get("threshold")),
                   affine=bool(kp.get("affine", True)), max_keypoints=int(kp.get("max_keypoints", 8000)))

    @property
    def variant(self) -> str:
        return f"O{self.order}_{'R' if self.regions == 'all' else 'W'}" + ("_full" if self.query == "full" else "")


@dataclass
class Proposal:
    """Pass 1 of one image: region ``masks`` ``M×h×w`` on its feature map (the whole image last), salient
    ``points`` ``N×2`` (x, y) image pixels, ``fallback`` (the largest α cells were used: then ``points`` are
    their centres, one per cell), the processed ``image_hw``, its region descriptors ``first`` (eq. 3) and ``o1``
    (eq. 9), ``M×K``, and ``regional`` (salient points and regions were computed; False: the whole image only)."""

    masks: np.ndarray
    points: np.ndarray
    fallback: bool
    image_hw: tuple[int, int]
    first: np.ndarray
    o1: np.ndarray
    regional: bool = True

    @property
    def cells_kept(self) -> float | None:
        """Share of the feature cells the fallback selected (None without the fallback)."""
        return len(self.points) / self.masks[0].size if self.fallback else None


def fallback_summary(props: Sequence[Proposal | None]) -> dict[str, Any] | None:
    """How often the α-cell fallback fired over one image list, and what it selected: ``images`` (with salient
    points), ``fallback`` (count), ``fraction``, ``cells_kept_mean`` (mean share of the map's cells the fallback
    selected), ``cells_mean`` (mean number of cells) and ``all_cells`` (fallback images where every cell was
    selected, so that their regions do not depend on α). None when no image had salient points (whole image only)."""
    ps = [p for p in props if p is not None and p.regional]
    if not ps:
        return None
    fb = [p for p in ps if p.fallback]
    kept = [p.cells_kept for p in fb]
    return {"images": len(ps), "fallback": len(fb), "fraction": round(len(fb) / len(ps), 4),
            "cells_kept_mean": round(float(np.mean(kept)), 4) if fb else None,
            "cells_mean": round(float(np.mean([len(p.points) for p in fb])), 2) if fb else None,
            "all_cells": sum(k >= 1.0 for k in kept)}


def propose(image: Tensor, fmap: Tensor, s: Settings, with_regions: bool) -> Proposal:
    """Pass 1 for one image (``3×H×W`` in [0, 1], its ``K×h×w`` map); ``with_regions=False``: whole image only."""
    h, w = fmap.shape[-2:]
    H, W = image.shape[-2:]
    alpha, beta = spatial_weights(fmap), channel_weights(fmap, s.beta_eps)
    points, fallback = np.zeros((0, 2), np.float32), False
    if with_regions:
        kp = None
        if s.detector == "hessian_affine":
            extra = {} if s.threshold is None else {"threshold": s.threshold}
            kp = hessian_affine_keypoints(image, max_keypoints=s.max_keypoints, affine=s.affine, **extra)
        pts, fallback = salient_points(alpha, (H, W), kp, s.n_max, s.n_min, s.n_min_fraction)
        # keypoints put pixel u's centre at u; regions test cell centres in continuous coordinates (pixel u
        # spans [u, u + 1)): shift by half a pixel so that a fallback point lies exactly on its cell's centre
        points = pts.numpy().astype(np.float32) + 0.5
        labels, _ = global_kmeans(points, s.clusters)
        masks, _ = candidate_regions(points, labels, s.clusters, (H, W), (h, w))
    else:
        masks = np.ones((1, h, w), bool)
    m = torch.from_numpy(np.ascontiguousarray(masks))
    return Proposal(masks, points, bool(fallback), (int(H), int(W)), first_order(fmap, m, beta).numpy(),
                    first_order(fmap, m, beta, alpha).numpy(), with_regions)


def describe_second(fmap: Tensor, masks: np.ndarray, basis: Tensor, s: Settings) -> np.ndarray:
    """Pass 2 for one image: eq. 4 projection and eq. 5 pooling of every region -> ``M×K'(K'+1)/2``."""
    local = project_local(fmap, channel_weights(fmap, s.beta_eps), basis)
    return second_order(local, torch.from_numpy(masks), spatial_weights(fmap), s.eig_floor).numpy()


def pad_regions(per_image: Sequence[np.ndarray | None], dim: int) -> RegionSet:
    """Per-image ``M_i×D`` arrays (``None``: unreadable image, no region) -> a padded :class:`RegionSet`."""
    M = max([len(v) for v in per_image if v is not None] + [1])
    vectors = np.zeros((len(per_image), M, dim), np.float32)
    valid = np.zeros((len(per_image), M), bool)
    for i, v in enumerate(per_image):  # a copy per image while assembling, not a hot loop
        if v is not None:
            vectors[i, :len(v)], valid[i, :len(v)] = v, True
    return RegionSet(vectors, valid)


class SalientRegions:
    """Runs both passes over image lists with one backbone and settings, timing each stage."""

    def __init__(self, backbone: Backbone, s: Settings, image_size: int | None, device: str = "cpu",
                 num_workers: int = 0, skip_bad: bool = False, exif_transpose: bool = False,
                 progress: bool = True):
        self.backbone, self.s, self.image_size, self.device = backbone, s, image_size, device
        self.loader_kw = dict(num_workers=num_workers, skip_bad=skip_bad, exif_transpose=exif_transpose)
        self.progress = progress
        self.timer: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._proposals: dict[tuple, list[Proposal | None]] = {}

    def _fmap(self, img: Tensor) -> Tensor:
        x = self.backbone.normalize(img.unsqueeze(0).to(self.device))
        return self.backbone(x)[0].float().cpu()

    def _each(self, items: Sequence[ImageItem], stage: str, desc: str,
              fn: Callable[[int, Tensor, Tensor], Any]) -> list[Any]:
        out: list[Any] = [None] * len(items)
        loader = image_loader(items, range(len(items)), self.image_size, **self.loader_kw)
        with torch.inference_mode():
            for idx, img in tqdm(loader, total=len(items), desc=desc, disable=not self.progress, leave=False):
                if img is None:
                    continue
                t = time.perf_counter()
                out[idx] = fn(idx, img, self._fmap(img))
                self.timer[stage] = self.timer.get(stage, 0.0) + time.perf_counter() - t
                self.counts[stage] = self.counts.get(stage, 0) + 1
        return out

    def propose(self, items: Sequence[ImageItem], with_regions: bool, desc: str) -> list[Proposal | None]:
        """Pass 1, remembered per image list and proposal settings (variants that differ only in order,
        dimensions or QE reuse it)."""
        s = self.s
        key = (tuple(items), with_regions, s.clusters, s.n_max, s.n_min, s.n_min_fraction, s.beta_eps, s.detector,
               s.threshold, s.max_keypoints)
        if key not in self._proposals:
            self._proposals[key] = self._each(items, "propose", f"{desc}/regions",
                                              lambda i, img, fmap: propose(img, fmap, self.s, with_regions))
        return self._proposals[key]

    def second(self, items: Sequence[ImageItem], props: Sequence[Proposal | None], basis: Tensor,
               desc: str) -> list[np.ndarray | None]:
        def fn(i: int, img: Tensor, fmap: Tensor) -> np.ndarray | None:
            p = props[i]
            if p is None:
                return None
            if p.masks.shape[1:] != fmap.shape[1:]:
                raise RuntimeError(f"{items[i].path}: feature map {tuple(fmap.shape[1:])} differs from pass 1's "
                                   f"{p.masks.shape[1:]}: the image or the backbone changed during the run")
            return describe_second(fmap, p.masks, basis, self.s)
        return self._each(items, "describe", f"{desc}/2nd-order", fn)


def learn_basis(props: Sequence[Proposal | None], k: int, source: str) -> Tensor:
    """Eq. 4's ``U¹`` (``K×K'``) from the eq. 3 region descriptors of the PCA image set."""
    X = np.concatenate([p.first for p in props if p is not None])
    if k > X.shape[1] or X.shape[0] <= k:
        raise ValueError(f"method.reduced_dim={k}: the PCA set {source} has {X.shape[0]} region descriptors of "
                         f"dimension {X.shape[1]}; K' must be below both: lower method.reduced_dim or learn on a "
                         "larger method.pca_dataset")
    return torch.from_numpy(pca_basis(X, k).astype(np.float32))


def learn_second_whitening(f2: Sequence[np.ndarray | None], dim: int, source: str) -> Whitening:
    """Eq. 6's PCA-whitening to ``D`` from the PCA set's 2nd-order region descriptors (mean removed first, as
    every PCA-whitening does)."""
    X = np.concatenate([v for v in f2 if v is not None])
    usable = min(X.shape[0] - 1, X.shape[1])
    if dim > usable:  # loud, and recorded in results.json (salient_regions.dim): never a silent change
        log.warning("method.dim=%d: the PCA set %s has only %d 2nd-order region descriptors, which span %d "
                    "whitened dimensions: using D = %d. Learn on a larger method.pca_dataset to get D = %d.",
                    dim, source, X.shape[0], usable, usable, dim)
        dim = usable
    return Whitening.learn(X, "pca", dims=dim)


@dataclass
class Described:
    """Both sides of a run: region sets, pass-1 proposals (for pictures), and what was learned (``pca_props``:
    the proposals of a separate order-2 PCA set, else None)."""

    db: RegionSet
    queries: RegionSet
    db_props: list[Proposal | None]
    q_props: list[Proposal | None]
    whitening: Whitening | None
    pca_props: list[Proposal | None] | None = None


@dataclass
class SalientIndex:
    """A described database: its region sets and pass-1 proposals, and what the queries are described with
    (order 1: the region dimension ``dim``; order 2: the PCA ``basis`` and the ``whitening``, learned on
    ``pca_props``' images, else on the database)."""

    db: RegionSet
    db_props: list[Proposal | None]
    dim: int
    basis: Tensor | None = None
    whitening: Whitening | None = None
    pca_props: list[Proposal | None] | None = None


def index_dataset(runner: SalientRegions, dataset: RetrievalDataset,
                  pca_dataset: RetrievalDataset | None = None) -> SalientIndex:
    """Region descriptors of ``dataset``'s database with ``runner.s``; the order-2 PCA bases are learned on
    ``pca_dataset``'s database (``None``: the database itself)."""
    s = runner.s
    db_items = dataset_items(dataset, "db")
    db_props = runner.propose(db_items, s.regions == "all", f"{dataset.name}/db")
    if s.order == 1:
        K = next(p.o1.shape[1] for p in db_props if p is not None)
        return SalientIndex(pad_regions([None if p is None else p.o1 for p in db_props], K), db_props, K)
    if pca_dataset is None:
        pca_items, pca_props, source = db_items, db_props, f"{dataset.name} (database)"
    else:
        pca_items, source = dataset_items(pca_dataset, "db"), pca_dataset.name
        pca_props = runner.propose(pca_items, s.regions == "all", f"{source}/pca")
    basis = learn_basis(pca_props, s.reduced_dim, source)
    pca_f2 = runner.second(pca_items, pca_props, basis, f"{source}/pca")
    white = learn_second_whitening(pca_f2, s.dim, source)
    db_f2 = pca_f2 if pca_dataset is None else runner.second(db_items, db_props, basis, f"{dataset.name}/db")
    return SalientIndex(pad_regions([_whiten(white, v) for v in db_f2], white.dims), db_props, white.dims, basis,
                        white, None if pca_dataset is None else pca_props)


def _whiten(white: Whitening, v: np.ndarray | None) -> np.ndarray | None:
    return None if v is None else white(v).astype(np.float32)


def describe_queries(runner: SalientRegions, index: SalientIndex, dataset: RetrievalDataset) -> Described:
    """``dataset``'s queries described as ``index``'s database (same settings, basis and whitening): both sides."""
    s = runner.s
    q_items = dataset_items(dataset, "query", crop=s.query == "cropped")
    q_regions = s.regions == "all" and (s.query == "full" or all(b is None for b in dataset.query_bbx))
    q_props = runner.propose(q_items, q_regions, f"{dataset.name}/query")
    if s.order == 1:
        queries = pad_regions([None if p is None else p.o1 for p in q_props], index.dim)
    else:
        q_f2 = runner.second(q_items, q_props, index.basis, f"{dataset.name}/query")
        queries = pad_regions([_whiten(index.whitening, v) for v in q_f2], index.dim)
    return Described(index.db, queries, index.db_props, q_props, index.whitening, index.pca_props)


def describe_dataset(runner: SalientRegions, dataset: RetrievalDataset,
                     pca_dataset: RetrievalDataset | None = None) -> Described:
    """Region descriptors of ``dataset``'s database and queries with ``runner.s`` (the settings may change between
    calls: proposals are reused where they still apply): :func:`index_dataset`, then :func:`describe_queries`."""
    return describe_queries(runner, index_dataset(runner, dataset, pca_dataset), dataset)


def check_config(cfg: DictConfig) -> None:
    """Fail before any work on settings that cannot run with ``method=salient_regions``."""
    Settings.from_cfg(cfg.method)
    if cfg.qe.kind not in ("none", "regional"):
        raise ValueError(f"method=salient_regions expands queries with its own regional QE (eq. 8): use "
                         f"qe=regional (or qe=none), not qe={cfg.qe.kind}")
    if cfg.whitening.kind != "none":
        raise ValueError("method=salient_regions learns its own PCA-whitening of region descriptors (eq. 6, "
                         "method.dim, method.pca_dataset): drop whitening=... (keep whitening=none)")
    if cfg.rerank.kind != "none":
        raise ValueError("rerank=aml re-ranks MAC / R-MAC results; method=salient_regions has no AML stage")
    if [float(v) for v in cfg.scales] != [1.0]:
        raise ValueError("method=salient_regions describes images at one scale: drop scales=... (keep [1])")


def report_fallback(d: Described, s: Settings) -> dict[str, dict[str, Any] | None]:
    """:func:`fallback_summary` of the database, the queries and the separate PCA set (``None`` where an image list
    had no salient points), logged; a warning names the images whose fallback selected every cell of α."""
    sides = {"db": d.db_props, "query": d.q_props, "pca": d.pca_props or []}
    out = {side: fallback_summary(props) for side, props in sides.items()}
    for side, f in out.items():
        if f is None:
            continue
        log.info("salient points, %s: %d of %d images (%.1f%%) had fewer than N_min = %d keypoints and took the "
                 "largest alpha cells (mean %s of the cells)", side, f["fallback"], f["images"], 100 * f["fraction"],
                 s.n_min, "-" if f["cells_kept_mean"] is None else f"{100 * f['cells_kept_mean']:.1f}%")
        if f["all_cells"]:
            log.warning("salient points, %s: on %d image(s) the N_min fallback selected every cell of alpha "
                        "(method.n_min=%d, method.n_min_fraction=%s): their candidate regions do not depend on "
                        "alpha. Keep method.n_min_fraction below 1 (default %s) to select only the largest alpha "
                        "cells; a map of one cell has no other.", side, f["all_cells"], s.n_min, s.n_min_fraction,
                        DEFAULT_N_MIN_FRACTION)
    return out


def index_salient(cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, num_workers: int,
                  learned: LearnedSets | None = None) -> tuple[SalientRegions, SalientIndex]:
    """``eval.py``'s first step: the database's regions and descriptors (and the order-2 PCA, learned on
    ``method.pca_dataset``, checked by content in ``learned``); returns the runner with its index."""
    s = Settings.from_cfg(cfg.method)
    runner = SalientRegions(backbone, s, cfg.image_size, str(cfg.device), num_workers,
                            bool(cfg.skip_bad_images), bool(cfg.exif_transpose))
    src = cfg.method.pca_dataset
    pca_dataset = None if is_transductive(src) else load_dataset(src)
    if learned is not None and s.order == 2:
        if pca_dataset is None:
            learned.transductive("salient_pca", "method.pca_dataset")
        else:
            learned.check_dataset("salient_pca", pca_dataset, "method.pca_dataset")
    return runner, index_dataset(runner, dataset, pca_dataset)


def search_salient(cfg: DictConfig, runner: SalientRegions, index: SalientIndex,
                   dataset: RetrievalDataset) -> dict[str, Any]:
    """``eval.py``'s second step: ``dataset``'s queries against ``index``: returns ``ranks`` (``n_q × k``),
    ``info`` (settings, regions and bytes per image, timings), ``described`` (both sides), ``scores`` and ``best``
    (the best region pair per image, for regional QE and the pictures)."""
    s = runner.s
    d = describe_queries(runner, index, dataset)
    k = None if cfg.topk is None else int(cfg.topk)
    t = time.perf_counter()
    scores, best = region_similarity(d.queries, d.db)
    _, ranks = rank(scores, k)
    t_search = time.perf_counter() - t
    whole = d.db.select(d.db.counts - 1)  # R_M is every image's last region: the single-vector baseline
    t = time.perf_counter()
    search(d.queries.select(d.queries.counts - 1).vectors[:, 0], whole.vectors[:, 0], k=k)
    t_global = time.perf_counter() - t
    n_q = max(len(d.queries), 1)
    fallback = report_fallback(d, s)

    def per_image(stage: str) -> float:
        return round(runner.timer.get(stage, 0.0) / max(runner.counts.get(stage, 0), 1), 4)

    info = {
        "variant": s.variant,
        "settings": dict(vars(s)),
        "regions_per_image": {"db": round(float(d.db.counts.mean()), 3),
                              "query": round(float(d.queries.counts.mean()), 3)},
        "salient_fallback_fraction": None if fallback["db"] is None else fallback["db"]["fraction"],
        "salient_fallback": fallback,
        "dim": int(d.db.vectors.shape[2]),
        "bytes_per_image": round(float(d.db.counts.mean()) * d.db.vectors.shape[2] * 4, 1),
        "time_s": {"propose_per_image": per_image("propose"), "describe_per_image": per_image("describe"),
                   "search_per_query": round(t_search / n_q, 6), "global_search_per_query": round(t_global / n_q, 6)},
    }
    return {"ranks": ranks, "info": info, "described": d, "scores": scores, "best": best}


def run_salient(cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, num_workers: int,
                learned: LearnedSets | None = None) -> dict[str, Any]:
    """The whole method for ``eval.py``: :func:`index_salient`, then :func:`search_salient`."""
    return search_salient(cfg, *index_salient(cfg, dataset, backbone, num_workers, learned), dataset)


@dataclass
class RegionalQE:
    """``qe=regional`` (eq. 8) as a post-processing stage: each query replaced by the mean of the best-matching
    region descriptors of its top ``k`` results (:func:`~.matching.regional_query_expansion`), matched again
    against every database region (``topk``: as the first search). Reads and updates ``rankings.pictures``: the
    described regions (``described``), the best region pair per image (``best``) and the ``scores``."""

    k: int = 10
    topk: int | None = None
    name: str = "regional_qe"
    record: bool = True

    def __call__(self, rankings: Rankings) -> Rankings:
        out = dict(rankings.pictures)
        db = out["described"].db
        scores, best = region_similarity(regional_query_expansion(db, rankings.ranks, out["best"], self.k), db)
        out.update(ranks=rank(scores, self.topk)[1], scores=scores, best=best)
        return replace(rankings, ranks=out["ranks"], scores=None, pictures=out)


class SalientRetriever:
    """``method=salient_regions`` (Jeong et al.) as ``eval.py`` runs it: region proposals, region descriptors,
    region matching, (regional QE)."""

    def __init__(self, name: str = "salient_regions") -> None:
        self.name = name

    def check(self, cfg: DictConfig) -> None:
        check_config(cfg)

    def index(self, cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, learned: LearnedSets,
              out_dir: Any = None) -> tuple[SalientRegions, SalientIndex]:
        """The database's regions and descriptors (:func:`index_salient`)."""
        return index_salient(cfg, dataset, backbone, loader_workers(cfg.num_workers, cfg.device), learned)

    def search(self, cfg: DictConfig, index: tuple[SalientRegions, SalientIndex],
               dataset: RetrievalDataset) -> dict[str, Any]:
        """``dataset``'s queries against ``index`` (:func:`search_salient`)."""
        return search_salient(cfg, *index, dataset)

    def rank(self, cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, learned: LearnedSets,
             out_dir: Any, t0: float) -> Rankings:
        out = self.search(cfg, self.index(cfg, dataset, backbone, learned, out_dir), dataset)
        d = out["described"]
        rankings = Rankings(out["ranks"], {}, {"salient_regions": out["info"]},
                            [i for i, p in enumerate(d.db_props) if p is None],
                            [i for i, p in enumerate(d.q_props) if p is None],
                            {"extract": time.perf_counter() - t0,
                             "search_qe": out["info"]["time_s"]["search_per_query"] * dataset.n_queries}, pictures=out)
        if cfg.qe.kind == "regional":
            rankings = rerank(rankings, [RegionalQE(int(cfg.qe.k), None if cfg.topk is None else int(cfg.topk))])
        return rankings

    def pictures(self, cfg: DictConfig, rankings: Rankings, ctx: PictureContext) -> None:
        from .viz import save_region_matches

        ctx.draw("salient_regions.png", save_region_matches, rankings.pictures, ctx.dataset, ctx.gnd, ctx.shown,
                 ctx.out_dir / "salient_regions.png")
