"""``eval.py ... rerank=aml [qe=aml]``: AML re-ranking (and its query expansion) on top of MAC / R-MAC filtering.

Steps: the database's activation maps are extracted once and kept in an :class:`~.storage.ActivationStore`
(quantized as in the paper's Sec. 7 by default; cached on disk and resumable like the descriptors); the
queries' MAC vectors are extracted (cached) for localization; then, query by query, the top ``N`` of the
initial ranking are localized and re-ranked (:func:`~.rerank.rerank_shortlist`), optionally followed by the
window query expansion (``qe.weighting``: ``uniform``, the paper's mean, or ``alpha``, windows weighted by
their similarity to the query to the power ``qe.alpha``). Everything below the short-list keeps its initial
order. Reference-code behaviours are options: ``rerank.root=aml_c`` (``aml.c``'s even-integer root in the
localization), ``rerank.window_power=2`` (``test.m``'s power-law on the window MAC before L2 and whitening).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from ...data import RetrievalDataset
from ...data.provenance import item_keys
from ...retrieval import ImageItem, build_method, dataset_items, image_loader
from .integral import Workspace
from ...retrieval.extractor import DescriptorExtractor, loader_workers
from ...retrieval.interface import Rankings
from .aml import AMLSettings
from .rerank import AMLQuery, WindowDescriptor, rerank_queries, window_query_expansion
from .storage import ActivationStore

log = logging.getLogger(__name__)

FILTERING = ("mac", "rmac")
QE_WEIGHTINGS = ("uniform", "alpha")


def qe_alpha(qe: DictConfig) -> float:
    """The window-QE exponent: 0 (uniform mean) for ``qe.weighting=uniform``, ``qe.alpha`` for ``alpha``."""
    weighting = str(qe.get("weighting", "uniform"))
    if weighting not in QE_WEIGHTINGS:
        raise ValueError(f"qe.weighting={weighting!r}: choose uniform (the paper's mean) or alpha (similarity^alpha)")
    if weighting == "uniform":
        return 0.0
    alpha = float(qe.alpha)
    if not alpha > 0:
        raise ValueError(f"qe.weighting=alpha weights windows by similarity^qe.alpha: qe.alpha must be > 0, "
                         f"got {alpha}")
    return alpha


def check_config(cfg: DictConfig) -> None:
    """Fail before any work when the re-ranking / QE settings cannot run together."""
    rr, qe = cfg.rerank.kind, cfg.qe.kind
    if qe == "aml" and rr != "aml":
        raise ValueError("qe=aml expands the query with AML-localized windows: add rerank=aml (or pick qe=avg|alpha)")
    if rr == "none":
        return
    if rr != "aml":
        raise ValueError(f"unknown rerank kind {rr!r}: use rerank=none or rerank=aml")
    if cfg.method.name not in FILTERING or cfg.method.get("variant", "cirtorch") not in ("cirtorch", "tolias"):
        raise ValueError(f"rerank=aml re-scores localized windows with the filtering's own descriptor, MAC or R-MAC "
                         f"(Tolias et al. Sec. 6); method={cfg.method.name} is not one: use method=mac or "
                         "method=rmac (variant cirtorch or tolias)")
    AMLSettings.from_cfg(cfg.rerank, cfg.device).check()
    power = cfg.rerank.get("window_power")
    if power is not None and not float(power) > 0:
        raise ValueError(f"rerank.window_power={power}: use null (no power-law) or an exponent > 0 (2 = test.m)")
    if qe == "aml":
        qe_alpha(cfg.qe)
    if cfg.topk is not None and int(cfg.topk) < int(cfg.rerank.n):
        raise ValueError(f"rerank.n={cfg.rerank.n} re-ranks more images than the search keeps (topk={cfg.topk}): "
                         "raise topk (or null) or lower rerank.n")


def window_spec(cfg: DictConfig, method: torch.nn.Module) -> WindowDescriptor:
    power = cfg.rerank.get("window_power")
    power = None if power is None else float(power)
    if cfg.method.name == "mac":
        return WindowDescriptor("mac", power=power)
    variant = str(cfg.method.get("variant", "cirtorch"))
    white = method.learned.get("region_whitening") if variant == "tolias" else None
    return WindowDescriptor("rmac", int(cfg.method.L), variant, white, power)


def activation_store(cfg: DictConfig, base_key: dict[str, Any], dataset: RetrievalDataset) -> ActivationStore:
    s = cfg.rerank.store
    key = {k: v for k, v in base_key.items() if k not in ("method", "scales")}
    key.update(kind="activations", dataset=dataset.name, root=str(dataset.root),
               items=item_keys(dataset_items(dataset, "db")), version=2)
    return ActivationStore(s.dir, key, quantized=bool(s.quantize), clip=None if s.clip is None else float(s.clip),
                           levels=int(s.levels), cache_bytes=int(float(s.get("cache_mb", 2048)) * 2 ** 20))


def fill_store(store: ActivationStore, paths: list[Path], backbone: torch.nn.Module, cfg: DictConfig,
               num_workers: int) -> None:
    """Extract (once; resumable by chunk) the activation maps of ``paths`` at the evaluation's image size."""
    items = [ImageItem(Path(p)) for p in paths]
    ranges = store.chunks(len(items))
    todo = [c for c in range(len(ranges)) if not store.has_chunk(c)]
    if not todo:
        return
    indices = [i for c in todo for i in ranges[c]]
    pending: dict[int, np.ndarray | None] = {}
    chunk_of = {i: c for c in todo for i in ranges[c]}
    loader = image_loader(items, indices, cfg.image_size, num_workers, bool(cfg.skip_bad_images),
                          bool(cfg.exif_transpose))
    with torch.inference_mode():
        for idx, img in tqdm(loader, total=len(indices), desc="activations (rerank=aml)", leave=False):
            pending[idx] = None if img is None else \
                backbone(backbone.normalize(img.unsqueeze(0).to(cfg.device)))[0].float().cpu().numpy()
            c = chunk_of[idx]
            if all(i in pending for i in ranges[c]):
                store.save_chunk(c, [pending.pop(i) for i in ranges[c]])


