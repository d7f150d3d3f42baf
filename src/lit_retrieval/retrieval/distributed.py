"""Distributed extraction for ``eval.py trainer=ddp``: Lightning's predict loop shards the images over the ranks.

``python eval.py trainer=ddp trainer.devices=N [trainer.num_nodes=M] ...`` (or the same under ``torchrun`` /
SLURM, Lightning reading the cluster environment) runs the whole evaluation in every rank, but each descriptor
extraction is split: the cache's chunks of images are dealt out by index (chunk ``c`` to rank ``c mod world``),
every rank describes its own missing chunks with ``Trainer.predict`` and writes them to the shared descriptor
store (each chunk one atomic file), then all ranks wait for each other and read the whole store. Rank 0 alone
writes the results, pictures and logs of the run. An interrupted run resumes per chunk: a rank skips the chunks
already on disk. The descriptors are the ones one process computes: the same images through the same code, one
at a time.

The engine is one :class:`DistributedExtraction` per run (:func:`activate`), which
:func:`~lit_retrieval.retrieval.extractor.loading` hands to every extraction of the run.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_CURRENT: DistributedExtraction | None = None


def _describe_module(method: torch.nn.Module, describe_one: Callable[[torch.Tensor, torch.device], np.ndarray],
                     on_result: Callable[[int, np.ndarray | None], None]) -> Any:
    """Any method's describe step as a LightningModule: ``predict_step`` describes one ``(index, image)`` and hands
    the vector (``None`` for an unreadable image) to ``on_result``; nothing is gathered by Lightning."""
    import pytorch_lightning as pl

    class Describe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.method = method  # a submodule, so that Lightning moves it to the rank's device

        def predict_step(self, batch: tuple[int, torch.Tensor | None], batch_idx: int) -> None:
            idx, img = batch
            if idx >= 0:  # -1: the placeholder of a rank with nothing to describe
                on_result(int(idx), None if img is None else describe_one(img, self.device))

    return Describe()


class DistributedExtraction:
    """A Lightning ``Trainer`` used for its launcher, cluster environment and predict loop only (no logger, no
    checkpoint): ``trainer`` is ``eval.py``'s ``trainer`` section (``conf/trainer/ddp.yaml``)."""

    def __init__(self, trainer_cfg: DictConfig | dict[str, Any], progress: bool = True) -> None:
        kwargs = OmegaConf.to_container(trainer_cfg, resolve=True) if isinstance(trainer_cfg, DictConfig) \
            else dict(trainer_cfg)
        kwargs.pop("_target_", None)
        for training_only in ("max_epochs", "accumulate_grad_batches", "check_val_every_n_epoch",
                              "num_sanity_val_steps", "log_every_n_steps", "sync_batchnorm", "deterministic"):
            kwargs.pop(training_only, None)
        kwargs.update(logger=False, enable_checkpointing=False, enable_model_summary=False, callbacks=[],
                      use_distributed_sampler=False, inference_mode=True)
        import pytorch_lightning as pl

        self.progress = bool(progress)
        self.trainer = pl.Trainer(enable_progress_bar=self.progress, **kwargs)

    @property
    def world_size(self) -> int:
        return int(self.trainer.world_size)

    @property
    def global_rank(self) -> int:
        return int(self.trainer.global_rank)

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def owns(self, chunk: int) -> bool:
        """Whether this rank describes ``chunk`` (chunks are dealt out by index, so that every rank agrees
        without talking, whatever is already on disk)."""
        return chunk % self.world_size == self.global_rank

    def barrier(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.trainer.strategy.barrier("lit_retrieval.extract")

    def describe(self, method: torch.nn.Module, loader: Any,
                 describe_one: Callable[[torch.Tensor, torch.device], np.ndarray],
                 on_result: Callable[[int, np.ndarray | None], None]) -> None:
        """This rank's images (``loader`` of ``(index, image)``) through ``Trainer.predict``; every rank calls it,
        also one with no image to describe, and all leave it together."""
        self.trainer.predict(_describe_module(method, describe_one, on_result), dataloaders=loader,
                             return_predictions=False)
        self.barrier()


def from_cfg(cfg: DictConfig) -> DistributedExtraction | None:
    """The run's engine for ``trainer=ddp`` (``None`` without a ``trainer`` section: one process)."""
    tcfg = cfg.get("trainer")
    if tcfg is None:
        return None
    return DistributedExtraction(tcfg, progress=True)


def activate(engine: DistributedExtraction | None) -> None:
    global _CURRENT
    _CURRENT = engine


def current() -> DistributedExtraction | None:
    """The engine of the run in progress (``None``: one process)."""
    return _CURRENT


__all__ = ["DistributedExtraction", "activate", "current", "from_cfg"]
