"""The evaluation run behind ``eval.py``: the method's retriever ranks the dataset -> metrics -> outputs.

The method is whatever :func:`~lit_retrieval.retrieval.interface.build_retriever` gives for ``method.name`` (this
module names none): it checks its settings, ranks (:class:`~lit_retrieval.retrieval.interface.Rankings`) and draws
its own pictures. Everything a reader of the results looks at is written to the run directory: ``results.json``
(mAP and mP@k in percent, with intervals, the method's stages and sections), ``pr_curve.png`` and ``topk.png``
(top-10 results of a few queries, positives/negatives/junk marked), the method's pictures, a learned
whitening (``whitening.npz``) and ``report.html`` (all of it on one self-contained page: ``lit_retrieval.report``).
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

from .atomic import atomic_json, strict_json
from .backbones import build_backbone
from .data import RetrievalDataset, load_dataset
from .data.errors import GroundTruthError
from .data.provenance import ContentSet, LearnedSets, set_cache_dir
from .checkpoint import training_content
from .options import check_eval_options
from .loggers import build_loggers, finalize_loggers, log_hyperparams, log_images, log_metrics, log_table
from .report import find_pictures, report_or_warn, write_eval_report
from .metrics import (REVISITED_PROTOCOLS, compare, evaluate_ranks, format_ci, format_diff, revisited_protocol,
                      uncertainty)
from .retrieval import distributed
from .retrieval.interface import PictureContext, Rankings, Retriever, build_retriever
from .viz import pr_curve, save_pr_curves, save_topk_grid

log = logging.getLogger(__name__)


def check_checkpoint_training(cfg: DictConfig, learned: LearnedSets, component: str = "training_data") -> None:
    """The checkpoint a run reads (``ckpt_path``) carries the content keys of the images it was trained on
    (written by the training run's retrieval callback); they are checked against the evaluated images (refused, or
    warned with ``allow_overlap=true``) and recorded under ``component`` (the retriever's ``checkpoint_component``,
    e.g. ``detector_training_data``). A checkpoint without the record (older runs, training sets too large to
    hash) is logged as unchecked; unreadable files are left to the loaders' errors."""
    path = cfg.get("ckpt_path")
    if not path or not Path(str(path)).is_file():
        return
    try:
        state = training_content(str(path))
    except Exception:  # not a checkpoint: the method's loader says so, with the fix
        return
    if state is None:
        log.info("ckpt_path=%s records no training-data content keys: its training set is not checked against the "
                 "evaluated images", path)
        learned.records[component] = {"checked": False, "checkpoint": str(path)}
        return
    learned.check(component, ContentSet.from_state(state), "ckpt_path",
                  transductive=bool(cfg.get("allow_overlap", False)), opt_in="allow_overlap=true",
                  fix=f"the checkpoint ckpt_path={path} was trained on these images: evaluate it on a benchmark "
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
                  out_dir: Path, retriever: Retriever, rankings: Rankings) -> None:
    """The run's pictures: the PR curve, the top-k grid and the method's own. A picture that fails (an unreadable
    image, a full disk) is logged and skipped: the results are already written, and a picture never fails the run."""
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
    draw(f"the pictures of method={retriever.name}", retriever.pictures, cfg, rankings,
         PictureContext(dataset, grid_gnd, shown.tolist(), out_dir, int(cfg.image_size), draw))


