"""Every epoch's metrics in the run folder, whatever the logger: ``history.json``.

``MetricHistory`` records the scalar values of ``trainer.callback_metrics`` (everything the module and the
callbacks logged: losses, errors, learning rate, retrieval mAP, ...) at the end of each validation and of each
training epoch of a fit, and rewrites ``<output_dir>/history.json`` (atomically, on global rank zero) after each
record::

    {"records": [{"stage": "validation", "epoch": 0, "step": 3, "metrics": {"val/loss": 6.88, ...}},
                 {"stage": "train", "epoch": 0, "step": 3, "metrics": {"train/loss": 6.86, ...}}, ...]}

Lightning's ``callback_metrics`` keep the latest value of every key, so a ``validation`` record also holds the
latest training values and a ``train`` record the latest validation ones; readers (the run report's learning
curves) take ``train/`` metrics from the ``train`` records and the others from the ``validation`` ones. The
records are part of the callback's checkpointed state: a resumed run keeps the epochs before the interruption.
Sanity-check validations and ``trainer.validate`` runs (e.g. the test benchmarks after fitting) are not recorded.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from ..atomic import atomic_json

HISTORY_FILE = "history.json"


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite one-element values of a ``callback_metrics`` dict, as floats (rounded to 6 digits)."""
    out = {}
    for key, value in metrics.items():
        try:
            if hasattr(value, "numel") and value.numel() != 1:
                continue
            v = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            continue
        if math.isfinite(v):
            out[key] = round(v, 6)
    return out


class MetricHistory(pl.Callback):
    """Records ``trainer.callback_metrics`` per epoch into ``<output_dir>/history.json`` (see the module doc);
    ``enabled=false`` records nothing."""

    def __init__(self, output_dir: str | None = None, enabled: bool = True) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.enabled = bool(enabled)
        self.records: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"records": list(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = list(state.get("records", []))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.record(trainer, "validation")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record(trainer, "train")

    def record(self, trainer: pl.Trainer, stage: str) -> None:
        """Append (or replace: a resumed epoch) the ``stage`` record of the current epoch, then write the file."""
        if not self.enabled or trainer.state.fn != TrainerFn.FITTING:
            return
        epoch = int(trainer.current_epoch)
        entry = {"stage": stage, "epoch": epoch, "step": int(trainer.global_step),
                 "metrics": scalar_metrics(dict(trainer.callback_metrics))}
        self.records = [r for r in self.records if (r.get("stage"), r.get("epoch")) != (stage, epoch)] + [entry]
        if self.output_dir and trainer.is_global_zero:
            atomic_json({"records": self.records}, Path(self.output_dir) / HISTORY_FILE)
