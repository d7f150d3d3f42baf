"""Experiment loggers that never block or kill a run.

``build_loggers(cfg.logger)`` instantiates each configured logger (``conf/logger/*.yaml``: a mapping from a
logger's name to its Hydra config with ``_target_``). One that cannot be built (missing package, wandb
trouble, a bad config, anything) is reported as a warning and left out: the run goes on with the others.

wandb has no server here: it defaults to offline mode (``WANDB_MODE=offline`` unless set) with a bounded
init timeout (``WANDB_INIT_TIMEOUT``), and its run is started right away, inside the guard, so that a
failure shows up here instead of at the first ``log`` call mid-run.

MLflow's local file store (``logger=mlflow``: ``file:`` tracking URI) is allowed by default
(``MLFLOW_ALLOW_FILE_STORE=true`` unless set; MLflow 3 refuses it otherwise).

``log_table``/``log_images``/``log_hyperparams`` send extras to every logger in the form it keeps: wandb a table and
images, TensorBoard a markdown text and images, MLflow JSON + markdown artifacts and the image files as artifacts,
CSV a ``tables/<key>.csv`` beside its ``metrics.csv`` (its pictures are already in the run folder). Every call is
guarded, so an exception is logged as a warning and swallowed.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

log = logging.getLogger(__name__)

WANDB_INIT_TIMEOUT_S = 30  # seconds; only when WANDB_INIT_TIMEOUT is not set already


def _is_wandb(target: str) -> bool:
    return "wandb" in target.lower()


def _prepare_wandb_env() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", str(WANDB_INIT_TIMEOUT_S))


def _prepare_mlflow_env(conf: DictConfig) -> None:
    if str(conf.get("tracking_uri") or "").startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _close(logger: Any) -> None:
    """Best effort clean-up of a logger that failed half way (a started wandb run, open files)."""
    try:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger._experiment.finish(exit_code=1)
        elif hasattr(logger, "finalize"):
            logger.finalize("failed")
    except Exception as e:  # noqa: BLE001 - clean-up must not raise either
        log.debug("closing %s failed: %s", type(logger).__name__, e)


def finish_loggers(loggers: Logger | Iterable[Logger] | None) -> None:
    """Close a started wandb run once the run's results are written (Lightning finalizes the others; guarded)."""
    for lg in _as_list(loggers):
        if isinstance(lg, WandbLogger) and getattr(lg, "_experiment", None) is not None:
            _guarded("finish", lg, lambda lg=lg: lg._experiment.finish())


def finalize_loggers(loggers: Logger | Iterable[Logger] | None) -> None:
    """Flush and close every logger of a run without a Trainer (``eval.py``), guarded."""
    for lg in _as_list(loggers):
        _guarded("finalize", lg, lambda lg=lg: lg.finalize("success"))
    finish_loggers(loggers)


def build_loggers(cfg: DictConfig | Mapping | None) -> list[Logger]:
    """Instantiate every logger in ``cfg`` (name -> Hydra config with ``_target_``); skip, with a warning, any that
    fails.

    ``None`` or an empty mapping gives no loggers. Entries that are ``None`` are skipped silently (a way to
    switch one off from the command line, ``logger.wandb=null``).
    """
    if cfg is None:
        return []
    # Hydra is only needed when there is something to build.
    from hydra.utils import instantiate

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    loggers: list[Logger] = []
    for name, conf in cfg.items():
        if conf is None:
            continue
        logger = None
        try:
            if not isinstance(conf, DictConfig) or "_target_" not in conf:
                raise ValueError("its config is not a mapping with a _target_")
            target = str(conf._target_)
            if _is_wandb(target):
                _prepare_wandb_env()
            if "mlflow" in target.lower():
                _prepare_mlflow_env(conf)
            logger = instantiate(conf, _convert_="all")
            if not isinstance(logger, Logger):
                raise TypeError(f"{target} built a {type(logger).__name__}, not a pytorch_lightning Logger")
            # Start the experiment now (wandb.init, CSV folder), so that it fails here rather than mid-run.
            _ = logger.experiment
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a logger must never kill the run
            log.warning("logger %r is left out: %s: %s", str(name), type(e).__name__, e)
            if logger is not None:
                _close(logger)
            continue
        loggers.append(logger)
        log.info("logger %r: %s", str(name), type(logger).__name__)
    return loggers


def _as_list(loggers: Logger | Iterable[Logger] | None) -> list[Logger]:
    if loggers is None:
        return []
    if isinstance(loggers, Logger):
        return [loggers]
    return list(loggers)


