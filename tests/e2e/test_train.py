"""train.py end to end on tiny generated data: outputs, resume after a kill, multirun summary, DDP evaluation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from lit_retrieval.training import train

ROOT = Path(__file__).resolve().parents[2]


def _overrides(root: Path, tiny: Path, *extra: str, test: Path | None = None) -> list[str]:
    bench = f"{{kind: revisited, root: '{tiny}', name: tiny}}"
    tests = f"{{tinytest: {{kind: revisited, root: '{test}', name: tinytest}}}}" if test else "{}"
    return [f"paths.root_dir={root}", f"paths.log_dir={root}/logs", f"paths.cache_dir={root}/cache",
            "backbone=efficientnet_lite0", "model.hidden=64", "logger=csv", "trainer.max_epochs=3", "image_size=128",
            "data.embedded.n_classes=3", "data.embedded.n_train=4", "data.embedded.n_val=2", "data.crop=64",
            "data.min_side=72", "data.jitter=8", "data.batch_size=4", "model.scales=3", "model.train_scales=2",
            "~model.whitening.dataset", f"+model.whitening.dataset={bench}", "model.whitening.dims=64",
            "~callbacks.retrieval_eval.datasets", f"+callbacks.retrieval_eval.datasets={{tiny: {bench}}}",
            "~callbacks.retrieval_eval.test_datasets", f"+callbacks.retrieval_eval.test_datasets={tests}",
            "~callbacks.attention_viz.dataset", f"+callbacks.attention_viz.dataset={bench}",
            "callbacks.attention_viz.n_images=2", "monitor=retrieval/tiny/regional_attention/mAP_M", *extra]


def _cfg(out: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={out}"])


def _attention(ckpt: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in sd.items() if k.startswith("net.attention.")}


def test_train_writes_checkpoints_metrics_and_pictures(tmp_path, tiny, tiny_test, capsys):
    out = tmp_path / "run"
    res = train(_cfg(out, _overrides(tmp_path, tiny, "logger=[csv,tensorboard]", test=tiny_test)))
    # the run ends with the test table and where its results and pictures are
    printed = capsys.readouterr().out
    end = printed[printed.rindex("retrieval evaluation, test (selected checkpoint)"):]
    assert "tinytest/regional_attention - gem" in end and f"run folder: {out}" in end
    last = end.rstrip().splitlines()
    assert "plots/attention_regions_final.png" in end and last[-2].startswith("  checkpoints/")
    assert last[-1] == f"report: {out / 'report.html'}"  # the page to open comes last
    assert res["global_step"] == 9 and res["epochs"] == 3  # 12 images, batches of 4
    assert Path(res["best_checkpoint"]) == out / "checkpoints" / "best.ckpt"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    metrics = res["metrics"]
    for method in ("regional_attention", "rmac_uniform", "rmac", "gem"):
        for p in ("E", "M", "H"):
            assert 0 <= metrics[f"retrieval/tiny/{method}/mAP_{p}"] <= 100
    assert res["monitor_value"] == pytest.approx(max(h["retrieval/tiny/regional_attention/mAP_M"] for h in
                                                     json.loads((out / "retrieval.json").read_text())["history"]),
                                                 abs=1e-4)
    assert "val/error" in metrics and "train/loss" in metrics
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(res))
    for f in ("attention_regions.png", "attention_hist.png", "attention_regions_final.png"):
        assert (out / "plots" / f).stat().st_size > 1000
    assert list((out / "csv").rglob("metrics.csv"))
    # the retrieval table and the attention pictures reach TensorBoard too (scalars, markdown text, images)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((out / "tensorboard").glob("version_*"))),
                           size_guidance={"images": 0, "tensors": 0}).Reload()
    assert len(acc.Scalars("retrieval/tiny/regional_attention/mAP_M")) == 3  # one per validation epoch
    assert {"attention/regions", "attention/histogram"} <= set(acc.Tags()["images"])
    assert "| regional_attention |" in acc.Tensors("retrieval/table/text_summary")[-1].tensor_proto.string_val[0]\
        .decode()
    assert "  report.html" in end and (out / "report.html").stat().st_size > 0 and (out / "history.json").is_file()

    # the held-out test benchmark: evaluated once, on the selected checkpoint, with paired differences
    test = res["test"]
    assert test["checkpoint"] == res["best_checkpoint"]
    assert {k.split("/")[3] for k in test["metrics"]} == {"regional_attention", "rmac_uniform", "rmac", "gem"}
    assert all(k.startswith("test/retrieval/tinytest/") for k in test["metrics"])
    diff = test["differences"]["tinytest/regional_attention - rmac_uniform"]["medium"]
    assert diff["ci95"][0] <= diff["diff"] <= diff["ci95"][1]
    lo, hi = test["ci95"]["tinytest/regional_attention"]["medium"]  # every reported mAP with its interval
    assert lo <= test["metrics"]["test/retrieval/tinytest/regional_attention/mAP_M"] <= hi
    assert not any(k.startswith("test/") for h in json.loads((out / "retrieval.json").read_text())["history"]
                   for k in h)  # the selection never saw a test number
    assert res["overlap"]["training data vs test tinytest"]["overlap"] == 0
    assert res["overlap"]["val tiny vs test tinytest"]["overlap"] == 0
    # results.json "metrics" also holds the test values under the test benchmark's own name
    for key, v in test["metrics"].items():
        assert metrics[key.removeprefix("test/")] == pytest.approx(v, abs=1e-4)
    # the final attention picture is of the selected checkpoint, with its regions-on-objects record
    att = res["attention"]
    assert att["tag"] == "final" and att["checkpoint"] == res["best_checkpoint"]
    assert Path(att["picture"]) == out / "plots" / "attention_regions_final.png"
    rec = att["regions_on_objects"]
    assert rec["images"] == 2 and rec["k"] == 5 and 0 <= rec["top_k"] <= 1 and 0 < rec["chance"] < 1
    assert json.loads((out / "plots" / "attention_regions_final.json").read_text()) == att

    # eval.py reads the best checkpoint like any other method; its whitening was learned on tiny (the validation
    # benchmark here), so evaluating it on tiny is refused unless asked for
    from lit_retrieval.data.provenance import LeakageError
    from lit_retrieval.evaluate import run_eval

    def eval_overrides(*extra):
        return [f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache", "num_workers=0",
                "method=regional_attention", f"ckpt_path={out}/checkpoints/best.ckpt", "dataset=revisited",
                f"dataset.root={tiny}", "dataset.name=tiny", "backbone=efficientnet_lite0", "image_size=128", *extra]

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        refused = compose("eval", overrides=eval_overrides())
        ecfg = compose("eval", overrides=eval_overrides("allow_overlap=true"))
    with pytest.raises(LeakageError, match="regional_attention_whitening"):
        run_eval(refused, tmp_path / "refused")
    ev = run_eval(ecfg, tmp_path / "eval")
    assert ev["learned"]["regional_attention_whitening"]["transductive"]
    # the checkpoint carries its training data's content keys, checked by eval.py too (disjoint here)
    assert ev["learned"]["training_data"]["overlap"] == 0
    assert ev["learned"]["training_data"]["n_images"] == res["overlap"]["training data vs test tinytest"]["n_images"]
    best_epoch = [h for h in json.loads((out / "retrieval.json").read_text())["history"]
                  if abs(h["retrieval/tiny/regional_attention/mAP_M"] - res["monitor_value"]) < 1e-4][0]
    for p, name in (("E", "easy"), ("M", "medium"), ("H", "hard")):
        assert ev["map"][name] == pytest.approx(best_epoch[f"retrieval/tiny/regional_attention/mAP_{p}"], abs=1e-3)

    # the region scale S is part of the descriptor cache key (it once collided with eval's multi-scale `scales`)
    from lit_retrieval.backbones import build_backbone
    from lit_retrieval.retrieval.extractor import DescriptorExtractor
    from lit_retrieval.retrieval import build_method

    bb = build_backbone("efficientnet_lite0", weights="imagenet")
    keys = [DescriptorExtractor(ecfg, bb, build_method("regional_attention", bb, ckpt_path=str(ecfg.ckpt_path),
                                                       scales=S)).base_key for S in (2, 3)]
    assert keys[0] != keys[1]


def test_missing_resnet_weights_stop_with_the_fix(tmp_path, tiny, monkeypatch):
    from lit_retrieval.backbones.weights import WeightsNotFoundError

    monkeypatch.setenv("LIT_RETRIEVAL_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv("LIT_RETRIEVAL_WEIGHTS_DIR", str(tmp_path / "weights"))
    cfg = _cfg(tmp_path / "run", _overrides(tmp_path, tiny, "backbone=resnet101"))
    with pytest.raises(WeightsNotFoundError, match="resnet101"):
        train(cfg)


def test_missing_resume_checkpoint_stops_before_training(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        train(_cfg(tmp_path / "run", _overrides(tmp_path, tiny, f"ckpt_path={tmp_path}/nope.ckpt")))
    assert not (tmp_path / "run").exists()


def test_monitor_without_retrieval_evaluation_fails_before_training(tmp_path, tiny):
    with pytest.raises(ValueError, match="monitor=val/error monitor_mode=min"):
        train(_cfg(tmp_path / "run", _overrides(tmp_path, tiny, "callbacks.retrieval_eval.enabled=false")))
    assert not (tmp_path / "run" / "checkpoints").exists()
    # the attention pictures' record is measured on the images they are drawn on: never a selection metric
    with pytest.raises(ValueError, match="never selects its checkpoint"):
        train(_cfg(tmp_path / "run", _overrides(tmp_path, tiny, "monitor=attention/top5_on_objects")))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_after_kill_reaches_the_same_state(tmp_path, tiny):
    """A run SIGKILLed in the middle of its 3rd epoch, resumed from last.ckpt, ends exactly where an uninterrupted
    run does."""
    over = _overrides(tmp_path, tiny, "callbacks.attention_viz.enabled=false")
    full = train(_cfg(tmp_path / "full", over))
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "helpers"), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *over, f"hydra.run.dir={killed}",
                           "+callbacks.kill._target_=crash.KillMidEpoch", "+callbacks.kill.epoch=2",
                           "+callbacks.kill.batch=1"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == -9, proc.stderr[-3000:]
    last = killed / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6
    assert not (killed / "results.json").exists()
    resumed = train(_cfg(killed, [*over, f"ckpt_path={last}"]))
    assert resumed["global_step"] == full["global_step"] == 9
    a, b = _attention(Path(full["last_checkpoint"])), _attention(Path(resumed["last_checkpoint"]))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    ck_full = torch.load(full["last_checkpoint"], map_location="cpu", weights_only=True)
    ck_res = torch.load(resumed["last_checkpoint"], map_location="cpu", weights_only=True)
    for x, y in zip(ck_full["optimizer_states"][0]["state"].values(), ck_res["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(x["momentum_buffer"], y["momentum_buffer"], rtol=0, atol=0)
    assert ck_full["lr_schedulers"] == ck_res["lr_schedulers"]
    hist = json.loads((killed / "retrieval.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2]  # the callback's state came back with the checkpoint


def test_multirun_writes_a_summary_row_per_run(tmp_path, tiny):
    over = _overrides(tmp_path, tiny, "trainer.max_epochs=1", "callbacks.attention_viz.enabled=false")
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *[o for o in over if "model.scales" not in o],
                           "model.scales=2,3", f"hydra.sweep.dir={sweep}"],
                          env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (sweep / "summary.md").read_text()
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 2 and "model.scales=2" in rows[0] and "model.scales=3" in rows[1]
    assert "retrieval/tiny/regional_attention/mAP_M" in table.splitlines()[0]
    assert "sweep summary" in proc.stdout


def test_frozen_feature_training_of_both_objectives(tmp_path, tiny):
    """data.features=cached end to end: the classification objective on crops of cached maps, and the retrieval
    objective on a cached pool of pairs with shuffled copies; the stores are built once and reused by a second run."""
    cached = ["data.features=cached", "callbacks.attention_viz.enabled=false", "trainer.max_epochs=1"]
    res = train(_cfg(tmp_path / "cls", _overrides(tmp_path, tiny, *cached)))
    assert res["global_step"] == 3 and "train/phi_cv" in res["metrics"] and "val/error" in res["metrics"]
    stores = sorted((tmp_path / "cache" / "features").iterdir())
    assert len(stores) == 2  # training and validation images

    pairs = [o for o in _overrides(tmp_path, tiny, *cached) if not o.startswith("data.")] + [
        "data=synthetic_pairs", "model.loss=retrieval", "data.features=cached", "data.shuffled=true",
        "data.objects.n=12", "data.backgrounds.n=16", "data.syntheses=2", "data.batch_size=4",
        "data.gallery_size=96", "data.query_size=64"]
    out = train(_cfg(tmp_path / "pairs", pairs))
    assert out["global_step"] == 3 and "val/recall1" in out["metrics"] and "val/phi_cv" in out["metrics"]
    assert out["overlap"]["training data vs val tiny"]["overlap"] == 0
    stores = sorted((tmp_path / "cache" / "features").iterdir())
    assert len(stores) == 4
    mtimes = {p: p.stat().st_mtime_ns for s in stores for p in s.glob("chunk_*")}
    again = train(_cfg(tmp_path / "pairs2", pairs))  # the same pool: read back, nothing recomputed
    assert {p: p.stat().st_mtime_ns for s in stores for p in s.glob("chunk_*")} == mtimes
    assert again["metrics"]["retrieval/tiny/regional_attention/mAP_M"] == out["metrics"][
        "retrieval/tiny/regional_attention/mAP_M"]
