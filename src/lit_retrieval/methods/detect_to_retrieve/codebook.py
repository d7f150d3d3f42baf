"""Descriptor post-processing and the visual-word codebook of Detect-to-Retrieve (Sec. 4.1, Sec. 5.2).

DELF's post-processing of its raw descriptors is L2 → PCA (to 128 dimensions, "the feature dimensionality is set to
128 as in previous work", Sec. 5.2) → L2, without whitening by default; the codebook ``C`` of Sec. 4.1 is learned by
k-means on the post-processed descriptors ("a 1024-sized codebook", Sec. 5.2), with faiss and 10 iterations as in
the reference ASMK code (``jenicek/asmk``). As in the paper the codebook should be learned on a different dataset
than the one evaluated (the ROxford codebook for RParis and vice versa); ``source`` records which.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ...atomic import atomic_write

DEFAULT_MAX_TRAIN = 500_000


def l2_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation (float32); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, eps)


@dataclass(eq=False)
class Codebook:
    """PCA (``pca_mean (C,)``, ``pca_proj d×C``, whitening already folded into ``pca_proj`` when ``whiten``) and the
    ``K×d`` k-means ``centroids``; ``source`` (what it was learned on), ``n_train`` (descriptors used) and ``seed``
    are metadata."""

    pca_mean: np.ndarray
    pca_proj: np.ndarray
    centroids: np.ndarray
    source: str = ""
    n_train: int = 0
    seed: int = 0
    whiten: bool = False

    def __post_init__(self) -> None:
        self.pca_mean = np.ascontiguousarray(self.pca_mean, dtype=np.float32).reshape(-1)
        self.pca_proj = np.ascontiguousarray(self.pca_proj, dtype=np.float32)
        self.centroids = np.ascontiguousarray(self.centroids, dtype=np.float32)
        d, C = self.pca_proj.shape
        if self.pca_mean.shape != (C,) or self.centroids.ndim != 2 or self.centroids.shape[1] != d:
            raise ValueError(f"inconsistent codebook: pca_mean {self.pca_mean.shape}, pca_proj {self.pca_proj.shape}, "
                             f"centroids {self.centroids.shape} (expected (C,), d×C, K×d)")

    @property
    def dim_in(self) -> int:
        """``C``: the raw descriptor dimension the PCA was learned on."""
        return int(self.pca_proj.shape[1])

    @property
    def dim(self) -> int:
        """``d``: the projected descriptor dimension (the ``D`` of the kernels)."""
        return int(self.pca_proj.shape[0])

    @property
    def K(self) -> int:
        """Number of visual words."""
        return int(self.centroids.shape[0])

    def project(self, descriptors: np.ndarray) -> np.ndarray:
        """DELF's post-processing of raw descriptors ``N×C -> N×d`` float32: L2, subtract the PCA mean, project,
        L2 again. Rows that are all zero before or after the projection are zero (never NaN)."""
        X = np.asarray(descriptors, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"descriptors must be N×C, got shape {X.shape}")
        self.check(X.shape[1])
        nz = np.linalg.norm(X, axis=1) > 0
        Y = (l2_rows(X) - self.pca_mean) @ self.pca_proj.T
        return np.where(nz[:, None], l2_rows(Y), 0.0).astype(np.float32)

    def check(self, dim_in: int) -> None:
        """Raise a clear ``ValueError`` if this codebook does not fit descriptors of dimension ``dim_in`` (e.g. the
        extractor's ``dim``: a codebook learned with another backbone)."""
        if int(dim_in) != self.dim_in:
            raise ValueError(f"the codebook (source {self.source!r}) was learned on {self.dim_in}-dimensional "
                             f"descriptors, but the local features have {int(dim_in)} dimensions: learn a codebook "
                             "with the same backbone / local feature (learn_codebook) or load the matching one")

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` atomically (temporary file, then ``os.replace``); returns ``path``."""
        path = Path(path)
        arrays = dict(pca_mean=self.pca_mean, pca_proj=self.pca_proj, centroids=self.centroids,
                      source=np.array(self.source), n_train=np.array(self.n_train, np.int64),
                      seed=np.array(self.seed, np.int64), whiten=np.array(self.whiten))
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Codebook":
        """Read a codebook written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            missing = {"pca_mean", "pca_proj", "centroids"} - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a D2R codebook (missing {sorted(missing)})")
            meta = {k: z[k].item() for k in ("source", "n_train", "seed", "whiten") if k in z.files}
            return cls(z["pca_mean"], z["pca_proj"], z["centroids"], **meta)


def learn_pca(X: np.ndarray, dim: int, whiten: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the rows of ``X`` (``N×C``) with ``faiss.PCAMatrix``: ``(mean (C,), projection d×C)``, the rows being
    the leading eigenvectors of the covariance, by decreasing eigenvalue. ``whiten``: each row divided by the standard
    deviation of the training data along it (unit variance; faiss' own ``eigen_power=-0.5`` scales by the
    eigenvalues of the unnormalised scatter matrix, i.e. to variance ``1/N``)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    C = X.shape[1]
    if not 1 <= dim <= C:
        raise ValueError(f"the PCA dimension must be in [1, {C}] for {C}-dimensional descriptors, got {dim}")
    pca = faiss.PCAMatrix(C, dim)
    pca.train(X)
    mean = faiss.vector_to_array(pca.mean).astype(np.float32)
    proj = faiss.vector_to_array(pca.A).astype(np.float32).reshape(dim, C)
    if whiten:
        std = ((X - mean) @ proj.T).std(axis=0)
        proj = proj / np.maximum(std, 1e-12)[:, None]
    return mean, proj


def learn_codebook(descriptors: np.ndarray, dim: int = 128, K: int = 1024, niter: int = 10, seed: int = 0,
                   max_train: int | None = DEFAULT_MAX_TRAIN, whiten: bool = False, source: str = "") -> Codebook:
    """Learn the PCA and the ``K``-word codebook from raw descriptors ``N×C`` (all images' descriptors stacked).

    The descriptors are L2-normalised, at most ``max_train`` of them drawn at random (``seed``; ``None``: all), the
    PCA (:func:`learn_pca`) is learned on them, then ``faiss.Kmeans(d, K, niter, seed)`` on their projections
    (:meth:`Codebook.project`); faiss itself subsamples to 256 points per centroid, as in the reference ASMK code.
    """
    X = np.asarray(descriptors, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"descriptors must be N×C, got shape {X.shape}")
    X = X[np.linalg.norm(X, axis=1) > 0]
    if len(X) < K or len(X) <= dim:
        raise ValueError(f"cannot learn a {dim}-D PCA and a codebook of K={K} words from {len(X)} (non-zero) "
                         "descriptors: lower K or dim, or add training images (more per image, more images)")
    if max_train is not None and len(X) > max_train:
        X = X[np.sort(np.random.default_rng(seed).choice(len(X), int(max_train), replace=False))]
    X = l2_rows(X)
    mean, proj = learn_pca(X, dim, whiten)
    book = Codebook(mean, proj, np.zeros((K, dim), np.float32), source=source, n_train=len(X), seed=seed,
                    whiten=whiten)
    Y = np.ascontiguousarray(book.project(X))
    km = faiss.Kmeans(dim, K, niter=niter, seed=seed, verbose=False)
    km.train(Y)
    book.centroids = np.ascontiguousarray(km.centroids, dtype=np.float32).reshape(K, dim)
    return book


__all__ = ["Codebook", "l2_rows", "learn_codebook", "learn_pca"]
