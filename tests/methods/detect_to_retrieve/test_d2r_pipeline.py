"""D2R database encoding as eval.py and the training callback run it: the whole image is always region 0 (also
when the detector finds nothing), boxes below the threshold are not regions, box features are re-extracted on the
crop, and the callback's whole-image memo changes nothing. Queries are described at the size every method of the
project uses (cropped, then shrunk by the full image's scale); ``method.normalize`` names and their booleans."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_retrieval.backbones import Backbone
from lit_retrieval.methods.detect_to_retrieve.codebook import learn_codebook
from lit_retrieval.methods.detect_to_retrieve.features import ActivationFeatures, crop
from lit_retrieval.methods.detect_to_retrieve.pipeline import (RegionEncoder, Settings, encode_database, image_boxes,
                                                             settings_from_method, stage_variants)


class Conv4(Backbone):
    """A fixed random 4×4-stride conv "backbone" with 16 channels (ReLU), deterministic."""

    def __init__(self):
        super().__init__("conv4", out_channels=16, stride=4, mean=(0.0,) * 3, std=(1.0,) * 3)
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 4, stride=4)
        self.freeze()

    def _features(self, x):
        return F.relu(self.conv(x))


class FixedDetector(nn.Module):
    """Returns the same boxes and scores for every image (torchvision's eval-mode output format)."""

    def __init__(self, boxes, scores):
        super().__init__()
        self.boxes, self.scores = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores)

    def forward(self, images):
        return [{"boxes": self.boxes, "scores": self.scores, "labels": torch.ones(len(self.scores))}
                for _ in images]


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 80, generator=g) for _ in range(5)]
    ext = ActivationFeatures(Conv4(), scales=(1.0,), max_features=200)
    cb = learn_codebook(np.concatenate([ext(im)[0] for im in images]), dim=8, K=16, seed=0)
    return images, ext, cb


def _encode(setup, detector, s, **kw):
    images, ext, cb = setup
    return encode_database(enumerate(images), len(images), RegionEncoder(s, ext, cb, detector), stage_variants(s),
                           keep_regions=True, progress=None, **kw)


def test_whole_image_always_region_zero(setup):
    images, ext, cb = setup
    s = Settings(K=16, dim=8, threshold=0.5)
    nothing = FixedDetector(np.zeros((0, 4)), np.zeros(0, dtype=np.float32))
    enc, regions = _encode(setup, nothing, s)
    for img, r in zip(images, regions):
        assert len(r) == 1 and np.allclose(r[0], cb.project(ext(img)[0]))
    assert all(len(items) == 1 for items in enc.items["asmk_star/search_max"])  # one stored item: the image

    det = FixedDetector([[8, 8, 48, 40], [0, 0, 30, 30], [40, 20, 80, 64]], np.array([0.9, 0.6, 0.3], np.float32))
    enc, regions = _encode(setup, det, s)
    for img, r in zip(images, regions):
        assert len(r) == 3  # whole image + the two boxes with score >= 0.5
        assert np.allclose(r[0], cb.project(ext(img)[0]))
        assert np.allclose(r[1], cb.project(ext(crop(img, [8, 8, 48, 40]))[0]))  # re-extracted on the crop
    assert [len(b) for b in enc.boxes] == [2] * 5 and np.allclose(enc.scores[0], [0.9, 0.6])
    assert all(len(items) == 3 for items in enc.items["asmk_star/search_max"])
    assert all(len(items) == 1 for items in enc.items["asmk_star/r_asmk"])  # aggregation: one item per image
    enc, regions = _encode(setup, det, Settings(K=16, dim=8, threshold=0.1, max_boxes=1))
    assert [len(r) for r in regions] == [2] * 5 and np.allclose(enc.scores[0], [0.9])  # the best box only
    with pytest.raises(ValueError, match="max_boxes=-1"):
        Settings(max_boxes=-1)


