"""Distractors appended to a revisited database: revisitop's R1M layout and a procedural set of any size."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import eval_cfg
from lit_retrieval.data import load_dataset
from lit_retrieval.data.errors import DataError, ImageLoadError


def _r1m(root, n=5):
    folder = root / "revisitop1m"
    (folder / "jpg" / "a").mkdir(parents=True)
    lines = []
    for i in range(n):
        Image.new("RGB", (24, 16), (10 * i, 50, 90)).save(folder / "jpg" / "a" / f"{i:03d}.jpg")
        lines.append(f"a/{i:03d}" if i % 2 else f"a/{i:03d}.jpg")  # revisitop's lines, with or without .jpg
    (folder / "revisitop1m.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_revisitop1m_layout_appends_after_the_database(tiny, tmp_path):
    base = load_dataset({"kind": "revisited", "root": str(tiny), "name": "tiny"})
    _r1m(tmp_path)
    cfg = {"kind": "revisited", "root": str(tiny), "name": "tiny", "distractors": "revisitop1m",
           "distractors_root": str(tmp_path)}
    d = load_dataset(cfg)
    assert d.n_db == base.n_db + 5 and d.db_paths[:base.n_db] == base.db_paths
    assert d.db_paths[base.n_db].name == "000.jpg" and d.db_paths[base.n_db + 1].name == "001.jpg"
    assert d.name == "tiny+revisitop1m" and d.distractors.start == base.n_db and d.distractors.base_name == "tiny"
    for g, g0 in zip(d.gnd, base.gnd):  # the ground truth is unchanged: every distractor is a negative
        assert all(np.array_equal(g[k], g0[k]) for k in ("easy", "hard", "junk"))
    assert load_dataset({**cfg, "distractors_limit": 2}).n_db == base.n_db + 2
    with pytest.raises(DataError, match="revisitop1m.txt"):
        load_dataset({**cfg, "distractors_root": str(tmp_path / "nowhere")})
    (tmp_path / "revisitop1m" / "jpg" / "a" / "000.jpg").unlink()
    with pytest.raises(ImageLoadError, match="missing"):
        load_dataset(cfg)
    with pytest.raises(DataError, match="unknown distractor set"):
        load_dataset({**cfg, "distractors": "r2m"})


def test_distractors_extend_revisited_benchmarks_only(tmp_path):
    import pickle

    folder = tmp_path / "c"
    (folder / "jpg").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("RGB", (16, 16)).save(folder / "jpg" / f"{name}.jpg")
    gnd = {"imlist": ["a", "b"], "qidx": [0], "gnd": [{"ok": [1], "junk": []}]}
    (folder / "gnd.pkl").write_bytes(pickle.dumps(gnd))
    with pytest.raises(DataError, match="extends revisited benchmarks"):
        load_dataset({"kind": "classic", "gnd_file": str(folder / "gnd.pkl"), "images_dir": str(folder / "jpg"),
                      "distractors": "procedural", "distractors_count": 3, "distractors_dir": str(tmp_path)})


def test_eval_with_procedural_distractors_reuses_the_database_entry(tiny, tmp_path):
    from lit_retrieval.evaluate import run_eval

    base = ["method=gem", "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny", "image_size=128",
            "plots.enabled=false", f"dataset.distractors_dir={tmp_path / 'gen'}"]
    plain = run_eval(eval_cfg(tmp_path, *base), tmp_path / "plain")
    keys = lambda: sorted(p.parent.name for p in (tmp_path / ".cache" / "descriptors").rglob("key.json"))  # noqa
    before = keys()
    r = run_eval(eval_cfg(tmp_path, *base, "dataset.distractors=procedural", "dataset.distractors_count=40"),
                 tmp_path / "dis")
    assert r["n_db"] == plain["n_db"] + 40 and r["dataset"] == "tiny+procedural-40-s0"
    after = keys()
    assert set(before) <= set(after) and len(after) == len(before) + 1  # one new entry: the distractors'
    new = next(p for p in (tmp_path / ".cache" / "descriptors").rglob("key.json") if p.parent.name not in before)
    assert json.loads(new.read_text())["part"] == "distractors"
    assert r["map"]["medium"] <= plain["map"]["medium"]  # distractors can only push positives down
    with pytest.raises(DataError, match="distractors_count"):
        run_eval(eval_cfg(tmp_path, *base, "dataset.distractors=procedural"), tmp_path / "bad")
