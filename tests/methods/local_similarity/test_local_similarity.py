"""Chen et al.'s local similarity core: feature grids, the correlation volume and its depth ordering (eqs. 3-4),
the Table 2 subnet, the eq. 8 loss and the Sec. 4.1 hard-negative batch."""
import pytest
import torch
import torch.nn.functional as F

from lit_retrieval.methods.local_similarity.network import (LocalizationSubnet, correlation_all_pairs,
                                                            correlation_volume, decode_boxes, encode_boxes,
                                                            feature_grid, hard_pair_batch, local_similarity_loss)


def _grid(n, d, h, w, seed=0):
    return F.normalize(torch.randn(n, d, h, w, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_feature_grid_is_max_pooled_and_l2_normalised_per_location():
    fmap = torch.rand(2, 8, 30, 45)
    g = feature_grid(fmap, 15)
    assert g.shape == (2, 8, 15, 15)
    torch.testing.assert_close(g.norm(dim=1), torch.ones(2, 15, 15), atol=1e-5, rtol=0)
    top_left = fmap[:, :, :2, :3].amax((2, 3))
    torch.testing.assert_close(g[:, :, 0, 0], F.normalize(top_left, dim=1), atol=1e-5, rtol=0)


def test_identical_gallery_puts_maxima_on_the_diagonal_plane():
    q = _grid(1, 64, 7, 7)
    vol = correlation_volume(q, q)  # gallery identical to the query
    assert vol.shape == (1, 49, 7, 7)
    h, w = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    assert torch.equal(vol[0].argmax(0), h * 7 + w)  # eq. 4: d' = h_q·W_q + w_q
    torch.testing.assert_close(vol[0, 3 * 7 + 5, 3, 5], torch.tensor(1.0))


def test_translated_gallery_shifts_the_plane():
    q = _grid(1, 64, 5, 5, seed=1)
    g = _grid(1, 64, 9, 9, seed=2)
    g[:, :, 2:7, 3:8] = q  # the query pasted at row 2, column 3
    best = correlation_volume(g, q)[0].argmax(0)
    for hq in range(5):
        for wq in range(5):
            assert best[hq + 2, wq + 3] == hq * 5 + wq


def test_all_pairs_matches_aligned_pairs():
    g, q = _grid(3, 16, 6, 5, seed=3), _grid(4, 16, 2, 3, seed=4)
    allp = correlation_all_pairs(g, q)
    assert allp.shape == (4, 3, 6, 6, 5)
    for i in range(4):
        for j in range(3):
            torch.testing.assert_close(allp[i, j], correlation_volume(g[j:j + 1], q[i:i + 1])[0])


def test_subnet_matches_table_2():
    net = LocalizationSubnet(depth=49, grid=15)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 128, 64, 64]
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in net.features) == 5
    assert net.cls.in_features == 576 and net.cls.out_features == 2 and net.box.out_features == 4
    logits, boxes = net(torch.randn(3, 49, 15, 15))
    assert logits.shape == (3, 2) and boxes.shape == (3, 4)


def test_boxes_are_encoded_relative_to_the_whole_gallery_image():
    hw = torch.tensor([[100, 200], [50, 80]])
    whole = torch.tensor([[0.0, 0.0, 200.0, 100.0], [0.0, 0.0, 80.0, 50.0]])
    torch.testing.assert_close(encode_boxes(whole, hw), torch.zeros(2, 4))
    boxes = torch.tensor([[20.0, 10.0, 120.0, 60.0], [5.0, 5.0, 25.0, 45.0]])
    codes = encode_boxes(boxes, hw)
    torch.testing.assert_close(codes[0], torch.tensor([(70 - 100) / 200, (35 - 50) / 100, torch.log(torch.tensor(0.5)),
                                                       torch.log(torch.tensor(0.5))]))
    torch.testing.assert_close(decode_boxes(codes, hw), boxes, atol=1e-4, rtol=0)


def test_loss_normalises_the_box_term_by_positive_pairs():
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([1, 0, 0])
    codes = torch.tensor([[0.5, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
    targets = torch.zeros(3, 4)
    total, cls, loc = local_similarity_loss(logits, codes, labels, targets, lam=0.05)
    torch.testing.assert_close(cls, F.cross_entropy(logits, labels))
    torch.testing.assert_close(loc, torch.tensor(0.5 * 0.5 ** 2))  # negatives' boxes ignored; one positive
    torch.testing.assert_close(total, cls + 0.05 * loc)
    more_negatives = local_similarity_loss(torch.cat([logits, logits[1:]]), torch.cat([codes, codes[1:]]),
                                           torch.cat([labels, labels[1:]]), torch.cat([targets, targets[1:]]))[2]
    torch.testing.assert_close(more_negatives, loc)  # not divided by the number of pairs
    assert local_similarity_loss(logits[1:], codes[1:], labels[1:], targets[1:])[2] == 0


def test_hard_pair_batch_keeps_positives_and_the_hardest_negatives():
    scores = torch.tensor([[5.0, 0.1, 0.9], [0.3, 5.0, 0.2], [0.8, 0.0, 5.0]])
    qi, gi, labels = hard_pair_batch(scores, n_hard=2)
    assert qi.tolist()[:3] == [0, 1, 2] and gi.tolist()[:3] == [0, 1, 2] and labels.tolist() == [1, 1, 1, 0, 0]
    assert set(zip(qi.tolist()[3:], gi.tolist()[3:])) == {(0, 2), (2, 0)}  # 0.9 and 0.8: the two hardest
    qi8, _, labels8 = hard_pair_batch(torch.randn(8, 8))
    assert len(qi8) == 16 and int(labels8.sum()) == 8  # 8 positives + 8 of the 56 negatives


def test_hard_pair_batch_never_takes_two_items_of_one_object_as_a_negative():
    scores = torch.tensor([[5.0, 4.0, 0.9], [4.5, 5.0, 0.2], [0.8, 0.0, 5.0]])
    qi, gi, labels = hard_pair_batch(scores, n_hard=2, objects=torch.tensor([7, 7, 3]))
    negatives = set(zip(qi.tolist()[3:], gi.tolist()[3:]))
    assert negatives == {(0, 2), (2, 0)} and labels.tolist() == [1, 1, 1, 0, 0]  # not (1, 0) or (0, 1)
    qi, _, labels = hard_pair_batch(scores, n_hard=10, objects=torch.tensor([1, 1, 1]))
    assert len(qi) == 3 and labels.tolist() == [1, 1, 1]  # no negative exists at all


def test_finetune_layers_unfreeze_the_last_convolutions_only():
    from lit_retrieval.methods.local_similarity.network import LocalSimilarityNet, tail_convs

    class Tiny(torch.nn.Sequential):
        name, out_channels = "tiny", 8

    bb = Tiny(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 8, 3), torch.nn.Conv2d(8, 8, 1))
    bb.requires_grad_(False)
    net = LocalSimilarityNet(bb, gallery_grid=5, query_grid=2, finetune_layers=2)
    assert [c.out_channels for c in tail_convs(bb, 2)] == [8, 8]
    assert [p.requires_grad for p in bb.parameters()] == [False, False, True, True, True, True]
    q, g = net.describe(torch.rand(2, 3, 20, 20), "query")[1], net.describe(torch.rand(2, 3, 30, 30), "db")[1]
    net(q, g)[0].sum().backward()
    assert bb[3].weight.grad is not None and bb[0].weight.grad is None
    with pytest.raises(ValueError, match="only 3 convolutions"):
        LocalSimilarityNet(bb, gallery_grid=5, query_grid=2, finetune_layers=4)
