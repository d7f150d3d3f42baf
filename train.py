"""Train a learned region scorer: ``python train.py model=regional_attention``.

Examples::

    python train.py experiment=quickstart                  # make demo: procedural pairs, under 5 CPU minutes
    python train.py experiment=regional_attention_shared   # retrieval objective on COCO pairs from ../shared/data
    python train.py -m model.scales=3,4,5,6                # multirun + summary table of the sweep
    python train.py ckpt_path=RUN/checkpoints/last.ckpt    # resume an interrupted run
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("LIT_RETRIEVAL_ROOT", str(Path(__file__).resolve().parent))
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lit_retrieval.cli import reported_errors
    from lit_retrieval.training import train

    with reported_errors("train.py"):
        return train(cfg).get("monitor_value")


if __name__ == "__main__":
    from lit_retrieval.cli import override_help, register_help

    register_help()
    with override_help("train", sys.argv[1:]):
        main()
