"""train.py model=local_similarity end to end on tiny procedural pairs, then eval.py method=local_similarity."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from lit_retrieval.training import train

ROOT = Path(__file__).resolve().parents[2]


def _overrides(root: Path, tiny: Path, *extra: str) -> list[str]:
    bench = f"{{kind: revisited, root: '{tiny}', name: tiny}}"
    return [f"paths.root_dir={root}", f"paths.log_dir={root}/logs", f"paths.cache_dir={root}/cache",
            "model=local_similarity", "backbone=efficientnet_lite0", "logger=csv", "trainer.max_epochs=2",
            "image_size=128", "data.objects.n=12", "data.backgrounds.n=12", "data.syntheses=2",
            "data.gallery_size=128", "data.query_size=64", "data.batch_size=4", "data.split.fractions=[0.7,0.3]",
            "~callbacks.retrieval_eval.datasets", f"+callbacks.retrieval_eval.datasets={{tiny: {bench}}}",
            "~callbacks.retrieval_eval.test_datasets", "+callbacks.retrieval_eval.test_datasets={}",
            "monitor=retrieval/tiny/local_similarity/mAP_M", *extra]


def _cfg(out: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={out}"])


def _eval_cfg(tmp_path: Path, tiny: Path, *extra: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("eval", overrides=[
            f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache", "num_workers=0",
            "method=local_similarity", "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny",
            "backbone=efficientnet_lite0", "image_size=128", *extra])


def test_train_then_eval_local_similarity(tmp_path, tiny):
    out = tmp_path / "run"
    res = train(_cfg(out, _overrides(tmp_path, tiny)))
    metrics = res["metrics"]
    for method in ("local_similarity", "local", "rmatch", "rmac", "gem"):
        for p in ("E", "M", "H"):
            assert 0 <= metrics[f"retrieval/tiny/{method}/mAP_{p}"] <= 100
    for k in ("train/loss", "train/cls", "train/loc", "val/loss", "val/pair_acc", "val/box_iou"):
        assert k in metrics
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("net.backbone.") for k in ckpt["state_dict"])  # the frozen backbone is not stored
    assert ckpt["local_similarity"]["config"]["gallery_grid"] == 15

    from lit_retrieval.evaluate import run_eval

    ev = run_eval(_eval_cfg(tmp_path, tiny, f"ckpt_path={out}/checkpoints/best.ckpt"), tmp_path / "eval")
    history = json.loads((out / "retrieval.json").read_text())["history"]
    best = [h for h in history if abs(h["retrieval/tiny/local_similarity/mAP_M"] - res["monitor_value"]) < 1e-4][0]
    assert ev["map"]["medium"] == pytest.approx(best["retrieval/tiny/local_similarity/mAP_M"], abs=1e-3)
    assert set(ev["stages"]) == {"global", "rmatch", "local", "local_global"}
    assert ev["stages"]["rmatch"]["medium"] == pytest.approx(best["retrieval/tiny/rmatch/mAP_M"], abs=1e-3)
    info = ev["local_similarity"]
    assert info["K"] == ev["n_db"] and info["bytes_per_image"]["compression"] == 1.0
    assert (tmp_path / "eval" / "local_boxes.png").stat().st_size > 1000

    # product quantization of the stored grids: 1280 channels / 128 sub-vectors, 1 byte each: 40× smaller; the
    # checkpoint has no quantizer, so one is learned on method.pq.dataset (here the evaluated database itself)
    pq = run_eval(_eval_cfg(tmp_path, tiny, f"ckpt_path={out}/checkpoints/best.ckpt", "method.pq.M=128",
                            "method.pq.dataset={kind: transductive}", "method.K=5", "method.mode=local"),
                  tmp_path / "eval_pq")
    assert pq["local_similarity"]["bytes_per_image"]["compression"] == 40.0
    assert pq["local_similarity"]["K"] == 5
    assert pq["local_similarity"]["pq"]["source"] == "learned"
    assert pq["local_similarity"]["pq"]["learned_on"] == {"dataset": "tiny", "root": str(tiny / "tiny"),
                                                          "n_images": ev["n_db"], "transductive": True}

    # fine-tuning on quantized grids starts from the trained subnet and stores its quantizer
    out2 = tmp_path / "run_pq"
    train(_cfg(out2, _overrides(tmp_path, tiny, "trainer.max_epochs=1", "model.quantize.M=64",
                                "model.quantize.batches=2", f"model.init_from={out}/checkpoints/best.ckpt")))
    q = torch.load(out2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert q["local_similarity"]["quantizer"]["centroids"].shape == (64, 256, 20)
    # ... which eval.py uses by default (80× smaller), and nothing is learned on the evaluated database
    ev_pq = run_eval(_eval_cfg(tmp_path, tiny, f"ckpt_path={out2}/checkpoints/last.ckpt"), tmp_path / "eval_ft")
    saved = json.loads((tmp_path / "eval_ft" / "results.json").read_text())["local_similarity"]
    assert saved["pq"] == ev_pq["local_similarity"]["pq"]
    assert saved["pq"]["source"] == "checkpoint" and saved["pq"]["M"] == 64 and saved["pq"]["learned_on"] is None
    assert saved["bytes_per_image"]["compression"] == 80.0

    from lit_retrieval.methods.local_similarity.module import LocalSimilarityModule

    with pytest.raises(ValueError, match="use the checkpoint's grid sizes"):
        LocalSimilarityModule({"name": "efficientnet_lite0"}, {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0},
                              gallery_grid=9, init_from=str(out / "checkpoints" / "best.ckpt"))
    with pytest.raises(ValueError, match="model.lam=-1"):
        LocalSimilarityModule({"name": "efficientnet_lite0"}, {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0},
                              lam=-1)


def test_eval_local_similarity_needs_a_checkpoint(tmp_path, tiny):
    from lit_retrieval.evaluate import run_eval

    with pytest.raises(ValueError, match="ckpt_path="):
        run_eval(_eval_cfg(tmp_path, tiny), tmp_path / "eval")
    with pytest.raises(ValueError, match="drop qe=avg"):
        run_eval(_eval_cfg(tmp_path, tiny, "ckpt_path=x.ckpt", "qe=avg"), tmp_path / "eval")
