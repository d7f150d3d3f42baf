"""Bad options are refused before any work, each with the option, its value and the fix; faults lose nothing."""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import eval_cfg
from lit_retrieval.evaluate import run_eval
from lit_retrieval.options import OptionError

ROOT = Path(__file__).resolve().parents[2]


def _tiny(tiny, *extra):
    return ["dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny", "image_size=96", *extra]


@pytest.mark.parametrize(("override", "match"), [
    ("scales=[]", r"scales=\[\]: expected a non-empty list"),
    ("scales=[0]", r"scales=\[0\]: scale\(s\) \[0\] are not positive"),
    ("scales=[-1]", r"scale\(s\) \[-1\] are not positive"),
    ("scales=1.0", "scales=1.0: expected a non-empty list"),
    ("topk=0", "topk=0: expected a positive number"),
    ("topk=-3", "topk=-3"),
    ("method.p=0", "method.p=0: the GeM power must be positive"),
    ("method.p=-2", "method.p=-2"),
    ("qe=avg qe.k=0", "qe.k=0: query expansion needs at least one"),
    ("device=tpu9", "device='tpu9'"),
    ("device=cuda:7", "device='cuda:7'"),
    ("ckpt_path=/some/run/best.ckpt", "method=gem reads no checkpoint"),
    ("plots.n_queries=0", "plots.n_queries=0: the pictures need at least one query"),
])
def test_bad_options_are_refused_before_any_work(tiny, tmp_path, monkeypatch, override, match):
    from lit_retrieval import evaluate

    monkeypatch.setattr(evaluate, "load_dataset", lambda *a, **k: pytest.fail("read the dataset anyway"))
    with pytest.raises(OptionError, match=match) as err:
        run_eval(eval_cfg(tmp_path, *_tiny(tiny), *override.split()), tmp_path / "run")
    assert "Fix:" in str(err.value)


def test_results_file_and_cache_dir_are_checked_at_start(tiny, tmp_path, monkeypatch):
    from lit_retrieval import evaluate

    monkeypatch.setattr(evaluate, "load_dataset", lambda *a, **k: pytest.fail("read the dataset anyway"))
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(OptionError, match="results_file=.*is a folder, not a file"):
        run_eval(eval_cfg(tmp_path, *_tiny(tiny), f"results_file={folder}"), tmp_path / "run")
    a_file = tmp_path / "plain_file"
    a_file.write_text("x")
    with pytest.raises(OptionError, match="results_file=.*cannot be written"):  # its folder is a file
        run_eval(eval_cfg(tmp_path, *_tiny(tiny), f"results_file={a_file}/out.json"), tmp_path / "run")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        with pytest.raises(OptionError, match="cannot be written"):
            run_eval(eval_cfg(tmp_path, *_tiny(tiny), f"results_file={locked}/out.json"), tmp_path / "run")
    a_file = tmp_path / "cache_is_a_file"
    a_file.write_text("x")
    with pytest.raises(OptionError, match="cache.dir=.*is a file, not a folder"):
        run_eval(eval_cfg(tmp_path, *_tiny(tiny), f"cache.dir={a_file}"), tmp_path / "run")


def test_a_corrupt_checkpoint_is_named(tiny, tmp_path):
    bad = tmp_path / "best.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read checkpoint {bad}.*Fix:"):
        run_eval(eval_cfg(tmp_path, *_tiny(tiny), "method=regional_attention", f"ckpt_path={bad}",
                          "backbone=efficientnet_lite0"), tmp_path / "run")


def test_a_ground_truth_without_any_positive_is_refused(tmp_path):
    from lit_retrieval.data.errors import GroundTruthError
    from lit_retrieval.data.revisited import write_revisited
    from PIL import Image

    jpg = tmp_path / "nopos" / "jpg"
    jpg.mkdir(parents=True)
    for n in ("a", "b", "q"):
        Image.new("RGB", (32, 32), (len(n) * 40, 0, 0)).save(jpg / f"{n}.jpg")
    write_revisited(tmp_path, "nopos", ["a", "b"], ["q"], [{"easy": [], "hard": [], "junk": [1]}])
    with pytest.raises(GroundTruthError, match="no query of 'nopos' has a positive"):
        run_eval(eval_cfg(tmp_path, "dataset=revisited", f"dataset.root={tmp_path}", "dataset.name=nopos"),
                 tmp_path / "run")


def test_eval_cli_prints_the_message_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), "scales=[]", f"paths.root_dir={tmp_path}",
                           f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "LIT_RETRIEVAL_TRACEBACK": "0"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "eval.py: error: scales=[]: expected a non-empty list" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_full_disk_for_the_cache_warns_once_and_the_run_goes_on(tiny, tmp_path, monkeypatch, caplog):
    from lit_retrieval.retrieval import cache as cache_mod

    calls = []

    def full(path, write):
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod, "atomic_write", full)
    with caplog.at_level(logging.WARNING):
        res = run_eval(eval_cfg(tmp_path, *_tiny(tiny), "plots.enabled=false"), tmp_path / "run")
    fresh = run_eval(eval_cfg(tmp_path, *_tiny(tiny), "plots.enabled=false", "cache.enabled=false"), tmp_path / "f")
    assert res["map"] == fresh["map"]
    warned = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warned) == 2 and len(calls) == 2  # once per cache (database, queries), then no more attempts


def test_a_full_disk_for_the_results_prints_them_first(tiny, tmp_path, monkeypatch, caplog):
    from lit_retrieval import evaluate

    real = evaluate.atomic_json
    target = tmp_path / "out" / "OUT.json"

    def full(obj, path):
        if Path(path) == target:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path)

    monkeypatch.setattr(evaluate, "atomic_json", full)
    with caplog.at_level(logging.ERROR), pytest.raises(OSError, match="could not write the results to .*OUT.json"):
        run_eval(eval_cfg(tmp_path, *_tiny(tiny), "plots.enabled=false", f"results_file={target}"), tmp_path / "r")
    logged = next(r.getMessage() for r in caplog.records if "nothing is lost" in r.getMessage())
    saved = json.loads(logged.split("\n", 1)[1])
    assert saved["map"] == json.loads((tmp_path / "r" / "results.json").read_text())["map"]


def test_results_are_strict_json_and_files_respect_the_umask(tmp_path):
    from lit_retrieval import atomic

    atomic.atomic_json({"m": float("nan"), "l": [1.0, float("inf")]}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"m": None, "l": [1.0, None]}
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o666 & ~atomic.UMASK  # not tempfile's 0600
    d = atomic.make_temp_dir(".t-", tmp_path)
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~atomic.UMASK  # not 0700
