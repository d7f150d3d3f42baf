"""Local-similarity retrieval on a dataset, for ``eval.py method=local_similarity`` and the training callback.

One backbone pass per image gives its R-MAC (the global similarity of the shortlist and the fusion) and its
feature grid (gallery 15×15, cropped query 7×7); both are cached on disk like every descriptor when the backbone
is frozen. Then (:func:`score`): the gallery grids are stored raw or product-quantized (:func:`pq_plan`: by
default with the quantizer the subnet was fine-tuned on, stored in its checkpoint), every query's top ``K``
by R-MAC are scored by the localization subnet, and four rankings come out: ``global`` (R-MAC), ``rmatch``
(eq. 2 on the same grids), ``local`` (``S_local`` over the shortlist) and ``local_global`` (the fusion
``(1 − w)·S_global + w·S_local``, the paper's default w = 0.9, K = 5000).
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ...data import RetrievalDataset, load_dataset
from ...data.provenance import LearnedSets, is_transductive, item_keys
from .network import LocalSimilarityNet, decode_boxes, tail_convs
from ...retrieval import DescriptorCache, Loading, dataset_items, extract
from ...retrieval.extractor import backbone_key, loader_workers
from ...retrieval.interface import PictureContext, PipelineRetriever, Rankings
from .pq import GridQuantizer
from .search import Fusion, GalleryGrids, LocalScores, local_scores, rmatch_scores, shortlist

log = logging.getLogger(__name__)
MODES = ("local_global", "local", "global", "rmatch")


@dataclass(frozen=True)
class Settings:
    """``conf/method/local_similarity.yaml``: the ranking reported (``mode``), fusion weight ``w``, shortlist
    size ``K`` (capped at the database size), gallery images per subnet batch, product quantization (``pq``:
    ``M`` sub-vectors and ``nbits``, ``None``: the checkpoint's quantizer if it stores one, else raw float32
    grids and 8 bits; ``relearn``: learn a new quantizer on ``method.pq.dataset``, see :func:`pq_plan`)."""

    mode: str = "local_global"
    w: float = 0.9
    K: int = 5000
    batch: int = 64
    pq: int | None = None
    pq_nbits: int | None = None
    pq_relearn: bool = False
    pq_max_train: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        bad = []
        if self.mode not in MODES:
            bad.append(f"method.mode={self.mode!r} (one of {MODES})")
        if not 0.0 <= self.w <= 1.0:
            bad.append(f"method.w={self.w} (in [0, 1])")
        if self.K < 1 or self.batch < 1:
            bad.append(f"method.K={self.K}, method.batch={self.batch} (both >= 1)")
        if self.pq is not None and self.pq < 1:
            bad.append(f"method.pq.M={self.pq} (null: the checkpoint's quantizer or raw grids; or the number of "
                       "sub-vectors)")
        if self.pq_nbits is not None and not 1 <= self.pq_nbits <= 8:
            bad.append(f"method.pq.nbits={self.pq_nbits} (null: the checkpoint's or 8; or 1..8)")
        if bad:
            raise ValueError("method=local_similarity: bad setting(s): " + "; ".join(bad))

    @classmethod
    def from_cfg(cls, m: Mapping[str, Any]) -> Settings:
        pq = m.get("pq") or {}
        return cls(mode=str(m.get("mode", "local_global")), w=float(m.get("w", 0.9)), K=int(m.get("K", 5000)),
                   batch=int(m.get("batch", 64)), pq=None if pq.get("M") is None else int(pq["M"]),
                   pq_nbits=None if pq.get("nbits") is None else int(pq["nbits"]),
                   pq_relearn=bool(pq.get("relearn", False)), pq_max_train=int(pq.get("max_train", 100_000)),
                   seed=int(pq.get("seed", 0)))


@dataclass
class Described:
    """Per image: ``hw`` (network input size), ``glob`` (R-MAC, ``N×C``), ``grids`` (``N×L×C`` locations)."""

    hw: np.ndarray
    glob: np.ndarray
    grids: np.ndarray
    skipped: list[int] = field(default_factory=list)


def feature_key(net: LocalSimilarityNet) -> dict[str, Any]:
    """What changes the features besides the backbone's weights: grid sizes, R-MAC levels, fine-tuned layers."""
    cfg = net.config()
    if net.finetune_layers:
        h = hashlib.sha1()
        for conv in tail_convs(net.backbone, net.finetune_layers):
            for p in conv.parameters():
                h.update(p.detach().float().cpu().numpy().tobytes())
        cfg["finetuned"] = h.hexdigest()
    return cfg


