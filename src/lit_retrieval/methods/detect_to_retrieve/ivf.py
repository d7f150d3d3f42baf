"""Inverted file over visual words for ASMK / ASMK* / R-ASMK(*) search (Detect-to-Retrieve, Sec. 4).

Each word's posting list holds the (image id, vector or packed bits) of the database images that contain the word,
stored contiguously (entries sorted by word, then image). A query scores only the images in the posting lists of its
words: one matrix product (or one XOR-popcount) per query word, the selectivity applied to all word similarities at
once, accumulated per image with ``np.bincount``, then the normalisation ``γ(query)·γ(image)`` of eq. 1 (left out with
``normalize=False``). The result equals :func:`~.kernels.similarity` (with the same ``normalize``) against every
database image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .kernels import ALPHA, TAU, Aggregated, binary_similarity, gamma, selectivity


class InvertedFile:
    """Posting lists of a database of :class:`~.kernels.Aggregated` images (all float or all binary, one ``D``)."""

    def __init__(self, words: np.ndarray, image_ids: np.ndarray, vecs: np.ndarray, gammas: np.ndarray, dim: int,
                 alpha: float = ALPHA, tau: float = TAU, normalize: bool = True) -> None:
        self.words, self.image_ids, self.vecs = words, image_ids, vecs
        self.gammas, self.dim, self.alpha, self.tau = gammas, int(dim), float(alpha), float(tau)
        self.normalize = bool(normalize)
        self.n_images = len(gammas)

    @property
    def binary(self) -> bool:
        return self.vecs.dtype == np.uint8

    @classmethod
    def build(cls, images: Sequence[Aggregated], alpha: float = ALPHA, tau: float = TAU,
              normalize: bool = True) -> "InvertedFile":
        """Index ``images`` (image id = position in the list); ``alpha``/``tau`` fix the selectivity and ``γ``;
        ``normalize=False`` scores without ``γ(query)·γ(image)`` (the raw sum of eq. 1, as eq. 9 is written and as the
        released DELF configuration scores)."""
        if len(images) == 0:
            raise ValueError("an inverted file needs at least one image")
        dims, kinds = {a.dim for a in images}, {a.binary for a in images}
        if len(dims) != 1 or len(kinds) != 1:
            raise ValueError(f"images must share one dimension and kind (dims {dims}, binary {kinds})")
        words = np.concatenate([a.words for a in images]).astype(np.int64)
        ids = np.repeat(np.arange(len(images), dtype=np.int64), [len(a) for a in images])
        vecs = np.concatenate([a.vecs for a in images])
        order = np.lexsort((ids, words))
        gammas = np.array([gamma(a, alpha, tau) for a in images], dtype=np.float64)
        return cls(words[order], ids[order], np.ascontiguousarray(vecs[order]), gammas, dims.pop(), alpha, tau,
                   normalize)

    def postings(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[start, end)`` of the posting lists of ``words`` in the stored arrays."""
        w = np.asarray(words, dtype=np.int64)
        return np.searchsorted(self.words, w, "left"), np.searchsorted(self.words, w, "right")

    def scores(self, query: Aggregated) -> np.ndarray:
        """Eq. 1 similarity of ``query`` with every database image, ``(n_images,)`` float64 (0: no common word;
        without ``γ`` when the index was built with ``normalize=False``)."""
        if query.binary != self.binary or query.dim != self.dim:
            raise ValueError(f"query (binary {query.binary}, dim {query.dim}) does not match the index "
                             f"(binary {self.binary}, dim {self.dim})")
        start, end = self.postings(query.words)
        ids, sims = [], []
        for j in np.flatnonzero(end > start):  # per query word: its whole posting list at once
            sl = slice(start[j], end[j])
            if self.binary:
                sims.append(binary_similarity(self.vecs[sl], query.vecs[j], self.dim))
            else:
                sims.append(self.vecs[sl] @ query.vecs[j])
            ids.append(self.image_ids[sl])
        if not ids:
            return np.zeros(self.n_images)
        acc = np.bincount(np.concatenate(ids), weights=selectivity(np.concatenate(sims), self.alpha, self.tau),
                          minlength=self.n_images)
        if not self.normalize:
            return acc
        return acc * self.gammas * gamma(query, self.alpha, self.tau)

    def search(self, query: Aggregated, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (n_images,), ranks)``: all scores and the image ids by decreasing score (ties: lower id first),
        the first ``k`` of them when ``k`` is given."""
        s = self.scores(query)
        ranks = np.argsort(-s, kind="stable")
        return s, ranks if k is None else ranks[:k]

    _ARRAYS = ("words", "image_ids", "vecs", "gammas")

    def save(self, folder: str | Path) -> Path:
        """Write the index to ``folder`` (one ``.npy`` per array, each atomically, then ``ivf.json``: a folder
        without it is incomplete), so that :meth:`load` can memory-map it."""
        from ...atomic import atomic_json, atomic_write

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ivf.json").unlink(missing_ok=True)
        for name in self._ARRAYS:
            arr = np.ascontiguousarray(getattr(self, name))
            atomic_write(folder / f"{name}.npy", lambda f, a=arr: np.save(f, a))
        atomic_json({"dim": self.dim, "alpha": self.alpha, "tau": self.tau, "normalize": self.normalize,
                     "n_images": self.n_images, "items": int(len(self.words))}, folder / "ivf.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> "InvertedFile":
        """The index :meth:`save` wrote; with ``mmap`` its arrays are memory-mapped (read-only, pages read as the
        posting lists are visited: the index of a million images need not fit in memory)."""
        import json

        folder = Path(folder)
        meta_file = folder / "ivf.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{folder} holds no complete inverted file (ivf.json missing): save it again")
        meta = json.loads(meta_file.read_text())
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
                  for n in cls._ARRAYS}
        if not len(arrays["words"]) == len(arrays["image_ids"]) == len(arrays["vecs"]) == meta["items"] \
                or len(arrays["gammas"]) != meta["n_images"]:
            raise ValueError(f"{folder}: the inverted file's arrays do not match ivf.json: save it again")
        return cls(arrays["words"], arrays["image_ids"], arrays["vecs"], arrays["gammas"], meta["dim"],
                   meta["alpha"], meta["tau"], meta["normalize"])

    def bytes_per_image(self) -> float:
        """Mean storage per image: vectors (float32 ``D·4`` or packed ``ceil(D/8)`` bytes) + a 4-byte word id each."""
        return float(self.vecs.nbytes + 4 * len(self.words)) / self.n_images

    def __len__(self) -> int:
        return self.n_images
