"""Aggregated match kernels of Detect-to-Retrieve (Teichmann et al., CVPR 2019, Sec. 4), functional and vectorised.

Notation of the paper: ``q(x)`` is the nearest centroid of descriptor ``x``, ``X_c`` the descriptors of ``X`` assigned
to word ``c``, ``V(X_c) = Σ_{x∈X_c} (x − q(x))`` the residual sum and ``V̂(X_c) = V(X_c) / ||V(X_c)||``.

- :func:`vlad`: the ``K·D`` vector of residual sums, L2-normalised over the whole vector, i.e. ``γ(X)·V(X)`` of eq. 1
  with ``σ(u) = u`` (so the VLAD kernel is a plain dot product).
- :func:`asmk` / :func:`asmk_star`: the sparse set ``{(c, V̂(X_c))}`` of the present words, as unit float32 vectors or
  as sign bits packed with ``np.packbits`` (bit 1 ⇔ component > 0, the paper's ``b(x)``).
- :func:`similarity`: eq. 1, ``K(X, Y) = γ(X)·γ(Y)·Σ_{c common} σ(sim_c)`` with the selectivity of eq. 2 and ``sim_c``
  the dot product (ASMK) or ``1 − 2h/D`` for the Hamming distance ``h`` of the packed bits (ASMK*).
- :func:`sim_max` / :func:`sim_avg`: regional search, eqs. 3-4.
- :func:`r_vlad` (eq. 8), :func:`naive_r_asmk` (eq. 6 with ``V̂``), :func:`r_asmk` / :func:`r_asmk_star` (eq. 9):
  regional aggregation into one representation per image. The whole image is region 0 of the input (the caller adds
  it, as ``Y^(n,1) = Y^(n)`` in the paper); at least one region is required.

Normalisation ``γ(X) = (Σ_c σ(Φ(X_c)ᵀΦ(X_c)))^(−1/2)`` (eq. 1). For unit or binary per-word vectors every term is
``σ(1) = 1`` (for ``τ < 1``), so ``γ = M^(−1/2)`` with ``M`` the number of words: exactly the normalisation of the
references when they apply one (DELF's ``feature_aggregation_similarity``: ``/ sqrt(M_1·M_2)`` with
``use_l2_normalization: true``, its setting for the vanilla kernels; ``jenicek/asmk``'s ``IVF``: per-image word
counts, without idf). R-ASMK / R-ASMK* (eq. 9) has no ``γ``: the sum of ``σ`` over the per-word normalised ``V̂_R``,
as DELF's released R-ASMK* index config scores (``use_l2_normalization: false``). :func:`similarity` takes the
choice as ``normalize`` (bool); :func:`~.database.uses_gamma` makes it per variant from the named options
(``paper`` / ``delf`` / ``gamma``) of :class:`~.database.Database`. Differences to the references, all documented at
the functions:

- words whose residual sum is (numerically) zero, ``||V(X_c)|| <= NORM_TOL``, are dropped (as DELF does; ``V̂`` is
  undefined there), for ASMK and ASMK* alike;
- a pair with an empty set has similarity 0 (DELF returns −1);
- ``σ`` keeps ``u > τ`` strictly (paper eq. 2, DELF); ``jenicek/asmk`` keeps ``u >= τ`` (identical for ``τ = 0``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import faiss
import numpy as np

NORM_TOL = 1e-6  # residual sums with a smaller norm count as zero (DELF: squared tolerance 1e-12)
ALPHA, TAU = 3.0, 0.0


@dataclass(frozen=True)
class Aggregated:
    """The sparse ASMK-type representation of one descriptor set (an image or a region).

    ``words``: sorted unique int64 word ids ``(M,)``; ``vecs``: one row per word, float32 ``M×D`` or, when binary,
    uint8 ``M×ceil(D/8)`` (``np.packbits`` of the signs); ``dim``: ``D``. ``prenormalized``: the image normalisation
    is already inside the vectors (Naive-R-ASMK, eq. 6), so :func:`gamma` is 1 for it.
    """

    words: np.ndarray
    vecs: np.ndarray
    dim: int
    prenormalized: bool = False

    @property
    def binary(self) -> bool:
        return self.vecs.dtype == np.uint8

    def __len__(self) -> int:
        return int(self.words.shape[0])


Representation = Union[Aggregated, np.ndarray]


# --------------------------------------------------------------------------------------------------- quantisation
def assign(descriptors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (squared L2, faiss brute force) of every descriptor: ``N×D, K×D -> (N,)`` int64."""
    C = np.ascontiguousarray(centroids, dtype=np.float32)
    X = np.ascontiguousarray(descriptors, dtype=np.float32).reshape(-1, C.shape[1])
    if X.shape[0] == 0:
        return np.zeros(0, np.int64)
    _, idx = faiss.knn(X, C, 1)
    return idx[:, 0].astype(np.int64)