def describe(net: LocalSimilarityNet, dataset: RetrievalDataset, part: str, loading: Loading,
             cache_root: str | None = None, base_key: Mapping[str, Any] | None = None) -> Described:
    """R-MAC and feature grid of every image of ``part`` (``"db"``: gallery grid; ``"query"``: cropped query grid),
    from one backbone pass each, cached under ``cache_root`` (keyed by ``base_key``, the features and the items)."""
    image_size = loading.image_size
    items = dataset_items(dataset, part)
    C = net.backbone.out_channels

    def one(x: torch.Tensor) -> torch.Tensor:
        g, grid = net.describe(x, part)
        hw = torch.tensor([[float(x.shape[-2]), float(x.shape[-1])]], device=g.device)
        return torch.cat([hw, g, grid.flatten(2).transpose(1, 2).flatten(1)], 1)

    cache = None
    if cache_root is not None:
        key = {**(base_key or {}), "local_similarity": feature_key(net), "image_size": image_size,
               "dataset": dataset.name, "root": str(dataset.root), "part": part,
               "items": item_keys(items), "version": 2}
        cache = DescriptorCache(cache_root, key, chunk_size=16)
    arr, skipped = extract(items, one, net.backbone.normalize, loading, cache=cache,
                           desc=f"{dataset.name}/{part} grids")
    return Described(hw=arr[:, :2], glob=arr[:, 2:2 + C], grids=arr[:, 2 + C:].reshape(len(arr), -1, C),
                     skipped=skipped)


def _square(n: int, what: str) -> int:
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ValueError(f"{what} grids of {n} locations are not square")
    return g


def pq_plan(s: Settings, stored: GridQuantizer | None, ckpt_path: str) -> tuple[str, int | None, int | None]:
    """How the gallery grids are stored: ``("checkpoint", M, nbits)`` (the quantizer ``stored`` in the checkpoint,
    which the subnet was fine-tuned on), ``("learned", M, nbits)`` (a new one, learned on ``method.pq.dataset``:
    with ``method.pq.relearn``, or ``method.pq.M`` for a checkpoint without one) or ``("none", None, None)``."""
    if stored is not None and not s.pq_relearn:
        clash = [f"method.pq.{k}={v}" for k, v, own in (("M", s.pq, stored.M), ("nbits", s.pq_nbits, stored.nbits))
                 if v is not None and v != own]
        if clash:
            raise ValueError(
                f"method=local_similarity: {' and '.join(clash)} disagrees with the product quantizer stored in "
                f"ckpt_path={ckpt_path} (M={stored.M}, nbits={stored.nbits}: its localization subnet was fine-tuned "
                f"on that quantizer's reconstructions, model.quantize). Fix: drop method.pq.M and method.pq.nbits "
                f"(null: use the checkpoint's quantizer), or pass method.pq.relearn=true to learn a new quantizer "
                f"on method.pq.dataset (one the subnet was not fine-tuned on)")
        return "checkpoint", stored.M, stored.nbits
    if s.pq is None and not s.pq_relearn:
        return "none", None, None
    M = s.pq if s.pq is not None else (stored.M if stored is not None else None)
    if M is None:
        raise ValueError(f"method=local_similarity: method.pq.relearn=true needs method.pq.M, since "
                         f"ckpt_path={ckpt_path} stores no product quantizer (trained without model.quantize.M). "
                         f"Fix: set method.pq.M (sub-vectors per location, e.g. 128), or drop method.pq.relearn")
    nbits = s.pq_nbits if s.pq_nbits is not None else (stored.nbits if stored is not None else 8)
    return "learned", M, nbits


