"""Loggers never block or kill a run: failures become warnings, extras are guarded."""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from lit_retrieval.loggers import build_loggers, log_hyperparams, log_images, log_table

CONF = Path(__file__).resolve().parents[2] / "conf"


def _logger_cfg(name: str, output_dir: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+logger={name}", f"+paths.output_dir={output_dir}"])
    return cfg.logger


def test_config_files_compose(tmp_path):
    many = _logger_cfg("many_loggers", tmp_path)
    assert set(many) == {"csv", "wandb"}
    assert many.wandb.offline is True and many.wandb.log_model is False
    assert many.wandb.save_dir == str(tmp_path) and many.csv.save_dir == str(tmp_path)
    assert len(_logger_cfg("none", tmp_path)) == 0
    assert build_loggers(_logger_cfg("none", tmp_path)) == []
    assert build_loggers(None) == []


def test_csv_builds_and_writes(tmp_path):
    loggers = build_loggers(_logger_cfg("csv", tmp_path))
    assert len(loggers) == 1 and isinstance(loggers[0], CSVLogger)
    lg = loggers[0]
    lg.log_metrics({"mAP": 0.5}, step=0)
    log_hyperparams(loggers, {"lr": 0.1})
    log_table(loggers, "t", ["a"], [[1]])  # not wandb: nothing, no error
    log_images(loggers, "i", [tmp_path / "absent.png"])
    lg.finalize("success")
    metrics = Path(lg.log_dir) / "metrics.csv"
    assert metrics.is_file() and Path(lg.log_dir).is_relative_to(tmp_path)
    rows = list(csv.DictReader(metrics.open()))
    assert float(rows[0]["mAP"]) == 0.5


def test_bogus_target_warns_and_continues(tmp_path, caplog):
    cfg = {
        "bogus": {"_target_": "no_such_package.NoLogger"},
        "notalogger": {"_target_": "builtins.dict"},
        "notarget": {"save_dir": str(tmp_path)},
        "off": None,
    }
    with caplog.at_level(logging.WARNING, logger="lit_retrieval.loggers"):
        assert build_loggers(cfg) == []
    text = caplog.text
    assert "'bogus'" in text and "'notalogger'" in text and "'notarget'" in text and "'off'" not in text
    # a good one next to a bad one survives
    cfg["csv"] = {"_target_": "pytorch_lightning.loggers.CSVLogger", "save_dir": str(tmp_path)}
    assert [type(lg) for lg in build_loggers(cfg)] == [CSVLogger]


class _BoomWandb(WandbLogger):
    def __init__(self):  # no wandb run at all
        pass

    def log_table(self, *a, **k):
        raise RuntimeError("table boom")

    def log_image(self, *a, **k):
        raise SystemExit("wandb tried to exit")

    def log_hyperparams(self, *a, **k):
        raise ValueError("hparams boom")


class _BoomLogger(Logger):
    name = "boom"
    version = 0

    def log_metrics(self, metrics, step=None):
        raise RuntimeError

    def log_hyperparams(self, params, *a, **k):
        raise RuntimeError("hparams boom")

    @property
    def experiment(self):
        raise ConnectionError("no server")


def test_raising_loggers_are_swallowed(tmp_path, caplog):
    loggers = [_BoomWandb(), _BoomLogger()]
    with caplog.at_level(logging.WARNING, logger="lit_retrieval.loggers"):
        log_table(loggers, "t", ["a", "b"], [[1, 2]])
        log_images(loggers, "i", ["x.png"], step=3)
        log_hyperparams(loggers, {"a": 1})
        log_table(None, "t", [], [])
    assert "table boom" in caplog.text and "wandb tried to exit" in caplog.text
    assert caplog.text.count("hparams boom") == 2
    # a logger whose experiment cannot start is left out at build time
    cfg = {"boom": {"_target_": f"{__name__}._BoomLogger"}}
    with caplog.at_level(logging.WARNING, logger="lit_retrieval.loggers"):
        assert build_loggers(cfg) == []
    assert "ConnectionError" in caplog.text


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "")  # so that monkeypatch restores it (or its absence) afterwards
    monkeypatch.delenv("WANDB_INIT_TIMEOUT")
    monkeypatch.chdir(tmp_path)
    cfg = _logger_cfg("wandb", tmp_path)
    cfg.wandb.tags = ["test"]
    loggers = build_loggers(cfg)
    try:
        assert len(loggers) == 1 and isinstance(loggers[0], WandbLogger)
        assert os.environ["WANDB_INIT_TIMEOUT"] == "30"
        run = loggers[0].experiment
        assert Path(run.dir).is_relative_to(tmp_path)
        png = tmp_path / "x.png"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
        log_table(loggers, "results", ["method", "mAP"], [["gem", 50.0], ["rmac", 48.5]])
        log_images(loggers, "plots", [png])
        log_images(loggers, "missing", [tmp_path / "absent.png"], step=1)  # swallowed
        log_hyperparams(loggers, {"lr": 0.1, "nested": {"a": 1}})
    finally:
        wandb.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
