"""Regional vectors of a set of images, for learning a regional PCA-whitening (R-MAC after Tolias et al.,
Kim & Yoon's ``P``): one forward pass per image at its own size, all region vectors stacked."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data import load_for_retrieval


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
