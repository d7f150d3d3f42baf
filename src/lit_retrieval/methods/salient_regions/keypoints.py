"""Salient points for candidate-region proposal (Jeong, Choo, Seo & Cho, ICIP, Sec. 2).

Sec. 2 of the paper builds the salient point set :math:`\\mathbf{P}` of an image :math:`I` (:math:`W_I \\times H_I`)
in two steps:

1. Hessian-affine keypoints are detected in :math:`I` (:func:`hessian_affine_keypoints`);
2. they are sorted by descending :math:`\\alpha_{\\mathbf{p}}`, the l2-normalised channel sum of the CNN feature map
   (Eq. 1), "temporarily resized to the size :math:`W_I \\times H_I`", and the :math:`N_{max}` (= 4000) first are
   kept. If fewer than :math:`N_{min}` (= 300) keypoints were detected, :math:`\\mathbf{P}` is instead the positions
   of the :math:`N_{min}` largest values "within :math:`\\alpha`" (:func:`salient_points`): cells of the feature map
   (where :math:`\\alpha` is defined), at their centres in the image. Read on the resized map instead, the
   :math:`N_{min}` largest pixels would all sit in one blob around the maximum, smaller than a feature cell, and
   every candidate region would vanish on the feature map.

:math:`N_{min}` is a number of keypoints detected on the image; as a number of cells it is the top
:math:`300 / 3072 \\approx 10\\%` of the paper's maps (VGG19 conv5, stride 16, 1024x768 images: 64x48 cells). A
stride-32 map of a 384-512 px image has 108-192 cells, fewer than :math:`N_{min}`: taken literally the fallback
would select every cell, the clusters would tile the grid whatever :math:`\\alpha` is, and the regions would no
longer depend on :math:`\\alpha`. :func:`fallback_count` therefore caps the fallback at ``n_min_fraction`` (0.1,
the paper's proportion) of the cells: :math:`\\min(N_{min}, \\mathrm{round}(0.1\\,hw))`, which is
:math:`N_{min}` itself on maps of 3000 cells or more and the top 10% by :math:`\\alpha` below.

Why kornia's detector: :class:`kornia.feature.ScaleSpaceDetector` with the determinant-of-Hessian response
(:class:`kornia.feature.BlobHessian`) and :class:`kornia.feature.LAFAffineShapeEstimator` is a maintained, tested,
pure-torch Hessian(-affine) implementation (scale pyramid, 3-D non-maximum suppression, sub-pixel refinement), with
no compiled third-party binary to ship. The affine shape estimation changes only the shape of each local affine
frame, never its centre, and only the centres are used downstream (k-means of the positions, Sec. 2), so
``affine=False`` yields the same points, faster.

Coordinates are ``(x, y)`` pixel coordinates of the image with the centre of pixel ``(column u, row v)`` at
``(u, v)`` -- kornia's LAF convention.
"""
from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_HESSIAN_THRESHOLD", "DEFAULT_N_MIN_FRACTION", "fallback_count", "hessian_affine_keypoints",
           "salient_points"]

#: Response threshold of :func:`hessian_affine_keypoints`, on the scale of a ``[0, 1]`` image:
#: ``(16 / 3 / 255) ** 2 ~= 4.37e-4``, the default of Perdoch's reference Hessian-affine detector (``hesaff``: a
#: threshold of ``16 / 3`` on ``[0, 255]`` grey levels, squared because det H is quadratic in the intensity), which
#: uses the same scale normalisation :math:`\sigma^4 \det H` with exact second differences, as kornia's does.
DEFAULT_HESSIAN_THRESHOLD: float = (16.0 / 3.0 / 255.0) ** 2

#: Largest share of the feature cells the :math:`N_{min}` fallback may select (:func:`fallback_count`): the paper's
#: :math:`N_{min} = 300` of the 64x48 = 3072 stride-16 cells of a 1024x768 image, rounded.
DEFAULT_N_MIN_FRACTION: float = 0.1


