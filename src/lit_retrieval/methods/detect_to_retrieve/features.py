"""Local features for Detect-to-Retrieve (Teichmann et al., CVPR 2019, Sec. 5.2 "Image representation").

The paper uses DELF (Noh et al., ICCV 2017): multi-scale dense CNN features, at most 1000 per region, selected by a
learned attention score, then L2 → PCA to 128 → L2 (that post-processing is :meth:`~.codebook.Codebook.project`).
Our default, :class:`ActivationFeatures`, is a *non-learned* stand-in with the same interface: every location of a
frozen backbone's last conv map is a descriptor (its ``C`` activations) and the activation's L2 norm plays the role of
the attention score. A learned local feature can replace it later: anything following :class:`LocalFeatureExtractor`
works with :func:`region_descriptors` and the rest of the pipeline.

Regions (Sec. 4.2): region 0 is always the whole image (``Y^(n,1) = Y^(n)``); every further region is a box whose
features are *re-extracted* on the box crop (as DELF's released ``extract_aggregation`` code does), not selected
from the whole image's features.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...boxes import Boxes

if TYPE_CHECKING:  # importing the backbones package pulls timm; features only need the Backbone interface
    from ...backbones.base import Backbone

Features = tuple[np.ndarray, np.ndarray, np.ndarray]  # descriptors N×C, locations N×2 (x, y), scales (N,)

DELF_SCALES = (0.7071, 1.0, 1.4142)  # the middle three of DELF's 7 default scales (0.25 ... 2.0)


@runtime_checkable
class LocalFeatureExtractor(Protocol):
    """A local feature extractor: ``extractor(image)`` with ``image`` a float ``3×H×W`` RGB tensor in ``[0, 1]``
    returns ``(descriptors float32 N×C, locations float32 N×2, scales float32 N)`` as numpy arrays: the raw
    (un-normalised, un-projected) descriptors, their centres ``(x, y)`` in pixels of the input image, and the image
    scale factor each was extracted at. ``dim`` is ``C`` (checked against a codebook's input dimension)."""

    dim: int

    def __call__(self, image: Tensor) -> Features: ...


def _check_image(image: Tensor, where: str) -> None:
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{where} expects one float 3×H×W RGB image in [0, 1], got {shape}")


class ActivationFeatures:
    """Multi-scale dense backbone activations as local descriptors (a non-learned stand-in for DELF).

    At each factor ``s`` of ``scales`` the image is resized to ``round(s·H) × round(s·W)`` (bilinear, antialiased),
    then ``backbone.features`` (which normalises it) gives a ``C×h×w`` map; location ``(i, j)`` is one descriptor,
    centred at the receptive-field centre ``((j + 0.5)·stride / s_x, (i + 0.5)·stride / s_y)`` in input pixels,
    with ``s_x, s_y`` the effective per-axis factors (``round(s·W)/W``, ``round(s·H)/H``; equal to ``s`` up to
    rounding), clipped to the image (a network with "same" padding has ``ceil(h/stride)`` cells, the last centre
    can fall past the border). The ``max_features`` descriptors of largest L2 norm over all scales and locations are
    kept (norm descending, as DELF keeps the top attention scores), those with norm ``<= min_norm`` never (the default
    drops all dead, all-zero activations). Scales where the resized image is smaller than ``min_size`` pixels
    (default: one stride) are skipped, so a tiny image or crop may give no descriptor at all (``0×C``). Runs under
    ``torch.inference_mode`` on the backbone's device.
    """

    def __init__(self, backbone: Backbone, scales: Sequence[float] = DELF_SCALES, max_features: int = 1000,
                 min_size: int | None = None, min_norm: float = 0.0) -> None:
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive factors, got {tuple(scales)}")
        if max_features < 1:
            raise ValueError(f"max_features must be >= 1, got {max_features}")
        self.backbone = backbone
        self.scales = tuple(float(s) for s in scales)
        self.max_features = int(max_features)
        self.min_size = int(backbone.stride if min_size is None else min_size)
        self.min_norm = float(min_norm)

    @property
    def dim(self) -> int:
        return int(self.backbone.out_channels)

    @property
    def device(self) -> torch.device:
        first = next(itertools.chain(self.backbone.parameters(), self.backbone.buffers()), None)
        return first.device if first is not None else torch.device("cpu")

    def __repr__(self) -> str:
        return (f"ActivationFeatures({self.backbone.name}, scales={self.scales}, max_features={self.max_features}, "
                f"min_size={self.min_size}, min_norm={self.min_norm})")

    def __call__(self, image: Tensor) -> Features:
        return self.strongest(*self.dense(image))

    def dense(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every location of every scale, before the selection: ``(descriptors N×C, centres N×2 (x, y) in input
        pixels, scales N, L2 norms N)`` as tensors on the backbone's device (``N = 0`` when no scale fits)."""
        _check_image(image, "ActivationFeatures")
        H, W = int(image.shape[1]), int(image.shape[2])
        stride = float(self.backbone.stride)
        descs, locs, scales = [], [], []
        with torch.inference_mode():
            x = image.to(self.device, torch.float32)[None]
            for s in self.scales:
                h, w = max(1, round(s * H)), max(1, round(s * W))
                if min(h, w) < self.min_size:
                    continue
                xs = x if (h, w) == (H, W) else F.interpolate(x, size=(h, w), mode="bilinear", antialias=True,
                                                              align_corners=False)
                fmap = self.backbone.features(xs)[0]  # C×h'×w' (antialiased bilinear stays in [0, 1])
                C, fh, fw = fmap.shape
                ii, jj = torch.meshgrid(torch.arange(fh, device=fmap.device), torch.arange(fw, device=fmap.device),
                                        indexing="ij")
                xy = torch.stack([((jj.reshape(-1) + 0.5) * (stride * W / w)).clamp(0, W),
                                  ((ii.reshape(-1) + 0.5) * (stride * H / h)).clamp(0, H)], dim=1)
                descs.append(fmap.reshape(C, -1).T)
                locs.append(xy)
                scales.append(torch.full((fh * fw,), s, device=fmap.device))
            if not descs:
                empty = torch.zeros((0,), device=self.device)
                return torch.zeros((0, self.dim), device=self.device), empty.reshape(0, 2), empty, empty
            d, xy, sc = torch.cat(descs), torch.cat(locs), torch.cat(scales)
            return d, xy, sc, torch.linalg.vector_norm(d.float(), dim=1)

    def strongest(self, d: Tensor, xy: Tensor, sc: Tensor, norms: Tensor, inside: Tensor | None = None) -> Features:
        """The ``max_features`` of largest norm (above ``min_norm``; among ``inside`` where given) as numpy."""
        if inside is not None:
            d, xy, sc, norms = d[inside], xy[inside], sc[inside], norms[inside]
        if len(norms) == 0:
            return _empty(self.dim)
        top = torch.topk(norms, min(self.max_features, len(norms)), sorted=True).indices
        top = top[norms[top] > self.min_norm]
        return d[top].float().cpu().numpy(), xy[top].float().cpu().numpy(), sc[top].float().cpu().numpy()


def _empty(dim: int) -> Features:
    return np.zeros((0, dim), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, np.float32)


def crop(image: Tensor, box: Sequence[float]) -> Tensor:
    """The ``3×h×w`` crop of a ``3×H×W`` image to an ``xyxy`` pixel box, rounded outward (floor of the start, ceil
    of the end), clipped to the image, at least 1 pixel wide and high (:meth:`~lit_retrieval.boxes.Boxes.rounded_out`;
    a view)."""
    _check_image(image, "crop")
    window = Boxes.of(torch.tensor([[float(v) for v in box]], dtype=torch.float64), size=image.shape[1:])
    x0, y0, x1, y1 = window.rounded_out().to()[0].tolist()
    return image[:, y0:y1, x0:x1]


BOX_FEATURES = ("reextract", "select")


def region_descriptors(extractor: LocalFeatureExtractor, image: Tensor,
                       boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
                       box_features: str = "reextract") -> list[np.ndarray]:
    """Descriptors of every region of one image: ``[whole image, box 1, ..., box N]`` (``N×4`` ``xyxy`` pixel boxes).

    Region 0 is always the whole image, also with no box (Sec. 4.2, ``Y^(n,1) = Y^(n)``; Sec. 5.2: "we add the
    original image as one of the selected regions"). The features of each box are re-extracted on its crop
    (:func:`crop`), as DELF's released code does, so they follow the extractor's own scales and top-``k`` per region
    ("maximum of 1000 features per region", Sec. 5.2). A crop too small for the extractor gives ``0×C``.

    ``box_features="select"`` (an :class:`ActivationFeatures` option, no backbone pass per box): each box takes
    the strongest of the whole image's multi-scale features whose centre lies inside it (at the whole image's
    resolution, so a box holds fewer and coarser features than its re-extracted crop).
    """
    _check_image(image, "region_descriptors")
    if box_features not in BOX_FEATURES:
        raise ValueError(f"box_features={box_features!r}: choose one of {BOX_FEATURES}")
    b = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if box_features == "reextract":
        return [extractor(image)[0]] + [extractor(crop(image, box))[0] for box in b]
    if not isinstance(extractor, ActivationFeatures):
        raise ValueError("box_features='select' picks the boxes' features among the whole image's: it needs "
                         f"ActivationFeatures, got {type(extractor).__name__}")
    dense = extractor.dense(image)
    xy = dense[1]
    out = [extractor.strongest(*dense)[0]]
    for x0, y0, x1, y1 in torch.as_tensor(b, dtype=xy.dtype, device=xy.device):
        inside = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
        out.append(extractor.strongest(*dense, inside=inside)[0])
    return out


__all__ = ["BOX_FEATURES", "DELF_SCALES", "ActivationFeatures", "Features", "LocalFeatureExtractor", "crop",
           "region_descriptors"]
