"""Detect-to-Retrieve pipeline around the kernels: the searchable database of every variant against brute force
(eqs. 1, 3, 4, 7, 9), variant checks and names, the inverted file without normalisation, local features (multi-scale
activations, top-k by norm, pixel positions), regions (whole image always region 0, boxes re-extracted on crops),
the PCA + k-means codebook and the R-MAC boxes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_retrieval.backbones import Backbone
from lit_retrieval.methods.detect_to_retrieve import (VARIANTS, ActivationFeatures, Codebook, Database, InvertedFile,
                               LocalFeatureExtractor, asmk, asmk_star, bytes_per_image, check_variant, crop,
                               encode_image, encode_query, learn_codebook, naive_r_asmk, r_asmk,
                               r_vlad, region_descriptors, regions_per_image, rmac_boxes, select_boxes, sim_avg,
                               sim_max, similarity, vlad)
from lit_retrieval.methods.detect_to_retrieve.database import uses_gamma

K, D = 16, 8


def _data(seed=0, n_images=12):
    """Random centroids, database images as region lists (region 0 = the whole image, regions are subsets of it,
    one image without descriptors, one with an empty region) and queries (random, a database region, empty)."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((K, D)).astype(np.float32)
    images = []
    for _ in range(n_images):
        X = rng.standard_normal((int(rng.integers(5, 40)), D)).astype(np.float32)
        regions = [X] + [X[rng.random(len(X)) < 0.4] for _ in range(int(rng.integers(0, 4)))]
        images.append(regions)
    images[4] = [np.zeros((0, D), np.float32)]
    images[7] = images[7][:1] + [np.zeros((0, D), np.float32)]
    queries = [rng.standard_normal((30, D)).astype(np.float32), images[2][-1], np.zeros((0, D), np.float32)]
    return C, images, queries


def _brute(q, items, aggregation, **kw):
    if aggregation == "search_max":
        return sim_max(q, items, **kw)
    if aggregation == "search_avg":
        return sim_avg(q, items, **kw)
    assert len(items) == 1
    return similarity(q, items[0], **kw)


# ------------------------------------------------------------------------------------------------- database
@pytest.mark.parametrize("normalize", ["paper", "delf", "gamma", True, False])
@pytest.mark.parametrize("kernel,aggregation", VARIANTS)
def test_database_equals_brute_force(kernel, aggregation, normalize):
    C, images, queries = _data()
    items = [encode_image(regions, C, kernel, aggregation) for regions in images]
    db = Database.build(items, kernel, aggregation, normalize=normalize)
    assert db.n_images == len(images) and len(db) == len(images)
    n_regions = np.array([len(r) for r in images])
    assert db.items_per_image == pytest.approx(n_regions.mean() if aggregation.startswith("search") else 1.0)
    assert db.relative_size == db.items_per_image
    assert db.bytes_per_image == pytest.approx(np.mean([sum(bytes_per_image(it) for it in its) for its in items]))
    Q = [encode_query(q, C, kernel) for q in queries]
    for q in Q:
        brute = np.array([_brute(q, its, aggregation, normalize=uses_gamma(normalize, aggregation)) for its in items])
        s = db.scores(q)
        assert s.shape == (len(images),) and s.dtype == np.float64 and not np.isnan(s).any()
        np.testing.assert_allclose(s, brute, rtol=1e-5, atol=1e-6)
        assert s[4] == 0.0  # an image without descriptors shares no word: 0 (DELF: −1)
    np.testing.assert_allclose(db.score_matrix(Q), np.stack([db.scores(q) for q in Q]), rtol=1e-6, atol=1e-7)
    ranks = db.rank(Q)
    assert ranks.shape == (len(Q), len(images)) and ranks.dtype == np.int64
    np.testing.assert_array_equal(ranks, np.argsort(-db.score_matrix(Q), axis=1, kind="stable"))
    np.testing.assert_array_equal(db.rank(Q, k=3), ranks[:, :3])
    assert (db.rank(Q[-1:]) == np.arange(len(images))).all()  # the empty query ties everywhere: id order