def _check_image(image: Tensor) -> None:
    """Raise a ValueError unless ``image`` is a ``1xHxW`` or ``3xHxW`` floating tensor in ``[0, 1]``."""
    if not isinstance(image, Tensor):
        raise ValueError(
            f"hessian_affine_keypoints: image must be a torch.Tensor, got {type(image).__name__}; "
            "convert it, e.g. torch.from_numpy(array).permute(2, 0, 1).float() / 255."
        )
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"hessian_affine_keypoints: image must be 1xHxW (grey) or 3xHxW (RGB), got shape {tuple(image.shape)}; "
            "pass one channel-first image (no batch axis)."
        )
    if not image.is_floating_point():
        raise ValueError(
            f"hessian_affine_keypoints: image must be floating point in [0, 1], got dtype {image.dtype}; "
            "convert it with image.float() / 255."
        )
    if image.numel() and (not bool(torch.isfinite(image).all()) or image.min() < -1e-3 or image.max() > 1 + 1e-3):
        lo, hi = float(image.min()), float(image.max())
        raise ValueError(
            f"hessian_affine_keypoints: image values must lie in [0, 1] (the threshold is on that scale), got "
            f"[{lo:.4g}, {hi:.4g}]; divide 8-bit images by 255 and undo any mean/std normalisation first."
        )


def hessian_affine_keypoints(
    image: Tensor,
    max_keypoints: int = 8000,
    threshold: float = DEFAULT_HESSIAN_THRESHOLD,
    affine: bool = True,
) -> Tensor:
    r"""Hessian(-affine) keypoint centres of one image, strongest response first.

    The detector is :class:`kornia.feature.ScaleSpaceDetector` (3 levels per octave, initial
    :math:`\sigma = 1.6`) with the scale-normalised determinant-of-Hessian response

    .. math:: R(\mathbf{p}, \sigma) = \sigma^4 \left(L_{xx} L_{yy} - L_{xy}^2\right)(\mathbf{p}, \sigma),

    :math:`L = G_\sigma * I`, on the grey image (RGB is converted with :func:`kornia.color.rgb_to_grayscale`).
    Keypoints are the strict :math:`3\times3\times3` maxima of :math:`R` over (scale, y, x), sub-pixel refined; the
    ``max_keypoints`` strongest are kept, then only those with :math:`R > \text{threshold}`. With ``affine`` the
    kept frames are passed through :class:`kornia.feature.LAFAffineShapeEstimator` (one shape-adaptation step),
    which does not move the centres.

    ``threshold`` lives on the scale of a ``[0, 1]`` image: :math:`R` is dimensionless in space and quadratic in
    the intensity (a Gaussian blob of contrast :math:`A` peaks at :math:`R \approx A^2/16`, about :math:`0.9 A^2/16`
    after discretisation). The default :data:`DEFAULT_HESSIAN_THRESHOLD` :math:`= (16/3/255)^2 \approx 4.4\cdot
    10^{-4}` is the reference Hessian-affine threshold, i.e. a Gaussian blob of contrast :math:`\approx 0.09`
    (23 grey levels). On the 800 ImageNet sample photos resized to 512 px it keeps a median of 504 keypoints
    (10th percentile 172, 24.5% of the images below 300), while a constant image, a ramp, or Gaussian noise of
    standard deviation up to 12 grey levels gives none (noise of 5 grey levels peaks at :math:`R \approx 5\cdot
    10^{-5}`); with ``threshold=0`` a constant image still yields round-off maxima (:math:`R \sim 10^{-13}`).

    kornia keeps a frame only if it lies inside the image with a 5-pixel margin (frame radius :math:`3\times` the
    detection scale), so a blob of scale :math:`\sigma` is found only about :math:`3.3\sigma + 5` px or more from
    the border.

    Args:
        image: ``3xHxW`` (RGB) or ``1xHxW`` (grey) floating tensor with values in ``[0, 1]``.
        max_keypoints: number of strongest maxima the detector keeps before thresholding (>= 1).
        threshold: minimum response :math:`R` (exclusive, >= 0); ``0`` keeps every positive maximum.
        affine: run the affine shape estimation (the "-affine" of Hessian-affine); the centres are the same.

    Returns:
        ``Px2`` float32 tensor of ``(x, y)`` pixel coordinates, by descending response, on ``image``'s device.
        Deterministic for a given input, device and thread count.
    """
    _check_image(image)
    if isinstance(max_keypoints, bool) or not isinstance(max_keypoints, int) or max_keypoints < 1:
        raise ValueError(
            f"hessian_affine_keypoints: max_keypoints must be a positive int, got {max_keypoints!r}; "
            "pass e.g. 8000 (twice the paper's N_max = 4000)."
        )
    if not threshold >= 0.0:  # also rejects NaN
        raise ValueError(
            f"hessian_affine_keypoints: threshold must be >= 0 (a response on the [0, 1] intensity scale), got "
            f"{threshold!r}; use DEFAULT_HESSIAN_THRESHOLD (~4.4e-4), or 0 to keep every positive maximum."
        )
    gray = image.float()
    if gray.shape[0] == 3:
        gray = kornia.color.rgb_to_grayscale(gray)
    # The affine module runs on the kept frames only: ScaleSpaceDetector(aff_module=...) would estimate a shape for
    # all max_keypoints slots, filled or not (0.69 s instead of 0.11 s per 512-px image on 2 CPU cores), for the
    # same centres.
    detector = kornia.feature.ScaleSpaceDetector(
        num_features=max_keypoints,
        resp_module=kornia.feature.BlobHessian(),
        aff_module=kornia.feature.PassLAF(),
        ori_module=kornia.feature.PassLAF(),
    ).to(gray.device)
    with torch.no_grad():
        lafs, responses = detector(gray[None])
        keep = kornia.feature.laf_is_filled(lafs)[0] & (responses[0] > threshold)
        lafs = lafs[:, keep]
        if affine and lafs.shape[1] > 0:
            lafs = kornia.feature.LAFAffineShapeEstimator().to(gray.device)(lafs, gray[None])
    return kornia.feature.get_laf_center(lafs)[0].float()


