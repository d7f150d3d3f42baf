"""The evaluation run behind ``eval.py``: descriptors -> (whitening) -> search -> (QE) -> metrics -> outputs.

Everything a reader of the results looks at is written to the run directory: ``results.json`` (mAP and mP@k
in percent), ``pr_curve.png`` and ``topk.png`` (top-10 results of a few queries, positives/negatives/junk
marked), and the learned whitening (``whitening.npz``).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import pooling
from .atomic import atomic_json, strict_json
from .backbones import Backbone, build_backbone
from .backbones.weights import weights_identity
from .data import RetrievalDataset, load_dataset, whitening_pairs
from .data.errors import GroundTruthError
from .data.provenance import ContentSet, LearnedSets, is_transductive, item_keys, set_cache_dir
from .models.checkpoint import training_content
from .options import check_eval_options
from .metrics import (REVISITED_PROTOCOLS, compare, evaluate_ranks, format_ci, format_diff, revisited_protocol,
                      uncertainty)
from .regions import rmac_grid
from .retrieval import DescriptorCache, build_method, dataset_items, expand_queries, extract, search
from .rerank.pipeline import check_config as check_rerank_config
from .salient.pipeline import check_config as check_salient_config, run_salient
from .localsim.pipeline import check_config as check_local_config, run_local
from .d2r.pipeline import check_config as check_d2r_config, run_d2r
from .retrieval.regional import collect_regional_vectors, learn_regional_whitening
from .viz import pr_curve, save_pr_curves, save_topk_grid
from .whitening import Whitening

log = logging.getLogger(__name__)


def loader_workers(setting: int | str, device: str) -> int:
    """``auto``: no loader process on CPU, 2 on an accelerator.

    On CPU a forked loader slows the network's forward pass itself (copy-on-write page faults in the main
    process: +60-80% per image, benchmarks/extraction_overhead.py), far more than loading in-line (~5%)."""
    if setting == "auto":
        return 0 if str(device).startswith("cpu") else 2
    return int(setting)


class DescriptorExtractor:
    """Extracts (and caches) the descriptors of a dataset's database and queries for one method."""

    def __init__(self, cfg: DictConfig, backbone: Backbone, method: torch.nn.Module):
        self.cfg, self.backbone, self.method = cfg, backbone, method
        self.base_key = {
            "backbone": cfg.backbone.name,
            "weights": weights_identity(str(cfg.backbone.weights), int(cfg.seed)),
            "method": method.cache_key(),  # nested: a method's own keys (e.g. its region scales S) never
            "image_size": cfg.image_size,  # collide with the extraction's (e.g. the multi-scale ``scales``)
            "scales": [float(s) for s in cfg.scales],
            "exif_transpose": bool(cfg.exif_transpose),
            "version": 3,  # 3: images keyed by content
        }

    def __call__(self, dataset: RetrievalDataset, part: str) -> tuple[np.ndarray, list[int]]:
        items = dataset_items(dataset, part)
        cache = None
        if self.cfg.cache.enabled:
            key = {**self.base_key, "dataset": dataset.name, "root": str(dataset.root), "part": part,
                   "items": item_keys(items)}
            cache = DescriptorCache(self.cfg.cache.dir, key)
        return extract(items, self.method, self.backbone.normalize, self.cfg.image_size,
                       scales=[float(s) for s in self.cfg.scales], power=self.method.power, cache=cache,
                       num_workers=loader_workers(self.cfg.num_workers, self.cfg.device),
                       skip_bad=bool(self.cfg.skip_bad_images),
                       exif_transpose=bool(self.cfg.exif_transpose), desc=f"{dataset.name}/{part}",
                       device=self.cfg.device)