def _sum_by(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``rows`` over equal ``keys``: ``(sorted unique keys (P,), P×D sums)`` (sort + ``reduceat``)."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    if k.size == 0:
        return k, np.zeros((0,) + rows.shape[1:], rows.dtype)
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    return k[starts], np.add.reduceat(rows[order], starts, axis=0)


def residual_sums(descriptors: np.ndarray, centroids: np.ndarray, words: np.ndarray | None = None,
                  groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``V(X_c)`` for every (group, word) present: ``(groups (P,), words (P,), float64 P×D)``, sorted by (group, word).

    ``groups`` (e.g. region ids, ``(N,)`` int) defaults to a single group 0; ``words`` to :func:`assign`.
    """
    C = np.asarray(centroids, dtype=np.float64)
    K, D = C.shape
    X = np.asarray(descriptors, dtype=np.float64).reshape(-1, D)
    w = assign(X, C) if words is None else np.asarray(words, dtype=np.int64).reshape(-1)
    g = np.zeros(len(w), np.int64) if groups is None else np.asarray(groups, dtype=np.int64).reshape(-1)
    keys, sums = _sum_by(g * K + w, X - C[w])
    return keys // K, keys % K, sums


# --------------------------------------------------------------------------------------------------- aggregation
def _l2(v: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """``(v / ||v||, ||v||)`` along ``axis``; zero (``<= NORM_TOL``) vectors stay zero."""
    n = np.linalg.norm(v, axis=axis, keepdims=True)
    return np.where(n > NORM_TOL, v / np.where(n > NORM_TOL, n, 1.0), 0.0), n


def _sparse(words: np.ndarray, sums: np.ndarray, dim: int, binary: bool) -> Aggregated:
    """Per-word L2 (ASMK) or sign bits (ASMK*) of the non-zero residual sums ``sums`` (rows of ``words``)."""
    unit, n = _l2(sums)
    keep = n[:, 0] > NORM_TOL
    words = np.ascontiguousarray(words[keep], dtype=np.int64)
    if binary:
        return Aggregated(words, np.packbits(sums[keep] > 0, axis=1), dim)
    return Aggregated(words, np.ascontiguousarray(unit[keep], dtype=np.float32), dim)


def vlad(descriptors: np.ndarray, centroids: np.ndarray, words: np.ndarray | None = None) -> np.ndarray:
    """VLAD: ``K·D`` float32, the concatenated ``V(X_c)`` (zero for empty words), L2-normalised over the whole vector
    (zero vector for an empty set)."""
    K, D = np.shape(centroids)
    _, w, s = residual_sums(descriptors, centroids, words)
    v = np.zeros((K, D))
    v[w] = s
    return _l2(v.ravel())[0].astype(np.float32)


def asmk(descriptors: np.ndarray, centroids: np.ndarray, words: np.ndarray | None = None,
         binary: bool = False) -> Aggregated:
    """ASMK: the present words and their ``V̂(X_c)`` (``binary``: the packed signs of ``V(X_c)``, i.e. ASMK*)."""
    _, w, s = residual_sums(descriptors, centroids, words)
    return _sparse(w, s, np.shape(centroids)[1], binary)


def asmk_star(descriptors: np.ndarray, centroids: np.ndarray, words: np.ndarray | None = None) -> Aggregated:
    """ASMK*: sign bits of ``V(X_c)`` (1 ⇔ > 0), packed with ``np.packbits`` (``ceil(D/8)`` bytes per word)."""
    return asmk(descriptors, centroids, words, binary=True)


# ------------------------------------------------------------------------------------------ regional aggregation
def _regional(regions: Sequence[np.ndarray], centroids: np.ndarray,
              region_words: Sequence[np.ndarray] | None) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Residual sums per (region, word) of all regions at once: ``(R, region ids, words, sums)``."""
    if len(regions) == 0:
        raise ValueError("regional aggregation needs at least one region (region 0 = the whole image)")
    D = np.shape(centroids)[1]
    xs = [np.asarray(r, dtype=np.float64).reshape(-1, D) for r in regions]
    rid = np.repeat(np.arange(len(xs)), [len(x) for x in xs])
    words = None if region_words is None else np.concatenate([np.asarray(w, np.int64).reshape(-1)
                                                              for w in region_words])
    r, w, s = residual_sums(np.concatenate(xs), centroids, words, rid)
    return len(xs), r, w, s


def _vlad_weights(R: int, r: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``γ(Y^(r))`` of the VLAD kernel, ``1 / ||V(Y^(r))||`` over the whole regional VLAD, per row (0 if empty)."""
    norms = np.sqrt(np.bincount(r, weights=(s * s).sum(1), minlength=R))
    return np.where(norms > NORM_TOL, 1.0 / np.where(norms > NORM_TOL, norms, 1.0), 0.0)[r]


def r_vlad(regions: Sequence[np.ndarray], centroids: np.ndarray, l2: bool = False,
           region_words: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """R-VLAD, eq. 8: ``V_R = (1/R)·Σ_r γ(Y^(r))·V(Y^(r))``, the mean of the L2-normalised regional VLADs (``K·D``).

    The paper applies no further normalisation (eq. 7: ``vlad(X)ᵀ r_vlad(Y)`` is then exactly ``sim_AVG``);
    ``l2=True`` L2-normalises the mean (DELF's ``use_l2_normalization`` option), which changes every score of one
    image by the same factor ``1/||V_R||``. Empty regions count in ``R`` with a zero VLAD (as DELF).
    """
    K, D = np.shape(centroids)
    R, r, w, s = _regional(regions, centroids, region_words)
    words, sums = _sum_by(w, s * _vlad_weights(R, r, s)[:, None])
    v = np.zeros((K, D))
    v[words] = sums / R
    v = v.ravel()
    return (_l2(v)[0] if l2 else v).astype(np.float32)


def naive_r_asmk(regions: Sequence[np.ndarray], centroids: np.ndarray, per_word_l2: bool = False,
                 region_words: Sequence[np.ndarray] | None = None) -> Aggregated:
    """Naive-R-ASMK (Sec. 4.3, eq. 6 with ``V̂`` for ``V``): ``Φ_c = (1/R)·Σ_r γ(Y^(r))·V̂(Y_c^(r))``.

    ``γ(Y^(r)) = M_r^(−1/2)`` is the ASMK normalisation of region ``r`` (``M_r`` words). As in the paper the sums are
    *not* re-normalised per word (which is what down-weights words seen in few regions, the weakness R-ASMK fixes) and
    they already hold the database-side normalisation, so the result is ``prenormalized`` (``γ = 1``): with ``σ`` the
    identity, ``similarity(query, naive_r_asmk(regions))`` equals ``sim_avg`` over the regional ASMK sets (eq. 5-6).
    ``per_word_l2=True`` L2-normalises each ``Φ_c`` (then an ordinary unit-vector set with ``γ = M^(−1/2)``).
    """
    R, r, w, s = _regional(regions, centroids, region_words)
    unit, n = _l2(s)
    keep = n[:, 0] > NORM_TOL
    r, w, unit = r[keep], w[keep], unit[keep]
    m = np.bincount(r, minlength=R)
    words, phi = _sum_by(w, unit * (1.0 / (R * np.sqrt(m[r])))[:, None])
    D = np.shape(centroids)[1]
    if per_word_l2:
        return _sparse(words, phi, D, binary=False)
    return Aggregated(words.astype(np.int64), phi.astype(np.float32).reshape(-1, D), D, prenormalized=True)


def r_asmk(regions: Sequence[np.ndarray], centroids: np.ndarray, binary: bool = False,
           region_words: Sequence[np.ndarray] | None = None) -> Aggregated:
    """R-ASMK, eq. 9: ``V̂_R(c) = V_R(c) / ||V_R(c)||`` with ``V_R`` the R-VLAD of eq. 8 (regional VLADs L2-normalised
    over the whole vector, summed; Fig. 1: "per-region VLAD, sum pooling, per-visual-word normalisation"; as DELF's
    ``_ComputeRasmk``). ``binary``: R-ASMK*, the packed signs of ``V_R(c)``. Eq. 9 scores it against a query as
    ``Σ_c σ(V̂_R(X_c)ᵀV̂_R(Y_c))``, without ``γ``: :func:`similarity` with ``normalize=False``."""
    R, r, w, s = _regional(regions, centroids, region_words)
    words, sums = _sum_by(w, s * _vlad_weights(R, r, s)[:, None])
    return _sparse(words, sums / R, np.shape(centroids)[1], binary)


def r_asmk_star(regions: Sequence[np.ndarray], centroids: np.ndarray,
                region_words: Sequence[np.ndarray] | None = None) -> Aggregated:
    """R-ASMK*: the binarized R-ASMK (sign bits of the regionally aggregated residuals, packed)."""
    return r_asmk(regions, centroids, binary=True, region_words=region_words)


# --------------------------------------------------------------------------------------------------- similarity
def selectivity(u: np.ndarray | float, alpha: float = ALPHA, tau: float = TAU) -> np.ndarray:
    """Eq. 2: ``σ(u) = sign(u)·|u|^α`` if ``u > τ`` else 0 (element-wise, float64)."""
    u = np.asarray(u, dtype=np.float64)
    return np.where(u > tau, np.sign(u) * np.abs(u) ** alpha, 0.0)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of packed bit rows (broadcast over leading axes): popcount of the XOR, summed."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int64)


def binary_similarity(a: np.ndarray, b: np.ndarray, dim: int) -> np.ndarray:
    """ASMK* word similarity ``1 − 2h/D`` of packed ``D``-bit rows (in ``[−1, 1]``; padding bits are 0 on both)."""
    return 1.0 - 2.0 * hamming(a, b) / dim


def _check(a: Aggregated, b: Aggregated) -> None:
    if a.binary != b.binary or a.dim != b.dim:
        raise ValueError(f"incompatible representations: binary {a.binary}/{b.binary}, dim {a.dim}/{b.dim}")


def word_similarities(a: Aggregated, b: Aggregated) -> tuple[np.ndarray, np.ndarray]:
    """``(common words, sim per common word)``: dot products (ASMK) or ``1 − 2h/D`` (ASMK*), before ``σ``."""
    _check(a, b)
    common, ia, ib = np.intersect1d(a.words, b.words, assume_unique=True, return_indices=True)
    if a.binary:
        return common, binary_similarity(a.vecs[ia], b.vecs[ib], a.dim)
    return common, np.einsum("ij,ij->i", a.vecs[ia].astype(np.float64), b.vecs[ib].astype(np.float64))


def self_similarity(a: Aggregated, alpha: float = ALPHA, tau: float = TAU) -> float:
    """``Σ_c σ(Φ(X_c)ᵀΦ(X_c))`` (eq. 1): ``M·σ(1)`` for unit or binary words."""
    if a.binary:
        return float(len(a) * selectivity(1.0, alpha, tau))
    return float(selectivity(np.einsum("ij,ij->i", a.vecs.astype(np.float64), a.vecs), alpha, tau).sum())


def gamma(a: Aggregated, alpha: float = ALPHA, tau: float = TAU) -> float:
    """Normalisation ``γ(X) = self_similarity^(−1/2)`` (eq. 1); 0 for an empty set (its similarities are all 0),
    1 for a ``prenormalized`` set (Naive-R-ASMK)."""
    if a.prenormalized:
        return 1.0
    s = self_similarity(a, alpha, tau)
    return float(s ** -0.5) if s > 0 else 0.0


def similarity(a: Representation, b: Representation, alpha: float = ALPHA, tau: float = TAU,
               normalize: bool = True) -> float:
    """Kernel of two representations. VLAD / R-VLAD vectors: the dot product. Aggregated sets: eq. 1,
    ``γ(a)·γ(b)·Σ_{c common} σ(sim_c)`` (``normalize=False``: the raw sum, as eq. 9 is written for R-ASMK(*))."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return float(np.dot(np.asarray(a, np.float64), np.asarray(b, np.float64)))
    _, sims = word_similarities(a, b)
    total = float(selectivity(sims, alpha, tau).sum())
    return total * gamma(a, alpha, tau) * gamma(b, alpha, tau) if normalize else total


def regional_similarities(query: Representation, regions: Sequence[Representation], **kw) -> np.ndarray:
    """``K(X, Y^(n,r))`` for every stored region ``r`` of one database image: ``(R,)``."""
    if len(regions) == 0:
        raise ValueError("a database image needs at least one region (region 0 = the whole image)")
    return np.array([similarity(query, r, **kw) for r in regions], dtype=np.float64)


def sim_max(query: Representation, regions: Sequence[Representation], **kw) -> float:
    """Eq. 3: the best regional similarity."""
    return float(regional_similarities(query, regions, **kw).max())


def sim_avg(query: Representation, regions: Sequence[Representation], **kw) -> float:
    """Eq. 4: the mean regional similarity."""
    return float(regional_similarities(query, regions, **kw).mean())


def bytes_per_image(rep: Representation) -> int:
    """Storage of one representation: ``M·(D·4 + 4)`` for ASMK (float32 vectors + a 4-byte word id per word),
    ``M·(ceil(D/8) + 4)`` for ASMK*; ``K·D·4`` for a float32 VLAD."""
    if isinstance(rep, np.ndarray):
        return int(rep.nbytes)
    return int(rep.vecs.nbytes + 4 * len(rep))