def fallback_count(n_cells: int, n_min: int, n_min_fraction: float | None = DEFAULT_N_MIN_FRACTION) -> int:
    r"""How many cells of an ``n_cells`` map the :math:`N_{min}` fallback of :func:`salient_points` selects.

    :math:`\min(N_{min}, \max(1, \mathrm{round}(f \cdot n_{cells})), n_{cells})` with ``f = n_min_fraction``; with
    ``n_min_fraction=None``, :math:`\min(N_{min}, n_{cells})` (the paper's :math:`N_{min}` taken literally, which is
    every cell of a map with at most :math:`N_{min}` cells). With ``f < 1`` it is below ``n_cells`` on any map of
    two cells or more. ``n_min=0`` gives 0.
    """
    if n_min_fraction is not None and not 0.0 < n_min_fraction <= 1.0:  # also rejects NaN
        raise ValueError(
            f"salient_points: n_min_fraction must lie in (0, 1] or be None, got {n_min_fraction!r}; the default "
            f"{DEFAULT_N_MIN_FRACTION} keeps the paper's share of the cells (N_min = 300 of 3072)."
        )
    cap = n_cells if n_min_fraction is None else max(1, round(n_min_fraction * n_cells))
    return min(n_min, cap, n_cells)


def _check_salient_inputs(
    alpha: Tensor, image_hw: tuple[int, int], keypoints: Tensor | None, n_max: int, n_min: int
) -> tuple[int, int]:
    """Validate :func:`salient_points`'s arguments and return ``(H, W)``."""
    where = "salient_points"
    if not isinstance(alpha, Tensor) or alpha.dim() != 2 or alpha.numel() == 0:
        shape = tuple(alpha.shape) if isinstance(alpha, Tensor) else type(alpha).__name__
        raise ValueError(
            f"{where}: alpha must be a non-empty 2-D tensor h x w (the feature-map resolution), got {shape}; "
            "reduce the CxHxW feature map over channels first (alpha = F.sum(0), l2-normalised, Eq. 1)."
        )
    if not alpha.is_floating_point() or not bool(torch.isfinite(alpha).all()):
        raise ValueError(
            f"{where}: alpha must be a finite floating-point map, got dtype {alpha.dtype} "
            f"(finite: {bool(torch.isfinite(alpha.float()).all())}); check the feature extraction (Eq. 1)."
        )
    if (
        not isinstance(image_hw, (tuple, list))
        or len(image_hw) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_hw)
    ):
        raise ValueError(
            f"{where}: image_hw must be (H_I, W_I), two positive ints, got {image_hw!r}; "
            "pass tuple(image.shape[-2:])."
        )
    height, width = int(image_hw[0]), int(image_hw[1])
    for name, value in (("n_max", n_max), ("n_min", n_min)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}: {name} must be a non-negative int, got {value!r} (paper: 4000 and 300).")
    if n_max < 1:
        raise ValueError(f"{where}: n_max must be >= 1, got {n_max} (paper: N_max = 4000).")
    if n_min > n_max:
        raise ValueError(
            f"{where}: n_min ({n_min}) must not exceed n_max ({n_max}); the paper uses N_min = 300 <= N_max = 4000."
        )
    if keypoints is not None:
        if not isinstance(keypoints, Tensor) or keypoints.dim() != 2 or keypoints.shape[1] != 2:
            shape = tuple(keypoints.shape) if isinstance(keypoints, Tensor) else type(keypoints).__name__
            raise ValueError(
                f"{where}: keypoints must be a Px2 tensor of (x, y) pixel coordinates or None, got {shape}; "
                "pass the output of hessian_affine_keypoints."
            )
        if keypoints.is_floating_point() and not bool(torch.isfinite(keypoints).all()):
            raise ValueError(f"{where}: keypoints contain NaN or inf; drop those rows before calling.")
    return height, width