def whitening_set(cfg: DictConfig, learned: LearnedSets) -> tuple[RetrievalDataset | None, dict[str, Any]]:
    """The dataset ``cfg.whitening`` is learned on (``None``: the evaluated database, transductive) and its record,
    checked by content against the evaluated images before any descriptor is extracted."""
    wcfg = cfg.whitening
    if wcfg.kind == "none":
        return None, {"kind": "none"}
    head = {"kind": str(wcfg.kind), "dims": wcfg.dims}
    if is_transductive(wcfg.dataset):
        if wcfg.kind == "lw":
            raise ValueError("whitening=lw learns from the matching pairs of another dataset's ground truth: set "
                             "whitening.dataset to a training dataset (learning it on the evaluated one is cheating)")
        return None, {**head, **learned.transductive("whitening", "whitening.dataset")}
    wdata = load_dataset(wcfg.dataset)
    return wdata, {**head, **learned.check_dataset("whitening", wdata, "whitening.dataset",
                                                   parts=("db",) if wcfg.kind == "pca" else ("db", "query"))}


def learn_whitening(cfg: DictConfig, db_desc: np.ndarray, extractor: DescriptorExtractor,
                    wdata: RetrievalDataset | None) -> Whitening | None:
    """Learn PCA (database descriptors) or Lw (query/positive pairs) whitening on ``wdata`` (from
    :func:`whitening_set`; ``None``: PCA on the evaluated database ``db_desc``)."""
    wcfg = cfg.whitening
    if wcfg.kind == "none":
        return None
    if wdata is None:
        log.info("learning %s whitening on the evaluated database (%d images: transductive)", wcfg.kind, len(db_desc))
        return Whitening.learn(db_desc, "pca", dims=wcfg.dims)
    X, _ = extractor(wdata, "db")
    if wcfg.kind == "pca":
        log.info("learning PCA whitening on %s (%d images)", wdata.name, len(X))
        return Whitening.learn(X, "pca", dims=wcfg.dims)
    Q, _ = extractor(wdata, "query")
    qi, pi = whitening_pairs(wdata)
    log.info("learning Lw whitening on %s (%d pairs)", wdata.name, len(qi))
    return Whitening.learn(np.concatenate([X, Q]), "lw", pairs=(len(X) + qi, pi), dims=wcfg.dims)


def learn_region_whitening(cfg: DictConfig, backbone: Backbone, L: int,
                           learned: LearnedSets | None = None) -> tuple[Whitening, dict[str, Any]]:
    """PCA-whitening of L2-normalised R-MAC regional vectors of ``method.region_whitening.dataset``'s database
    (Tolias et al.: learned on another dataset than the evaluated one, checked by content when ``learned`` is
    given). Returns it and its cache-key entry."""
    data = load_dataset(cfg.method.region_whitening.dataset)
    if learned is not None:
        learned.check_dataset("region_whitening", data, "method.region_whitening.dataset")

    def vectors(x: torch.Tensor) -> torch.Tensor:
        fmap = backbone(x)
        return pooling.l2n(pooling.region_max(fmap, rmac_grid(fmap.shape[-2], fmap.shape[-1], L)))

    X = collect_regional_vectors(data.db_paths, vectors, backbone.normalize, cfg.image_size, cfg.device,
                                 desc=f"{data.name}/region-whitening")
    dims = cfg.method.region_whitening.get("dims")
    key = {"region_whitening": {"dataset": data.name, "root": str(data.root), "n": data.n_db, "dims": dims}}
    white = learn_regional_whitening(X, dims, data.name, "learn it on a larger method.region_whitening.dataset or "
                                     "reduce with method.region_whitening.dims")
    return white, key


def check_method_learned(method: torch.nn.Module, learned: LearnedSets, allow_overlap: bool = False) -> None:
    """A trained method (e.g. regional attention from its checkpoint) says what its learned parts saw
    (``learned_content()``: component -> ContentSet); each is checked against the evaluated images (refused, or
    warned with ``allow_overlap``)."""
    for component, content in getattr(method, "learned_content", lambda: {})().items():
        learned.check(component, content, "the checkpoint's training configuration (retrain with a set disjoint "
                      "from the evaluated one)", transductive=allow_overlap, opt_in="allow_overlap=true")


