"""Salient points of Jeong et al. (ICIP, Sec. 2): Hessian(-affine) keypoints, sorting by alpha, N_max / N_min."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_retrieval.methods.salient_regions.keypoints import (
    DEFAULT_HESSIAN_THRESHOLD,
    fallback_count,
    hessian_affine_keypoints,
    salient_points,
)

IMAGENET = Path(__file__).resolve().parents[4] / "shared" / "data" / "imagenet-samples"

# (cx, cy, sigma, amplitude) on a 0.5 grey background: three bright blobs and one dark one, all far enough from the
# border for kornia's frame-inside-image test (about 3.3 sigma + 5 px).
BLOBS = [(40.0, 40.0, 3.0, 0.4), (96.0, 70.0, 6.0, 0.4), (150.0, 44.0, 4.0, 0.4), (150.0, 90.0, 4.0, -0.4)]


def _blob_image(height: int = 128, width: int = 192) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    img = torch.full((height, width), 0.5)
    for cx, cy, s, a in BLOBS:
        img = img + a * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return img[None]


def _resized(alpha: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    return F.interpolate(alpha[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0].numpy()


# --------------------------------------------------------------------------------------------- salient_points


def test_sorts_keypoints_by_alpha_and_caps_at_n_max():
    alpha = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.0, 0.7]])
    # (x, y) keypoints; alpha at them: 0.0, 0.9, 0.5, 0.7, 0.3, 0.1
    kp = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    pts, fallback = salient_points(alpha, (2, 3), kp, n_max=4, n_min=2)
    assert fallback is False
    expected = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 1.0], [2.0, 0.0]])  # 0.9, 0.7, 0.5, 0.3
    assert torch.equal(pts, expected)
    all_pts, _ = salient_points(alpha, (2, 3), kp, n_max=100, n_min=2)
    assert all_pts.shape == (6, 2)
    assert torch.equal(all_pts[:4], expected) and torch.equal(all_pts[4:], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


def test_alpha_is_resized_bilinearly_and_sampled_at_nearest_clamped_pixel():
    # [[0, 1]] resized to width 4 (align_corners=False) is [0, 0.25, 0.75, 1]; to width 8 along x.
    alpha = torch.tensor([[0.0, 1.0]])
    kp = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    pts, fallback = salient_points(alpha, (1, 4), kp, n_max=10, n_min=0)
    assert not fallback
    assert torch.equal(pts[:, 0], torch.tensor([3.0, 2.0, 1.0, 0.0]))
    # nearest pixel: 1.4 -> column 1 (0.25), 0.6 -> column 1 too; 1.6 -> column 2 (0.75); far outside -> clamped.
    kp = torch.tensor([[1.4, 0.0], [-50.0, 7.0], [1.6, 0.2], [99.0, -3.0], [0.6, 0.0]])
    pts, _ = salient_points(alpha, (1, 4), kp, n_max=10, n_min=0)
    # values: 0.25, 0.0, 0.75, 1.0, 0.25 -> order 3, 2, 0, 4 (stable tie), 1; coordinates returned unclamped.
    assert torch.equal(pts, kp[[3, 2, 0, 4, 1]])


def test_equal_alpha_keeps_keypoint_order():
    alpha = torch.ones(4, 4)
    kp = torch.tensor([[3.0, 0.0], [0.0, 3.0], [1.0, 1.0], [2.0, 2.0]])
    pts, _ = salient_points(alpha, (4, 4), kp, n_max=3, n_min=1)
    assert torch.equal(pts, kp[:3])
    # many ties among three levels: the order is numpy's stable argsort of -alpha at the keypoints
    alpha = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(2)
    kp = torch.stack([torch.randint(0, 3, (300,), generator=g), torch.randint(0, 2, (300,), generator=g)], 1).float()
    pts, _ = salient_points(alpha, (2, 3), kp, n_max=250, n_min=1)
    values = alpha.numpy()[kp[:, 1].long().numpy(), kp[:, 0].long().numpy()]
    np.testing.assert_array_equal(pts.numpy(), kp.numpy()[np.argsort(-values, kind="stable")[:250]])


def _cell_centres(cells: np.ndarray, alpha_hw: tuple[int, int], hw: tuple[int, int]) -> np.ndarray:
    rows, cols = cells // alpha_hw[1], cells % alpha_hw[1]
    return np.stack([(cols + 0.5) * hw[1] / alpha_hw[1] - 0.5, (rows + 0.5) * hw[0] / alpha_hw[0] - 0.5],
                    axis=1).astype(np.float32)


def test_fallback_returns_centres_of_the_n_min_largest_alpha_cells():
    # n_min_fraction=None: the paper's N_min taken literally (here 20 of 35 cells)
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(5, 7, generator=g)
    hw = (20, 30)
    kp = torch.rand(19, 2, generator=g) * torch.tensor([29.0, 19.0])  # one fewer than n_min
    pts, fallback = salient_points(alpha, hw, kp, n_max=100, n_min=20, n_min_fraction=None)
    assert fallback is True
    assert pts.shape == (20, 2) and pts.dtype == torch.float32
    top = np.argsort(-alpha.numpy().ravel(), kind="stable")[:20]
    np.testing.assert_allclose(pts.numpy(), _cell_centres(top, (5, 7), hw), atol=1e-5)
    # the cells under those points are exactly the 20 largest of alpha
    r = (pts[:, 1] * 5 / 20).long().numpy()
    c = (pts[:, 0] * 7 / 30).long().numpy()
    np.testing.assert_array_equal(np.sort(alpha.numpy()[r, c]), np.sort(alpha.numpy().ravel())[-20:])
    # with exactly n_min keypoints there is no fallback
    kp20 = torch.cat([kp, kp[:1]])
    pts20, fallback20 = salient_points(alpha, hw, kp20, n_max=100, n_min=20, n_min_fraction=None)
    assert fallback20 is False and pts20.shape == (20, 2)
    # more wanted than there are cells, uncapped: every cell, by descending alpha
    every, _ = salient_points(alpha, hw, None, n_max=100, n_min=50, n_min_fraction=None)
    assert every.shape == (35, 2)
    # by default the fallback keeps a tenth of the cells: round(3.5) = 4 of them, the 4 largest
    capped, _ = salient_points(alpha, hw, kp, n_max=100, n_min=20)
    np.testing.assert_allclose(capped.numpy(), _cell_centres(top[:4], (5, 7), hw), atol=1e-5)


def test_fallback_ties_follow_raster_order():
    alpha = torch.zeros(3, 4)
    alpha[1, 2] = 1.0
    pts, fallback = salient_points(alpha, (3, 4), None, n_max=5, n_min=4, n_min_fraction=None)
    assert fallback  # cells are pixels here (same size): centres at the integer pixel positions
    assert torch.equal(pts, torch.tensor([[2.0, 1.0], [0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]))


def test_no_keypoints_uses_fallback():
    alpha = torch.rand(6, 6, generator=torch.Generator().manual_seed(1))
    pts_none, fb_none = salient_points(alpha, (24, 24), None, n_max=40, n_min=10, n_min_fraction=None)
    pts_empty, fb_empty = salient_points(alpha, (24, 24), torch.empty(0, 2), n_max=40, n_min=10, n_min_fraction=None)
    assert fb_none and fb_empty
    assert pts_none.shape == (10, 2) and torch.equal(pts_none, pts_empty)
    i, j = divmod(int(alpha.argmax()), 6)
    assert pts_none[0].tolist() == [j * 4 + 1.5, i * 4 + 1.5]  # the centre of alpha's largest cell


def test_fallback_on_a_stride_32_map_keeps_only_the_largest_alpha_cells():
    # a 384x512 image at stride 32: 12x16 = 192 cells, fewer than N_min = 300; 50 keypoints trigger the fallback
    g = torch.Generator().manual_seed(3)
    alpha = torch.rand(12, 16, generator=g)
    hw = (384, 512)
    kp = torch.rand(50, 2, generator=g) * torch.tensor([511.0, 383.0])
    pts, fallback = salient_points(alpha, hw, kp)  # the paper's N_max = 4000, N_min = 300; the default cap
    assert fallback is True
    assert pts.shape == (19, 2)  # round(0.1 * 192), not all 192 cells
    top = np.argsort(-alpha.numpy().ravel(), kind="stable")[:19]
    np.testing.assert_allclose(pts.numpy(), _cell_centres(top, (12, 16), hw), atol=1e-4)
    # each selected cell's alpha is at least every unselected one's
    r, c = (pts[:, 1] / 32).long(), (pts[:, 0] / 32).long()
    chosen = torch.zeros(12, 16, dtype=torch.bool)
    chosen[r, c] = True
    assert int(chosen.sum()) == 19 and alpha[chosen].min() >= alpha[~chosen].max()
    # as few as 108 cells (9x12, e.g. 288x384): 11 of them
    small, _ = salient_points(torch.rand(9, 12, generator=g), (288, 384), None)
    assert small.shape == (11, 2)


def test_fallback_count_keeps_n_min_on_fine_maps_and_a_fraction_on_coarse_ones():
    assert fallback_count(64 * 48, 300) == 300  # the paper's VGG19 conv5 map of a 1024x768 image: N_min unchanged
    assert fallback_count(3000, 300) == 300 and fallback_count(2990, 300) == 299
    assert fallback_count(12 * 16, 300) == 19 and fallback_count(9 * 12, 300) == 11
    assert fallback_count(12 * 16, 10) == 10  # a small N_min below the cap is kept
    assert fallback_count(12 * 16, 300, n_min_fraction=0.25) == 48
    assert fallback_count(12 * 16, 300, n_min_fraction=None) == 192  # uncapped: every cell
    assert fallback_count(12 * 16, 300, n_min_fraction=1.0) == 192
    assert fallback_count(2, 300) == 1 and fallback_count(1, 300) == 1  # never empty, below all cells from 2 on
    assert fallback_count(192, 0) == 0
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="n_min_fraction must lie in"):
            fallback_count(192, 300, bad)


def test_salient_points_bad_inputs():
    alpha = torch.rand(4, 4)
    kp = torch.rand(10, 2)
    with pytest.raises(ValueError, match="alpha must be a non-empty 2-D"):
        salient_points(torch.rand(1, 4, 4), (8, 8), kp)
    with pytest.raises(ValueError, match="finite floating-point"):
        salient_points(torch.ones(4, 4, dtype=torch.long), (8, 8), kp)
    with pytest.raises(ValueError, match="finite floating-point"):
        salient_points(torch.full((4, 4), float("nan")), (8, 8), kp)
    with pytest.raises(ValueError, match="image_hw must be"):
        salient_points(alpha, (8, 0), kp)
    with pytest.raises(ValueError, match=r"n_min \(5\) must not exceed n_max \(4\)"):
        salient_points(alpha, (8, 8), kp, n_max=4, n_min=5)
    with pytest.raises(ValueError, match="n_max must be >= 1"):
        salient_points(alpha, (8, 8), kp, n_max=0, n_min=0)
    with pytest.raises(ValueError, match="keypoints must be a Px2"):
        salient_points(alpha, (8, 8), torch.rand(10, 3), n_max=10, n_min=1)
    with pytest.raises(ValueError, match="NaN or inf"):
        salient_points(alpha, (8, 8), torch.tensor([[1.0, float("inf")]]), n_max=10, n_min=1)


# ----------------------------------------------------------------------------------- hessian_affine_keypoints


def test_detector_finds_bright_and_dark_blobs():
    img = _blob_image()
    kp = hessian_affine_keypoints(img)
    assert kp.dtype == torch.float32 and kp.dim() == 2 and kp.shape[1] == 2
    centres = torch.tensor([[cx, cy] for cx, cy, _, _ in BLOBS])
    dist = torch.cdist(kp, centres)
    assert dist.min(dim=0).values.max() < 1.0, "every blob centre has a keypoint within 1 px"
    assert dist.min(dim=1).values.max() < 1.0, "no keypoint away from the blobs"
    assert kp.shape[0] == len(BLOBS)


def test_affine_keeps_centres_and_is_deterministic():
    img = _blob_image()
    a = hessian_affine_keypoints(img, affine=True)
    assert torch.equal(a, hessian_affine_keypoints(img, affine=False))
    assert torch.equal(a, hessian_affine_keypoints(img, affine=True))


def test_rgb_input_is_converted_to_grey():
    grey = _blob_image()
    rgb = torch.cat([grey * 0.9, grey, grey * 1.1]).clamp(0, 1)  # grey level ~= the original one
    kp = hessian_affine_keypoints(rgb)
    assert kp.shape == (len(BLOBS), 2)
    assert torch.cdist(kp, hessian_affine_keypoints(grey)).min(dim=1).values.max() < 0.5


def test_threshold_rejects_flat_and_noise_images():
    flat = torch.full((3, 96, 128), 0.4)
    assert hessian_affine_keypoints(flat).shape == (0, 2)
    noise = (0.5 + (5 / 255) * torch.randn(1, 96, 128, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert hessian_affine_keypoints(noise).shape[0] == 0
    # the threshold is what rejects them: without it the noise gives many maxima
    assert hessian_affine_keypoints(noise, threshold=0.0).shape[0] > 10
    # and it ranks: a threshold above the blobs' response (about 0.9 * 0.4**2 / 16 = 0.009) drops them all
    assert hessian_affine_keypoints(_blob_image(), threshold=0.02).shape == (0, 2)
    assert hessian_affine_keypoints(_blob_image(), threshold=DEFAULT_HESSIAN_THRESHOLD).shape[0] == len(BLOBS)


def test_max_keypoints_keeps_the_strongest():
    img = _blob_image()
    two = hessian_affine_keypoints(img, max_keypoints=2)
    assert two.shape == (2, 2)
    # the output is by descending response, so a smaller cap gives a prefix of the full list
    assert torch.equal(two, hessian_affine_keypoints(img)[:2])


def test_real_photo_gives_hundreds_of_keypoints_inside_the_image():
    files = sorted(IMAGENET.glob("*.JPEG")) if IMAGENET.exists() else []
    if not files:
        pytest.skip(f"{IMAGENET} is absent: shared real data lives next to the repository in ../shared/data")
    from PIL import Image

    im = Image.open(files[0]).convert("RGB")
    scale = 512 / max(im.size)
    im = im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), Image.BILINEAR)
    img = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    kp = hessian_affine_keypoints(img, affine=False)
    h, w = img.shape[-2:]
    assert 50 <= kp.shape[0] <= 4000
    assert bool(((kp[:, 0] >= 0) & (kp[:, 0] <= w - 1) & (kp[:, 1] >= 0) & (kp[:, 1] <= h - 1)).all())
    pts, fallback = salient_points(torch.rand(h // 16, w // 16), (h, w), kp, n_max=4000, n_min=10)
    assert not fallback and pts.shape == kp.shape


def test_detector_bad_inputs():
    with pytest.raises(ValueError, match="1xHxW .* or 3xHxW"):
        hessian_affine_keypoints(torch.rand(32, 32))
    with pytest.raises(ValueError, match="1xHxW .* or 3xHxW"):
        hessian_affine_keypoints(torch.rand(4, 32, 32))
    with pytest.raises(ValueError, match="floating point"):
        hessian_affine_keypoints(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="divide 8-bit images by 255"):
        hessian_affine_keypoints(torch.rand(3, 32, 32) * 255)
    with pytest.raises(ValueError, match="max_keypoints must be a positive int"):
        hessian_affine_keypoints(torch.rand(1, 32, 32), max_keypoints=0)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        hessian_affine_keypoints(torch.rand(1, 32, 32), threshold=-1e-3)
