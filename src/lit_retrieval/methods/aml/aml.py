"""AML: approximate max-pooling localization (Tolias, Sicre & Jégou, ICLR 2016, Sec. 5), batched over images.

For a query MAC vector ``q`` and a database image's integral images of ``x^α``, find the window maximising
the cosine similarity between its approximate MAC vector and ``q`` (eq. 4). AML evaluates the sampled
candidates of :func:`~.windows.candidate_windows`, then refines the best one by coordinate descent exactly as
the reference ``aml.c``: for each step from ``refine_step`` down to 1, rounds (at most ``refine_iter``, until
nothing changes) of eight greedy moves — top edge up/down, bottom edge up/down, left edge left/right, right edge
left/right, each accepted at once when it improves the score — keeping windows of at least 2×2 cells.

``root``: how the α-th root of the window sums is taken when scoring windows, ``exact`` (eq. 3) or ``aml_c``
(the reference's table search, even integers only: :func:`~.integral.aml_c_root`); in the reference only the
localization goes through ``aml.c``, so the root is an option of the scoring here, not of the window descriptors.

Every image of the batch runs its own search (its own best window, rounds and stopping); the loops are over
moves and rounds, each a single vectorised evaluation for the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .integral import DEFAULT_ALPHA, check_root, generalized_max, window_sums
from .windows import candidate_windows, grid_windows


BACKENDS = ("compiled", "torch")


@dataclass(frozen=True)
class AMLSettings:
    """The localization's settings (``conf/rerank/aml.yaml``): candidate step ``t`` and aspect factor ``s``
    (Sec. 5), the refinement's edge moves and rounds, the generalized-mean exponent α (eq. 3) and its root
    (``exact`` or ``aml_c``, the reference's table search), and the implementation re-ranking runs (``compiled``:
    :mod:`.compiled`; ``torch``: this module, the reference)."""

    step: int = 3
    max_ratio: float = 1.1
    refine_step: int = 3
    refine_iter: int = 5
    alpha: float = DEFAULT_ALPHA
    root: str = "exact"
    backend: str = "compiled"

    @classmethod
    def from_cfg(cls, r: Any, device: str = "cpu") -> AMLSettings:
        """From eval.py's ``rerank`` section; ``backend: auto`` is ``torch`` on a GPU ``device``, ``compiled``
        otherwise."""
        backend = str(r.get("backend", "auto"))
        if backend == "auto":
            backend = "torch" if str(device).startswith("cuda") else "compiled"
        return cls(int(r.step), float(r.max_ratio), int(r.refine_step), int(r.refine_iter), float(r.alpha),
                   str(r.get("root", "exact")), backend)

    def check(self) -> None:
        """Fail on a root or backend that cannot run."""
        check_root(self.root, self.alpha)
        if self.backend not in BACKENDS:
            raise ValueError(f"rerank.backend={self.backend!r}: choose auto, compiled (numba, one fused pass per "
                             "image) or torch (the reference implementation, on the CPU or the GPU)")


@dataclass
class Localization:
    """Per image: ``boxes`` ``B×4`` ``[y0, x0, y1, x1]`` cells, ``scores`` ``B`` (cosine similarity to the
    query), ``evaluated`` ``B`` (windows scored, as the reference counts them)."""

    boxes: Tensor
    scores: Tensor
    evaluated: Tensor


def window_scores(sat: Tensor, boxes: Tensor, q: Tensor, alpha: float = DEFAULT_ALPHA,
                  images: Tensor | None = None, max_elements: int = 1 << 19, root: str = "exact") -> Tensor:
    """Cosine similarity between ``q`` (``C``, or one row per image) and the approximate MAC of each window:
    ``sat`` ``B×(H+1)×(W+1)×C``, windows ``K×4`` or ``B×K×4`` -> ``B×K`` (``images``: only these maps, see
    :func:`~.integral.window_sums`). Windows go in chunks of at most ``max_elements`` window-channel values
    (a few MB: small temporaries are recycled by the allocator, large ones cost fresh page faults every time).
    An all-zero window scores 0. The pooled values are float32 (as the root returns them), the cosine is
    accumulated and returned in float64: AML compares windows whose scores differ in the 7th digit, where float32
    sums of 2048 products would decide by their rounding."""
    B, C = (sat.shape[0] if images is None else len(images)), sat.shape[-1]
    qn = q.to(sat.device, torch.float32)
    qn = (qn / qn.norm(dim=-1, keepdim=True).clamp_min(1e-12)).double()
    qn = qn.expand(B, C) if qn.dim() == 1 else qn
    boxes = torch.as_tensor(boxes, dtype=torch.long, device=sat.device)
    K = boxes.shape[-2]
    step = max(1, max_elements // max(1, B * C))
    out = []
    for k0 in range(0, K, step):
        f = generalized_max(window_sums(sat, boxes[..., k0:k0 + step, :], images), alpha, root).double()  # B×k×C
        num = torch.bmm(f, qn.unsqueeze(2)).squeeze(2)
        out.append(num / f.norm(dim=2).clamp_min(1e-12))
    return torch.cat(out, 1) if out else sat.new_zeros((B, 0), dtype=torch.float64)


def best_window(sat: Tensor, q: Tensor, windows: np.ndarray, alpha: float = DEFAULT_ALPHA,
                root: str = "exact") -> tuple[Tensor, Tensor]:
    """The best of ``windows`` (``K×4``, shared by the batch) for every image: ``(B×4 boxes, B scores)``; the
    first of equal scores, as the reference's strict ``>``."""
    w = torch.tensor(windows, dtype=torch.long, device=sat.device)  # a copy: cached window arrays are read-only
    s = window_scores(sat, w, q, alpha, root=root)
    best = s.argmax(dim=1)
    return w[best], s.gather(1, best[:, None]).squeeze(1)