CHECKPOINT_OPTIONS = {"training_data": "ckpt_path", "detector_training_data": "detector.ckpt_path"}


def check_checkpoint_training(cfg: DictConfig, learned: LearnedSets) -> None:
    """The checkpoints a run reads carry the content keys of the images they were trained on (written by the
    training run's retrieval callback); each is checked against the evaluated images (refused, or warned with
    ``allow_overlap=true``). Checkpoints without the record (older runs, training sets too large to hash) are
    logged as unchecked; unreadable files are left to the loaders' errors."""
    for component, option in CHECKPOINT_OPTIONS.items():
        path = OmegaConf.select(cfg, option)
        if not path or not Path(str(path)).is_file():
            continue
        try:
            state = training_content(str(path))
        except Exception:  # not a checkpoint: the method's loader says so, with the fix
            continue
        if state is None:
            log.info("%s=%s records no training-data content keys: its training set is not checked against the "
                     "evaluated images", option, path)
            learned.records[component] = {"checked": False, "checkpoint": str(path)}
            continue
        learned.check(component, ContentSet.from_state(state), option,
                      transductive=bool(cfg.get("allow_overlap", False)), opt_in="allow_overlap=true",
                      fix=f"the checkpoint {option}={path} was trained on these images: evaluate it on a benchmark "
                          "disjoint from its training data, or retrain it without them")


def protocol_gnd(dataset: RetrievalDataset) -> dict[str, list[dict]]:
    if dataset.protocol == "revisited":
        return {p: revisited_protocol(dataset.gnd, p) for p in REVISITED_PROTOCOLS}
    return {"all": dataset.gnd}


def format_table(results: dict[str, Any]) -> str:
    """The printed summary: mAP with its 95% bootstrap interval over queries, mP@k, what was learned on what, and
    each stage's paired difference to the first (baseline) stage."""
    head = f"{results['method']} on {results['dataset']} ({results['backbone']}, image_size {results['image_size']})"
    lines = [head, f"{'protocol':<10}{'mAP [95% CI]':>22}{'mP@1':>8}{'mP@5':>8}{'mP@10':>8}"]
    for proto, m in results["map"].items():
        pk = results["mpk"][proto]
        ci = results.get("map_ci95", {}).get(proto)
        lines.append(f"{proto:<10}{format_ci(m, ci):>22}" +
                     "".join(f"{pk.get(str(k), float('nan')):8.2f}" for k in (1, 5, 10)))
    for stage, maps in results.get("stages", {}).items():
        cis = results.get("stages_ci95", {}).get(stage, {})
        lines.append(f"mAP after {stage + ':':<14}" + "  ".join(f"{p} {format_ci(v, cis.get(p))}"
                                                              for p, v in maps.items()))
    for pair, diffs in results.get("stage_differences", {}).items():
        lines.append(f"{pair + ':':<24}" + "  ".join(f"{p} {format_diff(c)}" for p, c in diffs.items()))
    for component, rec in results.get("learned", {}).items():
        if not rec.get("checked", True):
            lines.append(f"{component}: not recorded in {rec.get('checkpoint')}, not checked")
            continue
        lines.append(f"{component} learned on {rec['dataset']} ({rec['n_images']} images, overlap with the "
                     f"evaluated images {rec['overlap']}{', transductive' if rec.get('transductive') else ''})")
    return "\n".join(lines)


