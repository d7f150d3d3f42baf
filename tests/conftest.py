"""Shared test fixtures: where the read-only shared data and parity files live."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
CONF = Path(__file__).resolve().parents[1] / "conf"


E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(config, items):
    """Everything under tests/e2e/ (whole eval.py / train.py runs) carries the ``e2e`` marker: ``-m "not e2e"``
    runs the unit tests alone."""
    for item in items:
        if E2E in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def eval_cfg(tmp_path, *overrides):
    """The composed ``eval.py`` config with outputs under ``tmp_path``, no loader processes, and ``overrides``."""
    from hydra import compose, initialize_config_dir

    from lit_retrieval.cli import renamed_overrides

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("eval", overrides=[f"paths.root_dir={tmp_path}", f"paths.log_dir={tmp_path}/logs",
                                          "num_workers=0", *renamed_overrides(list(overrides))])


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a pytest skip naming what is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (shared test data lives next to the repository, in ../shared)")
    return p


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny generated cut-and-paste benchmark in the revisited format: ``dataset.root=<tiny> dataset.name=tiny``."""
    from lit_retrieval.data.synthetic import build_embedded

    root = tmp_path_factory.mktemp("bench")
    build_embedded(root, seed=3, name="tiny", n_queries=3, n_distractors=4, progress=False)
    return root


@pytest.fixture
def golden():
    return lambda name: shared_path("golden", name)


@pytest.fixture(scope="session")
def tiny_test(tmp_path_factory):
    """A second tiny benchmark (another seed: no image or source in common with ``tiny``), for test-split checks."""
    from lit_retrieval.data.synthetic import build_embedded

    root = tmp_path_factory.mktemp("bench_test")
    build_embedded(root, seed=4, name="tinytest", n_queries=3, n_distractors=4, progress=False)
    return root


class Exploit:
    """A pickle payload that touches ``target`` when unpickled by a plain unpickler (it must never run)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))