def salient_points(
    alpha: Tensor,
    image_hw: tuple[int, int],
    keypoints: Tensor | None,
    n_max: int = 4000,
    n_min: int = 300,
    n_min_fraction: float | None = DEFAULT_N_MIN_FRACTION,
) -> tuple[Tensor, bool]:
    r"""The salient point set :math:`\mathbf{P}` of Sec. 2, and whether the :math:`N_{min}` fallback was used.

    :math:`\alpha` (``h x w``) is resized to the image, :math:`\alpha' = \mathrm{bilinear}(\alpha, H_I \times W_I)`
    (``align_corners=False``), and read at each keypoint's nearest pixel,
    :math:`a_i = \alpha'[\mathrm{clamp}(\lfloor y_i + \tfrac12 \rfloor, 0, H_I - 1),
    \mathrm{clamp}(\lfloor x_i + \tfrac12 \rfloor, 0, W_I - 1)]`. Then

    .. math::
        \mathbf{P} = \begin{cases}
            [\mathbf{k}_{\pi(1)}, \dots, \mathbf{k}_{\pi(\min(P, N_{max}))}],\ a_{\pi(1)} \ge a_{\pi(2)} \ge \dots
                & \text{if } P \ge N_{min},\\
            \text{centres of the } n \text{ largest cells of } \alpha & \text{if } P < N_{min}
                \text{ or keypoints is None,}
        \end{cases}

    with :math:`n` = :func:`fallback_count` ``(h·w, n_min, n_min_fraction)``: :math:`N_{min}` on maps of at least
    :math:`N_{min} / f` cells, the top fraction :math:`f` of the cells by :math:`\alpha` on coarser ones, so that
    the fallback stays selective (and its regions depend on :math:`\alpha`) at stride 32. ``n_min_fraction=None``
    takes :math:`N_{min}` literally: every cell when :math:`N_{min} \ge h·w`.

    Both orders are stable: equal :math:`a_i` keep the keypoints' order, equal :math:`\alpha` values the raster
    (row-major) order. The fallback lists its cells by descending :math:`\alpha`; cell ``(i, j)``'s centre is
    ``((j + ½)·W_I/w − ½, (i + ½)·H_I/h − ½)`` in the keypoints' pixel convention.

    Args:
        alpha: ``h x w`` floating map at the feature-map resolution (Eq. 1).
        image_hw: ``(H_I, W_I)``, the image size the keypoints live in.
        keypoints: ``Px2`` ``(x, y)`` pixel coordinates (e.g. :func:`hessian_affine_keypoints`), or None.
        n_max: :math:`N_{max}`, the most points kept (>= 1).
        n_min: :math:`N_{min}`, fewer keypoints than this trigger the fallback (0 <= n_min <= n_max).
        n_min_fraction: the largest share of the ``h·w`` cells the fallback selects, in ``(0, 1]``, or None (no cap).

    Returns:
        ``(points, fallback)``: ``Nx2`` float32 ``(x, y)`` pixel coordinates on ``alpha``'s device (the kept
        keypoints unchanged, not clamped; or feature-cell centres for the fallback), and True when the fallback
        was used.
    """
    height, width = _check_salient_inputs(alpha, image_hw, keypoints, n_max, n_min)
    h, w = alpha.shape
    count = fallback_count(h * w, n_min, n_min_fraction)
    if keypoints is None or keypoints.shape[0] < n_min:
        order = torch.sort(alpha.flatten().float(), descending=True, stable=True).indices[:count]
        rows, cols = torch.div(order, w, rounding_mode="floor"), order % w
        points = torch.stack(((cols + 0.5) * (width / w) - 0.5, (rows + 0.5) * (height / h) - 0.5), dim=1)
        return points.float(), True
    resized = F.interpolate(
        alpha[None, None].float(), size=(height, width), mode="bilinear", align_corners=False
    )[0, 0]
    kp = keypoints.to(device=alpha.device, dtype=torch.float32)
    cols = torch.floor(kp[:, 0] + 0.5).long().clamp(0, width - 1)
    rows = torch.floor(kp[:, 1] + 0.5).long().clamp(0, height - 1)
    values = resized[rows, cols]
    order = torch.sort(values, descending=True, stable=True).indices[:n_max]
    return kp[order], False
