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

Validation and test are separate: ``datasets`` are the *validation* benchmarks (the only ones ``monitor`` and
``best.ckpt`` may use); ``test_datasets`` are evaluated once, when training ends, on the selected checkpoint
(``train.py`` runs ``trainer.validate(ckpt_path=best)`` and prints their table last), logged as
``test/retrieval/...`` and never seen by the selection. Each table also gives the paired bootstrap interval (over
queries) of every learned method's mAP minus
every reference's on the same queries. Before the first training step the training data (``datamodule.content()``)
and the module's learned sets (``learned_content()``, e.g. its whitening set) are checked against every benchmark
by image content, and validation against test: an overlap with a test benchmark stops the run, naming the files,
unless ``allow_overlap=true``; one with a validation benchmark is a warning (it flatters validation only). The
records go to ``retrieval.json`` and ``results.json`` (``overlap``).

Under DDP every rank extracts its share of the images (``rank::world_size``); the descriptors are gathered
on all ranks before the search, so each rank computes the same metrics.

Methods that take the frozen backbone's maps as input (``takes_maps`` true, e.g. regional attention on the R-MAC
grid and its ``Φ ≡ 1`` reference) on a module with a frozen backbone (``frozen_encoder()``) read the benchmark
images' maps from memory after the first evaluation (up to ``frozen_maps_mb`` MB): later evaluations run only the
trained part, as training itself does with ``data.features=cached``.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from tqdm.auto import tqdm
from torch import nn

from ..atomic import atomic_json
from ..data import RetrievalDataset, load_dataset
from ..data.provenance import ContentSet, check_disjoint, dataset_content, item_keys
from ..checkpoint import TRAINING_CONTENT
from ..backbones.weights import weights_identity
from ..loggers import log_table
from ..metrics import compare, evaluate_ranks, format_diff, uncertainty
from ..retrieval import DescriptorCache, Loading, build_method, dataset_items, extract, search
from ..retrieval.extract import image_loader

log = logging.getLogger(__name__)
_PROTO_SUFFIX = {"easy": "_E", "medium": "_M", "hard": "_H", "all": ""}
TEST_PREFIX = "test/"  # test metrics: test/retrieval/<dataset>/<method>/...


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


def metric_names(dataset: str, method: str, metrics: Mapping[str, Any], ks: tuple[int, ...],
                 prefix: str = "") -> dict[str, float]:
    """``<prefix>retrieval/<dataset>/<method>/mAP_<E|M|H>`` and ``mP@k`` of an ``evaluate_ranks`` result."""
    out = {}
    for proto, m in metrics.items():
        sfx = _PROTO_SUFFIX.get(proto, f"_{proto}")
        out[f"{prefix}retrieval/{dataset}/{method}/mAP{sfx}"] = float(m["map"])
        for k in ks:
            if k in m["mpk"]:
                out[f"{prefix}retrieval/{dataset}/{method}/mP@{k}{sfx}"] = float(m["mpk"][k])
    return out