def _run_global(cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, out_dir: Path,
                t0: float, learned: LearnedSets) -> dict[str, Any]:
    """Global-descriptor methods: extract -> (whitening) -> search -> (QE) -> (AML re-ranking)."""
    params = {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k not in ("name", "region_whitening")}
    if cfg.method.name == "rmac" and cfg.method.get("variant") == "tolias":
        params["region_whitening"], params["region_whitening_key"] = learn_region_whitening(
            cfg, backbone, int(cfg.method.L), learned)
    if cfg.get("ckpt_path"):  # learned methods (e.g. method=regional_attention) read their checkpoint
        params["ckpt_path"] = str(cfg.ckpt_path)
    method = build_method(cfg.method.name, backbone, **params).to(cfg.device).eval()
    check_method_learned(method, learned, bool(cfg.get("allow_overlap", False)))
    wdata, whitening = whitening_set(cfg, learned)  # checked before any work
    extractor = DescriptorExtractor(cfg, backbone, method)
    db, db_skipped = extractor(dataset, "db")
    q, q_skipped = extractor(dataset, "query")
    t_extract = time.perf_counter() - t0

    white = learn_whitening(cfg, db, extractor, wdata)
    if white is not None:
        white.save(out_dir / "whitening.npz")
        db, q = white(db), white(q)
        db[db_skipped], q[q_skipped] = 0, 0  # unreadable images stay zero (they rank by similarity 0)

    t1 = time.perf_counter()
    k = None if cfg.topk is None else int(cfg.topk)
    scores, ranks = search(q, db, k=k)
    if cfg.qe.kind in ("avg", "alpha"):
        q = expand_queries(q, db, ranks, scores, k=int(cfg.qe.k), alpha=float(cfg.qe.alpha))
        scores, ranks = search(q, db, k=k)
    t_search = time.perf_counter() - t1

    stages, rerank = {}, None
    if cfg.rerank.kind == "aml":
        from .rerank.pipeline import run_aml

        rerank = run_aml(cfg, dataset, backbone, method,
                         lambda m: DescriptorExtractor(cfg, backbone, m)(dataset, "query")[0], extractor.base_key,
                         q, ranks, white, loader_workers(cfg.num_workers, cfg.device))
        stages = {"initial": ranks, "aml": rerank["ranks_rerank"]}
        if rerank["ranks_qe"] is not None:
            stages["aml_qe"] = rerank["ranks_qe"]
        ranks = list(stages.values())[-1]

    return {"ranks": ranks, "stages": stages, "rerank": rerank, "db_skipped": db_skipped, "q_skipped": q_skipped,
            "t_extract": t_extract, "t_search": t_search, "whitening": whitening}


def _run_salient(cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, t0: float,
                 learned: LearnedSets) -> dict[str, Any]:
    """``method=salient_regions`` (Jeong et al.): region proposals, region descriptors, region matching, (QE)."""
    out = run_salient(cfg, dataset, backbone, loader_workers(cfg.num_workers, cfg.device), learned)
    d = out["described"]
    return {"ranks": out["ranks"], "stages": out["stages"] if len(out["stages"]) > 1 else {},
            "db_skipped": [i for i, p in enumerate(d.db_props) if p is None],
            "q_skipped": [i for i, p in enumerate(d.q_props) if p is None],
            "t_extract": time.perf_counter() - t0, "salient": out,
            "t_search": out["info"]["time_s"]["search_per_query"] * dataset.n_queries}


def _run_local(cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, t0: float,
               learned: LearnedSets) -> dict[str, Any]:
    """``method=local_similarity`` (Chen et al.): R-MAC shortlist, localization subnet on feature grids, fusion."""
    base_key = {"backbone": backbone.name, "weights": weights_identity(str(cfg.backbone.weights), int(cfg.seed))}
    out = run_local(cfg, dataset, backbone, loader_workers(cfg.num_workers, cfg.device), base_key, learned)
    info = out["info"]
    return {**out, "local": out, "t_extract": info["time_s"]["describe"],
            "t_search": time.perf_counter() - t0 - info["time_s"]["describe"]}


def _run_d2r(cfg: DictConfig, dataset: RetrievalDataset, backbone: Backbone, t0: float,
             learned: LearnedSets) -> dict[str, Any]:
    """``method=d2r`` (Teichmann et al.): detected regions, aggregated match kernels, inverted-file search."""
    base_key = {"backbone": backbone.name, "weights": weights_identity(str(cfg.backbone.weights), int(cfg.seed))}
    out = run_d2r(cfg, dataset, backbone, loader_workers(cfg.num_workers, cfg.device), base_key, learned)
    t_search = out["info"]["time_s"]["search"]
    return {**out, "d2r": out, "t_extract": time.perf_counter() - t0 - t_search, "t_search": t_search}


