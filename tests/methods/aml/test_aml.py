"""Approximate integral max-pooling and AML localization (Tolias, Sicre & Jégou, ICLR 2016, Sec. 5)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_retrieval.methods.aml.aml import AMLSettings, localize, localize_exhaustive, refine, window_scores
from lit_retrieval.methods.aml.integral import (aml_c_root, approx_region_max, exact_region_max, generalized_max,
                                           power_integral, window_sums)
from lit_retrieval.boxes import Boxes, paired_iou
from lit_retrieval.methods.aml.windows import candidate_windows, count_all_windows, grid_windows


def _maps(B=2, C=8, H=7, W=9, seed=0, sparsity=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g) * 5
    return x * (torch.rand(B, C, H, W, generator=g) > sparsity)


def test_integral_window_sums_equal_direct_sums():
    x = _maps()
    sat = power_integral(x, 3.0)
    boxes = grid_windows(7, 9, 1, 1)
    got = window_sums(sat, torch.tensor(boxes))
    want = torch.stack([x[:, :, y0:y1, x0:x1].double().pow(3).sum((-2, -1)) for y0, x0, y1, x1 in boxes], 1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)  # powers in float32, sums in float64
    assert sat[:, 0].abs().max() == 0 and sat[:, :, 0].abs().max() == 0


def test_window_sums_per_image_windows_and_subset():
    x = _maps(B=3)
    sat = power_integral(x, 2.0)
    boxes = torch.tensor([[[0, 0, 2, 3]], [[1, 2, 7, 9]], [[3, 3, 4, 4]]])
    got = window_sums(sat, boxes)
    for b in range(3):
        y0, x0, y1, x1 = boxes[b, 0].tolist()
        torch.testing.assert_close(got[b, 0], x[b, :, y0:y1, x0:x1].double().pow(2).sum((-2, -1)))
    sub = window_sums(sat, boxes[[2, 0]], images=torch.tensor([2, 0]))
    torch.testing.assert_close(sub, got[[2, 0]])


def test_generalized_mean_tends_to_max_as_alpha_grows():
    # quantized levels 0..8 as the reference stores them: a channel's values span at most 8^α, which float64
    # integral images resolve at α = 10 (raw maps with values far below their channel's maximum would not)
    x = _maps(B=1, C=16, H=10, W=10, seed=1, sparsity=0.3).mul(8 / 5).ceil()
    boxes = torch.tensor(grid_windows(10, 10, 2, 2))
    exact = exact_region_max(x, boxes)
    errors = []
    for alpha in (1, 2, 4, 6, 10):
        approx = approx_region_max(x, boxes, alpha)
        assert (approx >= exact - 1e-4).all()  # the generalized sum never undershoots the max
        errors.append((approx - exact).abs().mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.25 * exact.mean().item()
    # beyond α ≈ 10 the float64 integral images lose the small windows (x^α spans too many decades), which is
    # why the paper stops at 10; computed directly, the generalized mean keeps tending to the max
    y0, x0, y1, x1 = boxes[7].tolist()
    patch = x[0, :, y0:y1, x0:x1].double().flatten(1)
    direct = [patch.pow(a).sum(1).pow(1 / a) for a in (10, 30, 100)]
    gaps = [(d - patch.amax(1)).abs().max().item() for d in direct]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.05 * patch.max().item()
    cos = torch.nn.functional.cosine_similarity(approx_region_max(x, boxes, 10), exact, dim=-1)
    assert cos.min() > 0.98  # the paper's Fig. 3 (right): α = 10 is already very precise


def test_generalized_max_clamps_cancellation_noise():
    s = torch.tensor([[-1e-9, 0.0, 1024.0]], dtype=torch.float64)
    torch.testing.assert_close(generalized_max(s, 10.0), torch.tensor([[0.0, 0.0, 2.0]]))


_POW10 = [float(i ** 10) for i in range(256)]  # aml.c's pow_10 table


def _reference_root(v: float) -> int:
    """A line-by-line port of aml.c ``fast_root_10`` / ``find_nearest`` (C integer division truncates)."""
    if not v > 0:
        return 0  # get_boxscore: (vec[i] > 0) ? fast_root_10(vec[i]) : 0
    first, last = 0, 255
    middle = (first + last) // 2
    while first < last:
        if _POW10[middle] < v:
            first = middle + 1
        else:
            last = middle - 1
        middle = int((first + last) / 2)
    return first


def test_aml_c_root_is_the_reference_table_search_and_only_even():
    rng = np.random.default_rng(0)
    powers = np.arange(256, dtype=np.float64) ** 10
    v = np.concatenate([[0.0, -1e-9], powers, (np.arange(256) + 0.5) ** 10, powers[1:] * (1 + 1e-12),
                        powers[1:] * (1 - 1e-12), np.exp(rng.uniform(0, math.log(260.0 ** 10), 3000))])
    got = aml_c_root(torch.tensor(v, dtype=torch.float64))
    assert got.dtype == torch.float32
    assert got.tolist() == [float(_reference_root(x)) for x in v.tolist()]
    assert (got[torch.tensor(v) <= 254.0 ** 10] % 2 == 0).all()  # below the table's top: even integers only
    # a window whose maximum is a single cell at level l: exact says l, aml.c says l rounded down to even
    sums = torch.tensor([[float(level) ** 10 for level in range(1, 9)]], dtype=torch.float64)
    assert generalized_max(sums, 10.0).round().tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert generalized_max(sums, 10.0, root="aml_c").tolist() == [[0, 2, 2, 4, 4, 6, 6, 8]]
    # two cells at level 3: exact 3·2^0.1 ≈ 3.2, aml.c the next even integer
    assert generalized_max(torch.tensor([2.0 * 3 ** 10], dtype=torch.float64), 10.0, root="aml_c").item() == 4


def test_aml_c_root_needs_exact_powers_and_alpha_10():
    x = torch.zeros(1, 2, 3, 3)
    x[0, :, 1, 1] = 7.0  # 7^10 is not a float32: rounded up, the even root would read 8 instead of 6
    box = torch.tensor([[0, 0, 3, 3]])
    exact_powers = window_sums(power_integral(x, 10.0, power_dtype=torch.float64), box)
    assert exact_powers[0, 0, 0].item() == 7.0 ** 10
    assert generalized_max(exact_powers, 10.0, root="aml_c")[0, 0].tolist() == [6.0, 6.0]
    assert generalized_max(window_sums(power_integral(x, 10.0), box), 10.0, root="aml_c")[0, 0].tolist() == [8.0, 8.0]
    with pytest.raises(ValueError, match="alpha=10"):
        generalized_max(exact_powers, 8.0, root="aml_c")
    with pytest.raises(ValueError, match="choose exact"):
        generalized_max(exact_powers, 10.0, root="nearest")


def test_aml_c_root_changes_only_the_window_scores_root():
    x = _maps(B=2, C=8, H=9, W=11, seed=5, sparsity=0.5).mul(8 / 5).ceil()  # levels 0..8, as stored
    sat = power_integral(x, 10.0, power_dtype=torch.float64)
    q = torch.rand(8, generator=torch.Generator().manual_seed(6))
    boxes = torch.tensor(grid_windows(9, 11, 2, 2))
    for root in ("exact", "aml_c"):
        f = generalized_max(window_sums(sat, boxes), 10.0, root).double()  # float32 values, float64 cosines
        want = (f @ (q / q.norm()).double()) / f.norm(dim=-1).clamp_min(1e-12)
        torch.testing.assert_close(window_scores(sat, boxes, q, root=root), want)
    assert not torch.allclose(window_scores(sat, boxes, q, root="aml_c"), window_scores(sat, boxes, q))
    loc = localize(sat, q, 1.0, AMLSettings(root="aml_c"))
    f = generalized_max(window_sums(sat, loc.boxes.unsqueeze(1)), 10.0, "aml_c").double()
    torch.testing.assert_close(loc.scores, (f @ (q / q.norm()).double())[:, 0] / f.norm(dim=-1)[:, 0])


def _reference_candidates(H, W, q_ratio, step, s):
    """The loops of aml.c ``max_score`` (1-based, inclusive ends), converted to [y0, x0, y1, x1)."""
    out = []
    for i1 in range(1, H, step):
        for i2 in range(i1 + 1, H + 1, step):
            for j1 in range(1, W, step):
                for j2 in range(j1 + 1, W + 1, step):
                    ratio = abs(math.log(q_ratio / ((i2 - i1 + 1) / (j2 - j1 + 1))))
                    if q_ratio > 0 and ratio > math.log(s):
                        continue
                    out.append([i1 - 1, j1 - 1, i2, j2])
    return np.array(out, dtype=np.int64).reshape(-1, 4)


@pytest.mark.parametrize("H,W,q,t,s", [(12, 17, 0.75, 3, 1.1), (9, 9, 1.0, 1, 1.5), (24, 32, 1.6, 3, 2.0),
                                       (5, 30, 0.2, 2, 1.1)])
def test_candidates_match_reference_loops(H, W, q, t, s):
    ref = _reference_candidates(H, W, q, t, s)
    got = candidate_windows(H, W, q, t, s)
    assert sorted(map(tuple, ref.tolist())) == sorted(map(tuple, got.tolist()))


def test_window_counts():
    assert len(grid_windows(6, 8, 1, 1)) == count_all_windows(6, 8) == 21 * 36
    assert len(candidate_windows(6, 8, None, 1)) == 15 * 28  # min size 2


def _reference_refine(score, box, H, W, rf_step=3, rf_iter=5):
    """A line-by-line port of aml.c ``box_refine`` on [y0, x0, y1, x1) windows; returns box, score, count."""
    best, best_s, count = list(box), score(box), 0
    for step in range(rf_step, 0, -1):
        c, change = 0, True
        while change and c < rf_iter:
            change = False
            for edge, sign in ((0, -1), (0, 1), (2, -1), (2, 1), (1, -1), (1, 1), (3, -1), (3, 1)):
                cur = list(best)
                cur[edge] += sign * step
                size = cur[2] - cur[0] if edge in (0, 2) else cur[3] - cur[1]
                limit = H if edge in (0, 2) else W
                if cur[edge] < 0 or cur[edge] > limit or size < 2:
                    continue
                s = score(cur)
                if s > best_s:
                    best, best_s, change = cur, s, True
            c += 1
            count += 8
    return best, best_s, count


def test_refinement_matches_reference_port():
    x = _maps(B=6, C=12, H=11, W=13, seed=3, sparsity=0.6)
    sat = power_integral(x)
    q = torch.rand(12, generator=torch.Generator().manual_seed(4))
    start = torch.tensor([[0, 0, 2, 2], [3, 3, 9, 12], [0, 0, 11, 13], [5, 1, 7, 3], [2, 4, 8, 6], [9, 11, 11, 13]])
    s0 = window_scores(sat, start.unsqueeze(1), q)[:, 0]
    boxes, scores, evaluated = refine(sat, q, start, s0)
    for b in range(6):
        def score(box, b=b):
            return window_scores(sat[b:b + 1], torch.tensor([box]), q)[0, 0].item()
        rbox, rs, rc = _reference_refine(score, start[b].tolist(), 11, 13)
        assert boxes[b].tolist() == rbox and scores[b].item() == pytest.approx(rs, abs=1e-6)
        assert evaluated[b].item() == rc


def _planted(seed=0, H=18, W=24, C=64, box=(5, 7, 11, 15)):
    """Sparse weak background noise and an object made of parts: each of 16 object channels fires strongly at one
    cell of ``box`` (the four corners among them), so only a window covering the whole box sees every part."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, C, H, W, generator=g) * (torch.rand(1, C, H, W, generator=g) > 0.85)
    y0, x0, y1, x1 = box
    chans = torch.randperm(C, generator=g)[:16]
    ys = torch.randint(y0, y1, (16,), generator=g)
    xs = torch.randint(x0, x1, (16,), generator=g)
    ys[:4], xs[:4] = torch.tensor([y0, y0, y1 - 1, y1 - 1]), torch.tensor([x0, x1 - 1, x0, x1 - 1])
    strength = 4 + torch.rand(16, generator=g) * 4
    x[0, chans, ys, xs] = strength
    q = torch.zeros(C)
    q[chans] = strength
    q += torch.rand(C, generator=g) * 0.2  # the query's MAC: the object's parts, a little noise
    return x, q, box


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aml_finds_the_planted_object(seed):
    x, q, box = _planted(seed)
    sat = power_integral(x)
    q_ratio = (box[2] - box[0]) / (box[3] - box[1])
    loc = localize(sat, q, q_ratio)
    assert paired_iou(loc.boxes.numpy(), np.array([box]))[0] > 0.6
    ex = localize_exhaustive(sat, q)
    assert paired_iou(ex.boxes.numpy(), np.array([box]))[0] > 0.6
    assert loc.scores[0] <= ex.scores[0] + 1e-6  # exhaustive is the optimum
    assert loc.evaluated[0] < 0.05 * count_all_windows(18, 24)
    whole = window_scores(sat, torch.tensor([[0, 0, 18, 24]]), q)[0, 0]
    assert loc.scores[0] > whole  # localizing beats the whole image's MAC


def test_localize_batch_equals_one_by_one():
    xs = torch.cat([_planted(s)[0] for s in range(3)])
    q = _planted(0)[1]
    batch = localize(power_integral(xs), q, 1.0)
    for b in range(3):
        one = localize(power_integral(xs[b:b + 1]), q, 1.0)
        assert one.boxes[0].tolist() == batch.boxes[b].tolist()
        assert one.evaluated[0] == batch.evaluated[b]


def test_localize_without_candidates_starts_from_whole_map():
    x = _maps(B=1, C=4, H=2, W=9)
    loc = localize(power_integral(x), torch.ones(4), q_ratio=5.0)  # no 2-row window is 5× taller than wide
    assert loc.boxes.shape == (1, 4) and loc.evaluated[0] >= 1


def test_cells_pixels_round_trip():
    cells = np.array([[2, 3, 6, 8]])
    px = Boxes.of(cells, "yxyx", "cells", (16, 12)).to_pixels((512, 384))
    assert px.numpy().tolist() == [[96.0, 64.0, 256.0, 192.0]]
    assert px.to_cells((16, 12)).numpy("yxyx").tolist() == cells.tolist()
