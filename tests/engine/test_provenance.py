"""Honest evaluation: content keys, overlap checks of learned components, bootstrap intervals."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import eval_cfg
from lit_retrieval.data import load_revisited
from lit_retrieval.data.provenance import (ContentHasher, ContentSet, LeakageError, LearnedSets, check_disjoint,
                                           content_of_files, dataset_content, pixel_key)
from lit_retrieval.data.synthetic import build_embedded
from lit_retrieval.evaluate import run_eval
from lit_retrieval.metrics import bootstrap_ci, paired_bootstrap


def test_content_key_follows_pixels_not_names(tmp_path):
    rng = np.random.default_rng(0)
    a = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(a)
    renamed = tmp_path / "sub" / "renamed.png"
    renamed.parent.mkdir()
    shutil.copyfile(a, renamed)
    reencoded = tmp_path / "b.bmp"  # same decoded pixels, other file bytes
    Image.open(a).save(reencoded)
    other = tmp_path / "c.png"
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(other)
    assert pixel_key(a) == pixel_key(renamed) == pixel_key(reencoded) != pixel_key(other)
    assert a.read_bytes() != reencoded.read_bytes()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert pixel_key(broken).startswith("raw:")


def test_content_memo_rehashes_a_changed_file(tmp_path):
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(img)
    hasher = ContentHasher(tmp_path / "memo")
    k1 = hasher.keys([img])[0]
    assert list((tmp_path / "memo").glob("*.json"))
    Image.new("RGB", (8, 9), (10, 20, 30)).save(img)  # replaced in place: size (and mtime) change
    assert ContentHasher(tmp_path / "memo").keys([img])[0] == pixel_key(img) != k1


def test_generated_benchmarks_share_sources_only_with_the_same_seed(tmp_path):
    build_embedded(tmp_path, seed=4, name="a", n_queries=2, n_distractors=2, progress=False)
    build_embedded(tmp_path, seed=4, name="b", n_queries=3, n_distractors=1, progress=False)
    build_embedded(tmp_path, seed=5, name="c", n_queries=2, n_distractors=2, progress=False)
    a, b, c = (dataset_content(load_revisited(tmp_path, n)) for n in "abc")
    assert a.overlap(b)  # same generator and seed: the same procedural objects, whatever the file names
    assert not a.overlap(c)
    rec = check_disjoint(c, a, "whitening", "whitening.dataset")
    assert rec["overlap"] == 0 and rec["n_images"] == load_revisited(tmp_path, "c").n_db + 2
    assert rec["dataset"] == "c" and len(rec["digest"]) == 32


def test_overlap_is_refused_by_content_and_names_the_files(tiny, tmp_path):
    ds = load_revisited(tiny, "tiny")
    copy = tmp_path / "copies"
    copy.mkdir()
    for i, p in enumerate(ds.db_paths[:3]):
        shutil.copyfile(p, copy / f"renamed_{i}.jpg")
    learned = LearnedSets(ds)
    with pytest.raises(LeakageError, match="3 image") as err:
        learned.check_files("codebook", "copies", sorted(copy.glob("*.jpg")), "method.codebook.dir")
    assert "renamed_0.jpg" in str(err.value) and "method.codebook.dir" in str(err.value)
    with pytest.warns(UserWarning, match="transductive"):
        rec = learned.transductive("whitening", "whitening.dataset")
    assert rec["transductive"] and rec["overlap"] > 0


def test_checkpoint_content_state_round_trip():
    s = ContentSet("train", {"px:1": "a.jpg", "gen:procedural:0:00001": "procedural:0:00001"}, 2)
    t = ContentSet.from_state(s.state_dict())
    assert t.digest == s.digest and t.n_images == 2 and t.overlap(s)


def test_bootstrap_interval_of_a_known_case():
    # half the queries AP 0, half AP 1: the resampled mean is Binomial(100, 1/2) / 100, whose 2.5% / 97.5%
    # quantiles are 0.40 and 0.60
    aps = np.array([0.0, 1.0] * 50)
    lo, hi = bootstrap_ci(aps)
    assert lo == pytest.approx(0.40, abs=0.011) and hi == pytest.approx(0.60, abs=0.011)
    assert bootstrap_ci(np.full(7, 0.3)) == pytest.approx((0.3, 0.3))
    assert bootstrap_ci([np.nan, 0.5, 0.5]) == pytest.approx((0.5, 0.5))  # no-positive queries left out
    assert bootstrap_ci(aps) == bootstrap_ci(aps)  # seeded


def test_paired_bootstrap_sees_consistent_small_gains():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 60)  # widely spread query difficulty ...
    b = a - 0.02  # ... but b is consistently 0.02 worse
    c = paired_bootstrap(a, b)
    assert c["diff"] == pytest.approx(0.02) and c["ci95"] == pytest.approx([0.02, 0.02]) and not c["within_noise"]
    lo, hi = bootstrap_ci(a)
    assert hi - lo > 0.1  # the unpaired intervals overlap almost entirely
    noisy = paired_bootstrap(a, rng.permutation(a))
    assert noisy["within_noise"] and noisy["ci95"][0] < 0 < noisy["ci95"][1]
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap(a, a[:10])


def test_eval_records_ci_and_what_the_whitening_saw(tiny, tmp_path):
    base = ["method=mac", "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny", "image_size=128",
            "plots.enabled=false"]
    res = run_eval(eval_cfg(tmp_path, *base, "whitening=pca"), tmp_path / "run")
    w = res["whitening"]
    assert w["kind"] == "pca" and w["dataset"] == "embedded-s1" and w["overlap"] == 0 and not w["transductive"]
    assert res["learned"]["whitening"] == {k: v for k, v in w.items() if k not in ("kind", "dims")}
    for proto in ("easy", "medium", "hard"):
        aps = [v for v in res["ap_per_query"][proto] if v is not None]
        assert len(res["ap_per_query"][proto]) == 3
        if aps:
            assert np.mean(aps) == pytest.approx(res["map"][proto], abs=1e-3)
            lo, hi = res["map_ci95"][proto]
            assert lo <= res["map"][proto] <= hi
    # the evaluated images themselves (renamed copies) as the whitening set: refused by content ...
    root = tmp_path / "leak"
    shutil.copytree(tiny / "tiny", root / "renamed")
    (root / "renamed" / "gnd_tiny.pkl").rename(root / "renamed" / "gnd_renamed.pkl")
    leak = ["~whitening.dataset", "+whitening.dataset={kind: revisited, root: " + str(root) + ", name: renamed}"]
    with pytest.raises(LeakageError, match="evaluated set 'tiny'"):
        run_eval(eval_cfg(tmp_path, *base, "whitening=pca", *leak), tmp_path / "leak_run")
    # ... and learning on the evaluated database is possible when asked, recorded and warned about
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_eval(eval_cfg(tmp_path, *base, "whitening=pca", "whitening.dataset.kind=transductive"),
                       tmp_path / "trans")
    assert res["whitening"]["transductive"] and res["whitening"]["overlap"] > 0
    assert any("transductive" in str(w.message) for w in caught)


def test_a_checkpoint_trained_on_the_evaluated_images_is_refused(tiny, tmp_path):
    import torch

    from lit_retrieval.evaluate import check_checkpoint_training

    ds = load_revisited(tiny, "tiny")
    trained_on = content_of_files("train", ds.db_paths[:2])
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}, "training_content": trained_on.state_dict()}, ckpt)
    cfg = eval_cfg(tmp_path, "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny", f"ckpt_path={ckpt}")
    with pytest.raises(LeakageError, match="training_data.*2 image") as err:
        check_checkpoint_training(cfg, LearnedSets(ds))
    assert f"ckpt_path={ckpt}" in str(err.value) and "allow_overlap=true" in str(err.value)
    learned = LearnedSets(ds)
    with pytest.warns(UserWarning, match="training_data"):
        check_checkpoint_training(eval_cfg(tmp_path, "dataset=revisited", f"dataset.root={tiny}",
                                           "dataset.name=tiny", f"ckpt_path={ckpt}", "allow_overlap=true"), learned)
    assert learned.records["training_data"]["overlap"] == 2
    torch.save({"state_dict": {}}, ckpt)  # an older checkpoint without the record: said, not guessed
    learned = LearnedSets(ds)
    check_checkpoint_training(cfg, learned)
    assert learned.records["training_data"] == {"checked": False, "checkpoint": str(ckpt)}


def test_a_detector_trained_on_the_evaluated_images_is_refused_under_its_own_name(tiny, tmp_path, monkeypatch):
    import torch

    from lit_retrieval import cli
    from lit_retrieval.evaluate import check_checkpoint_training
    from lit_retrieval.retrieval.interface import build_retriever

    ds = load_revisited(tiny, "tiny")
    ckpt = tmp_path / "detector.ckpt"
    torch.save({"state_dict": {}, "training_content": content_of_files("train", ds.db_paths[:3]).state_dict()}, ckpt)
    component = build_retriever("d2r").checkpoint_component
    assert component == "detector_training_data"
    monkeypatch.setattr(cli, "_warned", set())
    with pytest.warns(FutureWarning):  # the former spelling of the detector's checkpoint still reaches the check
        cfg = eval_cfg(tmp_path, "method=d2r", "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny",
                       f"detector.ckpt_path={ckpt}")
    with pytest.raises(LeakageError, match="detector_training_data.*3 image"):
        check_checkpoint_training(cfg, LearnedSets(ds), component)


def test_d2r_codebook_on_the_evaluated_images_is_refused_before_any_work(tiny, tmp_path, monkeypatch):
    from lit_retrieval.methods.detect_to_retrieve import pipeline

    ds = load_revisited(tiny, "tiny")
    folder = tmp_path / "codebook_imgs"
    folder.mkdir()
    for i, p in enumerate(ds.db_paths[:4]):  # renamed copies of evaluated images among other files
        shutil.copyfile(p, folder / f"other_{i}.jpg")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(folder / "unrelated.jpg")
    monkeypatch.setattr(pipeline, "learn_or_load_codebook", lambda *a, **k: pytest.fail("learned anyway"))
    cfg = eval_cfg(tmp_path, "method=d2r", "aggregation=none", "detector.ckpt_path=null", "dataset=revisited",
                   f"dataset.root={tiny}", "dataset.name=tiny", f"method.codebook.dir={folder}",
                   "method.codebook.split=null", "image_size=96", "plots.enabled=false")
    with pytest.raises(LeakageError, match="d2r_codebook.*4 image"):
        run_eval(cfg, tmp_path / "run")


def test_training_data_sharing_sources_with_a_test_benchmark_is_refused(tiny, tmp_path):
    from types import SimpleNamespace

    from lit_retrieval.callbacks import RetrievalEvaluation
    from lit_retrieval.data.pairs import SyntheticPairsDataModule

    # tiny is the procedural benchmark of seed 3: training on procedural objects of seed 3 shares its objects
    bench = {"kind": "revisited", "root": str(tiny), "name": "tiny"}

    def dm(seed: int):
        m = SyntheticPairsDataModule(objects={"kind": "procedural", "n": 12, "seed": seed},
                                     backgrounds={"kind": "procedural", "n": 12, "seed": seed},
                                     split={"fractions": [0.7, 0.3], "seed": 0}, syntheses=1, batch_size=2)
        m.setup()
        return SimpleNamespace(datamodule=m)

    cb = RetrievalEvaluation(datasets={}, test_datasets={"tiny": bench})
    with pytest.raises(LeakageError, match="allow_overlap=true"):
        cb.check_overlap(dm(3), object())
    assert cb.check_overlap(dm(10), object())["training data vs test tiny"]["overlap"] == 0
    with pytest.warns(UserWarning, match="tiny"):  # allowed when asked, and said
        rec = RetrievalEvaluation(datasets={}, test_datasets={"tiny": bench}, allow_overlap=True).check_overlap(
            dm(3), object())
    assert rec["training data vs test tiny"]["overlap"] > 0
    with pytest.warns(UserWarning, match="tiny"):  # a validation benchmark that shares images: warned only
        RetrievalEvaluation(datasets={"tiny": bench}).check_overlap(dm(3), object())