def learn_quantizer(net: LocalSimilarityNet, source: Mapping[str, Any] | None, evaluated: RetrievalDataset,
                    db: Described, M: int, nbits: int, s: Settings, describe_kw: Mapping[str, Any],
                    learned: LearnedSets | None = None) -> tuple[GridQuantizer, dict[str, Any], list[Path]]:
    """A new product quantizer of the gallery grids, learned on the database of ``source`` (a dataset config as
    ``eval.py dataset=`` takes; ``{kind: transductive}``: the ``evaluated`` database, whose grids ``db`` are
    reused). Returns it, where it was learned (``dataset``, ``root``, ``n_images``, ``transductive``) and the
    paths of the images it was learned from (unreadable, skipped images left out). ``learned``: the run's content
    checks (the learning set must share no image with the evaluated one, unless transductive)."""
    if source is None or source.get("kind") is None:
        raise ValueError("method=local_similarity: learning a product quantizer needs method.pq.dataset: a dataset "
                         "config (e.g. {kind: embedded, seed: 1, name: embedded-s1, cache_dir: ...}) or "
                         "{kind: transductive} for the evaluated database")
    transductive = is_transductive(source)
    learned = learned if learned is not None else LearnedSets(evaluated)
    if transductive:
        data, grids = evaluated, db
        learned.transductive("local_similarity_pq", "method.pq.dataset")  # warns: not how a stored gallery is built
    else:
        data = load_dataset(source)
        learned.check_dataset("local_similarity_pq", data, "method.pq.dataset")  # by content, before any work
        grids = describe(net, data, "db", **describe_kw)
    keep = np.setdiff1d(np.arange(len(grids.grids)), grids.skipped)
    q = GridQuantizer.learn(grids.grids[keep].reshape(-1, grids.grids.shape[-1]), M, nbits, s.seed, s.pq_max_train)
    paths = [Path(data.db_paths[i]) for i in keep]
    log.info("product quantizer learned on %s: M = %d, %d bytes per location, %d images", data.name, q.M,
             q.bytes_per_vector(), len(paths))
    return q, {"dataset": data.name, "root": str(data.root), "n_images": len(paths),
               "transductive": transductive}, paths


