"""Pooling beyond the golden parity: CroW and region pooling against plain per-item references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_retrieval import pooling
from lit_retrieval.boxes import Boxes
from lit_retrieval.regions import kimyoon_feature_grid, kimyoon_grid, rmac_grid
from lit_retrieval.whitening import Whitening


def _maps(n=2, c=8, h=9, w=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, c, h, w, generator=g))


def test_crow_matches_reference_loop():
    x = _maps()
    x[0, 3] = 0  # an all-zero channel gets weight 0
    out = pooling.crow(x).numpy()
    for i, X in enumerate(x.numpy().astype(np.float64)):  # Kalantidis et al.'s reference, image by image
        S = X.sum(0)
        S = (S / np.sqrt((S ** 2).sum())) ** 0.5
        nz = np.array([np.count_nonzero(ch) / ch.size for ch in X])
        omega = np.array([np.log(nz.sum() / d) if d > 0 else 0.0 for d in nz])
        np.testing.assert_allclose(out[i], (X * S).sum((1, 2)) * omega, rtol=1e-5, atol=1e-6)
    assert out[0, 3] == 0


def test_region_max_equals_slicing():
    x = _maps(h=17, w=23)
    boxes = np.array([[0, 0, 17, 23], [2, 3, 5, 5], [10, 1, 7, 4], [0, 20, 3, 3], [4, 4, 5, 5], [16, 22, 1, 1],
                      [1, 2, 3, 5], [9, 0, 8, 5]])  # equal widths with other heights share their row maxima
    for backend in ("auto", "compiled", "torch"):
        out = pooling.region_max(x, boxes, backend=backend)
        for r, (y, x0, h, w) in enumerate(boxes):
            torch.testing.assert_close(out[:, r], x[:, :, y:y + h, x0:x0 + w].amax(dim=(-2, -1)), rtol=0, atol=0)


def test_region_max_compiled_equals_torch_and_keeps_nan():
    x = torch.randn(3, 40, 24, 32, generator=torch.Generator().manual_seed(1))
    x[1, 5, 7, 9] = float("nan")  # a NaN in a region gives NaN on both paths, as torch.maximum does
    boxes = np.concatenate([[[0, 0, 24, 32]], rmac_grid(24, 32, 4)])
    compiled, ref = pooling.region_max(x, boxes, backend="compiled"), pooling.region_max(x, boxes, backend="torch")
    torch.testing.assert_close(compiled, ref, rtol=0, atol=0, equal_nan=True)
    assert compiled[1, :, 5].isnan().any() and not compiled[0].isnan().any()
    # autograd goes through the torch code, with the same values
    xg = x.clone().requires_grad_(True)
    out = pooling.region_max(xg, boxes)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), ref, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="leave the 24×32 map"):
        pooling.region_max(x, [[20, 0, 5, 4]], backend="compiled")
    with pytest.raises(ValueError, match="without gradient"):
        pooling.region_max(xg, boxes, backend="compiled")
    with pytest.raises(ValueError, match="choose one of"):
        pooling.region_max(x, boxes, backend="numba")


def test_rmac_kimyoon_uses_pixel_grid_at_stride():
    x = _maps(h=24, w=32)
    boxes = kimyoon_feature_grid((768, 1024), (24, 32), 32, L=3)
    assert len(boxes) == len(kimyoon_grid(768, 1024, 3))
    ref = pooling.l2n(pooling.l2n(pooling.region_max(x, boxes)).sum(1))
    torch.testing.assert_close(pooling.rmac(x, L=3, variant="kimyoon", image_hw=(768, 1024), stride=32), ref)
    # inclusive ends, Caffe rounding: pixels [0, 767] at stride 32 -> cells 0..24 (767/32 rounds up), clipped
    # to the 24-row map, 25 columns wide on the 32-column map
    cells = Boxes.of(np.array([[0, 0, 768, 768]]), "xywh").to_cells((24, 32), stride=32, rounding="roi")
    assert cells.numpy("yxhw").tolist() == [[0, 0, 24, 25]]


def test_rmac_tolias_whitens_regions_and_needs_whitening():
    x = _maps(n=3, c=6, h=12, w=16)
    with pytest.raises(ValueError, match="region_whitening"):
        pooling.rmac(x, variant="tolias")
    regions = pooling.l2n(pooling.region_max(_maps(n=20, c=6, h=12, w=16, seed=1), rmac_grid(12, 16, 3)))
    white = Whitening.learn(regions.reshape(-1, 6).double().numpy(), "pca")
    out = pooling.rmac(x, L=3, variant="tolias", region_whitening=white)
    v = pooling.l2n(pooling.region_max(x, rmac_grid(12, 16, 3)))
    ref = pooling.l2n(pooling.l2n(white(v)).sum(1))
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(out, pooling.l2n(v.sum(1)))  # whitening changed the result


def test_gem_gradient_flows_and_p_tensor():
    x = _maps().requires_grad_(True)
    p = torch.tensor(3.0, requires_grad=True)
    pooling.gem(x, p=p).sum().backward()
    assert x.grad is not None and p.grad is not None


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="cirtorch"):
        pooling.rmac(_maps(), variant="nope")
