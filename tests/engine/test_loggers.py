"""Loggers never block or kill a run: failures become warnings, extras are guarded."""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from lit_retrieval.loggers import build_loggers, log_hyperparams, log_images, log_table

CONF = Path(__file__).resolve().parents[2] / "conf"


def _logger_cfg(name: str, output_dir: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+logger={name}", f"+paths.output_dir={output_dir}", f"+paths.log_dir={output_dir}",
                                 "+task_name=test"])
    return cfg.logger


def test_config_files_compose(tmp_path):
    many = _logger_cfg("many_loggers", tmp_path)
    assert set(many) == {"csv", "wandb"}
    assert _logger_cfg("tensorboard", tmp_path).tensorboard.save_dir == str(tmp_path)
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
    log_table(loggers, "retrieval/table", ["a", "b"], [[1, "x"]], step=2)
    log_table(loggers, "retrieval/table", ["a", "b"], [[3, "y"]], step=5)
    log_images(loggers, "i", [tmp_path / "absent.png"])  # the CSV logger keeps no pictures: nothing, no error
    lg.finalize("success")
    metrics = Path(lg.log_dir) / "metrics.csv"
    assert metrics.is_file() and Path(lg.log_dir).is_relative_to(tmp_path)
    rows = list(csv.DictReader(metrics.open()))
    assert float(rows[0]["mAP"]) == 0.5
    table = list(csv.reader((Path(lg.log_dir) / "tables" / "retrieval_table.csv").open()))
    assert table == [["step", "a", "b"], ["2", "1", "x"], ["5", "3", "y"]]


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


def _png(path: Path, value: int = 0) -> Path:
    Image.fromarray(np.full((6, 10, 3), value, np.uint8)).save(path)
    return path


def test_tensorboard_gets_metrics_tables_and_pictures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _logger_cfg("tensorboard", tmp_path)
    loggers = build_loggers(cfg)
    assert len(loggers) == 1 and isinstance(loggers[0], TensorBoardLogger)
    lg = loggers[0]
    lg.log_metrics({"retrieval/mAP_M": 42.5}, step=3)
    log_table(loggers, "retrieval/table", ["method", "mAP"], [["gem", 42.5]], step=3)
    log_images(loggers, "pictures", [_png(tmp_path / "a.png", 10), _png(tmp_path / "b.png", 200)], step=3)
    log_images(loggers, "missing", [tmp_path / "absent.png"])  # a warning, not an error
    lg.finalize("success")
    assert Path(lg.log_dir).is_relative_to(tmp_path / "tensorboard")
    acc = EventAccumulator(lg.log_dir, size_guidance={"images": 0, "tensors": 0}).Reload()
    assert [e.value for e in acc.Scalars("retrieval/mAP_M")] == [42.5]
    assert sorted(acc.Tags()["images"]) == ["pictures/0_a", "pictures/1_b"]
    image = acc.Images("pictures/1_b")[0]
    assert (image.width, image.height, image.step) == (10, 6, 3)
    text = acc.Tensors("retrieval/table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| gem | 42.5 |" in text


def test_mlflow_local_store_gets_metrics_tables_and_pictures(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # restored (or removed) by monkeypatch afterwards
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    cfg = _logger_cfg("mlflow", tmp_path)
    assert cfg.mlflow.tracking_uri == f"file:{tmp_path}/mlruns"
    loggers = build_loggers(cfg)
    assert len(loggers) == 1 and isinstance(loggers[0], MLFlowLogger)
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"
    lg = loggers[0]
    lg.log_metrics({"mAP_M": 42.5}, step=0)
    log_hyperparams(loggers, {"method": "gem"})
    log_table(loggers, "retrieval/table", ["method", "mAP"], [["gem", 42.5]])
    log_images(loggers, "pictures", [_png(tmp_path / "pr_curve.png")])
    lg.finalize("success")
    run = next((tmp_path / "mlruns").glob(f"*/{lg.run_id}"))
    assert (run / "metrics" / "mAP_M").read_text().split()[1] == "42.5"
    assert (run / "params" / "method").read_text() == "gem"
    assert (run / "artifacts" / "pictures" / "pictures" / "pr_curve.png").is_file()
    table = json.loads((run / "artifacts" / "tables" / "retrieval_table.json").read_text())
    assert table == {"columns": ["method", "mAP"], "data": [["gem", 42.5]]}
    assert "| gem | 42.5 |" in (run / "artifacts" / "tables" / "retrieval_table.md").read_text()


def test_mlflow_store_that_cannot_be_written_is_left_out(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = _logger_cfg("mlflow", tmp_path)
    cfg.mlflow.tracking_uri = f"file:{blocker}/mlruns"
    with caplog.at_level(logging.WARNING, logger="lit_retrieval.loggers"):
        assert build_loggers(cfg) == []
    assert "'mlflow' is left out" in caplog.text


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