def score(net: LocalSimilarityNet, db: Described, queries: Described, s: Settings,
          device: str | torch.device = "cpu", progress: bool = True,
          quantizer: GridQuantizer | None = None) -> dict[str, Any]:
    """Every ranking of the queries against the database (see the module docstring), the shortlist's ``S_local``
    and predicted boxes (normalised to the gallery image), the stored ``gallery`` (raw, or product-quantized by
    ``quantizer``) and ``info`` (settings, storage, timings). No quantizer is learned here: ``s.pq``, when set,
    must be the ``quantizer``'s ``M`` (the checkpoint's, or one from :func:`learn_quantizer`)."""
    if s.pq is not None and (quantizer is None or quantizer.M != s.pq):
        raise ValueError(f"score(): Settings.pq={s.pq} asks for product-quantized gallery grids, but the quantizer "
                         f"given is {None if quantizer is None else f'M={quantizer.M}'}. Fix: pass the "
                         "checkpoint's quantizer (GridQuantizer.from_state(stored_quantizer(ckpt))) or one from "
                         "learn_quantizer(...) on another dataset as quantizer=")
    N, Lg, C = db.grids.shape
    Nq = len(queries.grids)
    gh, qh = _square(Lg, "gallery"), _square(queries.grids.shape[1], "query")
    t0 = time.perf_counter()
    gallery = GalleryGrids(db.grids, (gh, gh), quantizer)
    t_store = time.perf_counter() - t0
    s_global = queries.glob @ db.glob.T
    short = shortlist(s_global, s.K)
    K = short.shape[1]
    q_grids = torch.from_numpy(np.ascontiguousarray(queries.grids)).view(Nq, qh, qh, C).permute(0, 3, 1, 2)
    s_local = np.zeros(short.shape, np.float32)
    codes = np.zeros(short.shape + (4,), np.float32)
    was_training = net.training
    net.eval()
    t1 = time.perf_counter()
    for i in tqdm(range(Nq), desc="local similarity", disable=not progress, leave=False):
        s_local[i], codes[i] = local_scores(net, q_grids[i], gallery, short[i], s.batch, device)
    t_local = time.perf_counter() - t1
    t2 = time.perf_counter()
    s_rmatch = rmatch_scores(q_grids, gallery, device=device)
    t_rmatch = time.perf_counter() - t2
    net.train(was_training)
    hw = torch.from_numpy(db.hw[short.ravel()])
    boxes = decode_boxes(torch.from_numpy(codes.reshape(-1, 4)), hw) / hw.flip(1).repeat(1, 2)
    ranks_global = np.argsort(-s_global, axis=1, kind="stable")
    base = Rankings(ranks_global, index=LocalScores(s_global, short, s_local))  # the global search, to be fused
    rankings = {"global": ranks_global,
                "rmatch": np.argsort(-s_rmatch, axis=1, kind="stable"),
                "local": Fusion(1.0, "local")(base).ranks,
                "local_global": Fusion(s.w)(base).ranks}
    raw_bytes = Lg * C * 4
    info = {
        "settings": dict(vars(s)),
        "K": int(K),
        "gallery_grid": gh, "query_grid": qh, "dim": int(C),
        "bytes_per_image": {"stored": gallery.bytes_per_image, "raw_float32": raw_bytes,
                            "compression": round(raw_bytes / gallery.bytes_per_image, 1)},
        "pairs_scored": int(Nq * K),
        "pairs_per_s": round(Nq * K / max(t_local, 1e-9), 1),
        "time_s": {"store": round(t_store, 3), "local_per_query": round(t_local / max(Nq, 1), 4),
                   "rmatch_per_query": round(t_rmatch / max(Nq, 1), 4)},
    }
    return {"rankings": rankings, "short": short, "s_local": s_local, "s_global": s_global,
            "boxes": boxes.view(Nq, K, 4).numpy().clip(0, 1), "gallery": gallery, "info": info}


def check_config(cfg: Any) -> None:
    """Fail before any work on settings that cannot run with ``method=local_similarity``."""
    Settings.from_cfg(cfg.method)
    if not cfg.get("ckpt_path"):
        raise ValueError("method=local_similarity needs a trained localization subnet: pass ckpt_path=RUN/checkpoints/"
                         "best.ckpt (from `python train.py model=local_similarity ...`)")
    for what, value, ok in (("whitening", cfg.whitening.kind, "none"), ("qe", cfg.qe.kind, "none"),
                            ("rerank", cfg.rerank.kind, "none")):
        if value != ok:
            raise ValueError(f"method=local_similarity scores pairs of feature grids: drop {what}={value} "
                             f"(keep {what}={ok})")
    if [float(v) for v in cfg.scales] != [1.0]:
        raise ValueError("method=local_similarity describes images at one scale: drop scales=... (keep [1])")
    checkpoint_pq(cfg)


def checkpoint_pq(cfg: Any) -> tuple[GridQuantizer | None, tuple[str, int | None, int | None]]:
    """The quantizer stored in ``cfg.ckpt_path`` (or ``None``) and :func:`pq_plan` for ``cfg.method.pq``."""
    from .network import stored_quantizer

    state = stored_quantizer(str(cfg.ckpt_path))
    stored = None if state is None else GridQuantizer.from_state(state)
    return stored, pq_plan(Settings.from_cfg(cfg.method), stored, str(cfg.ckpt_path))


