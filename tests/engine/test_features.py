"""Frozen-feature training: the store (resume, key change, damage, dtype), cached pools, cached = online steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_retrieval.data.errors import DataError
from lit_retrieval.data.features import CachedItems, FeatureStore, FrozenEncoder, check_mode, fill_store
from lit_retrieval.losses import pair_contrastive
from lit_retrieval.methods.regional_attention.attention import weight_contrast


def _item(i: int) -> dict:
    g = np.random.default_rng(i)
    return {"a": g.random((2, 3 + i % 2, 4)).astype(np.float32) * 5, "b": g.random((1, 2, 2)).astype(np.float32),
            "label": np.int64(i), "box": np.array([i, 1.25, 3.5, 400.75], np.float32)}


class _Identity(FrozenEncoder):
    """An encoder whose maps are its inputs (counts the items it encodes)."""

    def __init__(self) -> None:
        super().__init__(torch.nn.Identity(), {"encoder": "identity"})
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += len(images)
        return images.float()


class _Counting(FrozenEncoder):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += len(images)
        return super().__call__(images)


def _store(root, n=7, key=None, **kw) -> FeatureStore:
    return FeatureStore(root, key or {"pool": "test"}, n, ("a", "b"), chunk_size=3, **kw)


def test_store_round_trip_in_float16_keeps_small_fields_exact(tmp_path):
    enc = _Identity()
    store = fill_store(_store(tmp_path), _item, enc, "test", progress=False)
    assert enc.calls == 2 * 7 and store.missing() == []
    for i in range(7):
        got, ref = store.get(i), _item(i)
        for m in ("a", "b"):
            assert got[m].dtype == np.float32 and got[m].shape == ref[m].shape  # items may differ in shape
            np.testing.assert_allclose(got[m], ref[m], rtol=1e-3, atol=1e-3)  # float16 on disk
        assert got["label"] == i and np.array_equal(got["box"], ref["box"])  # at their own dtype
    assert store.nbytes() > 0
    with pytest.raises(IndexError):
        store.get(7)


def test_interrupted_build_resumes_from_the_chunks_on_disk(tmp_path):
    def dies_at_5(i):
        if i == 5:
            raise KeyboardInterrupt
        return _item(i)

    with pytest.raises(KeyboardInterrupt):
        fill_store(_store(tmp_path), dies_at_5, _Identity(), "test", progress=False)
    store = _store(tmp_path)
    assert store.missing() == [1, 2]  # chunk 0 (items 0-2) was committed, chunk 1 (3-5) never was
    assert not list(store.dir.glob("*.tmp"))  # nothing half-written
    enc = _Identity()
    fill_store(store, _item, enc, "test", progress=False)
    assert enc.calls == 2 * 4 and store.missing() == []  # only items 3-6 were computed again


def test_a_changed_key_never_reads_another_keys_maps(tmp_path):
    fill_store(_store(tmp_path), _item, _Identity(), "test", progress=False)
    assert _store(tmp_path).missing() == []
    for other in (_store(tmp_path, key={"pool": "other"}), _store(tmp_path, n=8), _store(tmp_path, dtype="float32")):
        assert other.missing() == list(range(len(other.chunks())))


def test_a_damaged_chunk_is_recomputed_not_trusted(tmp_path):
    store = fill_store(_store(tmp_path), _item, _Identity(), "test", progress=False)
    blob = store.dir / "chunk_000001.npy"
    blob.write_bytes(blob.read_bytes()[:-10])
    assert _store(tmp_path).missing() == [1]
    enc = _Identity()
    fill_store(_store(tmp_path), _item, enc, "test", progress=False)
    assert enc.calls == 2 * 3


def test_float16_overflow_and_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="dtype=float32"):
        fill_store(_store(tmp_path), lambda i: {**_item(i), "a": np.full((2, 2, 2), 1e6, np.float32)}, _Identity(),
                   "test", progress=False)
    with pytest.raises(ValueError, match="dtype"):
        _store(tmp_path, dtype="int8")
    with pytest.raises(ValueError, match="online"):
        check_mode("sometimes")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="feature_store.dir"):
        _store(tmp_path / "file")


def test_cached_items_draw_from_a_seeded_generator_per_epoch_and_index(tmp_path):
    store = fill_store(_store(tmp_path), _item, _Identity(), "test", progress=False)
    draws = CachedItems(store, lambda it, rng: float(rng.random()), seed=3)
    first = [draws[i] for i in range(3)]
    assert first == [draws[i] for i in range(3)]
    draws.set_epoch(1)
    assert first != [draws[i] for i in range(3)]
    assert CachedItems(store, lambda it, rng: rng, random=False)[0] is None


def test_pair_contrastive_ignores_other_syntheses_of_the_same_object():
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    g = q.clone()
    g[1] = q[0]  # gallery 1 looks exactly like query 0, but it is another synthesis of the same object
    loss_same, hits = pair_contrastive(q, g, torch.tensor([0, 0, 1, 2]))
    loss_other, _ = pair_contrastive(q, g, torch.tensor([0, 1, 2, 3]))
    assert loss_same < loss_other and bool(hits[0])
    neg, _ = pair_contrastive(q, g, torch.tensor([0, 0, 1, 2]), negatives=q[:1])  # a hard negative = query 0 itself
    assert neg > loss_same
    with pytest.raises(ValueError, match="pair up"):
        pair_contrastive(q, g[:3], torch.tensor([0, 1, 2]))


def test_weight_contrast_is_zero_for_uniform_weights():
    w = torch.ones(3, 10)
    assert torch.allclose(weight_contrast(w), torch.zeros(3))
    w[0, 0] = 3.0
    assert weight_contrast(w)[0] > 0.4 and weight_contrast(w)[1] == 0


# -- cached and online training steps of regional attention --------------------------------------------------

@pytest.fixture(scope="module")
def module():
    from lit_retrieval.methods.regional_attention.module import RegionalAttentionModule

    torch.manual_seed(0)
    return RegionalAttentionModule(backbone={"name": "efficientnet_lite0", "weights": "imagenet"},
                                   optimizer={"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0},
                                   scheduler={"factor": 0.1, "patience": 1, "min_lr": 1e-4},
                                   whitening={"kind": "none"}, scales=3, train_scales=2, loss="retrieval").eval()


def test_cached_and_online_retrieval_steps_give_the_same_loss(tmp_path, module):
    from lit_retrieval.data.pairs import SyntheticPairs, cached_pairs
    from lit_retrieval.data.synthetic.procedural import ProceduralBackgrounds, ProceduralObjects

    pairs = SyntheticPairs(ProceduralObjects(3, seed=10), ProceduralBackgrounds(4, seed=10), syntheses=2,
                           gallery_size=96, query_size=64, seed=0, resample=False, shuffled=True)
    cached = cached_pairs(pairs, module.frozen_encoder(), {"dir": tmp_path, "dtype": "float16", "chunk_size": 4},
                          "test pairs")
    assert cached.source is pairs and len(cached) == len(pairs) == 6

    def batch(ds):
        items = [ds[i] for i in range(len(ds))]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    online, stored = batch(pairs), batch(cached)
    assert stored["gallery"].shape[1] == module.backbone.out_channels and online["gallery"].shape[1] == 3
    assert torch.equal(online["object"], stored["object"]) and torch.equal(online["box"], stored["box"])
    with torch.no_grad():
        lo, wrong_o, w_o, _ = module._retrieval(online)
        lc, wrong_c, w_c, _ = module._retrieval(stored)
    assert abs(float(lo) - float(lc)) < 2e-3 * max(1.0, abs(float(lo)))  # float16 maps
    torch.testing.assert_close(w_o, w_c, rtol=5e-3, atol=5e-3)
    # built once: a second pool of the same key computes nothing
    enc = _Counting(module.backbone, module.frozen_encoder().key())
    cached_pairs(pairs, enc, {"dir": tmp_path, "dtype": "float16", "chunk_size": 4}, "test pairs")
    assert enc.calls == 0


def test_cached_classification_crops_the_map_on_cell_boundaries(tmp_path, module):
    from lit_retrieval.data.classification import MapCrop

    m = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    x, y = MapCrop(3, train=False)({"image": m, "label": np.int64(4)}, None)
    assert y == 4 and torch.equal(x, torch.from_numpy(m[:, 1:4, 2:5]))
    rng = np.random.default_rng(0)
    crops = {tuple(MapCrop(3)({"image": m, "label": 0}, rng)[0][0, 0, :1].tolist()) for _ in range(50)}
    assert len(crops) > 3  # random positions
    with pytest.raises(ValueError, match="maps"):
        module.net.classify(torch.zeros(1, 5, 4, 4))  # neither images nor this backbone's maps


def test_cached_features_need_a_store_folder():
    from lit_retrieval.data.pairs import SyntheticPairsDataModule

    with pytest.raises(DataError, match="feature_store.dir"):
        SyntheticPairsDataModule(features="cached", feature_store={"dir": None})


def test_cached_and_online_local_similarity_steps_give_the_same_loss(tmp_path):
    from lit_retrieval.data.pairs import SyntheticPairs, cached_pairs
    from lit_retrieval.data.synthetic.procedural import ProceduralBackgrounds, ProceduralObjects
    from lit_retrieval.methods.local_similarity.module import LocalSimilarityModule

    torch.manual_seed(0)
    module = LocalSimilarityModule(backbone={"name": "efficientnet_lite0", "weights": "imagenet"},
                                   optimizer={"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0}, gallery_grid=4,
                                   query_grid=2, n_hard=30).eval()  # every negative: no top-k choice to flip
    pairs = SyntheticPairs(ProceduralObjects(3, seed=11), ProceduralBackgrounds(4, seed=11), syntheses=2,
                           gallery_size=96, query_size=64, seed=0, resample=False)
    cached = cached_pairs(pairs, module.frozen_encoder(), {"dir": tmp_path, "dtype": "float16", "chunk_size": 4},
                          "test pairs")

    def batch(ds):
        items = [ds[i] for i in range(len(ds))]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    online, stored = batch(pairs), batch(cached)
    assert stored["gallery_hw"].tolist() == [[96, 96]] * 6  # the gallery's pixels, which its map no longer tells
    with torch.no_grad():
        lo, lc = module._step(online, "train"), module._step(stored, "train")
    assert abs(float(lo) - float(lc)) < 2e-3 * max(1.0, abs(float(lo)))
    module.net.finetune_layers = 1
    with pytest.raises(ValueError, match="finetune_layers"):
        module.frozen_encoder()


def test_bad_objective_options_and_mismatched_data_are_clear_errors(module):
    from lit_retrieval.methods.regional_attention.module import RegionalAttentionModule

    common = dict(backbone={"name": "efficientnet_lite0", "weights": "imagenet"},
                  optimizer={"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0},
                  scheduler={"factor": 0.1, "patience": 1, "min_lr": 1e-4}, whitening={"kind": "none"})
    with pytest.raises(ValueError, match="model.loss='ranking'"):
        RegionalAttentionModule(**common, loss="ranking")
    with pytest.raises(ValueError, match="unknown model.retrieval keys"):
        RegionalAttentionModule(**common, loss="retrieval", retrieval={"margin": 0.1})
    with pytest.raises(ValueError, match="model.optimizer.name"):
        RegionalAttentionModule(**{**common, "optimizer": {**common["optimizer"], "name": "lbfgs"}})
    with pytest.raises(ValueError, match="data=synthetic_pairs with model.loss=retrieval"):
        module._step((torch.rand(2, 3, 64, 64), torch.tensor([1, 2])), "train")  # labelled images, loss=retrieval


def test_cached_classification_needs_a_stride_multiple_crop_and_a_frozen_model(tmp_path, module):
    from types import SimpleNamespace

    from lit_retrieval.data.classification import ClassificationDataModule
    from lit_retrieval.data.features import model_encoder

    dm = ClassificationDataModule(kind="embedded", cache_dir=str(tmp_path), crop=48, min_side=64, jitter=0,
                                  embedded={"n_classes": 2, "n_train": 2, "n_val": 1}, features="cached",
                                  feature_store={"dir": str(tmp_path / "features")})
    dm.trainer = SimpleNamespace(lightning_module=module)
    with pytest.raises(ValueError, match="multiple of the backbone's stride 32"):
        dm.setup()
    with pytest.raises(ValueError, match="data.features=online"):
        model_encoder(SimpleNamespace(trainer=SimpleNamespace(lightning_module=torch.nn.Linear(1, 1))))


def test_unknown_per_image_choice_is_an_error():
    from lit_retrieval.data.pairs import make_backgrounds, make_objects, split_sources

    with pytest.raises(ValueError, match="per_image"):
        split_sources(make_objects({"n": 4}), make_backgrounds({"n": 4}), per_image="smallest")


def test_maps_of_another_backbone_are_a_clear_error():
    from lit_retrieval.data.features import is_map

    assert not is_map(torch.zeros(1, 3, 8, 8), 1280) and is_map(torch.zeros(1, 1280, 2, 2), 1280)
    with pytest.raises(ValueError, match="rebuild the feature store"):
        is_map(torch.zeros(1, 2048, 2, 2), 1280)
