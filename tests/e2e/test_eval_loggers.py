"""eval.py's results reach the experiment loggers (``logger=tensorboard|mlflow|csv``): the mAP with its interval,
the results table and the pictures; a logger that cannot start is left out and the run goes on."""
from __future__ import annotations

import csv
import json
import logging

import pytest

from conftest import eval_cfg
from lit_retrieval.evaluate import run_eval

BASE = ["method=gem", "backbone=efficientnet_lite0", "image_size=64", "dataset=revisited", "dataset.name=tiny"]


def test_eval_results_reach_tensorboard_mlflow_and_csv(tmp_path, tiny, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "run"
    cfg = eval_cfg(tmp_path, *BASE, f"dataset.root={tiny}", "logger=[csv,tensorboard,mlflow]",
                   f"paths.output_dir={out}")
    assert set(cfg.logger) == {"csv", "tensorboard", "mlflow"}, cfg.logger
    results = run_eval(cfg, out)
    medium, (low, high) = results["map"]["medium"], results["map_ci95"]["medium"]

    tb = next((out / "tensorboard").glob("version_*"))
    acc = EventAccumulator(str(tb), size_guidance={"images": 0, "tensors": 0}).Reload()
    assert [e.value for e in acc.Scalars("eval/tiny/gem/mAP_medium")] == [pytest.approx(medium)]  # (float32)
    assert [e.value for e in acc.Scalars("eval/tiny/gem/mAP_medium_ci95_low")] == [pytest.approx(low)]
    assert {"eval/pictures/0_pr_curve", "eval/pictures/1_topk"} <= set(acc.Tags()["images"])
    table = acc.Tensors("eval/map/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"| medium | {medium} | {low} | {high} |" in table

    run = next((tmp_path / "logs" / "mlruns").glob("*/*/meta.yaml")).parent
    assert float((run / "metrics" / "eval" / "tiny" / "gem" / "mAP_medium").read_text().split()[1]) == medium
    assert (run / "params" / "method" / "name").read_text() == "gem"
    assert (run / "artifacts" / "pictures" / "eval_pictures" / "pr_curve.png").is_file()
    assert json.loads((run / "artifacts" / "tables" / "eval_map.json").read_text())["columns"][:2] == ["protocol",
                                                                                                      "mAP"]
    rows = list(csv.DictReader(next((out / "csv").glob("version_*/tables/eval_map.csv")).open()))
    assert {r["protocol"]: float(r["mAP"]) for r in rows}["medium"] == medium


def test_a_logger_that_cannot_start_never_stops_the_run(tmp_path, tiny, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    out = tmp_path / "run"
    cfg = eval_cfg(tmp_path, *BASE, f"dataset.root={tiny}", "logger=mlflow",
                   f"logger.mlflow.tracking_uri=file:{blocker}/mlruns", f"paths.output_dir={out}")
    with caplog.at_level(logging.WARNING, logger="lit_retrieval.loggers"):
        results = run_eval(cfg, out)
    assert "'mlflow' is left out" in caplog.text
    assert results["map"]["medium"] >= 0 and (out / "results.json").is_file() and (out / "report.html").is_file()