def _guarded(what: str, logger: Any, call: Callable[[], Any]) -> None:
    try:
        call()
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a logger must never kill the run
        log.warning("%s on %s failed (ignored): %s: %s", what, type(logger).__name__, type(e).__name__, e)


def _safe_key(key: str) -> str:
    """A logger key as a relative file name (``retrieval/table`` -> ``retrieval_table``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key).strip("_") or "table"


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A table in markdown (what TensorBoard's text tab and MLflow's artifact view show)."""
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _table_to(lg: Logger, key: str, columns: list[str], rows: list[list], step: int | None) -> None:
    if isinstance(lg, WandbLogger):
        lg.log_table(key=key, columns=list(columns), data=[list(r) for r in rows])
    elif isinstance(lg, TensorBoardLogger):
        lg.experiment.add_text(key, markdown_table(columns, rows), global_step=step or 0)
    elif isinstance(lg, MLFlowLogger):
        name = f"tables/{_safe_key(key)}" + (f"_step{step}" if step is not None else "")
        lg.experiment.log_dict(lg.run_id, {"columns": list(columns), "data": [list(r) for r in rows]}, name + ".json")
        lg.experiment.log_text(lg.run_id, markdown_table(columns, rows), name + ".md")
    elif isinstance(lg, CSVLogger):
        import csv

        path = Path(lg.log_dir) / "tables" / f"{_safe_key(key)}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as f:  # one file per key; every call adds its rows (with the step)
            w = csv.writer(f)
            if new:
                w.writerow(["step", *columns])
            w.writerows([[step, *r] for r in rows])


def log_table(loggers: Logger | Iterable[Logger] | None, key: str, columns: list[str], rows: list[list],
              step: int | None = None) -> None:
    """A table to every logger, in its own form (see the module docstring)."""
    for lg in _as_list(loggers):
        _guarded(f"log_table({key!r})", lg, lambda lg=lg: _table_to(lg, key, columns, rows, step))


def _images_to(lg: Logger, key: str, paths: list[Path], step: int | None) -> None:
    if isinstance(lg, WandbLogger):
        lg.log_image(key=key, images=[str(p) for p in paths], step=step)
    elif isinstance(lg, TensorBoardLogger):
        import numpy as np
        from PIL import Image

        for i, p in enumerate(paths):
            with Image.open(p) as im:
                pixels = np.asarray(im.convert("RGB"))
            tag = key if len(paths) == 1 else f"{key}/{i}_{p.stem}"
            lg.experiment.add_image(tag, pixels, global_step=step or 0, dataformats="HWC")
    elif isinstance(lg, MLFlowLogger):
        for p in paths:
            lg.experiment.log_artifact(lg.run_id, str(p), f"pictures/{_safe_key(key)}")


def log_images(loggers: Logger | Iterable[Logger] | None, key: str, paths: list[str | Path],
               step: int | None = None) -> None:
    """Image files to every logger that keeps pictures (wandb, TensorBoard, MLflow); the CSV logger takes none (the
    files are in the run folder already). A missing file is a guarded warning, never an error."""
    files = [Path(p) for p in paths]
    for lg in _as_list(loggers):
        if isinstance(lg, (WandbLogger, TensorBoardLogger, MLFlowLogger)):
            _guarded(f"log_images({key!r})", lg, lambda lg=lg: _images_to(lg, key, files, step))


def log_metrics(loggers: Logger | Iterable[Logger] | None, metrics: Mapping[str, float],
                step: int | None = None) -> None:
    """``log_metrics(metrics, step)`` on every logger (outside the LightningModule's ``self.log``)."""
    for lg in _as_list(loggers):
        _guarded("log_metrics", lg, lambda lg=lg: lg.log_metrics(dict(metrics), step=step))


def log_hyperparams(loggers: Logger | Iterable[Logger] | None, params: dict | DictConfig) -> None:
    """``log_hyperparams(params)`` on every logger (a DictConfig is resolved to plain containers first)."""
    if isinstance(params, DictConfig):
        try:
            params = OmegaConf.to_container(params, resolve=True)
        except Exception:  # noqa: BLE001 - unresolvable interpolations: keep them as written
            params = OmegaConf.to_container(params, resolve=False)
    for lg in _as_list(loggers):
        _guarded("log_hyperparams", lg, lambda lg=lg: lg.log_hyperparams(params))