def check_has_positives(dataset: RetrievalDataset) -> None:
    """Refuse a ground truth in which no query has a positive: every mAP would be undefined."""
    keys = ("easy", "hard") if dataset.protocol == "revisited" else ("ok",)
    if not any(len(g[k]) for g in dataset.gnd for k in keys if k in g):
        raise GroundTruthError(f"no query of {dataset.name!r} has a positive ({' or '.join(keys)}): every mAP would "
                               "be undefined", dataset.root,
                               f"give each query at least one {keys[0]} database image in the ground truth")


def write_results(results: dict[str, Any], path: Path, extra: Path | None) -> None:
    """``results.json`` (and ``results_file``), strict JSON. If a file cannot be written (a full disk), the results
    are printed to the log first, so that nothing is lost, then the error is raised with the file named."""
    for p in [path] + ([extra] if extra is not None else []):
        try:
            atomic_json(results, p)
        except OSError as err:
            log.error("could not write %s (%s); the results, so that nothing is lost:\n%s", p, err,
                      json.dumps(strict_json(results), default=str))
            raise OSError(err.errno, f"could not write the results to {p} ({err.strerror}); they were printed to "
                                     "the log above. Fix: free space or pass results_file= in a writable folder") \
                from err


def save_pictures(cfg: DictConfig, dataset: RetrievalDataset, results: dict[str, Any], ranks_db_nq: np.ndarray,
                  out_dir: Path, rerank: Any, salient: Any, local: Any, d2r: Any) -> None:
    """The run's pictures. A picture that fails (an unreadable image, a full disk) is logged and skipped: the
    results are already written, and a picture never fails the run."""
    def draw(name: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - pictures are best effort by design
            log.warning("could not draw %s (%s: %s); the results are unaffected", out_dir / name,
                        type(err).__name__, err)

    gnds = protocol_gnd(dataset)
    draw("pr_curve.png", lambda: save_pr_curves({p: pr_curve(ranks_db_nq, g) for p, g in gnds.items()},
                                                results["map"], out_dir / "pr_curve.png",
                                                f"{results['method']} on {dataset.name}"))
    shown = np.linspace(0, dataset.n_queries - 1, min(int(cfg.plots.n_queries), dataset.n_queries)).astype(int)
    grid_gnd = gnds["medium" if dataset.protocol == "revisited" else "all"]
    draw("topk.png", save_topk_grid, ranks_db_nq, grid_gnd, dataset.db_paths, dataset.query_paths,
         dataset.query_bbx, out_dir / "topk.png", shown.tolist(), k=10)
    if rerank is not None:
        from .rerank.viz import save_localizations

        draw("aml_localization.png", save_localizations, rerank, dataset, grid_gnd, shown.tolist(),
             out_dir / "aml_localization.png", image_size=cfg.image_size)
    if salient is not None:
        from .salient.viz import save_region_matches

        draw("salient_regions.png", save_region_matches, salient, dataset, grid_gnd, shown.tolist(),
             out_dir / "salient_regions.png")
    if local is not None:
        from .localsim.viz import save_local_boxes

        draw("local_boxes.png", save_local_boxes, local, dataset, grid_gnd, shown.tolist(),
             out_dir / "local_boxes.png", mode=str(cfg.method.mode))
    if d2r is not None and d2r["info"]["regions_per_image"] > 1:
        from .d2r.viz import save_regions

        draw("d2r_regions.png", save_regions, dataset, d2r["boxes"], d2r["box_scores"],
             out_dir / "d2r_regions.png", image_size=int(cfg.image_size), title=d2r["info"]["variant"])


def run_eval(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run one evaluation described by ``cfg`` (see ``conf/eval.yaml``); returns the results dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_eval_options(cfg)
    check_rerank_config(cfg)
    check_salient_config(cfg)
    check_local_config(cfg)
    check_d2r_config(cfg)
    torch.manual_seed(int(cfg.seed))
    t0 = time.perf_counter()
    dataset = load_dataset(cfg.dataset)
    check_has_positives(dataset)
    learned = LearnedSets(dataset, set_cache_dir(Path(str(cfg.paths.cache_dir)) / "content"))
    check_checkpoint_training(cfg, learned)
    backbone = build_backbone(cfg.backbone.name, weights=str(cfg.backbone.weights))
    backbone.to(cfg.device)
    if cfg.method.name == "salient_regions":
        run = _run_salient(cfg, dataset, backbone, t0, learned)
    elif cfg.method.name == "local_similarity":
        run = _run_local(cfg, dataset, backbone, t0, learned)
    elif cfg.method.name == "d2r":
        run = _run_d2r(cfg, dataset, backbone, t0, learned)
    else:
        run = _run_global(cfg, dataset, backbone, out_dir, t0, learned)
    ranks, stages, rerank, salient = run["ranks"], run["stages"], run.get("rerank"), run.get("salient")
    local, d2r = run.get("local"), run.get("d2r")
    db_skipped, q_skipped, t_extract, t_search = run["db_skipped"], run["q_skipped"], run["t_extract"], run["t_search"]

    ranks_db_nq = ranks.T  # revisitop layout: db × nq
    metrics = evaluate_ranks(ranks_db_nq, dataset.gnd, dataset.protocol)
    results = {
        "method": cfg.method.name,
        "dataset": dataset.name,
        "backbone": cfg.backbone.name,
        "weights": str(cfg.backbone.weights),
        "image_size": cfg.image_size,
        "scales": [float(s) for s in cfg.scales],
        "ckpt_path": cfg.get("ckpt_path"),
        "whitening": run.get("whitening", {"kind": str(cfg.whitening.kind)}),
        "qe": OmegaConf.to_container(cfg.qe),
        "protocol": dataset.protocol,
        "map": {p: round(float(m["map"]), 4) for p, m in metrics.items()},
        "mpk": {p: {str(kk): round(float(v), 4) for kk, v in m["mpk"].items()} for p, m in metrics.items()},
        **uncertainty(metrics),
        "n_db": dataset.n_db,
        "n_queries": dataset.n_queries,
        "skipped_images": {"db": [str(dataset.db_paths[i]) for i in db_skipped],
                           "query": [str(dataset.query_paths[i]) for i in q_skipped],
                           "count": len(db_skipped) + len(q_skipped)},
        "time_s": {"extract": round(t_extract, 3), "search_qe": round(t_search, 4)},
    }
    if rerank is not None:
        results["rerank"] = rerank["info"]
    if salient is not None:
        results["salient_regions"] = salient["info"]
    if local is not None:
        results["local_similarity"] = local["info"]
    if d2r is not None:
        results["d2r"] = d2r["info"]
    results["learned"] = learned.records
    if stages:
        stage_metrics = {name: evaluate_ranks(r.T, dataset.gnd, dataset.protocol) for name, r in stages.items()}
        results["stages"] = {name: {p: round(float(m["map"]), 4) for p, m in sm.items()}
                             for name, sm in stage_metrics.items()}
        results["stages_ci95"] = {name: uncertainty(sm)["map_ci95"] for name, sm in stage_metrics.items()}
        first = next(iter(stage_metrics))  # every method lists its baseline stage first
        results["stage_differences"] = {f"{name} - {first}": compare(sm, stage_metrics[first])
                                        for name, sm in list(stage_metrics.items())[1:]}
    if results["skipped_images"]["count"]:
        log.warning("%d unreadable images were skipped (listed in results.json under skipped_images)",
                    results["skipped_images"]["count"])
    write_results(results, out_dir / "results.json", Path(cfg.results_file) if cfg.results_file else None)
    if cfg.plots.enabled:
        save_pictures(cfg, dataset, results, ranks_db_nq, out_dir, rerank, salient, local, d2r)
    print(format_table(results), flush=True)
    return results