def query_ratios(dataset: RetrievalDataset) -> list[float]:
    """Height / width of each query as it is fed (its box, or the whole image), the reference's ``qratio``."""
    out = []
    for path, b in zip(dataset.query_paths, dataset.query_bbx):
        if b is None:
            with Image.open(path) as im:
                w, h = im.size
        else:
            w, h = b[2] - b[0], b[3] - b[1]
        out.append(float(h) / max(float(w), 1e-6))
    return out


def run_aml(cfg: DictConfig, dataset: RetrievalDataset, backbone: torch.nn.Module, method: torch.nn.Module,
            q_desc: np.ndarray, ranks: np.ndarray, whiten: Callable[[np.ndarray], np.ndarray] | None) -> dict[str, Any]:
    """Re-rank ``ranks`` (``nq × ≥N``, best first; ``q_desc``: the queries' descriptors by the filtering
    ``method``, whitened by ``whiten``) in place of a copy; returns the new rankings and details: ``ranks_rerank``,
    per-query ``reranked`` (:class:`~.rerank.Reranked`) and ``shortlists``, timings."""
    r = cfg.rerank
    n = min(int(r.n), ranks.shape[1])
    store = activation_store(cfg, DescriptorExtractor(cfg, backbone, method).base_key, dataset)
    t0 = time.perf_counter()
    fill_store(store, list(dataset.db_paths), backbone, cfg, loader_workers(cfg.num_workers, cfg.device))
    t_store = time.perf_counter() - t0
    mac = build_method("mac", backbone).to(cfg.device).eval()
    q_mac = DescriptorExtractor(cfg, backbone, mac)(dataset, "query")[0]  # the localization's query vectors
    ratios = query_ratios(dataset)
    spec = window_spec(cfg, method)
    ranks_rr = ranks.copy()
    aml = AMLSettings.from_cfg(r, cfg.device)
    workspace = Workspace(device=cfg.device if aml.backend == "torch" else "cpu")
    timer = workspace.timer
    t1 = time.perf_counter()
    shortlists = [ranks[qi, :n] for qi in range(len(q_desc))]
    queries = [AMLQuery(torch.from_numpy(np.ascontiguousarray(q_mac[qi])), q_desc[qi], ratios[qi])
               for qi in range(len(q_desc))]
    per_query = rerank_queries(shortlists, lambda i: store.shape(int(i)), lambda i: store.payload(int(i)), queries,
                               spec, aml, whiten, workspace, progress=f"AML re-ranking top {n}")
    for qi, rr in enumerate(per_query):
        ranks_rr[qi, :n] = shortlists[qi][rr.order]
    t_rerank = time.perf_counter() - t1
    stored = [store.stored_bytes(i) for i in range(dataset.n_db)]
    raw = [store.raw_bytes(i) for i in range(dataset.n_db)]
    info = {
        "kind": "aml", "n": n, **{k: v for k, v in OmegaConf.to_container(r).items() if k not in ("kind", "n")},
        "backend": aml.backend,
        "window_descriptor": spec.kind if spec.kind == "mac" else f"rmac/{spec.variant}/L{spec.L}",
        "bytes_per_image": {"stored": float(np.mean(stored)), "raw_float32": float(np.mean(raw))},
        "time_s": {"store": round(t_store, 3), "rerank": round(t_rerank, 3),
                   "per_query": round(t_rerank / max(1, len(q_desc)), 4),
                   "per_query_stages": {k: round(v / max(1, len(q_desc)), 4) for k, v in timer.items()}},
    }
    return {"ranks_rerank": ranks_rr, "reranked": per_query, "info": info, "shortlists": ranks[:, :n].copy()}


