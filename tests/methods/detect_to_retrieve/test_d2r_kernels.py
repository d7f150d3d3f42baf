"""Detect-to-Retrieve aggregated match kernels: hand-computed VLAD / ASMK / ASMK* values, the regional identities of
Sec. 4.3 (eqs. 5-8), R-ASMK vs Naive-R-ASMK, regional search (eqs. 3-4) and the inverted file against brute force."""
from __future__ import annotations

import numpy as np
import pytest

from lit_retrieval.methods.detect_to_retrieve import (Aggregated, InvertedFile, asmk, asmk_star, assign,
                                                      binary_similarity, bytes_per_image, gamma, hamming, naive_r_asmk,
                                                      r_asmk, r_asmk_star, r_vlad, selectivity, sim_avg, sim_max,
                                                      similarity, vlad)

S2, S5, S17 = np.sqrt(2.0), np.sqrt(5.0), np.sqrt(17.0)
C3 = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
X3 = np.array([[1.0, 0.0], [0.0, 2.0], [11.0, 1.0]])  # words 0, 0, 1: V_0 = (1, 2), V_1 = (1, 1), V_2 = 0


def _agg(words, vecs, **kw):
    return Aggregated(np.asarray(words, np.int64), np.asarray(vecs, np.float32), 2, **kw)


def _random(seed=0, K=16, D=8):
    rng = np.random.default_rng(seed)
    return rng, rng.standard_normal((K, D)).astype(np.float32)


# ------------------------------------------------------------------------------------------------- single sets
def test_assign_and_vlad_residual_sums():
    np.testing.assert_array_equal(assign(X3, C3), [0, 0, 1])
    np.testing.assert_allclose(vlad(X3, C3), np.array([1, 2, 1, 1, 0, 0]) / np.sqrt(7.0), rtol=1e-6)
    assert vlad(X3, C3).dtype == np.float32 and vlad(X3, C3).shape == (6,)
    np.testing.assert_allclose(similarity(vlad(X3, C3), vlad(X3, C3)), 1.0, rtol=1e-6)


def test_asmk_normalised_residuals_and_words():
    a = asmk(X3, C3)
    np.testing.assert_array_equal(a.words, [0, 1])
    np.testing.assert_allclose(a.vecs, [[1 / S5, 2 / S5], [1 / S2, 1 / S2]], rtol=1e-6)
    assert a.vecs.dtype == np.float32 and not a.binary and not a.prenormalized
    assert gamma(a) == pytest.approx(1 / S2)  # γ = M^(-1/2): every σ(V̂ᵀV̂) = σ(1) = 1
    assert similarity(a, a) == pytest.approx(1.0)


def test_selectivity():
    np.testing.assert_allclose(selectivity([-0.5, 0.0, 0.5, 1.0]), [0.0, 0.0, 0.125, 1.0])
    np.testing.assert_allclose(selectivity([0.1, 0.3], alpha=2, tau=0.2), [0.0, 0.09])
    np.testing.assert_allclose(selectivity([-0.5, 0.5], alpha=1, tau=-np.inf), [-0.5, 0.5])


def test_asmk_similarity_with_selectivity():
    a = _agg([0, 1, 2], [[1, 0], [1, 0], [1, 0]])
    b = _agg([1, 2, 3], [[0.6, 0.8], [-1, 0], [0, 1]])  # common words 1 (dot 0.6) and 2 (dot −1)
    assert similarity(a, b, normalize=False) == pytest.approx(0.6 ** 3)  # the negative dot product gives 0
    assert similarity(a, b) == pytest.approx(0.6 ** 3 / 3)  # γ(a)·γ(b) = 3^(-1/2)·3^(-1/2)
    assert similarity(a, b, alpha=1, tau=-np.inf) == pytest.approx((0.6 - 1.0) / 3)
    assert similarity(b, a) == pytest.approx(similarity(a, b))


