"""Evaluate a retrieval method on a benchmark: ``python eval.py method=gem dataset=embedded``.

Examples::

    python eval.py                                            # GeM, efficientnet_lite0, embedded benchmark
    python eval.py -m method=mac,spoc,gem,crow,rmac           # every baseline, summary table at the end
    python eval.py method=gem dataset=revisited dataset.root=data dataset.name=roxford5k \
        backbone=resnet101 image_size=1024 whitening=pca results_file=out.json
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("LIT_RETRIEVAL_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    from lit_retrieval.cli import reported_errors
    from lit_retrieval.evaluate import run_eval

    with reported_errors("eval.py"):
        results = run_eval(cfg, HydraConfig.get().runtime.output_dir)
    return next(iter(results["map"].values()), float("nan"))  # (empty on the ranks > 0 of trainer=ddp)


if __name__ == "__main__":
    from lit_retrieval.cli import override_help, register_help, renamed_overrides

    register_help()
    sys.argv[1:] = renamed_overrides(sys.argv[1:])
    with override_help("eval", sys.argv[1:]):
        main()