@dataclass
class LocalIndex:
    """An indexed gallery: the subnet, its settings, the described database, the gallery's quantizer and where it
    comes from (``pq``: the ``results.json`` record, ``train_paths``: the images a quantizer learned here saw),
    the description options and the seconds it took."""

    net: LocalSimilarityNet
    settings: Settings
    db: Described
    quantizer: GridQuantizer | None
    pq: dict[str, Any]
    train_paths: list[Path] | None
    describe_kw: dict[str, Any]
    seconds: dict[str, float]


def index_local(cfg: Any, dataset: RetrievalDataset, backbone: torch.nn.Module, num_workers: int,
                base_key: Mapping[str, Any], learned: LearnedSets | None = None) -> LocalIndex:
    """``eval.py``'s first step: the subnet from ``ckpt_path``, the database's R-MAC vectors and feature grids,
    and the gallery's product quantizer (the checkpoint's, or one learned on ``method.pq.dataset``)."""
    from .network import load_local_similarity

    s = Settings.from_cfg(cfg.method)
    stored, (source, M, nbits) = checkpoint_pq(cfg)
    net = load_local_similarity(str(cfg.ckpt_path), backbone).to(cfg.device)
    cache_root = str(cfg.cache.dir) if cfg.cache.enabled else None
    kw = dict(loading=Loading(cfg.image_size, num_workers, bool(cfg.skip_bad_images), device=cfg.device),
              cache_root=cache_root, base_key=base_key)
    t0 = time.perf_counter()
    db = describe(net, dataset, "db", **kw)
    t_describe = time.perf_counter() - t0
    quantizer, learned_on, train_paths = (stored if source == "checkpoint" else None), None, None
    if source == "learned":
        if stored is not None:
            log.warning("method.pq.relearn=true: the gallery grids are quantized by a new quantizer, not by the one "
                        "stored in %s that the subnet was fine-tuned on", cfg.ckpt_path)
        quantizer, learned_on, train_paths = learn_quantizer(net, (cfg.method.get("pq") or {}).get("dataset"),
                                                             dataset, db, M, nbits, s, kw, learned)
    pq = {"source": source, "M": M, "nbits": nbits, "relearn": s.pq_relearn,
          "ckpt_path": str(cfg.ckpt_path) if source == "checkpoint" else None, "learned_on": learned_on}
    return LocalIndex(net, s, db, quantizer, pq, train_paths, kw,
                      {"describe": t_describe, "pq": time.perf_counter() - t0 - t_describe})


def search_local(cfg: Any, index: LocalIndex, dataset: RetrievalDataset) -> dict[str, Any]:
    """``eval.py``'s second step: ``dataset``'s queries against ``index``: ``ranks`` (the ``method.mode``
    ranking), ``stages`` (every ranking), ``info`` (with ``pq``), ``pq_train_paths`` and what the pictures need."""
    s, db = index.settings, index.db
    t0 = time.perf_counter()
    q = describe(index.net, dataset, "query", **index.describe_kw)
    t_describe = index.seconds["describe"] + time.perf_counter() - t0
    out = score(index.net, db, q, s, cfg.device, quantizer=index.quantizer)
    out["info"]["time_s"].update(describe=round(t_describe, 3), pq=round(index.seconds["pq"], 3))
    out["info"]["pq"] = dict(index.pq)
    order = [m for m in MODES if m != s.mode] + [s.mode]
    return {**out, "ranks": out["rankings"][s.mode], "stages": {m: out["rankings"][m] for m in order},
            "pq_train_paths": index.train_paths, "db_skipped": db.skipped, "q_skipped": q.skipped}


def run_local(cfg: Any, dataset: RetrievalDataset, backbone: torch.nn.Module, num_workers: int,
              base_key: Mapping[str, Any], learned: LearnedSets | None = None) -> dict[str, Any]:
    """The whole method for ``eval.py``: :func:`index_local` then :func:`search_local`."""
    return search_local(cfg, index_local(cfg, dataset, backbone, num_workers, base_key, learned), dataset)