def test_whole_image_memo_changes_nothing(setup):
    s = Settings(K=16, dim=8, threshold=0.1)
    det = FixedDetector([[8, 8, 48, 40]], np.array([0.8], np.float32))
    memo: dict[int, np.ndarray] = {}
    _, first = _encode(setup, det, s, whole=memo)
    assert sorted(memo) == list(range(5))
    _, again = _encode(setup, det, s, whole=memo)
    for a, b in zip(first, again):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_box_sources_and_errors():
    img = torch.rand(3, 96, 128)
    rmac = Settings(K=16, dim=8, boxes="rmac", rmac_levels=2)
    boxes, scores = image_boxes(img, rmac, None)
    assert len(boxes) == 8 and np.all(scores == 1)  # 4:3 image: 2 + 6 R-MAC boxes, the whole image apart
    assert image_boxes(img, Settings(K=16, dim=8, boxes="none"), None)[0].shape == (0, 4)
    with pytest.raises(ValueError, match="needs a detector"):
        image_boxes(img, Settings(K=16, dim=8), None)
    with pytest.raises(ValueError, match="boxes='grid'"):
        Settings(boxes="grid")
    with pytest.raises(ValueError, match="unknown setting.*kernal"):
        settings_from_method({"kernal": "asmk"})
    # the method section's schema (eval.py's method, the training callback's model.retrieval) -> Settings fields
    split = {"fractions": [0.5, 0.5], "parts": [1]}
    s = settings_from_method({"kernel": "vlad", "aggregation": "r_vlad", "detector": {"threshold": 0.3,
                                                                                      "max_boxes": None},
                              "features": {"scales": [1.0]},
                              "codebook": {"K": 32, "n_images": 8, "dir": None, "split": split}}, seed=4)
    assert (s.kernel, s.aggregation, s.threshold, s.max_boxes, s.scales, s.K, s.codebook_images, s.codebook_dir,
            s.codebook_fractions, s.codebook_parts, s.seed) == ("vlad", "r_vlad", 0.3, None, (1.0,), 32, 8, None,
                                                                 (0.5, 0.5), (1,), 4)
    assert settings_from_method({}) == Settings()
    assert stage_variants(Settings(aggregation="none")) == [("asmk_star", "none")]
    assert stage_variants(Settings())[-1] == ("asmk_star", "r_asmk")


def test_codebook_images_bad_folders(tmp_path, caplog):
    from types import SimpleNamespace

    from lit_retrieval.methods.detect_to_retrieve.pipeline import codebook_images, codebook_paths

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .jpg/.jpeg/.png images.*method.codebook.dir"):
        codebook_images(Settings(codebook_dir=str(tmp_path / "empty")))
    data = SimpleNamespace(name="tiny", db_paths=["a.jpg", "b.jpg"])
    with caplog.at_level("WARNING"):
        paths, source = codebook_paths(Settings(codebook_dir=str(tmp_path / "absent")), data)
    assert source == "tiny database" and [p.name for p in paths] == ["a.jpg", "b.jpg"]
    assert "absent" in caplog.text  # the fallback to the evaluated database is never silent
    for i in range(10):
        (tmp_path / "imgs").mkdir(exist_ok=True)
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(b"")
    s = Settings(codebook_dir=str(tmp_path / "imgs"), codebook_fractions=(0.5, 0.5), codebook_parts=(0,))
    train, held = codebook_images(s), codebook_images(Settings(**{**s.__dict__, "codebook_parts": (1,)}))
    assert len(train) + len(held) == 10 and not set(train) & set(held)  # split by image, parts disjoint


# ------------------------------------------------------------------------------------------- query preprocessing
def _spy_queries(monkeypatch) -> dict[int, tuple[int, int]]:
    """Record the ``H×W`` every query image is described at (what ``encode_queries`` receives)."""
    from lit_retrieval.methods.detect_to_retrieve import pipeline

    seen: dict[int, tuple[int, int]] = {}
    original = pipeline.encode_queries

    def spy(images, n, *args, **kw):
        images = list(images)
        seen.update({i: tuple(img.shape[-2:]) for i, img in images})
        return original(images, n, *args, **kw)

    monkeypatch.setattr(pipeline, "encode_queries", spy)
    return seen


