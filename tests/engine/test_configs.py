"""Every config composes and resolves (Hydra's compose API, as the runs see it): each experiment, method, model,
data source, dataset, backbone, trainer and logger; each method names a registered retriever and each training
config names its target classes."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import OmegaConf, open_dict

from lit_retrieval.retrieval.interface import build_retriever

CONF = Path(__file__).resolve().parents[2] / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(name: str, overrides: list[str], tmp_path: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=[f"paths.root_dir={tmp_path}", *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)  # ${hydra:...} resolves as in a run
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment, tmp_path):
    cfg, _ = _compose("train", [f"experiment={experiment}"], tmp_path)
    for part in ("model", "data", "trainer"):
        assert get_class(cfg[part]["_target_"])  # the class it builds exists
    for name, c in cfg.callbacks.items():
        if c is not None and "_target_" in c:
            assert get_class(c["_target_"]), name
    # checkpoints are chosen on a validation benchmark, never a test one
    r = cfg.callbacks.retrieval_eval
    if str(cfg.monitor).startswith("retrieval/"):
        assert cfg.monitor.split("/")[1] in {k for k, v in r.datasets.items() if v is not None}
        assert cfg.monitor.split("/")[1] not in {k for k, v in (r.test_datasets or {}).items() if v is not None}
    # the benchmarks built from a split of the training sources take their parts of the training data's split
    split = cfg.data.get("split") if "data" in cfg else None
    for c in [*(r.datasets or {}).values(), *(r.test_datasets or {}).values()]:
        if c is not None and c.get("split") is not None and split is not None:
            assert list(c.split.fractions) == list(split.fractions) and c.split.seed == split.seed, experiment
            assert c.split.part != 0  # part 0 trains


@pytest.mark.parametrize("group, name", [(g, n) for g in ("model", "data", "backbone", "trainer", "logger")
                                         for n in _options(g)])
def test_every_training_option_composes(group, name, tmp_path):
    cfg, _ = _compose("train", [f"{group}={name}"], tmp_path)
    target = cfg[group].get("_target_") if group != "logger" else None
    if target:
        assert get_class(target)


@pytest.mark.parametrize("method", _options("method"))
def test_every_method_composes_and_has_a_retriever(method, tmp_path):
    cfg, _ = _compose("eval", [f"method={method}"], tmp_path)
    assert cfg.method.name == method  # one YAML per method, named as it
    retriever = build_retriever(cfg.method.name)
    assert retriever.name == method
    assert callable(retriever.index) and callable(retriever.search)  # database and queries in two steps


@pytest.mark.parametrize("dataset", _options("dataset"))
def test_every_dataset_composes(dataset, tmp_path):
    cfg, resolved = _compose("eval", [f"dataset={dataset}"], tmp_path)
    assert resolved["dataset"]["kind"] in ("revisited", "classic", "embedded", "cocopaste")
