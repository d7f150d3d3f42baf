"""The retrieval evaluation callback under DDP (2 CPU processes, gloo): same metrics as one process."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_retrieval.callbacks import RetrievalEvaluation, gather_rows
from lit_retrieval.methods.regional_attention.module import RegionalAttentionModule


def _module() -> RegionalAttentionModule:
    torch.manual_seed(0)
    return RegionalAttentionModule(backbone={"name": "efficientnet_lite0", "weights": "imagenet"}, scales=3,
                                   train_scales=2, optimizer={"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-5},
                                   scheduler={"factor": 0.1, "patience": 1, "min_lr": 1e-4},
                                   whitening={"kind": "none"})


def _validate(out, bench, devices: int) -> dict:
    cb = RetrievalEvaluation(datasets={"tiny": {"kind": "revisited", "root": str(bench), "name": "tiny"}},
                             baselines={"gem": {"name": "gem", "p": 3.0}}, image_size=128, output_dir=str(out))
    strategy = "ddp_spawn" if devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False, callbacks=[cb],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    val = DataLoader(TensorDataset(torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])), batch_size=2)
    trainer.validate(_module(), dataloaders=val, verbose=False)
    return json.loads((out / "retrieval.json").read_text())["history"][-1]


def test_gather_rows_single_process_is_identity():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert gather_rows(x, 6, 0, 1) is x


def test_ddp_retrieval_metrics_equal_single_process(tmp_path, tiny):
    bench = tiny
    one = _validate(tmp_path / "one", bench, devices=1)
    two = _validate(tmp_path / "two", bench, devices=2)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    keys = [k for k in one if k.startswith("retrieval/")]
    assert {k.split("/")[2] for k in keys} == {"regional_attention", "rmac_uniform", "gem"}
    for k in keys:
        assert two[k] == pytest.approx(one[k], abs=1e-6), k


def _eval(tmp_path, tiny, name: str, cache: str, *extra: str) -> dict:
    """``eval.py`` on ``tiny`` in a subprocess, one torch thread per process (so that one process and each rank
    compute with the same thread count: the convolutions' sums then run in the same order)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run = tmp_path / name
    cmd = [sys.executable, str(root / "eval.py"), "method=gem", "dataset=revisited", f"dataset.root={tiny}",
           "dataset.name=tiny", "backbone=efficientnet_lite0", "image_size=128", "store.chunk_size=2",
           f"cache.dir={tmp_path / cache}", f"paths.root_dir={tmp_path}", f"paths.log_dir={tmp_path}/logs",
           f"hydra.run.dir={run}", "plots.enabled=false", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads((run / "results.json").read_text())


def _chunks(folder):
    return {f"{d.name}/{f.name}": f for d in sorted(folder.iterdir()) for f in sorted(d.glob("chunk_*.npy"))}


def test_eval_trainer_ddp_equals_one_process_and_resumes_per_chunk(tmp_path, tiny):
    one = _eval(tmp_path, tiny, "one", "cache_one")
    ddp_args = ("trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu")
    two = _eval(tmp_path, tiny, "two", "cache_two", *ddp_args)
    assert two["map"] == one["map"] and two["map_ci95"] == one["map_ci95"]
    assert (one["extraction"]["processes"], two["extraction"]["processes"]) == (1, 2)
    a, b = _chunks(tmp_path / "cache_one"), _chunks(tmp_path / "cache_two")
    assert len(a) >= 6 and a.keys() == b.keys()  # the same entries (same keys), chunk for chunk
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)  # identical descriptor files
    assert (tmp_path / "two" / "train_ddp_process_1.log").exists()  # rank 1 ran, in the same run folder
    # an interrupted run: two chunks gone (one of each rank); the rerun recomputes only those
    db = sorted(k for k in b if k.endswith(("chunk_000000.npy", "chunk_000001.npy")))[-2:]
    kept = {k: f.stat().st_mtime_ns for k, f in b.items() if k not in db}
    for k in db:
        b[k].unlink()
    again = _eval(tmp_path, tiny, "again", "cache_two", *ddp_args)
    assert again["map"] == one["map"]
    after = _chunks(tmp_path / "cache_two")
    assert {k: after[k].stat().st_mtime_ns for k in kept} == kept
    assert all(after[k].read_bytes() == a[k].read_bytes() for k in db)


def test_eval_trainer_ddp_refuses_what_it_cannot_shard(tmp_path):
    from conftest import eval_cfg
    from lit_retrieval.options import OptionError, check_eval_options

    with pytest.raises(OptionError, match="cache.enabled=true"):
        check_eval_options(eval_cfg(tmp_path, "trainer=ddp", "cache.enabled=false"))
    with pytest.raises(OptionError, match="method=d2r extracts its own features"):
        check_eval_options(eval_cfg(tmp_path, "trainer=ddp", "method=d2r"))
    with pytest.raises(OptionError, match="AML activation store"):
        check_eval_options(eval_cfg(tmp_path, "trainer=ddp", "method=rmac", "rerank=aml"))
    with pytest.raises(OptionError, match="store.dtype"):
        check_eval_options(eval_cfg(tmp_path, "store.dtype=int8"))
    with pytest.raises(OptionError, match="store.chunk_size"):
        check_eval_options(eval_cfg(tmp_path, "store.chunk_size=0"))
