"""Approximate integral max-pooling (Tolias, Sicre & Jégou, ICLR 2016, Sec. 5, eq. 3), functional and batched.

The maximum of a non-negative channel over a rectangle is approximated by the generalized mean
``(Σ_{p∈R} x(p)^α)^(1/α)``, which tends to the maximum as α grows. Its inner sum is read from the integral
image of ``x^α`` with 4 look-ups per channel and window, so any number of rectangles costs the same per window.

Layout: integral images are ``B×(H+1)×(W+1)×C`` (channels last, so that one look-up reads one contiguous
``C``-vector) in float64, as in the reference code (``x^10`` of values up to 128 spans 21 decades; the
differences of large sums need double precision). Windows are ``[y0, x0, y1, x1]`` in feature-map cells with
exclusive ends.

Precision: a window's sum is a difference of integral-image values, so it keeps about ``16 − log10(channel
total / window sum)`` digits. With the paper's quantized levels (``1..8``, Sec. 7) a channel spans at most
``8^10 · H·W``, well inside float64; raw maps whose small values sit more than ~30× below their channel's
maximum lose those windows at α = 10 (they read as 0) — one more reason the reference quantizes.

Root: ``exact`` takes the α-th root of eq. 3. ``aml_c`` reproduces the reference ``aml.c``, whose Sec. 7
"binary search on the lookup table of α-th powers" (``find_nearest``, table ``i^10``, ``i = 0..255``) moves the
upper end to ``middle − 1`` and so returns ``2·⌊j/2⌋``, ``j`` the smallest integer with ``j^10 ≥ v``: only even
integers (a window whose maximum is a single cell at an odd level ``l`` reads ``l − 1``; 255 for ``j ≥ 255``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...boxes import convert

DEFAULT_ALPHA = 10.0
ROOTS = ("exact", "aml_c")
_AML_C_POWERS = torch.tensor([float(i ** 10) for i in range(256)], dtype=torch.float64)  # aml.c's pow_10 table


class Workspace:
    """Reusable buffers for :func:`power_integral` and the batches fed to it. Large fresh allocations are paid
    in page faults on every call (on the 2-core benchmark machine a fresh 100 MB tensor costs 5-10× the
    arithmetic done in it), so a re-ranking run keeps one workspace for all its batches. A result computed
    with a workspace lives in it: it is overwritten by the next call that uses the same workspace. ``max_bytes``
    bounds the integral images of one batch; ``timer`` accumulates the run's seconds per stage; ``device``: where the
    buffers (and so the torch backend's work) live."""

    def __init__(self, max_bytes: int = 1 << 30, device: str | torch.device = "cpu") -> None:
        self._buffers: dict[str, Tensor] = {}
        self.max_bytes = int(max_bytes)
        self.device = torch.device(device)
        self.timer: dict[str, float] = {}
        self.compiled: Any = None  # the compiled backend's per-thread buffers (compiled.Buffers)

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        n = 1
        for d in shape:
            n *= int(d)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = self._buffers[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)


def _ipow_(x: Tensor, n: int, tmp: Tensor) -> Tensor:
    """``x ← x^n`` in place for an integer ``n ≥ 1`` by binary exponentiation (4 products for n = 10, against a
    generic ``pow``'s exp/log per element)."""
    tmp.copy_(x)
    for bit in bin(n)[3:]:
        x.mul_(x)
        if bit == "1":
            x.mul_(tmp)
    return x


def power_integral(x: Tensor, alpha: float = DEFAULT_ALPHA, workspace: Workspace | None = None,
                   power_dtype: torch.dtype = torch.float32) -> Tensor:
    """Integral images of ``x^α``: ``B×C×H×W`` (non-negative) -> ``B×(H+1)×(W+1)×C`` float64.

    ``out[b, y, x, c] = Σ_{i<y, j<x} x[b, c, i, j]^α`` (a zero first row and column). The powers are taken in
    ``power_dtype``: float32 by default (relative error 6e-8 per element, far below the approximation itself);
    float64 makes the powers of integer levels exact (``7^10`` is not a float32), as the reference's table of
    doubles, which the even-integer root of ``root="aml_c"`` needs to land on the same side. Sums are float64; the
    prefix sums run as in-place row additions over the whole batch (``torch.cumsum`` along a non-innermost
    dimension is ~3× slower on CPU)."""
    if x.dim() != 4:
        raise ValueError(f"power_integral: expected B×C×H×W maps, got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    ws = workspace or Workspace()
    xa = ws.get("power", (B, H, W, C), power_dtype)
    xa.copy_(x.permute(0, 2, 3, 1))
    if float(alpha).is_integer() and alpha >= 1:
        _ipow_(xa, int(alpha), ws.get("power_tmp", (B, H, W, C), power_dtype))
    else:
        xa.pow_(alpha)
    out = ws.get("integral", (B, H + 1, W + 1, C), torch.float64)
    out[:, 0].zero_()
    out[:, :, 0].zero_()
    body = out[:, 1:, 1:]
    body.copy_(xa)
    for i in range(1, H):  # loops over rows and columns of the whole batch, each one vectorised addition
        body[:, i].add_(body[:, i - 1])
    for j in range(1, W):
        body[:, :, j].add_(body[:, :, j - 1])
    return out


def window_sums(sat: Tensor, boxes: Tensor, images: Tensor | None = None) -> Tensor:
    """Sums of ``x^α`` over windows: integral images ``B×(H+1)×(W+1)×C``, windows ``B×K×4`` (or ``K×4``,
    the same for every map) -> ``B×K×C`` float64. Four row look-ups per window, no loop over windows.
    ``images``: evaluate only these maps of the batch (``boxes`` then has one row per listed image)."""
    _, H1, W1, C = sat.shape
    images = torch.arange(sat.shape[0], device=sat.device) if images is None else images.to(sat.device)
    B = len(images)
    boxes = torch.as_tensor(boxes, dtype=torch.long, device=sat.device)
    if boxes.dim() == 2:
        boxes = boxes.unsqueeze(0).expand(B, -1, -1)
    K = boxes.shape[1]
    flat = sat.reshape(-1, C)
    base = (images * (H1 * W1)).unsqueeze(1)
    y0, x0, y1, x1 = boxes.unbind(-1)

    def rows(y: Tensor, x: Tensor) -> Tensor:
        return flat.index_select(0, (base + y * W1 + x).reshape(-1))

    s = rows(y1, x1) - rows(y0, x1) - rows(y1, x0) + rows(y0, x0)
    return s.view(B, K, C)


def check_root(root: str, alpha: float) -> None:
    """Fail on an unknown root, or on ``aml_c`` with an exponent other than the 10 its table is made for."""
    if root not in ROOTS:
        raise ValueError(f"root={root!r}: choose exact (the root of eq. 3) or aml_c (the reference aml.c's)")
    if root == "aml_c" and float(alpha) != 10.0:
        raise ValueError(f"root=aml_c is aml.c's table of 10th powers: it needs alpha=10, got alpha={alpha}")


def aml_c_root(sums: Tensor) -> Tensor:
    """The 10th root as ``aml.c``'s ``fast_root_10`` computes it (see the module notes): ``2·⌊j/2⌋`` with ``j``
    the smallest integer whose 10th power is ``≥ v`` (255 when ``j ≥ 255``), 0 for ``v ≤ 0``. Float32."""
    s = sums.to(torch.float64)
    j = torch.searchsorted(_AML_C_POWERS.to(s.device), s.contiguous(), side="left")
    out = torch.where(j >= 255, torch.full_like(j, 255), j - j % 2)
    return torch.where(s > 0, out, torch.zeros_like(out)).to(torch.float32)


def generalized_max(sums: Tensor, alpha: float = DEFAULT_ALPHA, root: str = "exact") -> Tensor:
    """``(Σ x^α)^(1/α)`` from window sums (float32). Tiny negative sums left by float cancellation become 0.

    ``root="exact"``: the root of eq. 3. ``root="aml_c"``: the reference code's table search, which returns only
    even integers (:func:`aml_c_root`; α must be 10)."""
    check_root(root, alpha)
    if root == "aml_c":
        return aml_c_root(sums)
    return sums.clamp_min(0).pow(1.0 / alpha).to(torch.float32)


def approx_region_max(x: Tensor, boxes: Tensor, alpha: float = DEFAULT_ALPHA) -> Tensor:
    """Approximate max-pooling of windows: ``B×C×H×W`` maps, ``K×4`` or ``B×K×4`` windows -> ``B×K×C``."""
    return generalized_max(window_sums(power_integral(x, alpha), boxes), alpha)


def exact_region_max(x: Tensor, boxes: Tensor) -> Tensor:
    """Exact max-pooling of the same windows (``[y0, x0, y1, x1]``, shared by the batch) -> ``B×K×C``."""
    from ...pooling import region_max

    return region_max(x, convert(torch.as_tensor(boxes, dtype=torch.long).reshape(-1, 4), "yxyx", "yxhw"))
