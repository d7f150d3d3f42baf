"""train.py model=landmark_detector end to end on tiny procedural boxes (COCOeval AP, pictures, the D2R retrieval
callback), then eval.py method=d2r with that detector: the callback's D2R-R-ASMK* equals eval.py's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from lit_retrieval.training import train

ROOT = Path(__file__).resolve().parents[2]
D2R_SMALL = ["method.codebook.K=32", "method.codebook.n_images=8", "method.codebook.per_image=50",
             "method.features.scales=[1.0]", "method.codebook.dir=null",
             "method.codebook.dim=16"]


def _train_cfg(root: Path, tiny: Path, out: Path, *extra: str):
    bench = f"{{kind: revisited, root: '{tiny}', name: tiny}}"
    overrides = [f"paths.root_dir={root}", f"paths.log_dir={root}/logs", f"paths.cache_dir={root}/cache",
                 "model=landmark_detector", "backbone=efficientnet_lite0", "logger=csv", "trainer.max_epochs=2",
                 "image_size=128", "data.objects.n=10", "data.backgrounds.n=10", "data.syntheses=2",
                 "data.image_size=160", "data.batch_size=4", "data.split.fractions=[0.7,0.3]",
                 "model.detector.kwargs.min_size=128", "model.detector.kwargs.max_size=160",
                 "model.retrieval.codebook.K=32", "model.retrieval.codebook.n_images=8",
                 "model.retrieval.codebook.per_image=50", "model.retrieval.features.scales=[1.0]",
                 "model.retrieval.codebook.dim=16", "~callbacks.retrieval_eval.datasets",
                 f"+callbacks.retrieval_eval.datasets={{tiny: {bench}}}",
            "~callbacks.retrieval_eval.test_datasets", "+callbacks.retrieval_eval.test_datasets={}", *extra,
            f"paths.output_dir={out}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def _eval_cfg(root: Path, tiny: Path, *extra: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("eval", overrides=[
            f"paths.root_dir={root}", f"paths.cache_dir={root}/cache", "num_workers=0", "method=d2r",
            "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny", "backbone=efficientnet_lite0",
            "image_size=128", *D2R_SMALL, *extra])


def test_train_detector_then_eval_d2r(tmp_path, tiny):
    out = tmp_path / "run"
    res = train(_train_cfg(tmp_path, tiny, out))
    m = res["metrics"]
    for k in ("train/loss", "train/loss_classifier", "train/loss_objectness", "val/AP50", "val/AP", "val/AR100"):
        assert k in m
    assert 0.0 <= m["val/AP50"] <= 1.0
    for method in ("asmk_star", "d2r_asmk_star", "d2r_r_asmk_star", "rmac", "gem"):
        assert 0 <= m[f"retrieval/tiny/{method}/mAP_M"] <= 100
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("backbone.") for k in ckpt["state_dict"])  # the frozen retrieval backbone
    assert ckpt["landmark_detector"]["config"]["arch"] == "fasterrcnn_lite0"
    assert len(ckpt["detector_history"]) >= 1
    for name in ("detector_ap.png", "detections.png"):
        assert (out / "plots" / name).stat().st_size > 1000

    from lit_retrieval.evaluate import run_eval

    last = f"{out}/checkpoints/last.ckpt"
    ev = run_eval(_eval_cfg(tmp_path, tiny, f"ckpt_path={last}"), tmp_path / "eval")
    history = json.loads((out / "retrieval.json").read_text())["history"]
    assert ev["d2r"]["variant"] == "D2R-R-ASMK*"
    assert ev["map"]["medium"] == pytest.approx(history[-1]["retrieval/tiny/d2r_r_asmk_star/mAP_M"], abs=1e-3)
    assert ev["stages"]["ASMK*"]["medium"] == pytest.approx(history[-1]["retrieval/tiny/asmk_star/mAP_M"], abs=1e-3)
    assert set(ev["stages"]) == {"ASMK*", "D2R-ASMK*", "D2R_AVG-ASMK*", "D2R-R-ASMK*"}
    assert ev["d2r"]["regions_per_image"] >= 1.0

    base = run_eval(_eval_cfg(tmp_path, tiny, "method.aggregation=none"), tmp_path / "eval0")
    assert base["d2r"]["variant"] == "ASMK*" and base["d2r"]["regions_per_image"] == 1.0
    assert base["map"]["medium"] == pytest.approx(ev["stages"]["ASMK*"]["medium"], abs=1e-6)


def test_d2r_config_errors(tmp_path, tiny):
    from lit_retrieval.evaluate import run_eval

    with pytest.raises(ValueError, match="needs a trained detector"):
        run_eval(_eval_cfg(tmp_path, tiny), tmp_path / "e1")
    with pytest.raises(ValueError, match="r_vlad"):
        run_eval(_eval_cfg(tmp_path, tiny, "method.aggregation=r_vlad", "method.kernel=asmk_star"), tmp_path / "e2")
    with pytest.raises(ValueError, match="drop whitening"):
        run_eval(_eval_cfg(tmp_path, tiny, "method.aggregation=none", "whitening=pca"), tmp_path / "e3")