@dataclass
class AMLReranking:
    """``rerank=aml`` as a post-processing stage (Sec. 6): the top ``rerank.n`` of the filtering's rankings
    localized and re-scored (:func:`run_aml`, on the run's ``method``, ``backbone`` and whitening ``white``)."""

    cfg: DictConfig
    dataset: RetrievalDataset
    backbone: torch.nn.Module
    method: torch.nn.Module
    white: Callable[[np.ndarray], np.ndarray] | None
    name: str = "aml"
    record: bool = True

    def __call__(self, rankings: Rankings) -> Rankings:
        out = run_aml(self.cfg, self.dataset, self.backbone, self.method, rankings.index.queries, rankings.ranks,
                      self.white)
        return replace(rankings, ranks=out["ranks_rerank"], scores=None, info={**rankings.info, "rerank": out["info"]},
                       pictures=out)


@dataclass
class AMLQueryExpansion:
    """``qe=aml`` after :class:`AMLReranking`: each query expanded with its top ``k`` re-ranked windows
    (weighted by ``alpha``: 0 = the paper's mean) re-scores its short-list's windows
    (:func:`~.rerank.window_query_expansion`); below the short-list the order stays."""

    k: int = 5
    alpha: float = 0.0
    name: str = "aml_qe"
    record: bool = True

    def __call__(self, rankings: Rankings) -> Rankings:
        aml = rankings.pictures  # the AML stage's per-query windows and short-lists
        ranks = rankings.ranks.copy()
        for qi, (rr, short) in enumerate(zip(aml["reranked"], aml["shortlists"])):
            order, _ = window_query_expansion(rankings.index.queries[qi], rr, self.k, self.alpha)
            ranks[qi, :len(short)] = short[order]
        return replace(rankings, ranks=ranks, scores=None)