BITS = np.array([1, 0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0], np.uint8)
X12 = np.array([[1, -2, 0, 3, -1, 5, -7, 2, 0.5, -0.5, 4, -4]])  # signs -> BITS (0 -> bit 0, i.e. −1)


def test_binarization_and_packbits_round_trip():
    a = asmk_star(X12, np.zeros((1, 12)))
    assert a.binary and a.dim == 12 and a.vecs.shape == (1, 2)
    np.testing.assert_array_equal(a.vecs, [[0b10010101, 0b10100000]])
    np.testing.assert_array_equal(np.unpackbits(a.vecs, axis=1, count=12), BITS[None])
    f = asmk(X12, np.zeros((1, 12)))  # same signs as the float ASMK vector
    np.testing.assert_array_equal(np.unpackbits(a.vecs, axis=1, count=12)[0], f.vecs[0] > 0)


def test_hamming_similarity():
    b = BITS.copy()
    b[[0, 4, 11]] ^= 1  # 3 flipped bits
    pa, pb = np.packbits(BITS), np.packbits(b)
    assert hamming(pa, pb) == 3
    assert binary_similarity(pa, pb, 12) == pytest.approx(1 - 2 * 3 / 12)
    a8, b8 = np.packbits([1, 1, 1, 1, 0, 0, 0, 0]), np.packbits([1, 1, 1, 0, 0, 0, 0, 1])
    assert binary_similarity(a8, b8, 8) == pytest.approx(0.5)
    A = Aggregated(np.array([0]), pa[None], 12)
    B = Aggregated(np.array([0]), pb[None], 12)
    assert similarity(A, B) == pytest.approx(0.5 ** 3)
    assert similarity(A, A) == pytest.approx(1.0)
    c = BITS.copy()
    c[:7] ^= 1  # h = 7 -> 1 − 14/12 < 0 -> σ = 0
    assert similarity(A, Aggregated(np.array([0]), np.packbits(c)[None], 12)) == 0.0


def test_bytes_per_image():
    a, b = asmk(X3, C3), asmk_star(X3, C3)
    assert bytes_per_image(a) == 2 * (2 * 4 + 4)
    assert bytes_per_image(b) == 2 * (1 + 4)
    assert bytes_per_image(vlad(X3, C3)) == 3 * 2 * 4


# ------------------------------------------------------------------------------------------ regional search
def test_sim_max_sim_avg():
    q = _agg([0], [[1, 0]])
    regions = [_agg([0], [[1, 0]]), _agg([0, 1], [[0.6, 0.8], [0, 1]]), _agg([0], [[-1, 0]])]
    k = [1.0, 0.6 ** 3 / S2, 0.0]
    assert sim_max(q, regions) == pytest.approx(max(k))
    assert sim_avg(q, regions) == pytest.approx(np.mean(k))
    with pytest.raises(ValueError):
        sim_max(q, [])


# ----------------------------------------------------------------------------------- regional aggregation
C2 = np.array([[0.0, 0.0], [100.0, 100.0]])
REGIONS = [np.array([[4.0, 0.0], [0.0, 3.0], [100.0, 112.0]]),  # region 0 = whole image: V_0 = (4, 3), V_1 = (0, 12)
           np.array([[0.0, 3.0]])]  # region 1: V_0 = (0, 3)