def test_encode_image_items_are_the_kernels_of_the_paper():
    C, images, _ = _data(1)
    regions = images[0] if len(images[0]) > 1 else images[1]
    n = len(regions)
    assert len(encode_image(regions, C, "asmk", "none")) == 1
    np.testing.assert_array_equal(encode_image(regions, C, "vlad", "none")[0], vlad(regions[0], C))
    search = encode_image(regions, C, "asmk_star", "search_max")
    assert len(search) == n
    for it, r in zip(search, regions):
        np.testing.assert_array_equal(it.words, asmk_star(r, C).words)
        np.testing.assert_array_equal(it.vecs, asmk_star(r, C).vecs)
    np.testing.assert_array_equal(encode_image(regions, C, "vlad", "r_vlad")[0], r_vlad(regions, C))
    np.testing.assert_array_equal(encode_image(regions, C, "asmk", "naive_r_asmk")[0].vecs,
                                  naive_r_asmk(regions, C).vecs)
    np.testing.assert_array_equal(encode_image(regions, C, "asmk", "r_asmk")[0].vecs, r_asmk(regions, C).vecs)
    rs = encode_image(regions, C, "asmk_star", "r_asmk")[0]
    assert rs.binary and np.array_equal(rs.vecs, r_asmk(regions, C, binary=True).vecs)
    with pytest.raises(ValueError):
        encode_image([], C, "asmk", "r_asmk")


def test_r_vlad_database_equals_search_avg_with_vlad():
    """Eqs. 5-7: average pooling of regional VLAD similarities = one R-VLAD vector per image."""
    C, images, queries = _data(2)
    avg = Database.from_regions(images, C, "vlad", "search_avg")
    rv = Database.from_regions(images, C, "vlad", "r_vlad")
    assert rv.items_per_image == 1 and avg.items_per_image > 1
    for q in queries[:2]:
        qv = encode_query(q, C, "vlad")
        np.testing.assert_allclose(rv.scores(qv), avg.scores(qv), rtol=1e-5, atol=1e-6)


def test_invalid_variants_raise():
    for kernel, aggregation in [("asmk", "r_vlad"), ("asmk_star", "r_vlad"), ("vlad", "naive_r_asmk"),
                                ("asmk_star", "naive_r_asmk"), ("vlad", "r_asmk"), ("bow", "none"),
                                ("asmk", "sum")]:
        with pytest.raises(ValueError, match="valid"):
            check_variant(kernel, aggregation)
        with pytest.raises(ValueError):
            Database.build([[np.zeros(4, np.float32)]], kernel, aggregation)
    for kernel, aggregation in VARIANTS:
        check_variant(kernel, aggregation)
    C, images, _ = _data(3)
    with pytest.raises(ValueError, match="one item per image"):  # several items for a single-item aggregation
        Database.build([encode_image(images[0] + images[0], C, "asmk", "search_max")], "asmk", "r_asmk")
    with pytest.raises(ValueError, match="binary"):  # float items in an ASMK* database
        Database.build([encode_image(images[0], C, "asmk", "none")], "asmk_star", "none")
    with pytest.raises(ValueError, match="no stored item"):
        Database.build([[]], "asmk", "search_max")
    db = Database.from_regions(images, C, "asmk", "none")
    with pytest.raises(ValueError):
        db.scores(encode_query(images[0][0], C, "asmk_star"))
    with pytest.raises(ValueError):
        db.scores(encode_query(images[0][0], C, "vlad"))


def test_variant_names():
    from lit_retrieval.methods.detect_to_retrieve import variant_name
    assert variant_name("asmk_star", "none") == "ASMK*"
    assert variant_name("asmk_star", "search_max") == "D2R-ASMK*"
    assert variant_name("asmk_star", "search_avg") == "D2R_AVG-ASMK*"
    assert variant_name("asmk_star", "r_asmk") == "D2R-R-ASMK*"
    assert variant_name("asmk", "r_asmk", "RMACB") == "RMACB-R-ASMK"
    assert variant_name("asmk_star", "r_asmk", "RMACB") == "RMACB-R-ASMK*"
    assert variant_name("vlad", "r_vlad") == "D2R-R-VLAD"
    assert variant_name("vlad", "search_max") == "D2R-VLAD"
    assert variant_name("asmk", "naive_r_asmk") == "D2R-Naive-R-ASMK"


