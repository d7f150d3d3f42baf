"""Up-front checks of ``eval.py``'s general options: each bad value is refused before any work, with the option,
the value and the fix (the method packages check their own ``method.*`` options)."""
from __future__ import annotations

import inspect
import os
from numbers import Number
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

def takes_checkpoint(method: str) -> bool:
    """Whether ``method`` reads ``ckpt_path``: its retriever says so (``reads_checkpoint``), or it is a descriptor
    whose factory has a ``ckpt_path`` parameter (e.g. ``regional_attention``)."""
    from .retrieval.interface import RETRIEVERS, build_retriever
    from .retrieval.methods import METHODS, resolve

    if method in RETRIEVERS and getattr(build_retriever(method), "reads_checkpoint", False):
        return True
    factory = METHODS.get(method)
    return factory is not None and "ckpt_path" in inspect.signature(resolve(factory)).parameters


class OptionError(ValueError):
    """A configuration option has a value the run cannot use."""

    def __init__(self, option: str, value: Any, problem: str, fix: str) -> None:
        self.option, self.value = option, value
        super().__init__(f"{option}={value!r}: {problem}. Fix: {fix}")


def _positive_number(v: Any) -> bool:
    return isinstance(v, Number) and not isinstance(v, bool) and float(v) > 0


def check_scales(scales: Any) -> None:
    if not isinstance(scales, (list, tuple, ListConfig)) or len(scales) == 0:
        raise OptionError("scales", OmegaConf.to_container(scales) if isinstance(scales, ListConfig) else scales,
                          "expected a non-empty list of positive image scales",
                          "pass scales='[1.0]' (single scale) or scales='[1.0,0.7071,0.5]' (multi-scale)")
    bad = [s for s in scales if not _positive_number(s)]
    if bad:
        raise OptionError("scales", list(scales), f"scale(s) {bad} are not positive numbers",
                          "every scale multiplies the image size: use values in (0, 1], e.g. scales='[1.0,0.7071]'")


def check_device(device: str) -> None:
    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError) as err:
        raise OptionError("device", device, f"not a torch device ({err})", "use device=cpu or device=cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", device, "no CUDA device is available on this machine", "use device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise OptionError("device", device, f"only {torch.cuda.device_count()} CUDA device(s) here",
                          f"use device=cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise OptionError("device", device, f"device type {dev.type!r} is not supported", "use device=cpu or cuda")


def check_writable_file(option: str, path: str) -> None:
    """``path`` can be written as a file: not a folder, and its nearest existing parent folder is writable."""
    p = Path(path)
    if p.is_dir():
        raise OptionError(option, path, "is a folder, not a file", f"pass a file name, e.g. {option}={p / 'out.json'}")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(option, path, f"cannot be written ({parent} is not a writable folder)",
                          "pass a path in a folder you can write to")


def check_eval_options(cfg: DictConfig) -> None:
    """Every general option of an ``eval.py`` run, before any dataset is read or any image is decoded."""
    check_scales(cfg.scales)
    topk = cfg.get("topk")
    if topk is not None and (not isinstance(topk, int) or isinstance(topk, bool) or topk <= 0):
        raise OptionError("topk", topk, "expected a positive number of results per query, or null",
                          "pass topk=null (the full ranking: exact mAP) or e.g. topk=100")
    p = OmegaConf.select(cfg, "method.p")
    if p is not None and not _positive_number(p):
        raise OptionError("method.p", p, "the GeM power must be positive (p = 1: average pooling; large p: max)",
                          "pass e.g. method.p=3")
    qe = cfg.get("qe")
    if qe is not None and str(qe.get("kind", "none")) != "none" and "k" in qe:
        k = qe.k
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise OptionError("qe.k", k, "query expansion needs at least one top result to average",
                              "pass qe.k=5 (or qe=none for no query expansion)")
    check_device(str(cfg.device))
    ckpt = cfg.get("ckpt_path")
    if ckpt and not takes_checkpoint(str(cfg.method.name)):
        raise OptionError("ckpt_path", ckpt, f"method={cfg.method.name} reads no checkpoint",
                          "drop ckpt_path, or pick a trained method (method=regional_attention, "
                          "method=local_similarity, method=d2r: its detector)")
    if cfg.get("results_file"):
        check_writable_file("results_file", str(cfg.results_file))
    if cfg.plots.enabled and (not isinstance(cfg.plots.n_queries, int) or cfg.plots.n_queries <= 0):
        raise OptionError("plots.n_queries", cfg.plots.n_queries, "the pictures need at least one query",
                          "pass plots.n_queries=4, or plots.enabled=false for no pictures")
    if cfg.cache.enabled and Path(str(cfg.cache.dir)).exists() and not Path(str(cfg.cache.dir)).is_dir():
        raise OptionError("cache.dir", str(cfg.cache.dir), "is a file, not a folder",
                          "point cache.dir at a folder (or remove the file), or pass cache.enabled=false")
    check_store_and_trainer(cfg)


#: the methods whose extraction goes through the descriptor store, which trainer=ddp shards over the ranks
DISTRIBUTED_METHODS_HINT = "a global-descriptor method (mac, spoc, gem, crow, rmac, regional_attention)"


def check_store_and_trainer(cfg: DictConfig) -> None:
    """``store.*`` and ``trainer=ddp``: a store dtype and chunk size it can write; a distributed run needs the
    shared store (the cache) and a method whose extraction it shards."""
    from .retrieval.store import STORE_DTYPES

    store = cfg.get("store") or {}
    if str(store.get("dtype", "float32")) not in STORE_DTYPES:
        raise OptionError("store.dtype", store.get("dtype"), "not a store dtype",
                          f"pass one of {'|'.join(STORE_DTYPES)} (float16 halves the descriptor files)")
    size = store.get("chunk_size", 64)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise OptionError("store.chunk_size", size, "expected a positive number of images per chunk file",
                          "pass store.chunk_size=64 (or 1024 for a million images: fewer, larger files)")
    trainer = cfg.get("trainer")
    if trainer is None:
        return
    if not cfg.cache.enabled:
        raise OptionError("cache.enabled", False, "trainer=ddp writes each rank's descriptors to the shared "
                          "descriptor store", "pass cache.enabled=true, with cache.dir on a disk every rank sees")
    from .retrieval.methods import METHODS

    name = str(cfg.method.name)
    if name not in METHODS:  # the descriptor registry: described through the store, by the global retriever
        raise OptionError("trainer", "ddp", f"method={name} extracts its own features in one process",
                          f"drop trainer=ddp, or use {DISTRIBUTED_METHODS_HINT}")
    if str(cfg.rerank.kind) != "none":
        raise OptionError("rerank.kind", str(cfg.rerank.kind), "the AML activation store is extracted in one "
                          "process, not sharded by trainer=ddp", "drop trainer=ddp for rerank=aml runs")
