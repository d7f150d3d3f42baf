"""The training run behind ``train.py``: data, module, callbacks, loggers and Trainer from the Hydra config.

Writes ``results.json`` in the run folder (final metrics, best checkpoint and its score), which the multirun
summary (``lit_retrieval.sweep_summary``) collects into one row per run, and ``report.html`` (the run on one page).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .atomic import atomic_json
from .callbacks.retrieval_eval import TEST_PREFIX, RetrievalEvaluation
from .loggers import build_loggers, finish_loggers, log_hyperparams
from .report import report_or_warn, write_train_report

log = logging.getLogger(__name__)


def build(cfg: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` (plain containers), re-raising the object's own error (e.g. missing weights
    with its fix) instead of Hydra's wrapper around it."""
    try:
        return instantiate(cfg, _convert_="all", **kwargs)
    except InstantiationException as e:
        if e.__cause__ is not None:
            raise e.__cause__ from None
        raise


def build_callbacks(cfg: DictConfig | None) -> list[pl.Callback]:
    """Every entry of ``cfg.callbacks`` with a ``_target_``, in order."""
    return [build(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]


def check_monitor(cfg: DictConfig) -> None:
    """Fail before training, not at the first validation, when ``monitor`` names a retrieval metric that the
    retrieval-evaluation callback will never log (disabled, or not evaluating that dataset)."""
    monitor = str(cfg.get("monitor") or "")
    if monitor.startswith("attention/"):
        raise ValueError(f"monitor={monitor} is the attention pictures' record, measured on the images they are drawn "
                         "on (by default the test benchmark's): it describes a run, it never selects its checkpoint. "
                         "Fix: monitor a validation benchmark, e.g. retrieval/<validation dataset>/<method>/mAP_M")
    if not monitor.startswith("retrieval/") or monitor.count("/") < 3:
        return
    r = (cfg.get("callbacks") or {}).get("retrieval_eval")
    dataset = monitor.split("/")[1]
    if monitor.startswith("test/") or (r is not None and (r.get("test_datasets") or {}).get(dataset) is not None):
        raise ValueError(f"monitor={monitor} names a test benchmark: test benchmarks are reported on the selected "
                         "checkpoint and never used to select it. Fix: monitor a validation benchmark "
                         "(callbacks.retrieval_eval.datasets), e.g. retrieval/<validation dataset>/<method>/mAP_M")
    if r is None or not r.get("enabled", True) or (r.get("datasets") or {}).get(dataset) is None:
        raise ValueError(f"monitor={monitor} is a retrieval metric, but callbacks.retrieval_eval does not evaluate "
                         f"dataset {dataset!r} (disabled or not among its datasets), so checkpoints/best.ckpt could "
                         "never be chosen. Fix: monitor=val/error monitor_mode=min, or evaluate that dataset")


def train(cfg: DictConfig) -> dict[str, Any]:
    check_monitor(cfg)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist. Fix: point it at an interrupted run's "
                                "checkpoints/last.ckpt (or leave it out to start afresh)")
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = build(cfg.data)
    model = build(cfg.model)
    callbacks = build_callbacks(cfg.get("callbacks"))
    loggers = build_loggers(cfg.get("logger"))
    trainer: pl.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log_hyperparams(loggers, OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    ckpts = trainer.checkpoint_callbacks
    ckpt = next((c for c in ckpts if getattr(c, "monitor", None)), None)
    last = next((c for c in ckpts if not getattr(c, "monitor", None)), None)
    best = ckpt.best_model_score if ckpt is not None else None
    retrieval = next((c for c in callbacks if isinstance(c, RetrievalEvaluation)), None)
    tested_on = None
    if retrieval is not None and retrieval.enabled and retrieval.test_cfgs:
        # the held-out test benchmarks, once, on the checkpoint the validation benchmarks selected
        tested_on = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        if tested_on is None:
            log.warning("no best checkpoint (no monitored metric): the test benchmarks are evaluated on the "
                        "final weights")
        with retrieval.testing():
            trainer.validate(model, datamodule=datamodule, ckpt_path=tested_on, verbose=False)
    results = {
        "task": "train",
        "monitor": cfg.get("monitor"),
        "monitor_value": None if best is None else round(float(best), 4),
        "best_checkpoint": None if ckpt is None else ckpt.best_model_path,
        "last_checkpoint": None if last is None else last.best_model_path,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "metrics": dict(sorted(metrics.items())),
    }
    if retrieval is not None:
        # the test benchmarks' values also under their own names (retrieval/<test dataset>/<method>/...): the
        # dataset names of validation and test are distinct, so nothing is overwritten
        results["metrics"] = dict(sorted({**metrics, **{k.removeprefix(TEST_PREFIX): round(float(v), 4)
                                                         for k, v in retrieval.test.items()}}.items()))
        results["test"] = {"checkpoint": tested_on, "metrics": dict(sorted(retrieval.test.items())),
                           "differences": retrieval.test_differences, "ci95": retrieval.intervals["test"]}
        results["overlap"] = retrieval.provenance
    records = [c for c in callbacks if callable(getattr(c, "run_record", None))]
    for c in records:  # a callback's own results.json sections (e.g. the attention pictures' record)
        results.update(c.run_record())
    if trainer.is_global_zero:
        atomic_json(results, out_dir / "results.json")
        report_or_warn(write_train_report, results, cfg, out_dir)
    log.info("training done: best %s = %s (%s)", results["monitor"], results["monitor_value"],
             results["best_checkpoint"])
    finish_loggers(loggers)  # (wandb prints its own closing lines: before the summary, not after it)
    if trainer.is_global_zero:
        table = retrieval.test_table if retrieval is not None else ""
        lines = [ln for c in records for ln in getattr(c, "summary_lines", lambda _: [])(out_dir)]
        print("\n" + (table + "\n" if table else "") + outputs_summary(results, out_dir, lines), flush=True)
    return results


def outputs_summary(results: dict[str, Any], out_dir: Path, more: list[str] = ()) -> str:
    """Where a run's table, pictures and checkpoints are (printed last); ``more``: the callbacks' own lines."""
    tested = "the test table (intervals, paired differences), " if results.get("test", {}).get("metrics") else ""
    lines = [f"run folder: {out_dir}", f"  results.json     metrics, {tested}overlap checks"]
    if (out_dir / "retrieval.json").exists():
        lines.append("  retrieval.json   every validation table (by epoch) and the test table")
    if (out_dir / "report.html").exists():
        lines.append("  report.html      the whole run on one page: tables, learning curves, pictures, config")
    lines += list(more)
    plots = sorted(p.name for p in (out_dir / "plots").glob("*.png") if "_epoch" not in p.name) \
        if (out_dir / "plots").is_dir() else []
    if plots:
        lines.append(f"  plots/           {', '.join(plots)} (and per-epoch copies)")
    if results.get("best_checkpoint"):
        last = ", last.ckpt" if results.get("last_checkpoint") else ""
        lines.append(f"  checkpoints/     best.ckpt (chosen on {results.get('monitor')}){last}")
    if (out_dir / "report.html").exists():  # last: the page to open
        lines.append(f"report: {out_dir / 'report.html'}")
    return "\n".join(lines)