def test_r_asmk_vs_naive_r_asmk_hand_example():
    r = r_asmk(REGIONS, C2)  # V_R ∝ (4, 3)/13 + (0, 3)/3 = (4, 16)/13 for word 0, (0, 12)/13 for word 1
    np.testing.assert_array_equal(r.words, [0, 1])
    np.testing.assert_allclose(r.vecs, [[1 / S17, 4 / S17], [0, 1]], rtol=1e-6, atol=1e-7)
    n = naive_r_asmk(REGIONS, C2)  # (1/R)·Σ_r M_r^(-1/2)·V̂: M_0 = 2, M_1 = 1, R = 2, no per-word L2
    np.testing.assert_array_equal(n.words, [0, 1])
    np.testing.assert_allclose(n.vecs, [[0.4 / S2, 0.3 / S2 + 0.5], [0, 0.5 / S2]], rtol=1e-6, atol=1e-7)
    assert n.prenormalized and gamma(n) == 1.0
    q = asmk(np.array([[1.0, 0.0]]), C2)  # word 0, V̂ = (1, 0)
    assert similarity(q, r) == pytest.approx((1 / S17) ** 3 / S2)
    assert similarity(q, n) == pytest.approx((0.4 / S2) ** 3)
    assert similarity(q, r) != pytest.approx(similarity(q, n))
    nl = naive_r_asmk(REGIONS, C2, per_word_l2=True)
    np.testing.assert_allclose(np.linalg.norm(nl.vecs, axis=1), 1.0, rtol=1e-6)
    rs = r_asmk_star(REGIONS, C2)
    np.testing.assert_array_equal(rs.vecs, [[0b11000000], [0b01000000]])
    rv = r_vlad(REGIONS, C2)
    np.testing.assert_allclose(rv, (np.array([4, 3, 0, 12]) / 13 + np.array([0, 3, 0, 0]) / 3) / 2, rtol=1e-6)


def test_r_vlad_is_the_average_of_regional_vlad_similarities():
    rng, C = _random(1)
    X = rng.standard_normal((60, 8))
    regions = [X, X[:20], X[15:45], X[50:]]
    q = vlad(rng.standard_normal((30, 8)), C)
    avg = np.mean([similarity(q, vlad(r, C)) for r in regions])  # eq. 4 with the VLAD kernel
    rv = r_vlad(regions, C)
    assert similarity(q, rv) == pytest.approx(avg, rel=1e-5)  # eq. 7
    assert sim_avg(q, [vlad(r, C) for r in regions]) == pytest.approx(avg)
    rv_l2 = r_vlad(regions, C, l2=True)  # the final L2 only rescales: factor it out
    np.testing.assert_allclose(np.linalg.norm(rv_l2), 1.0, rtol=1e-6)
    assert similarity(q, rv_l2) * np.linalg.norm(rv.astype(np.float64)) == pytest.approx(avg, rel=1e-5)


def test_naive_r_asmk_is_sim_avg_without_selectivity_and_r_asmk_of_one_region_is_asmk():
    rng, C = _random(2)
    X = rng.standard_normal((60, 8))
    regions = [X, X[:25], X[30:]]
    q = asmk(rng.standard_normal((40, 8)), C)
    ident = dict(alpha=1.0, tau=-np.inf)  # σ = identity: eq. 5 -> eq. 6 with V̂
    avg = sim_avg(q, [asmk(r, C) for r in regions], **ident)
    assert similarity(q, naive_r_asmk(regions, C), **ident) == pytest.approx(avg, rel=1e-5)
    one, ref = r_asmk([X], C), asmk(X, C)
    np.testing.assert_array_equal(one.words, ref.words)
    np.testing.assert_allclose(one.vecs, ref.vecs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r_asmk_star([X], C).vecs, asmk_star(X, C).vecs)
    with pytest.raises(ValueError):
        r_asmk([], C)


# ----------------------------------------------------------------------------------------------- empty inputs
def test_empty_sets_give_zero_similarity():
    empty = np.zeros((0, 2))
    e, a = asmk(empty, C3), asmk(X3, C3)
    assert len(e) == 0 and e.vecs.shape == (0, 2) and asmk_star(empty, C3).vecs.shape == (0, 1)
    eb, ab = asmk_star(empty, C3), asmk_star(X3, C3)
    for s in (similarity(e, a), similarity(a, e), similarity(e, e), similarity(eb, ab), similarity(ab, eb)):
        assert s == 0.0 and not np.isnan(s)
    assert gamma(e) == 0.0
    np.testing.assert_array_equal(vlad(empty, C3), np.zeros(6))
    assert similarity(vlad(empty, C3), vlad(X3, C3)) == 0.0
    assert len(r_asmk([empty], C3)) == 0 and len(naive_r_asmk([empty, empty], C3)) == 0
    np.testing.assert_array_equal(r_vlad([empty], C3), np.zeros(6))
    with_empty = r_asmk([X3, empty], C3)  # an empty region adds nothing (it only counts in R)
    np.testing.assert_allclose(with_empty.vecs, asmk(X3, C3).vecs, rtol=1e-6)
    assert sim_max(e, [a, e]) == 0.0 and sim_avg(e, [a]) == 0.0


