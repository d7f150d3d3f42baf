"""Retrieval evaluation during training: the model's descriptors against same-backbone baselines.

At validation (every ``every_n_epochs`` epochs, and at the last one) the callback extracts the descriptors of
each configured retrieval dataset with the module's learned methods (``pl_module.retrieval_methods()``,
re-extracted every time), runs its pairwise rankers (``pl_module.retrieval_rankers()``: callables
``(dataset, image_size, device, cache_dir, progress) -> {method: Nq×N ranks}``, e.g. local similarity; each rank
runs them whole), its fixed references (``pl_module.fixed_retrieval_methods()``) and the configured
registry baselines (e.g. ``rmac``, ``gem`` on the same backbone) — the latter two once per run (kept in the
callback's checkpointed state, and in the on-disk descriptor cache across runs). It logs
``retrieval/<dataset>/<method>/mAP_{E,M,H}`` and ``mP@k_{E,M,H}`` (classic datasets: no suffix) to every
logger, prints a side-by-side table, logs it as a wandb table, and appends it to ``retrieval.json`` in the run
folder; ``ModelCheckpoint(monitor=...)`` keeps the best checkpoint by any of these metrics.

Under DDP every rank extracts its share of the images (``rank::world_size``); the descriptors are gathered
on all ranks before the search, so each rank computes the same metrics.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch.distributed as dist
from torch import nn

from ..atomic import atomic_json
from ..data import RetrievalDataset, load_dataset
from ..evaluate import weights_identity
from ..loggers import log_table
from ..metrics import evaluate_ranks
from ..retrieval import DescriptorCache, build_method, dataset_items, extract, search

log = logging.getLogger(__name__)
_PROTO_SUFFIX = {"easy": "_E", "medium": "_M", "hard": "_H", "all": ""}


def gather_rows(local: np.ndarray, n: int, rank: int, world: int) -> np.ndarray:
    """Reassemble the ``rank::world`` shards of an ``n``-row array on every rank (identity when ``world == 1``)."""
    if world == 1:
        return local
    shards: list[Any] = [None] * world
    dist.all_gather_object(shards, local)
    dim = max(s.shape[1] for s in shards)
    out = np.zeros((n, dim), dtype=local.dtype)
    for r, s in enumerate(shards):
        out[r::world][: len(s)] = s
    return out


def metric_names(dataset: str, method: str, metrics: Mapping[str, Any], ks: tuple[int, ...]) -> dict[str, float]:
    out = {}
    for proto, m in metrics.items():
        sfx = _PROTO_SUFFIX.get(proto, f"_{proto}")
        out[f"retrieval/{dataset}/{method}/mAP{sfx}"] = float(m["map"])
        for k in ks:
            if k in m["mpk"]:
                out[f"retrieval/{dataset}/{method}/mP@{k}{sfx}"] = float(m["mpk"][k])
    return out


class RetrievalEvaluation(pl.Callback):
    """``datasets``: name -> dataset config (as ``eval.py``'s ``dataset``); ``baselines``: name -> method
    config (``{name: rmac, L: 3}``); ``image_size``: long side of database images (queries: cirtorch crop)."""

    def __init__(self, datasets: Mapping[str, Mapping[str, Any]],
                 baselines: Mapping[str, Mapping[str, Any]] | None = None, image_size: int = 512,
                 every_n_epochs: int = 1, ks: tuple[int, ...] = (1, 5, 10), cache_dir: str | None = None,
                 output_dir: str | None = None, enabled: bool = True) -> None:
        super().__init__()
        if int(every_n_epochs) < 1:
            raise ValueError(f"callbacks.retrieval_eval.every_n_epochs={every_n_epochs} must be >= 1")
        # a null entry switches off a dataset inherited from another config (e.g. an experiment's)
        self.dataset_cfgs = {k: dict(v) for k, v in (datasets or {}).items() if v is not None}
        self.baseline_cfgs = {k: dict(v) for k, v in (baselines or {}).items()}
        self.image_size, self.every, self.ks = int(image_size), int(every_n_epochs), tuple(int(k) for k in ks)
        self.cache_dir, self.output_dir, self.enabled = cache_dir, output_dir, bool(enabled)
        self._datasets: dict[str, RetrievalDataset] = {}
        self.fixed: dict[str, float] = {}  # metrics of methods computed once per run
        self.last: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    # -- checkpointed state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"fixed": dict(self.fixed), "last": dict(self.last), "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fixed, self.last = dict(state.get("fixed", {})), dict(state.get("last", {}))
        self.history = list(state.get("history", []))

    # -- hooks ----------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.enabled or not self.dataset_cfgs:
            return
        epoch = trainer.current_epoch
        due = (epoch + 1) % self.every == 0 or (trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs)
        if due:
            self.last = self.evaluate(trainer, pl_module)
            self.history.append({"epoch": epoch, "step": trainer.global_step, "world_size": trainer.world_size,
                                 **self.last})
            if trainer.is_global_zero:
                print("\n" + self.table(self.last, epoch), flush=True)
                self._write(trainer)
        if self.last:  # between evaluations the latest values stay visible to ModelCheckpoint and the loggers
            pl_module.log_dict(self.last, sync_dist=False)

    # -- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        backbone = pl_module.backbone
        learned = dict(getattr(pl_module, "retrieval_methods", dict)())
        rankers = dict(getattr(pl_module, "retrieval_rankers", dict)())
        need_fixed = not self.fixed
        fixed: dict[str, nn.Module] = {}
        if need_fixed:
            fixed.update(getattr(pl_module, "fixed_retrieval_methods", dict)())
            for name, mcfg in self.baseline_cfgs.items():
                params = {k: v for k, v in mcfg.items() if k != "name"}
                fixed[name] = build_method(mcfg.get("name", name), backbone, **params).to(pl_module.device)
        results: dict[str, float] = {}
        was_training = pl_module.training
        pl_module.eval()
        try:
            for ds_name, ds_cfg in self.dataset_cfgs.items():
                data = self._dataset(ds_name, ds_cfg)
                for m_name, method in {**learned, **fixed}.items():
                    cached = m_name in fixed
                    db = self._describe(trainer, pl_module, method, data, "db", cached)
                    q = self._describe(trainer, pl_module, method, data, "query", cached)
                    _, ranks = search(q, db)
                    metrics = evaluate_ranks(ranks.T, data.gnd, data.protocol, kappas=self.ks)
                    vals = metric_names(ds_name, m_name, metrics, self.ks)
                    (self.fixed if cached else results).update(vals)
                for ranker in rankers.values():  # pairwise scorers (e.g. local similarity): dataset -> rankings
                    got = ranker(data, self.image_size, pl_module.device, self.cache_dir, trainer.is_global_zero)
                    for m_name, ranks in got.items():
                        metrics = evaluate_ranks(ranks.T, data.gnd, data.protocol, kappas=self.ks)
                        results.update(metric_names(ds_name, m_name, metrics, self.ks))
        finally:
            pl_module.train(was_training)
        return {**results, **self.fixed}

    def _dataset(self, name: str, cfg: Mapping[str, Any]) -> RetrievalDataset:
        if name not in self._datasets:
            self._datasets[name] = load_dataset(cfg)
        return self._datasets[name]

    def _describe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, method: nn.Module,
                  data: RetrievalDataset, part: str, cacheable: bool) -> np.ndarray:
        rank, world = trainer.global_rank, trainer.world_size
        items = dataset_items(data, part)
        mine = items[rank::world]
        cache = None
        if cacheable and self.cache_dir and hasattr(method, "cache_key"):
            key = {"backbone": pl_module.backbone.name, "method": method.cache_key(), "image_size": self.image_size,
                   "weights": weights_identity(str(pl_module.hparams.get("backbone", {}).get("weights", "")), 0),
                   "dataset": data.name, "root": str(data.root), "part": part, "shard": [rank, world],
                   "items": [[str(i.path), i.bbx] for i in mine], "version": 1}
            cache = DescriptorCache(Path(self.cache_dir), key)
        local, _ = extract(mine, method, pl_module.backbone.normalize, self.image_size,
                           power=getattr(method, "power", 1.0), cache=cache, num_workers=0,
                           desc=f"{data.name}/{part}", progress=trainer.is_global_zero, device=pl_module.device)
        return gather_rows(local, len(items), rank, world)

    # -- outputs --------------------------------------------------------------------------------------
    def table(self, metrics: Mapping[str, float], epoch: int) -> str:
        """Side-by-side table: one row per (dataset, method), mAP per protocol and mP@k (medium / all)."""
        rows: dict[tuple[str, str], dict[str, float]] = {}
        for key, v in metrics.items():
            _, ds, method, name = key.split("/", 3)
            rows.setdefault((ds, method), {})[name] = v
        cols = list(dict.fromkeys(c for r in rows.values() for c in r if c.startswith("mAP")))
        cols += [c for c in dict.fromkeys(c for r in rows.values() for c in r)
                 if c.startswith("mP@") and (c.endswith("_M") or "_" not in c)]
        head = f"{'dataset':<14}{'method':<20}" + "".join(f"{c:>9}" for c in cols)
        lines = [f"retrieval evaluation, epoch {epoch}", head]
        for (ds, method), r in sorted(rows.items()):
            lines.append(f"{ds:<14}{method:<20}" + "".join(f"{r.get(c, float('nan')):9.2f}" for c in cols))
        return "\n".join(lines)

    def _write(self, trainer: pl.Trainer) -> None:
        rows = []
        for key, v in sorted(self.last.items()):
            _, ds, method, name = key.split("/", 3)
            rows.append([ds, method, name, round(v, 4)])
        log_table(trainer.loggers, "retrieval/table", ["dataset", "method", "metric", "value"], rows)
        if self.output_dir:
            atomic_json({"history": self.history}, Path(self.output_dir) / "retrieval.json")
