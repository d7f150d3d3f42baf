"""The demo (``make demo`` = ``train.py experiment=quickstart``): what it selects on and what it reports on are
disjoint, by content, and the run checks it before training."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir

from lit_retrieval.data.provenance import LeakageError
from lit_retrieval.training import build

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, *extra: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=["experiment=quickstart", f"paths.cache_dir={tmp_path}/cache",
                                           f"paths.output_dir={tmp_path}/run", *extra])


def _check(cfg):
    """The run's own check (``RetrievalEvaluation.check_overlap`` before the first step) on the demo's training
    data (``content()`` depends on the sources, not on whether their maps are cached)."""
    data = build(cfg.data, features="online")
    data.setup("fit")
    callback = build(cfg.callbacks.retrieval_eval)
    return callback.check_overlap(SimpleNamespace(datamodule=data), SimpleNamespace())


def test_quickstart_selects_on_validation_and_reports_on_a_disjoint_test_draw(tmp_path):
    cfg = _cfg(tmp_path)
    r = cfg.callbacks.retrieval_eval
    val, test = set(r.datasets), {k for k, v in r.test_datasets.items() if v is not None}
    assert val and test and not val & test and not r.allow_overlap
    # the checkpoint is chosen on a validation benchmark only, with the objective the demo trains
    assert cfg.monitor.split("/")[1] in val and cfg.callbacks.model_checkpoint.monitor == cfg.monitor
    assert cfg.model.loss == "retrieval" and cfg.data.features == "cached"
    assert cfg.model.whitening.kind == "none"  # nothing else is learned (else its set would be checked too)
    records = _check(cfg)
    pairs = {f"training data vs val {v}" for v in val} | {f"training data vs test {t}" for t in test} | {
        f"val {v} vs test {t}" for v in val for t in test}
    assert pairs <= set(records)
    assert all(records[p]["overlap"] == 0 and records[p]["n_images"] > 0 for p in pairs)


def test_the_check_stops_a_test_draw_shared_with_validation(tmp_path):
    """The same check fails when the test draw is the validation draw (another test name, same images)."""
    v = next(iter(_cfg(tmp_path).callbacks.retrieval_eval.datasets))
    cfg = _cfg(tmp_path, "~callbacks.retrieval_eval.test_datasets",
               f"+callbacks.retrieval_eval.test_datasets={{again: ${{callbacks.retrieval_eval.datasets.{v}}}}}")
    with pytest.raises(LeakageError, match="validation benchmark"):
        _check(cfg)