def test_rank_ties_lower_index_first_and_sizes():
    C, images, _ = _data(4)
    X = images[0][0]
    regions = [[X], [X[:10]], [X], [X, X[:10]], [X]]  # images 0, 2, 4 identical; image 3 holds image 1 as a region
    db = Database.from_regions(regions, C, "asmk_star", "search_max")
    assert db.n_items == 6 and db.items_per_image == pytest.approx(6 / 5)
    np.testing.assert_array_equal(db.item_image, [0, 1, 2, 3, 3, 4])
    q = encode_query(X, C, "asmk_star")
    s = db.scores(q)
    assert s[0] == s[2] == s[3] == s[4] == pytest.approx(1.0)
    np.testing.assert_array_equal(db.rank([q])[0], [0, 2, 3, 4, 1])
    q1 = encode_query(X[:10], C, "asmk_star")
    assert db.scores(q1)[3] == pytest.approx(1.0)  # max pooling finds the region
    one = Database.from_regions(regions, C, "asmk_star", "none")
    assert one.relative_size == 1.0 and one.items_per_image == 1.0
    assert db.relative_bytes(one) == pytest.approx(db.bytes_per_image / one.bytes_per_image)
    assert db.bytes_per_image > one.bytes_per_image


def test_inverted_file_without_normalisation():
    C, images, queries = _data(5)
    sets = [asmk(r[0], C) for r in images]
    q = asmk(queries[0], C)
    raw = InvertedFile.build(sets, normalize=False).scores(q)
    np.testing.assert_allclose(raw, [similarity(q, s, normalize=False) for s in sets], rtol=1e-5, atol=1e-9)
    norm = InvertedFile.build(sets).scores(q)  # default unchanged: eq. 1 with γ
    np.testing.assert_allclose(norm, [similarity(q, s) for s in sets], rtol=1e-5, atol=1e-9)
    assert not np.allclose(raw, norm)


def test_inverted_file_saved_and_memory_mapped(tmp_path):
    C, images, queries = _data(6)
    for binary in (False, True):
        sets = [(asmk_star if binary else asmk)(r[0], C) for r in images]
        ivf = InvertedFile.build(sets)
        back = InvertedFile.load(ivf.save(tmp_path / str(binary)))
        assert isinstance(back.vecs, np.memmap) and back.binary == binary and len(back) == len(ivf)
        for qd in queries:
            q = (asmk_star if binary else asmk)(qd, C)
            np.testing.assert_array_equal(back.scores(q), ivf.scores(q))
        assert back.bytes_per_image() == ivf.bytes_per_image()
    (tmp_path / "True" / "ivf.json").unlink()  # an interrupted save
    with pytest.raises(FileNotFoundError, match="ivf.json"):
        InvertedFile.load(tmp_path / "True")


# ----------------------------------------------------------------------------------------------- local features
class AvgPool8(Backbone):
    """A fake backbone with known features: 8×8 average pooling of the raw [0, 1] image (3 channels, stride 8)."""

    def __init__(self):
        super().__init__("avgpool8", out_channels=3, stride=8, mean=(0.0,) * 3, std=(1.0,) * 3)
        self.freeze()

    def _features(self, x):
        return F.avg_pool2d(x, 8)


def _block_image(seed=0):
    """48×64 image: noise in [0, 0.1] and one bright 8×8 block at rows 16-24, columns 40-48."""
    g = torch.Generator().manual_seed(seed)
    image = 0.1 * torch.rand(3, 48, 64, generator=g)
    image[:, 16:24, 40:48] = 1.0
    return image


