"""Former spellings of moved keys keep working, with a warning: through the compose API and on eval.py's command
line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import eval_cfg
from lit_retrieval import cli

ROOT = Path(__file__).resolve().parents[2]


def test_renamed_overrides_map_the_former_spellings_and_warn_once(monkeypatch):
    monkeypatch.setattr(cli, "_warned", set())
    with pytest.warns(FutureWarning, match="kernel= is now method.kernel="):
        out = cli.renamed_overrides(["kernel=vlad", "aggregation=r_vlad", "detector.ckpt_path=a.ckpt",
                                     "+detector.threshold=0.3", "method.kernel=asmk", "-m", "image_size=64"])
    assert out == ["method.kernel=vlad", "method.aggregation=r_vlad", "ckpt_path=a.ckpt",
                   "+method.detector.threshold=0.3", "method.kernel=asmk", "-m", "image_size=64"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: no warning
        assert cli.renamed_overrides(["kernel=asmk"]) == ["method.kernel=asmk"]


def test_old_and_new_spellings_compose_the_same_config(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_warned", set())
    with pytest.warns(FutureWarning):
        old = eval_cfg(tmp_path, "method=d2r", "kernel=vlad", "aggregation=r_vlad", "detector.threshold=0.3",
                       "detector.max_boxes=5", "detector.ckpt_path=x.ckpt")
    new = eval_cfg(tmp_path, "method=d2r", "method.kernel=vlad", "method.aggregation=r_vlad",
                   "method.detector.threshold=0.3", "method.detector.max_boxes=5", "ckpt_path=x.ckpt")
    assert OmegaConf.to_container(old) == OmegaConf.to_container(new)
    assert new.method.kernel == "vlad" and new.ckpt_path == "x.ckpt" and "kernel" not in new


def test_method_d2r_writes_nothing_at_the_top_level(tmp_path):
    gem, d2r = eval_cfg(tmp_path), eval_cfg(tmp_path, "method=d2r")
    assert set(d2r) == set(gem)


def test_eval_py_applies_the_former_spellings(tmp_path):
    proc = subprocess.run([sys.executable, "-W", "always::FutureWarning", str(ROOT / "eval.py"), "method=d2r",
                           "aggregation=none", "detector.ckpt_path=null", f"paths.root_dir={tmp_path}", "--cfg", "job"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.method.aggregation == "none" and cfg.ckpt_path is None
    assert "aggregation= is now method.aggregation=" in proc.stderr


def test_help_lists_every_choice_with_its_description():
    from lit_retrieval.cli import HELP_GROUPS, describe_option

    root = ROOT
    for script, expected in (("eval.py", ["method=...", "gem ", "GeM (Radenović", "dataset=...", "roxford5k",
                                          "rerank=...", "trainer=...", "logger=...", "tensorboard"]),
                             ("train.py", ["experiment=...", "quickstart", "model=...", "logger=..."])):
        out = subprocess.run([sys.executable, str(root / script), "--help"], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        for text in expected:
            assert text in out.stdout, (script, text)
    # every choice says what it is in its first comment line (after Hydra's @package header)
    for task, groups in HELP_GROUPS.items():
        for group in groups:
            for f in (root / "conf" / group).glob("*.yaml"):
                assert describe_option(f), f"{f} has no description comment for {task}.py --help"
    assert "tensorboard" in subprocess.run([sys.executable, str(root / "train.py"), "--help"], capture_output=True,
                                           text=True, timeout=120).stdout


@pytest.mark.parametrize("task, args, expected", [
    ("eval", ["image_sise=512"], "image_sise: no such config key; did you mean image_size?"),
    ("eval", ["method=gemm"], "method=gemm: method has no choice 'gemm'; did you mean method=gem?"),
    ("eval", ["method=gem,spocc"], "did you mean method=spoc?"),
    ("eval", ["methd=gem"], "did you mean method?"),
    ("eval", ["dataset=revisited", "dataset.rot=x"], "did you mean dataset.root?"),
    ("eval", ["dataset.rot=x"], "dataset has no key 'rot' (its keys: kind, seed,"),
    ("eval", ["rerank=aml", "rerank.refine_stp=3"], "did you mean rerank.refine_step?"),
    ("train", ["trainer.max_epoch=1"], "did you mean trainer.max_epochs?"),
    ("train", ["model=regional_atention"], "did you mean model=regional_attention?"),
])
def test_an_unknown_override_names_the_closest_valid_key(task, args, expected):
    hints = cli.override_hints(task, args)
    assert len(hints) == 1 and expected in hints[0], hints


def test_valid_overrides_get_no_hint():
    assert cli.override_hints("eval", ["method=rmac", "image_size=64", "dataset=roxford5k", "dataset.root=/x",
                                       "+newkey=1", "~qe", "hydra.run.dir=/tmp/x", "-m"]) == []


@pytest.mark.parametrize("full_error", [False, True])
def test_eval_py_prints_the_closest_key_after_hydras_message(tmp_path, full_error):
    import os

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), "image_sise=512", f"paths.root_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert proc.returncode == 1
    assert "Could not override 'image_sise'" in proc.stderr
    hint = "eval.py: image_sise: no such config key; did you mean image_size?"
    if full_error:  # Hydra's exception propagates: the hint is printed as it passes, before the traceback
        assert hint in proc.stderr
    else:  # Hydra's own message comes first, the hint last
        assert proc.stderr.rstrip().endswith(hint)
