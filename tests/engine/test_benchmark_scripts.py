"""The speed scripts run and write the JSON their docs promise (at a tiny size: timings are not checked here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 600) -> str:
    out = subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_gpu_check_says_no_gpu_and_runs_on_the_cpu(tmp_path):
    import torch

    out = _run("bash", "benchmarks/gpu_check.sh", "--json", str(tmp_path / "gpu.json"))
    res = json.loads((tmp_path / "gpu.json").read_text())
    if not torch.cuda.is_available():
        assert "no GPU" in out and res["gpu"] is None and res["device"] == "cpu"
    assert res["extraction"]["images_per_s"] > 0 and res["extraction"]["gflops_per_image"] > 10
    assert res["aml"]["s_per_query"] > 0 and res["local_similarity"]["pairs_per_s"] > 0


def test_aml_speed_json_and_same_result(tmp_path):
    _run(sys.executable, "benchmarks/aml_speed.py", "--n", "12", "--queries", "1", "--many", "3", "--distinct", "4",
         "--json", str(tmp_path / "aml.json"))
    res = json.loads((tmp_path / "aml.json").read_text())
    assert res["same_result"] is True
    for key in ("s_per_query", "reference_torch_s_per_query", "s_per_query_one_at_a_time", "s_per_query_3_queries"):
        assert set(res[key]) == {"2048x24x32", "1280x16x16"} and all(v > 0 for v in res[key].values())
    assert set(res["compiled_one_thread_ms_per_image"]["2048x24x32"]) == {"decode", "integral", "localize"}


def test_rmac_pooling_json(tmp_path):
    _run(sys.executable, "benchmarks/rmac_pooling.py", "--no-sweep", "--repeats", "1", "--no-check", "--json",
         str(tmp_path / "rmac.json"))
    res = json.loads((tmp_path / "rmac.json").read_text())
    assert res["same_output"] is True and res["shape"] == [16, 2048, 24, 32] and res["L"] == 3
    assert res["speedup_vs_cirtorch_style_loop"] > 1 and 0 < res["memory_bound_ms"] < res["ms"]


def test_d2r_speed_json(tmp_path):
    _run(sys.executable, "benchmarks/d2r_speed.py", "--images", "2", "--json", str(tmp_path / "d2r.json"))
    res = json.loads((tmp_path / "d2r.json").read_text())
    assert res["images"] == 2 and 0 < res["s_per_image"] and 0 < res["s_per_image_before"]
    assert set(res["stages_s_per_image"]) == {"detector", "detector_trunk", "whole_image_features",
                                              "box_crops_one_at_a_time", "box_crops_batched_per_scale"}
    assert 0 < res["stages_s_per_image"]["detector_trunk"] < res["stages_s_per_image"]["detector"]


def test_scale_json(tmp_path):
    _run(sys.executable, "benchmarks/scale.py", "--n", "3000", "--queries", "4", "--train", "2000", "--nlist", "16",
         "--extract-images", "1", "--dir", str(tmp_path / "work"), "--json", str(tmp_path / "scale.json"))
    res = json.loads((tmp_path / "scale.json").read_text())
    assert [(r["dim"], r["dtype"]) for r in res["stores"]] == [(512, "float32"), (512, "float16"), (2048, "float16")]
    f32, f16 = res["stores"][0], res["stores"][1]
    assert f16["bytes_per_image"] < 0.55 * f32["bytes_per_image"]
    assert 0 <= res["ivfpq"]["recall_at_100_vs_exact"] <= 1 and res["ivfpq"]["nlist"] == 16
    assert res["d2r_inverted_file"]["images"] == 3000 and res["d2r_inverted_file"]["bytes_per_image"] > 0
    assert res["extraction"]["measured_on"] in ("cpu", "gpu")
    assert set(res["extraction"]["r1m_hours"]) == {"1", "8", "64"}
    assert not (tmp_path / "work" / "3000").exists()  # the simulated stores are removed