def test_activation_features_top_k_by_norm_in_image_pixels():
    image = _block_image()
    ext = ActivationFeatures(AvgPool8(), scales=(0.5, 1.0, 2.0), max_features=5)
    assert isinstance(ext, LocalFeatureExtractor) and ext.dim == 3
    desc, loc, sc = ext(image)
    assert desc.shape == (5, 3) and loc.shape == (5, 2) and sc.shape == (5,)
    assert desc.dtype == loc.dtype == sc.dtype == np.float32
    # the block is one cell at scale 1 and 2×2 cells at scale 2; at scale 0.5 it is a quarter of one cell (≈ 0.3)
    assert sorted(sc.tolist()) == [1.0, 2.0, 2.0, 2.0, 2.0]
    np.testing.assert_allclose(loc[sc == 1.0], [[44.0, 20.0]])  # ((5 + 0.5)·8, (2 + 0.5)·8)
    np.testing.assert_allclose(sorted(map(tuple, loc[sc == 2.0])), [(42, 18), (42, 22), (46, 18), (46, 22)])
    np.testing.assert_allclose(desc[sc == 1.0], np.ones((1, 3)), rtol=1e-6)
    norms = np.linalg.norm(desc, axis=1)
    assert (np.diff(norms) <= 1e-6).all()  # norm descending
    # everything: 6×8 + 3×4 + 12×16 = 252 locations at the three scales, positions = the cell centres in pixels
    d_all, l_all, s_all = ActivationFeatures(AvgPool8(), scales=(0.5, 1.0, 2.0), max_features=10_000)(image)
    assert len(d_all) == 6 * 8 + 3 * 4 + 12 * 16
    assert np.linalg.norm(d_all, axis=1).min() <= norms.min()
    half = l_all[s_all == 0.5]
    np.testing.assert_allclose(np.unique(half[:, 0]), (np.arange(4) + 0.5) * 16)
    np.testing.assert_allclose(np.unique(half[:, 1]), (np.arange(3) + 0.5) * 16)
    ref = F.avg_pool2d(image[None], 8)[0].reshape(3, -1).T.numpy()  # scale 1.0: the pooled image itself
    got = d_all[s_all == 1.0][np.lexsort((l_all[s_all == 1.0][:, 0], l_all[s_all == 1.0][:, 1]))]
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_activation_features_skip_small_scales_and_drop_dead_locations():
    ext = ActivationFeatures(AvgPool8(), scales=(0.5, 1.0))
    d, loc, sc = ext(torch.full((3, 12, 12), 0.5))  # 6 px at scale 0.5 < one stride: skipped
    assert d.shape == (1, 3) and (sc == 1.0).all()
    np.testing.assert_allclose(loc, [[4.0, 4.0]])
    for tiny in (torch.full((3, 4, 4), 0.5), torch.zeros(3, 16, 16)):  # too small / all activations zero
        d, loc, sc = ext(tiny)
        assert d.shape == (0, 3) and loc.shape == (0, 2) and sc.shape == (0,)
    with pytest.raises(ValueError):
        ext(torch.rand(1, 3, 16, 16))


def test_crop_rounds_outward_and_clips():
    image = torch.rand(3, 40, 50)
    assert crop(image, (-5, -5, 1000, 1000)).shape == image.shape
    assert crop(image, (60, 45, 70, 50)).shape == (3, 1, 1)  # outside: the last pixel
    torch.testing.assert_close(crop(image, (3.2, 5.7, 20.1, 30.0)), image[:, 5:30, 3:21])


def test_region_descriptors_whole_image_first_and_boxes_re_extracted():
    image = _block_image(1)
    ext = ActivationFeatures(AvgPool8(), scales=(1.0,))
    for boxes in (None, np.zeros((0, 4))):
        regions = region_descriptors(ext, image, boxes)
        assert len(regions) == 1
        np.testing.assert_array_equal(regions[0], ext(image)[0])
    boxes = np.array([[36.0, 12.0, 52.0, 28.0], [3.0, 5.0, 5.0, 7.0]])
    regions = region_descriptors(ext, image, boxes)
    assert len(regions) == 3
    np.testing.assert_array_equal(regions[0], ext(image)[0])
    crop_desc = ext(image[:, 12:28, 36:52])[0]  # a 16×16 crop: 2×2 new cells, not the whole image's cells
    np.testing.assert_array_equal(regions[1], crop_desc)
    assert len(regions[1]) == 4 and not np.isclose(regions[1], 1.0).all(axis=1).any()
    assert regions[2].shape == (0, 3)  # a 2×2-pixel crop is smaller than one stride


