"""Descriptor whitening learned from data: PCA-whitening and supervised "Lw" (Radenović et al.).

Descriptors are rows (``N×D``), unlike cirtorch's columns. The learned transform is ``x -> P[:d](x - m)``
followed by L2 normalisation (+1e-6), exactly cirtorch's ``whitenapply``. A ``Whitening`` is saved and loaded
with the run (``.npz``) and can act as a linear layer (weight ``P``, bias ``-P·m``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .pooling import l2n


def _eig_desc(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric matrix, eigenvalues in decreasing order."""
    val, vec = np.linalg.eigh(S)
    order = np.argsort(val)[::-1]
    return val[order], vec[:, order]


def _cholesky(S: np.ndarray) -> np.ndarray:
    """Cholesky factor, adding ``α·I`` (α = 1e-10, ×10 each retry) until ``S`` is positive definite."""
    alpha = 0.0
    while True:
        try:
            return np.linalg.cholesky(S + alpha * np.eye(S.shape[0]))
        except np.linalg.LinAlgError as err:
            alpha = 1e-10 if alpha == 0 else alpha * 10
            if alpha > 1e10:
                raise ValueError("whitening: pair-difference covariance cannot be made positive definite") from err


RANK_TOL = 1e-9  # PCA components with a smaller variance than this fraction of the largest carry no signal


def pca_whiten_learn(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA-whitening of rows ``X`` (N×D): returns mean ``m`` (D,) and ``P = diag(λ^-1/2) Vᵀ`` (r×D), ``r`` the
    number of components with non-zero variance (``D`` when ``N > D`` and the rows are in general position,
    at most ``N - 1``)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"pca_whiten_learn needs an N×D matrix with N >= 2 descriptors, got shape {X.shape}")
    m = X.mean(axis=0)
    Xc = X - m
    cov = Xc.T @ Xc
    cov = (cov + cov.T) / (2 * X.shape[0])
    val, vec = _eig_desc(cov)
    # Only the directions the descriptors span: with N <= D the rest have (numerically) zero variance, and scaling
    # them by λ^-1/2 would blow up whatever a new image has outside the learning set's span (its noise).
    r = max(1, min(int((val > RANK_TOL * max(val[0], 1e-300)).sum()), X.shape[0] - 1))
    return m, (vec[:, :r] / np.sqrt(val[:r])).T


def pca_basis(X: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` principal directions of rows ``X`` (N×D; covariance of the centred rows) as columns of a
    ``D×k`` matrix, by decreasing variance."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2 or not 0 < k <= X.shape[1]:
        raise ValueError(f"pca_basis: need an N×D matrix with N >= 2 and 0 < k <= D, got shape {X.shape}, k={k}")
    Xc = X - X.mean(axis=0)
    return _eig_desc(Xc.T @ Xc)[1][:, :k]


def lw_whiten_learn(X: np.ndarray, qidxs: np.ndarray, pidxs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Supervised "Lw" whitening from matching pairs ``(X[qidxs[i]], X[pidxs[i]])``.

    ``m`` = mean of the query descriptors; ``P = chol(S)^-1`` with ``S`` the covariance of pair differences,
    then rotated by the eigenvectors (decreasing eigenvalues) of the whitened scatter of all ``X``.
    """
    X = np.asarray(X, dtype=np.float64)
    qidxs, pidxs = np.asarray(qidxs), np.asarray(pidxs)
    if len(qidxs) == 0 or len(qidxs) != len(pidxs):
        raise ValueError("lw_whiten_learn needs the same non-zero number of query and positive indices")
    m = X[qidxs].mean(axis=0)
    df = X[qidxs] - X[pidxs]
    S = df.T @ df / df.shape[0]
    P = np.linalg.inv(_cholesky(S))
    Y = (X - m) @ P.T
    _, vec = _eig_desc(Y.T @ Y)
    return m, vec.T @ P


def whiten_apply(X: np.ndarray, m: np.ndarray, P: np.ndarray, dims: int | None = None) -> np.ndarray:
    """``P[:dims](x - m)`` for every row, then L2 (+1e-6)."""
    Y = (np.asarray(X, dtype=np.float64) - m) @ P[:dims].T
    return Y / (np.linalg.norm(Y, axis=1, keepdims=True) + 1e-6)


@dataclass
class Whitening:
    """A learned whitening ``(m, P)`` with optional reduction to ``dims`` output dimensions."""

    m: np.ndarray
    P: np.ndarray
    kind: str = "pca"
    dims: int | None = None

    @classmethod
    def learn(cls, X: np.ndarray, kind: str = "pca", pairs: tuple[np.ndarray, np.ndarray] | None = None,
              dims: int | None = None) -> "Whitening":
        if kind == "pca":
            m, P = pca_whiten_learn(X)
        elif kind == "lw":
            if pairs is None:
                raise ValueError("Lw whitening is supervised: pass pairs=(query_indices, positive_indices)")
            m, P = lw_whiten_learn(X, *pairs)
        else:
            raise ValueError(f"unknown whitening {kind!r}: choose 'pca' or 'lw'")
        if dims is not None and not 0 < dims <= P.shape[0]:
            raise ValueError(f"whitening dims={dims} must be in [1, {P.shape[0]}] (the learned whitening has "
                             f"{P.shape[0]} components for {P.shape[1]}-d descriptors learned from {len(X)}: reduce "
                             "dims or learn it on more images)")
        return cls(m=m, P=P, kind=kind, dims=dims)

    def __call__(self, X):
        """Whiten rows of a numpy array or a torch tensor (any leading shape), with L2 at the end."""
        if isinstance(X, torch.Tensor):
            P = torch.as_tensor(self.P[: self.dims], dtype=X.dtype, device=X.device)
            m = torch.as_tensor(self.m, dtype=X.dtype, device=X.device)
            return l2n((X - m) @ P.T)
        return whiten_apply(X, self.m, self.P, self.dims).astype(np.asarray(X).dtype, copy=False)

    def as_linear(self) -> torch.nn.Linear:
        """The whitening as a ``Linear`` layer (weight ``P[:dims]``, bias ``-P[:dims]·m``), without the L2."""
        P = torch.as_tensor(self.P[: self.dims], dtype=torch.float32)
        layer = torch.nn.Linear(P.shape[1], P.shape[0])
        with torch.no_grad():
            layer.weight.copy_(P)
            layer.bias.copy_(-P @ torch.as_tensor(self.m, dtype=torch.float32))
        return layer

    def save(self, path: str | Path) -> None:
        np.savez(path, m=self.m, P=self.P, kind=self.kind, dims=-1 if self.dims is None else self.dims)

    @classmethod
    def load(cls, path: str | Path) -> "Whitening":
        z = np.load(path, allow_pickle=False)
        dims = int(z["dims"])
        return cls(m=z["m"], P=z["P"], kind=str(z["kind"]), dims=None if dims < 0 else dims)