class LocalSimilarityRetriever(PipelineRetriever):
    """``method=local_similarity`` (Chen et al.): R-MAC shortlist, localization subnet on feature grids, fusion
    with the global similarity.

    ``eval.py`` runs :meth:`rank` (the subnet read from ``ckpt_path``). The training callback runs the same
    retriever with the subnet being trained (:meth:`for_network`, then called on each benchmark): rankings by
    local+global fusion (``local_similarity``), local similarity alone (``local``) and R-Match (``rmatch``) on the
    same grids. Grids are memoised per dataset (and cached on disk) while the backbone is frozen: only the subnet
    trains. With a ``quantizer`` (quantized fine-tuning) the gallery grids are stored by it, as ``eval.py`` does."""

    check_config = staticmethod(check_config)
    reads_checkpoint = True  # ckpt_path: the localization subnet, its grids and quantizer
    names = {"local_global": "local_similarity", "local": "local", "rmatch": "rmatch"}  # training: mode -> name

    @classmethod
    def for_network(cls, net: torch.nn.Module, settings: Settings, base_key: dict[str, Any],
                    quantizer: GridQuantizer | None = None) -> LocalSimilarityRetriever:
        """The retriever of a subnet in training."""
        self = cls("local_similarity")
        self.net, self.settings, self.base_key, self.quantizer = net, settings, base_key, quantizer
        self._memo: dict[str, Any] = {}
        return self

    def __call__(self, data: Any, image_size: int, device: torch.device, cache_dir: str | None,
                 progress: bool) -> dict[str, np.ndarray]:
        frozen = self.net.finetune_layers == 0
        key = f"{data.name}:{data.root}:{image_size}"
        described = self._memo.get(key)
        if described is None:
            kw = dict(loading=Loading(image_size, device=device, progress=progress),
                      cache_root=cache_dir if frozen else None, base_key=self.base_key)
            described = (describe(self.net, data, "db", **kw), describe(self.net, data, "query", **kw))
            if frozen:  # fine-tuned layers change the grids at every step: never memoised
                self._memo[key] = described
        return self._rank(*described, device, progress)

    def _rank(self, db: Any, q: Any, device: torch.device, progress: bool) -> dict[str, np.ndarray]:
        out = score(self.net, db, q, self.settings, device, progress, quantizer=self.quantizer)
        return {name: out["rankings"][mode] for mode, name in self.names.items()}


    def index(self, cfg: Any, dataset: RetrievalDataset, backbone: torch.nn.Module, learned: LearnedSets,
              out_dir: Any = None) -> LocalIndex:
        """The subnet, the described gallery and its quantizer (:func:`index_local`)."""
        return index_local(cfg, dataset, backbone, loader_workers(cfg.num_workers, cfg.device),
                           backbone_key(cfg, backbone), learned)

    def search(self, cfg: Any, index: LocalIndex, dataset: RetrievalDataset) -> dict[str, Any]:
        """``dataset``'s queries against ``index`` (:func:`search_local`)."""
        return search_local(cfg, index, dataset)

    def rank(self, cfg: Any, dataset: RetrievalDataset, backbone: torch.nn.Module, learned: LearnedSets,
             out_dir: Any, t0: float) -> Rankings:
        out = self.search(cfg, self.index(cfg, dataset, backbone, learned, out_dir), dataset)
        t_describe = out["info"]["time_s"]["describe"]
        return Rankings(out["ranks"], out["stages"], {"local_similarity": out["info"]}, out["db_skipped"],
                        out["q_skipped"], {"extract": t_describe, "search_qe": time.perf_counter() - t0 - t_describe},
                        pictures=out)

    def pictures(self, cfg: Any, rankings: Rankings, ctx: PictureContext) -> None:
        from .viz import save_local_boxes

        ctx.draw("local_boxes.png", save_local_boxes, rankings.pictures, ctx.dataset, ctx.gnd, ctx.shown,
                 ctx.out_dir / "local_boxes.png", mode=str(cfg.method.mode))