def _query_sizes(data, image_size):
    """The query sizes of the project's global methods (cirtorch: crop to the box, shrink by the full image's
    scale) and at full resolution."""
    from lit_retrieval.data import load_for_retrieval

    return ([tuple(load_for_retrieval(p, image_size, b).shape[-2:]) for p, b in zip(data.query_paths, data.query_bbx)],
            [tuple(load_for_retrieval(p, None, b).shape[-2:]) for p, b in zip(data.query_paths, data.query_bbx)])


def test_eval_queries_follow_the_projects_crop_and_scale_rule(tiny, tmp_path, monkeypatch):
    from conftest import eval_cfg

    from lit_retrieval.methods.detect_to_retrieve.pipeline import run_d2r
    from lit_retrieval.data import load_revisited

    cfg = eval_cfg(tmp_path, "method=d2r", "method.aggregation=none", "dataset=revisited",
                   f"dataset.root={tiny}", "dataset.name=tiny", "image_size=96", "cache.enabled=false",
                   "method.features.scales=[1.0]", "method.codebook.dir=null", "method.codebook.K=8",
                   "method.codebook.dim=8", "method.codebook.n_images=8", "method.codebook.per_image=40")
    data = load_revisited(tiny, "tiny")
    seen = _spy_queries(monkeypatch)
    out = run_d2r(cfg, data, Conv4(), 0, {"backbone": "conv4"})
    assert out["ranks"].shape == (data.n_queries, data.n_db)
    shrunk, full = _query_sizes(data, 96)
    assert [seen[i] for i in range(len(shrunk))] == shrunk  # the size gem, mac, ... describe the query at
    assert all(max(s) < max(f) for s, f in zip(shrunk, full))  # no longer the full-resolution crop


def test_callback_queries_follow_the_projects_crop_and_scale_rule(tiny, monkeypatch):
    from lit_retrieval.data import load_revisited
    from lit_retrieval.methods.detect_to_retrieve.pipeline import D2RRetriever

    data = load_revisited(tiny, "tiny")
    s = Settings(K=8, dim=8, scales=(1.0,), codebook_images=8, codebook_per_image=40)
    ranker = D2RRetriever.for_network(FixedDetector([[4, 4, 60, 50]], np.array([0.9], np.float32)), Conv4(), s,
                                      {"backbone": "c4"})
    seen = _spy_queries(monkeypatch)
    ranks = ranker(data, 80, torch.device("cpu"), None, False)
    assert sorted(ranks) == ["asmk_star", "d2r_asmk_star", "d2r_r_asmk_star"]
    shrunk, full = _query_sizes(data, 80)
    assert [seen[i] for i in range(len(shrunk))] == shrunk
    assert all(max(s) < max(f) for s, f in zip(shrunk, full))


# --------------------------------------------------------------------------------------------- normalisation
def test_normalize_setting_names_and_config(tmp_path):
    from conftest import eval_cfg

    from lit_retrieval.methods.detect_to_retrieve.pipeline import settings_from_eval

    assert Settings().normalize == "paper"
    assert Settings(normalize=True).normalize == "gamma" and Settings(normalize=False).normalize == "delf"
    with pytest.raises(ValueError, match="unknown normalize='eq1'"):
        Settings(normalize="eq1")
    for override, name in ((None, "paper"), ("delf", "delf"), ("gamma", "gamma"), ("true", "gamma"),
                           ("false", "delf")):
        extra = [] if override is None else [f"method.normalize={override}"]
        assert settings_from_eval(eval_cfg(tmp_path, "method=d2r", *extra)).normalize == name
