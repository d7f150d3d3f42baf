"""The searchable database of every Detect-to-Retrieve variant evaluated in Sec. 5.2 (Fig. 4, Tables 1-2).

A variant is a ``kernel`` (``vlad``, ``asmk``, ``asmk_star``; Sec. 4.1) and a regional ``aggregation``:

==============  ====================================================================  ==========================
aggregation     stored per database image                                             kernels
==============  ====================================================================  ==========================
none            one item, the whole image only (region 0): the single-image baseline  all
search_max      one item per region, score = max over them (eq. 3; "D2R-ASMK*")       all
search_avg      one item per region, score = mean over them (eq. 4; "D2R_AVG-ASMK*")  all
r_vlad          one R-VLAD vector (eq. 8; equals ``search_avg`` with VLAD, eq. 5-7)   vlad
naive_r_asmk    one Naive-R-ASMK set (eq. 6 with ``V̂``)                               asmk
r_asmk          one R-ASMK (eq. 9) or, with ``asmk_star``, R-ASMK* set                asmk, asmk_star
==============  ====================================================================  ==========================

Queries are never regional (Sec. 4.2: the query "in practice contains only one region"); they are encoded by
:func:`encode_query`. Database images are encoded from their regions (region 0 = the whole image, then the selected
boxes) by :func:`encode_image`, and indexed by :class:`Database`: ASMK-type items in one
:class:`~.ivf.InvertedFile` over all items, VLAD-type items in one dense float32 matrix; per-image scores pool the
item scores by max or mean, vectorised over all images.

Conventions (see :mod:`.kernels`): an item that shares no visual word with the query, or an empty one, scores 0 (the
released DELF code gives −1 to a pair with an empty side). ``normalize`` (:data:`NORMALIZATIONS`) says where the
image normalisation ``γ(X)·γ(Y)`` of eq. 1 (``= 1/√(M_X·M_Y)`` for unit or binary words) multiplies the ASMK-type
scores (:func:`uses_gamma`):

- ``paper`` (default): as the paper writes each kernel. Eq. 1 (with ``γ``) for ASMK / ASMK* on whole images and
  for every stored region of regional search (eqs. 3-4 pool eq.-1 kernels); **no** ``γ`` for R-ASMK / R-ASMK*
  (eq. 9 is the plain sum of ``σ`` over the per-word normalised residuals ``V̂_R``); Naive-R-ASMK is eq. 6 (the
  query's ``γ(X)``, the regions' ``γ(Y^(r))/R`` inside the stored vectors). This is also how DELF's
  ``aggregation_config.proto`` says to set ``use_l2_normalization``: true for the vanilla kernels, false for the
  regional ones, i.e. its released ``index_aggregation_config.pbtxt`` for R-ASMK*.
- ``delf``: the released index configuration (``use_l2_normalization: false``, the one ``perform_retrieval.py``
  scores with) applied to every comparison: no ``√(M₁M₂)`` for any kernel. Same R-ASMK(*) scores as ``paper``;
  the whole-image ASMK(*) and regional search stages lose their ``γ``.
- ``gamma``: ``γ(X)·γ(Y)`` on every ASMK-type kernel, R-ASMK(*) included (neither eq. 9 nor DELF).

The booleans of earlier configurations still work: ``True`` is ``gamma`` (what it did), ``False`` is ``delf``.
VLAD vectors carry their ``γ`` inside (L2-normalised, eq. 1 with ``σ(u) = u``; R-VLAD is eq. 8, not re-normalised),
so ``normalize`` does not change VLAD-type scores.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .ivf import InvertedFile
from .kernels import (ALPHA, TAU, Aggregated, Representation, asmk, asmk_star, assign, naive_r_asmk, r_asmk, r_vlad,
                      vlad)
from .kernels import bytes_per_image as _item_bytes

KERNELS = ("vlad", "asmk", "asmk_star")
AGGREGATIONS = ("none", "search_max", "search_avg", "r_vlad", "naive_r_asmk", "r_asmk")
REGIONAL_SEARCH = ("search_max", "search_avg")
_KERNELS_OF = {"none": KERNELS, "search_max": KERNELS, "search_avg": KERNELS, "r_vlad": ("vlad",),
               "naive_r_asmk": ("asmk",), "r_asmk": ("asmk", "asmk_star")}
VARIANTS: tuple[tuple[str, str], ...] = tuple((k, a) for a in AGGREGATIONS for k in _KERNELS_OF[a])
_KERNEL_NAMES = {"vlad": "VLAD", "asmk": "ASMK", "asmk_star": "ASMK*"}
_ENCODERS = {"vlad": vlad, "asmk": asmk, "asmk_star": asmk_star}


NORMALIZATIONS = ("paper", "delf", "gamma")
_FROM_BOOL = {True: "gamma", False: "delf"}  # what normalize: true / false did before the named options


def normalization(mode: str | bool) -> str:
    """The named normalisation of ``mode`` (one of :data:`NORMALIZATIONS`; the booleans map to ``gamma`` / ``delf``,
    their former meaning); a ``ValueError`` naming the options otherwise."""
    if isinstance(mode, (bool, np.bool_)):
        return _FROM_BOOL[bool(mode)]
    name = str(mode).strip().lower()
    if name in ("true", "false"):
        return _FROM_BOOL[name == "true"]
    if name not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize={mode!r}: choose one of {NORMALIZATIONS} (paper: eq. 1 for ASMK(*) and "
                         "regional search, eq. 9 without γ for R-ASMK(*); delf: no γ anywhere, the released DELF "
                         "index config; gamma: γ of eq. 1 everywhere; true = gamma, false = delf)")
    return name


def uses_gamma(mode: str | bool, aggregation: str) -> bool:
    """Whether ``γ(X)·γ(Y)`` of eq. 1 multiplies the ASMK-type scores of ``aggregation`` under ``mode`` (see the
    module docstring): always for ``gamma``, never for ``delf``; for ``paper`` everywhere but R-ASMK(*) (eq. 9)."""
    name = normalization(mode)
    if name == "paper":
        return aggregation != "r_asmk"
    return name == "gamma"


def check_variant(kernel: str, aggregation: str) -> None:
    """Raise a ``ValueError`` naming the valid combinations unless ``(kernel, aggregation)`` is one of
    :data:`VARIANTS`: ``r_vlad`` needs ``vlad``, ``naive_r_asmk`` needs (float) ``asmk``, ``r_asmk`` needs ``asmk``
    (R-ASMK) or ``asmk_star`` (R-ASMK*); ``none``, ``search_max``, ``search_avg`` work with every kernel."""
    if (kernel, aggregation) in VARIANTS:
        return
    valid = "; ".join(f"{a}: {', '.join(_KERNELS_OF[a])}" for a in AGGREGATIONS)
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: choose one of {KERNELS} (valid aggregation: kernels are {valid})")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}: choose one of {AGGREGATIONS} (valid aggregation: "
                         f"kernels are {valid})")
    raise ValueError(f"aggregation {aggregation!r} does not work with kernel {kernel!r}; valid aggregation: kernels "
                     f"are {valid}")


def variant_name(kernel: str, aggregation: str, boxes: str = "D2R") -> str:
    """The paper's name of a variant with region selection ``boxes`` ("D2R", "RMACB", "SS"): "ASMK*" (none),
    "D2R-ASMK*" (search_max), "D2R_AVG-ASMK*" (search_avg), "D2R-R-ASMK*", "RMACB-R-ASMK", "D2R-R-VLAD",
    "D2R-Naive-R-ASMK", "D2R-VLAD" (regional search with VLAD)."""
    check_variant(kernel, aggregation)
    k = _KERNEL_NAMES[kernel]
    pre = f"{boxes}-" if boxes else ""
    return {"none": k, "search_max": f"{pre}{k}", "search_avg": f"{boxes}_AVG-{k}" if boxes else f"AVG-{k}",
            "r_vlad": f"{pre}R-VLAD", "naive_r_asmk": f"{pre}Naive-R-ASMK", "r_asmk": f"{pre}R-{k}"}[aggregation]


def encode_query(descriptors: np.ndarray, centroids: np.ndarray, kernel: str) -> Representation:
    """The whole query image's representation: a VLAD vector (``K·D`` float32) or an ASMK / ASMK* ``Aggregated``
    (Sec. 4.1; single assignment, as in the paper's Sec. 5.2 implementation details)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: choose one of {KERNELS}")
    return _ENCODERS[kernel](descriptors, centroids)


def encode_image(regions: Sequence[np.ndarray], centroids: np.ndarray, kernel: str,
                 aggregation: str) -> list[Representation]:
    """The items stored for one database image from its regions' (projected) descriptors ``[N_r×D]``, region 0 being
    the whole image (``Y^(n,1) = Y^(n)``, Sec. 4.2).

    ``none``: one item from region 0 only; ``search_max``/``search_avg``: one item per region (``R`` items, the
    descriptors quantised in one pass); ``r_vlad`` / ``naive_r_asmk`` / ``r_asmk``: one regionally aggregated item
    (eqs. 8, 6, 9; R-ASMK* with ``asmk_star``).
    """
    check_variant(kernel, aggregation)
    if len(regions) == 0:
        raise ValueError("a database image needs at least one region (region 0 = the whole image)")
    D = np.shape(centroids)[1]
    if aggregation == "none":
        return [encode_query(regions[0], centroids, kernel)]
    if aggregation in REGIONAL_SEARCH:
        xs = [np.asarray(r, dtype=np.float32).reshape(-1, D) for r in regions]
        words = np.split(assign(np.concatenate(xs), centroids), np.cumsum([len(x) for x in xs])[:-1])
        return [_ENCODERS[kernel](x, centroids, w) for x, w in zip(xs, words)]
    if aggregation == "r_vlad":
        return [r_vlad(regions, centroids)]
    if aggregation == "naive_r_asmk":
        return [naive_r_asmk(regions, centroids)]
    return [r_asmk(regions, centroids, binary=kernel == "asmk_star")]


class Database:
    """Searchable database of one variant: the stored items of every image, their scores against a query pooled per
    image (eq. 3 max, eq. 4 mean, or the single item), and storage statistics.

    Build it with :meth:`build` (from encoded items) or :meth:`from_regions` (from regions' descriptors). Items of
    image ``n`` are ``items[offsets[n]:offsets[n + 1]]`` (``item_image`` maps item → image).
    """

    def __init__(self, kernel: str, aggregation: str, offsets: np.ndarray, item_bytes: np.ndarray,
                 ivf: InvertedFile | None = None, matrix: np.ndarray | None = None, normalize: str | bool = "paper",
                 alpha: float = ALPHA, tau: float = TAU) -> None:
        check_variant(kernel, aggregation)
        self.kernel, self.aggregation = kernel, aggregation
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.counts = np.diff(self.offsets)
        self.item_image = np.repeat(np.arange(len(self.counts), dtype=np.int64), self.counts)
        self.item_bytes = np.asarray(item_bytes, dtype=np.int64)
        self.ivf, self.matrix = ivf, matrix
        self.normalize, self.alpha, self.tau = normalization(normalize), float(alpha), float(tau)
        self.gamma = uses_gamma(self.normalize, aggregation)  # γ(X)·γ(Y) on the ASMK-type scores

    # ---------------------------------------------------------------------------------------------- construction
    @classmethod
    def build(cls, items_per_image: Sequence[Sequence[Representation]], kernel: str, aggregation: str,
              normalize: str | bool = "paper", alpha: float = ALPHA, tau: float = TAU) -> "Database":
        """Index the items of every image (as given by :func:`encode_image`): one item per image for ``none`` and the
        ``r_*`` aggregations, at least one for ``search_*``. ASMK-type items go into one inverted file over all
        items (scored with ``γ`` as :func:`uses_gamma` says for ``normalize``), VLAD-type items into one
        ``n_items×K·D`` float32 matrix."""
        check_variant(kernel, aggregation)
        if len(items_per_image) == 0:
            raise ValueError("a database needs at least one image")
        counts = np.array([len(items) for items in items_per_image], dtype=np.int64)
        if counts.min() < 1:
            raise ValueError(f"image {int(np.argmin(counts))} has no stored item (region 0, the whole image, is "
                             "always one)")
        if aggregation not in REGIONAL_SEARCH and counts.max() != 1:
            raise ValueError(f"aggregation {aggregation!r} stores one item per image, image "
                             f"{int(np.argmax(counts))} has {int(counts.max())}")
        items = [it for image_items in items_per_image for it in image_items]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        item_bytes = np.array([_item_bytes(it) for it in items], dtype=np.int64)
        if kernel == "vlad":
            if not all(isinstance(it, np.ndarray) and it.ndim == 1 for it in items) or \
                    len({it.shape[0] for it in items}) != 1:
                raise ValueError("VLAD-type items must be 1-D vectors of one length (vlad / r_vlad)")
            matrix = np.ascontiguousarray(np.stack(items), dtype=np.float32)
            return cls(kernel, aggregation, offsets, item_bytes, matrix=matrix, normalize=normalize,
                       alpha=alpha, tau=tau)
        binary = kernel == "asmk_star"
        if not all(isinstance(it, Aggregated) and it.binary == binary for it in items):
            raise ValueError(f"kernel {kernel!r} needs {'binary' if binary else 'float'} Aggregated items "
                             f"({'asmk_star / r_asmk_star' if binary else 'asmk / naive_r_asmk / r_asmk'})")
        ivf = InvertedFile.build(items, alpha=alpha, tau=tau, normalize=uses_gamma(normalize, aggregation))
        return cls(kernel, aggregation, offsets, item_bytes, ivf=ivf, normalize=normalize, alpha=alpha, tau=tau)

    @classmethod
    def from_regions(cls, regions_per_image: Sequence[Sequence[np.ndarray]], centroids: np.ndarray, kernel: str,
                     aggregation: str, normalize: str | bool = "paper", alpha: float = ALPHA,
                     tau: float = TAU) -> "Database":
        """:func:`encode_image` every image's regions (region 0 = whole image), then :meth:`build`."""
        check_variant(kernel, aggregation)
        items = [encode_image(regions, centroids, kernel, aggregation) for regions in regions_per_image]
        return cls.build(items, kernel, aggregation, normalize=normalize, alpha=alpha, tau=tau)

    # ------------------------------------------------------------------------------------------------ statistics
    @property
    def n_images(self) -> int:
        return int(len(self.counts))

    @property
    def n_items(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.n_images

    @property
    def items_per_image(self) -> float:
        """Mean number of stored items per image (``R`` for regional search, 1 otherwise)."""
        return self.n_items / self.n_images

    @property
    def bytes_per_image(self) -> float:
        """Mean storage per image (:func:`~.kernels.bytes_per_image` of its items, summed)."""
        return float(self.item_bytes.sum()) / self.n_images

    @property
    def relative_size(self) -> float:
        """Database size relative to storing one item per image: the paper's "Size" (Table 1), the mean number of
        stored items per image (``R`` for regional search, 1 for the single-image baseline and the ``r_*``
        aggregations, whatever their bytes)."""
        return self.items_per_image

    def relative_bytes(self, baseline: "Database") -> float:
        """Mean bytes per image relative to a ``baseline`` database (e.g. the same kernel without regions): the
        paper's memory comparison (Sec. 5.2.3: R-ASMK* is as dimensional as ASMK* but less sparse)."""
        return self.bytes_per_image / baseline.bytes_per_image

    # ---------------------------------------------------------------------------------------------------- search
    def _check_query(self, query: Representation) -> None:
        if self.kernel == "vlad":
            if not isinstance(query, np.ndarray) or query.shape != (self.matrix.shape[1],):
                shape = query.shape if isinstance(query, np.ndarray) else type(query).__name__
                raise ValueError(f"a VLAD database needs a ({self.matrix.shape[1]},) VLAD query, got {shape}")
        elif not isinstance(query, Aggregated):
            raise ValueError(f"a {self.kernel} database needs an Aggregated query (encode_query), "
                             f"got {type(query).__name__}")

    def item_scores(self, query: Representation) -> np.ndarray:
        """``K(X, item)`` for every stored item, ``(n_items,)`` float64 (eq. 1 / the VLAD dot product)."""
        self._check_query(query)
        if self.matrix is not None:
            return (self.matrix @ np.asarray(query, dtype=np.float32)).astype(np.float64)
        return self.ivf.scores(query)

    def _pool(self, s: np.ndarray) -> np.ndarray:
        """Item scores ``(..., n_items)`` -> image scores ``(..., n_images)``: eq. 3 (max), eq. 4 (mean) or the
        single item. Every image has at least one item, stored contiguously, so ``reduceat`` pools them all."""
        if self.aggregation == "search_max":
            return np.maximum.reduceat(s, self.offsets[:-1], axis=-1)
        if self.aggregation == "search_avg":
            return np.add.reduceat(s, self.offsets[:-1], axis=-1) / self.counts
        return s

    def scores(self, query: Representation) -> np.ndarray:
        """Similarity of the query with every database image, ``(n_images,)`` float64: ``sim_MAX`` (eq. 3),
        ``sim_AVG`` (eq. 4), or the kernel with the image's single item (eq. 1, R-VLAD eq. 7, R-ASMK eq. 9)."""
        return self._pool(self.item_scores(query))

    def score_matrix(self, queries: Sequence[Representation]) -> np.ndarray:
        """``n_queries × n_images`` float64 scores (VLAD: one matrix product for all queries)."""
        if len(queries) == 0:
            return np.zeros((0, self.n_images))
        for q in queries:
            self._check_query(q)
        if self.matrix is not None:
            Q = np.stack([np.asarray(q, dtype=np.float32) for q in queries])
            s = (Q @ self.matrix.T).astype(np.float64)
        else:
            s = np.stack([self.ivf.scores(q) for q in queries])
        return self._pool(s)

    def rank(self, queries: Sequence[Representation], k: int | None = None) -> np.ndarray:
        """Image ids by decreasing score, ``n_queries × n_images`` int64 (the first ``k`` columns when given); ties:
        lower image id first."""
        ranks = np.argsort(-self.score_matrix(queries), axis=1, kind="stable").astype(np.int64)
        return ranks if k is None else ranks[:, :k]

    def __repr__(self) -> str:
        return (f"Database({self.kernel}, {self.aggregation}, images={self.n_images}, "
                f"items/image={self.items_per_image:.2f}, bytes/image={self.bytes_per_image:.0f}, "
                f"normalize={self.normalize})")


__all__ = ["AGGREGATIONS", "KERNELS", "NORMALIZATIONS", "REGIONAL_SEARCH", "VARIANTS", "Database", "check_variant",
           "encode_image", "encode_query", "normalization", "uses_gamma", "variant_name"]