# ----------------------------------------------------------------------------------------------- inverted file
@pytest.mark.parametrize("kind", ["asmk", "asmk_star", "naive_r_asmk"])
def test_inverted_file_equals_brute_force(kind):
    rng, C = _random(3)
    sets = [rng.standard_normal((int(n), 8)) for n in rng.integers(0, 40, 20)]
    sets[5] = np.zeros((0, 8))  # an image without descriptors
    if kind == "naive_r_asmk":
        db = [naive_r_asmk([X, X[: len(X) // 2]], C) for X in sets]
        make = asmk
    else:
        make = asmk_star if kind == "asmk_star" else asmk
        db = [make(X, C) for X in sets]
    ivf = InvertedFile.build(db)
    assert len(ivf) == 20
    for qX in (rng.standard_normal((30, 8)), sets[3], np.zeros((0, 8))):
        q = make(qX, C)
        scores, ranks = ivf.search(q)
        brute = np.array([similarity(q, d) for d in db])
        np.testing.assert_allclose(scores, brute, rtol=1e-5, atol=1e-9)
        assert scores[5] == 0.0 and not np.isnan(scores).any()
        np.testing.assert_array_equal(ranks, np.argsort(-scores, kind="stable"))
        assert len(ivf.search(q, k=5)[1]) == 5
    assert ivf.bytes_per_image() == pytest.approx(np.mean([bytes_per_image(d) for d in db]))
    with pytest.raises(ValueError):
        ivf.search(asmk(sets[0], C) if kind == "asmk_star" else asmk_star(sets[0], C))


# ------------------------------------------------------------------------------------ normalisation options
# Hand-written scores under method.normalize: paper (eq. 1 with γ for ASMK(*) and regional search, eq. 9 without γ
# for R-ASMK(*)), delf (the released index config: no γ anywhere), gamma (γ everywhere); true = gamma, false = delf.
MODES = ["paper", "delf", "gamma", True, False]
S7 = np.sqrt(7.0)
XQ = np.array([[2.0, 1.0], [10.0, 3.0]])  # query on C3: words 0 (V = (2, 1)) and 1 (V = (0, 3))
BOXED = [X3, X3[:1]]  # whole image (V_0 = (1, 2), V_1 = (1, 1), VLAD norm √7) and a box holding [1, 0] (word 0)


def _scores(items, kernel, aggregation, mode, q):
    from lit_retrieval.methods.detect_to_retrieve import Database

    return Database.build(items, kernel, aggregation, normalize=mode).scores(q)


@pytest.mark.parametrize("mode", MODES)
def test_normalize_whole_image_and_regional_search_by_hand(mode):
    q = _agg([0, 1, 2], [[1, 0], [1, 0], [1, 0]])  # 3 words: γ(q) = 3^(-1/2)
    y1 = _agg([1, 2, 3], [[0.6, 0.8], [-1, 0], [0, 1]])  # common words 1 (dot 0.6), 2 (dot −1 → σ = 0); γ = 3^(-1/2)
    y2 = _agg([0], [[0.8, 0.6]])  # common word 0 (dot 0.8); γ = 1
    raw = np.array([0.6 ** 3, 0.8 ** 3])
    eq1 = raw * 3 ** -0.5 * np.array([3 ** -0.5, 1.0])  # γ(q)·γ(y) Σ σ
    with_gamma = mode in ("paper", "gamma", True)  # eq. 1 for ASMK, and for each region of eq. 3-4
    np.testing.assert_allclose(_scores([[y1], [y2]], "asmk", "none", mode, q), eq1 if with_gamma else raw, rtol=1e-6)
    pooled = _scores([[y1, y2], [y1]], "asmk", "search_max", mode, q)  # eq. 3: max over the regions' kernels
    np.testing.assert_allclose(pooled, [eq1.max(), eq1[0]] if with_gamma else [raw.max(), raw[0]], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_normalize_r_asmk_is_eq9_without_gamma_by_hand(mode):
    # eq. 8: V_R(c) = (1/R) Σ_r γ(Y^(r)) V(Y^(r)_c) with the regional VLAD norms √7 and 1; eq. 9 normalises per word
    v0 = (np.array([1.0, 2.0]) / S7 + np.array([1.0, 0.0])) / 2
    v0 /= np.linalg.norm(v0)  # word 1 only in region 0: V̂_R(1) = (1, 1)/√2
    eq9 = (np.dot([2.0, 1.0], v0) / S5) ** 3 + (np.dot([0.0, 1.0], [1 / S2, 1 / S2])) ** 3
    gam = 2 ** -0.5 * 2 ** -0.5  # γ(q)·γ(y): 2 words each
    q, y = asmk(XQ, C3), r_asmk(BOXED, C3)
    expected = eq9 * gam if mode in ("gamma", True) else eq9  # paper and delf: eq. 9, the plain sum
    np.testing.assert_allclose(_scores([[y]], "asmk", "r_asmk", mode, q), [expected], rtol=1e-6)
    # R-ASMK*: V_R has signs (+, +) on both words; the query's word 0 (2, 1) -> (+, +), word 1 (0, 3) -> (−, +):
    # 1 − 2h/D = 1 (σ = 1) and 0 (σ = 0), so eq. 9 gives 1
    qs, ys = asmk_star(XQ, C3), r_asmk_star(BOXED, C3)
    np.testing.assert_allclose(_scores([[ys]], "asmk_star", "r_asmk", mode, qs),
                               [0.5 if mode in ("gamma", True) else 1.0], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_normalize_naive_r_asmk_is_eq6_by_hand(mode):
    # eq. 6 with V̂: Φ_c = (1/R) Σ_r γ(Y^(r)) V̂(Y^(r)_c), γ(Y^(0)) = 2^(-1/2) (2 words), γ(Y^(1)) = 1 (1 word)
    phi0 = ((np.array([1.0, 2.0]) / S5) / S2 + np.array([1.0, 0.0])) / 2
    phi1 = (np.array([1.0, 1.0]) / S2 / S2) / 2
    raw = (np.dot([2.0, 1.0], phi0) / S5) ** 3 + np.dot([0.0, 1.0], phi1) ** 3
    expected = raw if mode in ("delf", False) else raw * 2 ** -0.5  # the query's γ(X) of eq. 5-6
    np.testing.assert_allclose(_scores([[naive_r_asmk(BOXED, C3)]], "asmk", "naive_r_asmk", mode, asmk(XQ, C3)),
                               [expected], rtol=1e-6)


def test_normalize_names():
    from lit_retrieval.methods.detect_to_retrieve.database import Database, normalization, uses_gamma

    assert [normalization(m) for m in MODES] == ["paper", "delf", "gamma", "gamma", "delf"]
    assert normalization("true") == "gamma" and normalization("false") == "delf"
    assert [uses_gamma("paper", a) for a in ("none", "search_max", "naive_r_asmk", "r_asmk")] == [True] * 3 + [False]
    db = Database.build([[asmk(X3, C3)]], "asmk", "none")
    assert db.normalize == "paper" and "normalize=paper" in repr(db)
    with pytest.raises(ValueError, match="unknown normalize='l2'.*paper"):
        Database.build([[asmk(X3, C3)]], "asmk", "none", normalize="l2")
