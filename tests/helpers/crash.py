"""A callback that kills its own process (SIGKILL: no cleanup, no graceful shutdown) to test resuming."""
from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillMidEpoch(pl.Callback):
    """Kill the run after training batch ``batch`` of epoch ``epoch`` (checkpoints of earlier epochs exist)."""

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = int(epoch), int(batch)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
