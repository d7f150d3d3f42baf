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
