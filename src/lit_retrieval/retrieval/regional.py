"""Regional vectors of a set of images, for learning a regional PCA-whitening (R-MAC after Tolias et al.,
Kim & Yoon's ``P``): one forward pass per image at its own size, all region vectors stacked."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data import load_for_retrieval
from ..whitening import Whitening

log = logging.getLogger(__name__)


def collect_regional_vectors(paths: Sequence[str | Path], vectors: Callable[[Tensor], Tensor],
                             normalize: Callable[[Tensor], Tensor], image_size: int | None,
                             device: str | torch.device = "cpu", desc: str = "regional vectors",
                             progress: bool = True) -> np.ndarray:
    """``vectors``: normalised ``1×3×H×W`` image -> ``1×R×C`` regional vectors; returns all of them, float64."""
    out = []
    with torch.inference_mode():
        for path in tqdm(paths, desc=desc, leave=False, disable=not progress):
            x = normalize(load_for_retrieval(path, image_size)[None].to(device))
            out.append(vectors(x)[0].double().cpu().numpy())
    return np.concatenate(out)


def learn_regional_whitening(X: np.ndarray, dims: int | None, source: str, fix: str) -> Whitening:
    """PCA-whitening of regional vectors ``X`` (from ``source``), warning when they are too few to whiten every
    dimension reliably (``fix``: the config keys that give more vectors or fewer dimensions)."""
    if len(X) < 2 * X.shape[1] and dims is None:
        log.warning("regional whitening: %d vectors for %d dimensions is too few to whiten every dimension "
                    "reliably; %s", len(X), X.shape[1], fix)
    log.info("learning the regional PCA-whitening on %s (%d region vectors)", source, len(X))
    return Whitening.learn(X, "pca", dims=dims)