def publish(cfg: DictConfig, results: dict[str, Any], out_dir: Path) -> None:
    """The run's config, mAP (with intervals, per stage), results table and pictures to the experiment loggers of
    ``logger=...`` (none by default); a logger that fails is left out with a warning."""
    loggers = build_loggers(cfg.get("logger"))
    if not loggers:
        return
    prefix = f"eval/{results['dataset']}/{results['method']}"
    metrics = {f"{prefix}/mAP_{p}": v for p, v in results["map"].items()}
    metrics |= {f"{prefix}/mAP_{p}_ci95_{end}": v for p, ci in results.get("map_ci95", {}).items()
                for end, v in zip(("low", "high"), ci) if v is not None}
    metrics |= {f"{prefix}/stages/{s}/mAP_{p}": v for s, m in results.get("stages", {}).items() for p, v in m.items()}
    log_hyperparams(loggers, cfg)
    log_metrics(loggers, {k: v for k, v in metrics.items() if v is not None}, step=0)
    rows = [[p, results["map"][p], *(results.get("map_ci95", {}).get(p) or [None, None]),
             *results["mpk"].get(p, {}).values()] for p in results["map"]]
    first = next(iter(results["mpk"].values()), {})
    log_table(loggers, "eval/map", ["protocol", "mAP", "ci95_low", "ci95_high", *(f"mP@{k}" for k in first)], rows)
    if results.get("stages"):
        log_table(loggers, "eval/stages", ["stage", *next(iter(results["stages"].values()))],
                  [[s, *m.values()] for s, m in results["stages"].items()])
    pictures = find_pictures(out_dir)
    if pictures:
        log_images(loggers, "eval/pictures", pictures, step=0)
    finalize_loggers(loggers)


def run_eval(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run one evaluation described by ``cfg`` (see ``conf/eval.yaml``); returns the results dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_eval_options(cfg)
    retriever = build_retriever(str(cfg.method.name))
    retriever.check(cfg)  # the method's own settings, before any work
    engine = distributed.from_cfg(cfg)  # trainer=ddp: every extraction of the run sharded over the ranks
    distributed.activate(engine)
    try:
        return _run_eval(cfg, out_dir, retriever, engine)
    finally:
        distributed.activate(None)


def _run_eval(cfg: DictConfig, out_dir: Path, retriever: Retriever,
              engine: distributed.DistributedExtraction | None) -> dict[str, Any]:
    torch.manual_seed(int(cfg.seed))
    t0 = time.perf_counter()
    dataset = load_dataset(cfg.dataset)
    check_has_positives(dataset)
    learned = LearnedSets(dataset, set_cache_dir(Path(str(cfg.paths.cache_dir)) / "content"))
    check_checkpoint_training(cfg, learned, getattr(retriever, "checkpoint_component", "training_data"))
    backbone = build_backbone(cfg.backbone.name, weights=str(cfg.backbone.weights))
    backbone.to(cfg.device)
    run = retriever.rank(cfg, dataset, backbone, learned, out_dir, t0)
    if engine is not None and not engine.is_global_zero:  # rank 0 alone evaluates and writes the run's outputs
        return {"map": {}, "rank": engine.global_rank}
    stages, db_skipped, q_skipped = run.stages, run.db_skipped, run.q_skipped

    ranks_db_nq = run.ranks.T  # revisitop layout: db × nq
    metrics = evaluate_ranks(ranks_db_nq, dataset.gnd, dataset.protocol)
    results = {
        "method": cfg.method.name,
        "dataset": dataset.name,
        "backbone": cfg.backbone.name,
        "weights": str(cfg.backbone.weights),
        "image_size": cfg.image_size,
        "scales": [float(s) for s in cfg.scales],
        "ckpt_path": cfg.get("ckpt_path"),
        "whitening": run.whitening or {"kind": str(cfg.whitening.kind)},
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
        "time_s": {"extract": round(run.time_s["extract"], 3), "search_qe": round(run.time_s["search_qe"], 4)},
        "extraction": {"processes": 1 if engine is None else engine.world_size,
                       "store_dtype": str((cfg.get("store") or {}).get("dtype", "float32"))},
        **run.info,  # the method's own sections (Rankings.info)
    }
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
        save_pictures(cfg, dataset, results, ranks_db_nq, out_dir, retriever, run)
    report = report_or_warn(write_eval_report, results, cfg, out_dir)
    publish(cfg, results, out_dir)
    print(format_table(results), flush=True)
    if report is not None:
        print(f"report: {report}", flush=True)
    return results