def test_selected_box_features_are_the_whole_images_inside_the_box():
    image = _block_image(1)
    ext = ActivationFeatures(AvgPool8(), scales=(0.5, 1.0, 2.0), max_features=7)
    boxes = np.array([[36.0, 12.0, 52.0, 28.0], [0.0, 0.0, 64.0, 48.0], [3.0, 5.0, 5.0, 7.0]])
    picked = region_descriptors(ext, image, boxes, box_features="select")
    np.testing.assert_array_equal(picked[0], ext(image)[0])  # the whole image as with re-extraction
    d_all, loc, _ = ActivationFeatures(AvgPool8(), scales=ext.scales, max_features=10_000)(image)
    inside = (loc[:, 0] >= 36) & (loc[:, 0] < 52) & (loc[:, 1] >= 12) & (loc[:, 1] < 28)
    want = d_all[inside][:7]  # the strongest 7 of the whole image's features centred in the box (ties: any order)
    rows = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(rows(picked[1]), rows(want))
    np.testing.assert_array_equal(rows(picked[2]), rows(ext(image)[0]))  # the whole image as a box: the same
    assert picked[3].shape == (0, 3)  # no feature centre in a 2×2-pixel box
    with pytest.raises(ValueError, match="box_features"):
        region_descriptors(ext, image, boxes, box_features="crop")
    from lit_retrieval.methods.detect_to_retrieve.pipeline import settings_from_method

    assert settings_from_method({"features": {"regions": "select"}}).box_features == "select"
    with pytest.raises(ValueError, match="features.regions='crop'"):
        settings_from_method({"features": {"regions": "crop"}})


def test_activation_features_on_a_real_backbone():
    from lit_retrieval.backbones import build_backbone
    torch.manual_seed(0)
    bb = build_backbone("efficientnet_lite0", weights="random")
    ext = ActivationFeatures(bb, max_features=50)
    image = torch.rand(3, 96, 128)
    desc, loc, sc = ext(image)
    assert desc.shape[1] == 1280 and 0 < len(desc) <= 50
    assert (loc[:, 0] >= 0).all() and (loc[:, 0] <= 128).all() and (loc[:, 1] >= 0).all() and (loc[:, 1] <= 96).all()
    assert set(np.unique(sc)) <= set(np.float32([0.7071, 1.0, 1.4142]))
    regions = region_descriptors(ext, image, [[0, 0, 64, 64]])
    assert len(regions) == 2 and regions[1].shape[1] == 1280