class RetrievalEvaluation(pl.Callback):
    """``datasets``: name -> validation dataset config (as ``eval.py``'s ``dataset``); ``test_datasets``: the same
    for the held-out test benchmarks (reported on the selected checkpoint, never used for selection);
    ``baselines``: name -> method config (``{name: rmac, L: 3}``); ``image_size``: long side of database images
    (queries: cirtorch crop); ``allow_overlap``: let training data share images with the benchmarks (warned)."""

    def __init__(self, datasets: Mapping[str, Mapping[str, Any]],
                 baselines: Mapping[str, Mapping[str, Any]] | None = None, image_size: int = 512,
                 every_n_epochs: int = 1, ks: tuple[int, ...] = (1, 5, 10), cache_dir: str | None = None,
                 output_dir: str | None = None, enabled: bool = True,
                 test_datasets: Mapping[str, Mapping[str, Any]] | None = None, allow_overlap: bool = False,
                 frozen_maps_mb: float = 2048) -> None:
        super().__init__()
        if int(every_n_epochs) < 1:
            raise ValueError(f"callbacks.retrieval_eval.every_n_epochs={every_n_epochs} must be >= 1")
        # a null entry switches off a dataset inherited from another config (e.g. an experiment's)
        self.dataset_cfgs = {k: dict(v) for k, v in (datasets or {}).items() if v is not None}
        self.test_cfgs = {k: dict(v) for k, v in (test_datasets or {}).items() if v is not None}
        both = sorted(set(self.dataset_cfgs) & set(self.test_cfgs))
        if both:
            raise ValueError(f"callbacks.retrieval_eval: {both} are both validation (datasets) and test "
                             "(test_datasets) benchmarks; a test benchmark is never used for selection: keep each "
                             "name in one of them")
        self.baseline_cfgs = {k: dict(v) for k, v in (baselines or {}).items()}
        self.image_size, self.every, self.ks = int(image_size), int(every_n_epochs), tuple(int(k) for k in ks)
        self.cache_dir, self.output_dir, self.enabled = cache_dir, output_dir, bool(enabled)
        self.allow_overlap = bool(allow_overlap)
        self._datasets: dict[str, RetrievalDataset] = {}
        self.fixed: dict[str, float] = {}  # metrics of methods computed once per run (per dataset)
        self.fixed_aps: dict[str, dict[str, list[float]]] = {}  # "<dataset>/<method>" -> protocol -> per-query AP
        self.last: dict[str, float] = {}
        self.last_differences: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.test: dict[str, float] = {}
        self.test_differences: dict[str, Any] = {}
        self.test_table = ""
        # "<dataset>/<method>" -> protocol -> 95% bootstrap interval of its mAP, of the last evaluation of each kind
        self.intervals: dict[str, dict[str, dict[str, list]]] = {"val": {}, "test": {}}
        self.provenance: dict[str, Any] = {}
        self.training_content: ContentSet | None = None
        self._testing = False
        self.frozen_maps_mb = float(frozen_maps_mb)
        self._maps: dict[tuple[str, str], list[torch.Tensor]] = {}  # (dataset, part) -> this rank's frozen maps
        self._maps_bytes = 0

    # -- checkpointed state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"fixed": dict(self.fixed), "fixed_aps": dict(self.fixed_aps), "last": dict(self.last),
                "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fixed, self.last = dict(state.get("fixed", {})), dict(state.get("last", {}))
        self.fixed_aps = dict(state.get("fixed_aps", {}))
        if not self.fixed_aps:  # written before per-query APs were kept: recompute the references
            self.fixed = {}
        if not self.history:  # resuming; (validating the best checkpoint in the same run keeps the full history)
            self.history = list(state.get("history", []))

    # -- hooks ----------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Before the first step (the module's learned sets, e.g. its whitening, exist by now): the content checks."""
        if self.enabled and (self.dataset_cfgs or self.test_cfgs):
            self.check_overlap(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.enabled:
            return
        if self._testing:  # train.py, after fitting: the selected checkpoint on the test benchmarks
            if self.test_cfgs:
                self.test, self.test_differences = self.evaluate(trainer, pl_module, self.test_cfgs, TEST_PREFIX)
                pl_module.log_dict(self.test, sync_dist=False)
                self.test_table = self.table(self.test, "test (selected checkpoint)", self.test_differences,
                                             self.intervals["test"])  # printed last by train.py
                if trainer.is_global_zero:
                    self._write(trainer)
            return
        if not self.dataset_cfgs:
            return
        epoch = trainer.current_epoch
        due = (epoch + 1) % self.every == 0 or (trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs)
        if due:
            self.last, self.last_differences = self.evaluate(trainer, pl_module, self.dataset_cfgs)
            self.history.append({"epoch": epoch, "step": trainer.global_step, "world_size": trainer.world_size,
                                 **self.last, "differences": self.last_differences})
            if trainer.is_global_zero:
                print("\n" + self.table(self.last, f"validation, epoch {epoch}", self.last_differences,
                                         self.intervals["val"]), flush=True)
                self._write(trainer)
        if self.last:  # between evaluations the latest values stay visible to ModelCheckpoint and the loggers
            pl_module.log_dict(self.last, sync_dist=False)

    @contextlib.contextmanager
    def testing(self) -> Iterator[None]:
        """Within this, a validation run (``trainer.validate(ckpt_path=best)``) evaluates the test benchmarks."""
        self._testing = True
        try:
            yield
        finally:
            self._testing = False

    # -- honest protocol --------------------------------------------------------------------------------
    def check_overlap(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Training data and learned sets vs every benchmark, validation vs test, by image content."""
        learned: dict[str, ContentSet] = {}
        dm = getattr(trainer, "datamodule", None)
        records: dict[str, Any] = {}
        if dm is not None and hasattr(dm, "content"):
            content = dm.content()
            if content is None:  # too large to hash (the data module warned)
                records["training data"] = {"checked": False}
            else:
                learned["training data"] = content
        learned.update(getattr(pl_module, "learned_content", dict)())
        benchmarks = {**{("val", k): v for k, v in self.dataset_cfgs.items()},
                      **{("test", k): v for k, v in self.test_cfgs.items()}}
        contents = {key: dataset_content(self._dataset(key[1], cfg)) for key, cfg in benchmarks.items()}
        fix = "callbacks.retrieval_eval.allow_overlap=true"
        for what, content in learned.items():
            for (role, name), bench in contents.items():
                # a test benchmark must be unseen; a validation one that shares images only flatters validation
                # (the selection is still made away from the test images): warned and recorded
                records[f"{what} vs {role} {name}"] = check_disjoint(
                    content, bench, f"{what} ({content.name})", f"the training data or the {role} benchmark {name}",
                    transductive=self.allow_overlap or role == "val", opt_in=fix)
        for (r1, n1), c1 in contents.items():
            for (r2, n2), c2 in contents.items():
                if r1 == "val" and r2 == "test":
                    records[f"val {n1} vs test {n2}"] = check_disjoint(
                        c1, c2, f"the validation benchmark {n1}", f"callbacks.retrieval_eval.datasets.{n1}",
                        transductive=self.allow_overlap, opt_in=fix)
        self.provenance = records
        self.training_content = learned.get("training data")
        return records

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Checkpoints carry the content keys of their training data, so that ``eval.py`` can check them against
        the images it evaluates."""
        if self.training_content is not None:
            checkpoint[TRAINING_CONTENT] = self.training_content.state_dict()

    # -- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                 datasets: Mapping[str, Mapping[str, Any]] | None = None,
                 prefix: str = "") -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics of every method on ``datasets`` (default: the validation ones), and the paired differences of
        each learned method to each reference per dataset (``"<dataset>/<learned> - <reference>"``)."""
        datasets = self.dataset_cfgs if datasets is None else datasets
        backbone = pl_module.backbone
        learned = dict(getattr(pl_module, "retrieval_methods", dict)())
        rankers = dict(getattr(pl_module, "retrieval_rankers", dict)())
        fixed_methods: dict[str, nn.Module] = dict(getattr(pl_module, "fixed_retrieval_methods", dict)())
        for name, mcfg in self.baseline_cfgs.items():
            params = {k: v for k, v in mcfg.items() if k != "name"}
            fixed_methods[name] = build_method(mcfg.get("name", name), backbone, **params).to(pl_module.device)
        results: dict[str, float] = {}
        per_query: dict[str, dict[str, Any]] = {}  # "<dataset>/<method>" -> evaluate_ranks output
        learned_names: set[str] = set()
        was_training = pl_module.training
        pl_module.eval()
        try:
            for ds_name, ds_cfg in datasets.items():
                data = self._dataset(ds_name, ds_cfg)
                for m_name, method in {**learned, **fixed_methods}.items():
                    key = f"{prefix}{ds_name}/{m_name}"
                    cached = m_name in fixed_methods
                    if cached and key in self.fixed_aps:  # a reference already evaluated in this run
                        per_query[key] = {p: {"aps": np.asarray(a, dtype=np.float64)}
                                          for p, a in self.fixed_aps[key].items()}
                        continue
                    db = self._describe(trainer, pl_module, method, data, "db", cached)
                    q = self._describe(trainer, pl_module, method, data, "query", cached)
                    _, ranks = search(q, db)
                    metrics = evaluate_ranks(ranks.T, data.gnd, data.protocol, kappas=self.ks)
                    vals = metric_names(ds_name, m_name, metrics, self.ks, prefix)
                    per_query[key] = metrics
                    if cached:
                        self.fixed.update(vals)
                        self.fixed_aps[key] = {p: m["aps"].tolist() for p, m in metrics.items()}
                    else:
                        results.update(vals)
                        learned_names.add(m_name)
                for ranker in rankers.values():  # pairwise scorers (e.g. local similarity): dataset -> rankings
                    got = ranker(data, self.image_size, pl_module.device, self.cache_dir, trainer.is_global_zero)
                    for m_name, ranks in got.items():
                        metrics = evaluate_ranks(ranks.T, data.gnd, data.protocol, kappas=self.ks)
                        results.update(metric_names(ds_name, m_name, metrics, self.ks, prefix))
                        per_query[f"{prefix}{ds_name}/{m_name}"] = metrics
                        learned_names.add(m_name)
        finally:
            pl_module.train(was_training)
        differences = {}
        for ds_name in datasets:
            for m in sorted(learned_names):
                for ref in fixed_methods:
                    a, b = per_query.get(f"{prefix}{ds_name}/{m}"), per_query.get(f"{prefix}{ds_name}/{ref}")
                    if a is not None and b is not None:
                        differences[f"{ds_name}/{m} - {ref}"] = compare(a, b)
        self.intervals["test" if prefix else "val"] = {
            key.removeprefix(prefix): uncertainty(metrics)["map_ci95"] for key, metrics in per_query.items()}
        fixed = {k: v for k, v in self.fixed.items() if k.startswith(f"{prefix}retrieval/")
                 and k.split("/")[1 + prefix.count("/")] in datasets}
        return {**results, **fixed}, differences

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
                   "items": item_keys(mine), "version": 2}
            cache = DescriptorCache(Path(self.cache_dir), key)
        maps = None
        if getattr(method, "takes_maps", False) and (not cacheable or (data.name + ":" + str(data.root), part)
                                                     in self._maps):
            maps = self._frozen_maps(pl_module, data, part, mine)  # (a reference only when already in memory)
        if maps:
            with torch.inference_mode():
                local = np.concatenate([method(m.to(pl_module.device)[None]).float().cpu().numpy() for m in maps])
        else:
            loading = Loading(self.image_size, device=pl_module.device, progress=trainer.is_global_zero)
            local, _ = extract(mine, method, pl_module.backbone.normalize, loading,
                               power=getattr(method, "power", 1.0), cache=cache, desc=f"{data.name}/{part}")
        return gather_rows(local, len(items), rank, world)

    def _frozen_maps(self, pl_module: pl.LightningModule, data: RetrievalDataset, part: str,
                     items: list[Any]) -> list[torch.Tensor] | None:
        """This rank's frozen maps of ``data``'s ``part`` (in memory), computed at the first call; ``None``
        when the module has no frozen encoder or they would pass ``frozen_maps_mb``."""
        key = (data.name + ":" + str(data.root), part)
        if key in self._maps:
            return self._maps[key]
        make = getattr(pl_module, "frozen_encoder", None)
        if make is None or self._maps_bytes < 0:
            return None
        encoder, maps = make(), []
        loader = image_loader(items, range(len(items)), self.image_size)
        for _, img in tqdm(loader, total=len(items), desc=f"{data.name}/{part} frozen maps", leave=False,
                           disable=not pl_module.trainer.is_global_zero):
            m = encoder(img[None])[0]
            self._maps_bytes += m.numel() * m.element_size()
            if self._maps_bytes > self.frozen_maps_mb * 1e6:
                log.info("retrieval evaluation: the frozen maps of %s pass callbacks.retrieval_eval.frozen_maps_mb="
                         "%g: the trained methods re-run the backbone at every evaluation", data.name,
                         self.frozen_maps_mb)
                self._maps.clear()
                self._maps_bytes = -1
                return None
            maps.append(m)
        self._maps[key] = maps
        return maps

    # -- outputs --------------------------------------------------------------------------------------
    def table(self, metrics: Mapping[str, float], title: str | int,
              differences: Mapping[str, Any] | None = None,
              intervals: Mapping[str, Mapping[str, Any]] | None = None) -> str:
        """Side-by-side table: one row per (dataset, method), mAP per protocol and mP@k (medium / all) and the 95%
        bootstrap interval of the medium (or only) mAP; then the paired bootstrap interval of each learned method
        minus each reference (medium / all)."""
        rows: dict[tuple[str, str], dict[str, float]] = {}
        for key, v in metrics.items():
            _, ds, method, name = key.removeprefix(TEST_PREFIX).split("/", 3)
            rows.setdefault((ds, method), {})[name] = v
        cols = list(dict.fromkeys(c for r in rows.values() for c in r if c.startswith("mAP")))
        cols += [c for c in dict.fromkeys(c for r in rows.values() for c in r)
                 if c.startswith("mP@") and (c.endswith("_M") or "_" not in c)]
        head = f"{'dataset':<14}{'method':<20}" + "".join(f"{c:>9}" for c in cols) + f"{'mAP 95% CI':>16}"
        title = f"epoch {title}" if isinstance(title, int) else title
        lines = [f"retrieval evaluation, {title}", head]
        for (ds, method), r in sorted(rows.items()):
            by_proto = (intervals or {}).get(f"{ds}/{method}", {})
            ci = by_proto.get("medium", next(iter(by_proto.values()), None))
            ci_text = "" if not ci or None in ci else f"[{ci[0]:.1f}, {ci[1]:.1f}]"
            lines.append(f"{ds:<14}{method:<20}" + "".join(f"{r.get(c, float('nan')):9.2f}" for c in cols)
                         + f"{ci_text:>16}")
        if differences:
            lines.append("paired difference of mAP (95% bootstrap interval over queries):")
            for pair, by_proto in differences.items():
                proto = "medium" if "medium" in by_proto else next(iter(by_proto))
                lines.append(f"  {pair:<44}{proto:>7} {format_diff(by_proto[proto])}")
        return "\n".join(lines)

    def _write(self, trainer: pl.Trainer) -> None:
        rows = []
        for key, v in sorted({**self.last, **self.test}.items()):
            split = "test" if key.startswith(TEST_PREFIX) else "val"
            _, ds, method, name = key.removeprefix(TEST_PREFIX).split("/", 3)
            rows.append([split, ds, method, name, round(v, 4)])
        log_table(trainer.loggers, "retrieval/table", ["split", "dataset", "method", "metric", "value"], rows)
        if self.output_dir:
            atomic_json({"history": self.history, "test": self.test, "test_differences": self.test_differences,
                         "test_ci95": self.intervals["test"],
                         "overlap": self.provenance}, Path(self.output_dir) / "retrieval.json")