# (edge index, direction): top edge up, top down, bottom up, bottom down, left edge left, left right, ...
_MOVES = ((0, -1), (0, +1), (2, -1), (2, +1), (1, -1), (1, +1), (3, -1), (3, +1))


def refine(sat: Tensor, q: Tensor, boxes: Tensor, scores: Tensor, refine_step: int = 3, refine_iter: int = 5,
           alpha: float = DEFAULT_ALPHA, root: str = "exact") -> tuple[Tensor, Tensor, Tensor]:
    """Coordinate-descent refinement of ``aml.c`` (``box_refine``), per image: returns boxes, scores, evaluated."""
    H, W = sat.shape[1] - 1, sat.shape[2] - 1
    limit = torch.tensor([H, W, H, W], device=sat.device)
    boxes, scores = boxes.clone(), scores.clone()
    evaluated = torch.zeros(len(boxes), dtype=torch.long, device=sat.device)
    for step in range(int(refine_step), 0, -1):
        active = torch.ones(len(boxes), dtype=torch.bool, device=sat.device)
        for _ in range(int(refine_iter)):
            if not active.any():
                break
            changed = torch.zeros_like(active)
            evaluated += 8 * active
            for edge, sign in _MOVES:
                lo, hi = (edge % 2, edge % 2 + 2)  # the window's two edges along this axis
                new = boxes.clone()
                new[:, edge] += sign * step
                if edge < 2:  # a start edge: stays ≥ 0 and 2 cells before the end
                    ok = (new[:, edge] >= 0) & (new[:, hi] - new[:, edge] >= 2)
                else:  # an end edge: stays ≤ the map size and 2 cells after the start
                    ok = (new[:, edge] <= limit[edge]) & (new[:, edge] - new[:, lo] >= 2)
                ok &= active
                if not ok.any():
                    continue
                idx = ok.nonzero().squeeze(1)
                s = window_scores(sat, new[idx].unsqueeze(1), q if q.dim() == 1 else q[idx], alpha, images=idx,
                                  root=root)[:, 0]
                better = s > scores[idx]
                win = idx[better]
                boxes[win], scores[win] = new[win], s[better]
                changed[win] = True
            active &= changed
    return boxes, scores, evaluated


def localize(sat: Tensor, q: Tensor, q_ratio: float | None, aml: AMLSettings | None = None) -> Localization:
    """AML for a batch of maps of one size: sampled candidates (step ``t``, aspect factor ``s``), then
    refinement. With no candidate (a map too small for the aspect ratio) the search starts from the whole map."""
    aml = aml or AMLSettings()
    H, W = sat.shape[1] - 1, sat.shape[2] - 1
    cands = candidate_windows(H, W, q_ratio, aml.step, aml.max_ratio)
    if len(cands) == 0:
        cands = np.array([[0, 0, H, W]])
    boxes, scores = best_window(sat, q, cands, aml.alpha, aml.root)
    n0 = len(cands)
    if aml.refine_iter > 0 and aml.refine_step > 0:
        boxes, scores, evaluated = refine(sat, q, boxes, scores, aml.refine_step, aml.refine_iter, aml.alpha,
                                          aml.root)
    else:
        evaluated = torch.zeros(len(boxes), dtype=torch.long, device=sat.device)
    return Localization(boxes, scores, evaluated + n0)


def localize_exhaustive(sat: Tensor, q: Tensor, min_size: int = 1, alpha: float = DEFAULT_ALPHA) -> Localization:
    """The globally optimal window of eq. 4 by scoring every window (``O(H²W²)``; for measuring AML)."""
    H, W = sat.shape[1] - 1, sat.shape[2] - 1
    windows = grid_windows(H, W, 1, min_size)
    boxes, scores = best_window(sat, q, windows, alpha)
    return Localization(boxes, scores, torch.full((len(boxes),), len(windows), dtype=torch.long))