# --------------------------------------------------------------------------------------------------- codebook
def test_codebook_project_save_load_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    X = np.abs(rng.standard_normal((700, 32))).astype(np.float32) * rng.uniform(0.5, 5, (700, 1)).astype(np.float32)
    book = learn_codebook(X, dim=8, K=16, seed=1, source="random")
    assert book.pca_mean.shape == (32,) and book.pca_proj.shape == (8, 32) and book.centroids.shape == (16, 8)
    assert (book.dim_in, book.dim, book.K, book.n_train, book.seed) == (32, 8, 16, 700, 1)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(book.pca_mean, Xn.mean(0), atol=1e-5)  # faiss' mean read out
    np.testing.assert_allclose(book.pca_proj @ book.pca_proj.T, np.eye(8), atol=1e-4)  # orthonormal, no whitening
    evals, evecs = np.linalg.eigh(np.cov(Xn.T.astype(np.float64), bias=True))
    np.testing.assert_allclose(np.abs(book.pca_proj @ evecs[:, ::-1][:, :8]), np.eye(8), atol=1e-3)  # top 8
    Y = book.project(X[:50])
    assert Y.shape == (50, 8) and Y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(book.project(3 * X[:50]), Y, rtol=1e-5, atol=1e-6)  # L2 first: scale-free
    assert book.project(np.zeros((2, 32))).tolist() == [[0.0] * 8] * 2  # zero rows stay zero, never NaN
    assert book.project(np.zeros((0, 32))).shape == (0, 8)
    path = book.save(tmp_path / "sub" / "codebook.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["codebook.npz"]  # no temporary file left
    back = Codebook.load(path)
    for name in ("pca_mean", "pca_proj", "centroids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(book, name))
    assert (back.source, back.n_train, back.seed, back.whiten) == ("random", 700, 1, False)
    np.testing.assert_array_equal(back.project(X[:5]), book.project(X[:5]))
    back.check(32)
    with pytest.raises(ValueError, match="1280"):
        back.check(1280)
    with pytest.raises(ValueError, match="1280"):
        back.project(np.ones((3, 1280)))
    with pytest.raises(ValueError, match="lower K or dim"):
        learn_codebook(X[:10], dim=8, K=16)
    white = learn_codebook(X, dim=8, K=16, whiten=True)
    Z = (Xn - white.pca_mean) @ white.pca_proj.T
    np.testing.assert_allclose(np.cov(Z.T.astype(np.float64), bias=True), np.eye(8), atol=1e-3)  # whitened


# ------------------------------------------------------------------------------------------------------ boxes
def test_rmac_boxes_counts_and_inside_the_image():
    for (H, W) in ((768, 1024), (1024, 768), (96, 128)):
        counts = [len(rmac_boxes(H, W, L)) for L in (1, 2, 3)]
        assert counts == [2, 8, 20]  # 2 levels: 8 boxes + the whole image = the paper's 9 regions per image
        b = rmac_boxes(H, W, 3)
        assert b.dtype == np.float32 and b.shape == (20, 4)
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (np.abs((b[:, 2] - b[:, 0]) - (b[:, 3] - b[:, 1])) == 0).all()  # square boxes
    np.testing.assert_array_equal(rmac_boxes(768, 1024, 1), [[0, 0, 768, 768], [256, 0, 1024, 768]])
    assert len(rmac_boxes(512, 512, 1)) == 0 and len(rmac_boxes(512, 512, 1, drop_whole=False)) == 1
    assert len(rmac_boxes(512, 512, 2)) == 4  # the level-1 box of a square image is the whole image: dropped


def test_select_boxes_and_region_counts():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 5, 5], [2, 2, 8, 8], [3, 3, 9, 9]], np.float32)
    scores = np.array([0.05, 0.9, 0.1, 0.5], np.float32)
    b, s = select_boxes(boxes, scores, 0.1)
    np.testing.assert_array_equal(b, boxes[[1, 3, 2]])
    np.testing.assert_array_equal(s, scores[[1, 3, 2]])
    assert len(select_boxes(boxes, scores, 0.95)[0]) == 0 and len(select_boxes(boxes, scores, 0.0, 2)[0]) == 2
    stats = regions_per_image([b, np.zeros((0, 4)), b[:1]])
    assert stats == dict(mean=(4 + 1 + 2) / 3, min=1.0, max=4.0, total=7.0, n_images=3.0)
    assert regions_per_image([b], include_whole=False)["mean"] == 3.0
    with pytest.raises(ValueError):
        select_boxes(boxes, scores[:2], 0.1)


def test_pipeline_features_codebook_boxes_database():
    """Images -> regions (whole image + R-MAC boxes, re-extracted) -> codebook -> every variant's database; an image
    queried with itself ranks first in the single-image baseline."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 48, 64, generator=g) for _ in range(5)]
    ext = ActivationFeatures(AvgPool8(), scales=(1.0, 2.0))
    boxes = rmac_boxes(48, 64, 2)
    raw = [region_descriptors(ext, im, boxes) for im in images]
    assert all(len(r) == 1 + len(boxes) for r in raw)
    book = learn_codebook(np.concatenate([r[0] for r in raw]), dim=3, K=8, source="pipeline")
    book.check(ext.dim)
    regions = [[book.project(x) for x in r] for r in raw]
    for kernel, aggregation in VARIANTS:
        db = Database.from_regions(regions, book.centroids, kernel, aggregation)
        q = [encode_query(book.project(ext(images[i])[0]), book.centroids, kernel) for i in (1, 3)]
        ranks = db.rank(q)
        assert ranks.shape == (2, 5)
        if aggregation == "none":
            np.testing.assert_array_equal(ranks[:, 0], [1, 3])
