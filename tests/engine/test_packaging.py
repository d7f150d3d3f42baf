"""The checkout installs editable with uv and with pip, and its console scripts ``lit-eval`` / ``lit-train`` are
``python eval.py`` / ``python train.py``."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _venv_with_our_dependencies(path: Path, with_pip: bool) -> Path:
    """A new virtualenv that sees this environment's packages (torch & co., through a .pth file) but not the
    project itself, so that only the install under test provides ``lit_retrieval`` and the scripts."""
    subprocess.run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(path)], check=True,
                   timeout=120)
    site_dir = next(path.glob("lib/python*/site-packages"))
    (site_dir / "_project_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return path / "bin"


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LIT_RETRIEVAL_ROOT", "VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_console_scripts_are_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"lit-eval": "lit_retrieval.cli:eval_command", "lit-train": "lit_retrieval.cli:train_command"}


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_editable_install_gives_lit_eval_and_lit_train(tmp_path, installer):
    bin_dir = _venv_with_our_dependencies(tmp_path / "venv", with_pip=installer == "pip")
    if installer == "uv":
        uv = shutil.which("uv") or [sys.executable, "-m", "uv"]
        if isinstance(uv, str):
            uv = [uv]
        cmd = [*uv, "pip", "install", "--python", str(bin_dir / "python"), "--no-deps", "-e", str(ROOT)]
    else:  # --isolated: pip's own config files (local wheel folders) stay out, as in the Makefile
        cmd = [str(bin_dir / "pip"), "install", "--isolated", "--no-deps", "-e", str(ROOT)]
    proc = _run(cmd, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for script in ("eval", "train"):
        ours = _run([str(bin_dir / f"lit-{script}"), "--help"], cwd=elsewhere)
        plain = _run([sys.executable, str(ROOT / f"{script}.py"), "--help"], cwd=elsewhere)
        assert ours.returncode == 0, ours.stderr[-3000:]
        assert ours.stdout == plain.stdout and ("method=..." if script == "eval" else "model=...") in ours.stdout
    job = ["--cfg", "job", "method=rmac", "image_size=64", f"paths.root_dir={tmp_path}"]
    ours = _run([str(bin_dir / "lit-eval"), *job], cwd=elsewhere)
    plain = _run([sys.executable, str(ROOT / "eval.py"), *job], cwd=elsewhere)
    assert ours.returncode == 0 and ours.stdout == plain.stdout and "image_size: 64" in ours.stdout
    typo = _run([str(bin_dir / "lit-eval"), "method=gemm"], cwd=elsewhere)
    assert typo.returncode == 1 and "did you mean method=gem?" in typo.stderr


def test_a_console_script_without_the_checkout_says_how_to_install(tmp_path, monkeypatch, capsys):
    from lit_retrieval import cli

    monkeypatch.setenv("LIT_RETRIEVAL_ROOT", str(tmp_path))  # a folder with neither eval.py nor conf/
    with pytest.raises(SystemExit) as exit_:
        cli.eval_command()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"{tmp_path / 'eval.py'} not found" in err and "pip install -e ." in err
