"""Kim & Yoon's regional attention: the maths (eqs. 1-4), the frozen backbone, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_retrieval.backbones import build_backbone
from lit_retrieval.methods.regional_attention import (RegionalAttention, RegionalAttentionNet, UniformRegions,
                                                      attention_input)
from lit_retrieval.pooling import l2n, region_max, region_mean
from lit_retrieval.regions import rmac_grid, sample_regions
from lit_retrieval.whitening import Whitening


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("efficientnet_lite0", weights="imagenet")


def _net(backbone, **kw):
    torch.manual_seed(1)
    return RegionalAttentionNet(backbone, **kw)


def test_region_mean_matches_slices():
    x = torch.rand(2, 3, 9, 7, dtype=torch.float64)
    boxes = np.array([[0, 0, 9, 7], [1, 2, 3, 4], [8, 6, 1, 1], [4, 0, 5, 2]])
    ref = torch.stack([x[:, :, y:y + h, c:c + w].mean(dim=(-2, -1)) for y, c, h, w in boxes], dim=1)
    torch.testing.assert_close(region_mean(x, boxes), ref)
    torch.testing.assert_close(region_mean(x.float(), boxes), ref.float())


def test_sample_regions_levels_follow_the_grid():
    boxes, levels = sample_regions("rmac", (320, 480), (10, 15), 32, 4)
    np.testing.assert_array_equal(boxes, rmac_grid(10, 15, 4))
    for level in range(1, 5):
        assert (levels <= level).sum() == len(rmac_grid(10, 15, level))
    kb, kl = sample_regions("kimyoon", (320, 480), (10, 15), 32, 5)
    assert len(kb) == len(kl) and kl[0] == 1 and kl[-1] == 5 and np.all(np.diff(kl) >= 0)
    with pytest.raises(ValueError, match="grid"):
        sample_regions("spiral", (320, 480), (10, 15), 32, 3)


def test_attention_is_positive_and_has_the_paper_shapes():
    att = RegionalAttention(in_dim=16, hidden=8)
    assert att.reduce.weight.shape == (8, 16) and att.score.weight.shape == (1, 8)  # W_r: d×k, W_c: 1×d
    k = torch.randn(3, 11, 16) * 100  # saturating inputs: softplus stays strictly positive
    with torch.no_grad():
        att.score.bias.fill_(-20.0)
        w = att(k)
    assert w.shape == (3, 11) and bool((w > 0).all())
    manual = F.softplus(att.score(torch.tanh(att.reduce(k)))).squeeze(-1)
    torch.testing.assert_close(w, manual)


def test_context_input_concatenates_the_global_mean():
    k, g = torch.rand(2, 5, 4), torch.rand(2, 4)
    z = attention_input(k, g)
    assert z.shape == (2, 5, 8)
    torch.testing.assert_close(z[..., :4], k)
    torch.testing.assert_close(z[..., 4:], g[:, None].expand(2, 5, 4))
    assert attention_input(k, None) is k


@pytest.mark.parametrize("context", [True, False])
def test_descriptor_is_eq3_and_classification_is_eq4(backbone, context):
    net = _net(backbone, context=context, scales=3, train_scales=2)
    assert net.attention.reduce.in_features == (2 if context else 1) * backbone.out_channels
    x = backbone.normalize(torch.rand(2, 3, 200, 260))
    with torch.no_grad():
        fmap = backbone(x)
        for S, scale_fn in ((2, net.classify), (3, net)):
            boxes = rmac_grid(*fmap.shape[-2:], S)
            M, k = region_max(fmap, boxes), region_mean(fmap, boxes)
            g = fmap.mean(dim=(-2, -1))
            phi = net.attention(torch.cat([k, g[:, None].expand_as(k)], -1) if context else k)
            if S == 2:  # eq. 4: L(Σ Φ M / |Ω|) through the frozen classifier
                expected = backbone.head((phi[..., None] * M).sum(1) / len(boxes))
            else:  # eq. 3: L2(Σ Φ P(M) / |Ω|), P = L2 (no whitening yet)
                expected = l2n((phi[..., None] * l2n(M)).sum(1) / len(boxes))
            torch.testing.assert_close(scale_fn(x), expected, rtol=1e-5, atol=1e-5)


def test_mean_vs_sum_aggregation(backbone):
    mean_net, sum_net = _net(backbone, aggregate="mean"), _net(backbone, aggregate="sum")
    x = backbone.normalize(torch.rand(1, 3, 192, 192))
    with torch.no_grad():
        R = len(mean_net.attention_map(x, S=mean_net.train_scales)["levels"])
        # classification: the sum is |Ω| times the mean before the (affine) head
        W, b = backbone.net.classifier.weight, backbone.net.classifier.bias
        torch.testing.assert_close((sum_net.classify(x) - b), R * (mean_net.classify(x) - b), rtol=1e-4, atol=1e-4)
        # descriptor: the final L2 removes the 1/|Ω|
        torch.testing.assert_close(sum_net(x), mean_net(x), rtol=1e-5, atol=1e-6)
    assert W.requires_grad is False
    with pytest.raises(ValueError, match="aggregate"):
        _net(backbone, aggregate="max")


def test_whitening_is_applied_per_region_and_kept_in_state(backbone):
    net = _net(backbone, scales=2)
    x = backbone.normalize(torch.rand(3, 3, 160, 224))
    with torch.no_grad():
        V = net.regional_vectors(x).reshape(-1, backbone.out_channels).double().numpy()
    X = np.concatenate([V, np.random.default_rng(0).random((2000, backbone.out_channels))])
    white = Whitening.learn(X, "pca", dims=32)
    net.set_whitening(white)
    assert net.whitened and net.white_proj.shape == (32, backbone.out_channels)
    with torch.no_grad():
        pooled = net.pool_regions(x, 2)
        P = white(l2n(pooled["max"]))
        expected = l2n((net.weights(pooled)[..., None] * P).mean(1))
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5)
        assert net(x).shape == (3, 32)
        torch.testing.assert_close(UniformRegions(net)(x), l2n(P.mean(1)), rtol=1e-4, atol=1e-5)
    fresh = _net(backbone, scales=2)
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), net(x))
    assert fresh.cache_key() == net.cache_key() != _net(backbone, scales=2).cache_key()


def test_training_changes_only_the_attention(backbone):
    from lit_retrieval.methods.regional_attention.module import RegionalAttentionModule

    module = RegionalAttentionModule(
        backbone={"name": "efficientnet_lite0", "weights": "random"}, scales=3, train_scales=2,
        optimizer={"lr": 0.5, "momentum": 0.9, "weight_decay": 5e-5},
        scheduler={"factor": 0.1, "patience": 1, "min_lr": 1e-4}, whitening={"kind": "none"})
    module.train()
    bb = module.backbone
    assert not bb.training and all(not m.training for m in bb.modules())
    before = {k: v.clone() for k, v in bb.state_dict().items()}  # weights and BatchNorm running statistics
    att_before = {k: v.clone() for k, v in module.net.attention.state_dict().items()}
    opt = torch.optim.SGD(module.net.attention.parameters(), lr=0.5)
    images, labels = torch.rand(2, 3, 128, 128), torch.tensor([3, 7])
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(module(images), labels).backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in bb.parameters())
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, att_before[k]) for k, v in module.net.attention.state_dict().items())
    assert [n for n, p in module.named_parameters() if p.requires_grad] == [
        "net.attention.reduce.weight", "net.attention.reduce.bias", "net.attention.score.weight",
        "net.attention.score.bias"]


def test_checkpoint_round_trip_without_backbone_weights(tmp_path, backbone):
    from lit_retrieval.methods.regional_attention import load_regional_attention
    from lit_retrieval.methods.regional_attention.module import RegionalAttentionModule

    module = RegionalAttentionModule(
        backbone={"name": "efficientnet_lite0", "weights": "imagenet"}, scales=2, train_scales=2, grid="kimyoon",
        optimizer={"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-5},
        scheduler={"factor": 0.1, "patience": 1, "min_lr": 1e-4}, whitening={"kind": "none"})
    rng = np.random.default_rng(0)
    module.net.set_whitening(Whitening.learn(rng.random((3000, 1280)), "pca", dims=16))
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert not any(k.startswith("net.backbone.") for k in ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "x.ckpt")
    assert (tmp_path / "x.ckpt").stat().st_size < 2_000_000  # attention + whitening, no 18 MB of backbone
    net = load_regional_attention(str(tmp_path / "x.ckpt"), backbone)
    assert net.grid == "kimyoon" and net.scales == 2 and net.whitened
    x = backbone.normalize(torch.rand(1, 3, 150, 200))
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net(x))
    rebuilt = load_regional_attention(str(tmp_path / "x.ckpt"))  # backbone rebuilt from the checkpoint's settings
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), module.net(x))
    module.load_state_dict(ckpt["state_dict"])  # Lightning's resume path: strict, backbone taken as built
    with pytest.raises(ValueError, match="backbone"):
        load_regional_attention(str(tmp_path / "x.ckpt"), build_backbone("resnet50", weights="random"))
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        load_regional_attention(str(tmp_path / "missing.ckpt"), backbone)


def test_reference_code_options_change_exactly_what_they_name():
    torch.manual_seed(0)
    k = torch.randn(2, 5, 8)
    a, b = RegionalAttention(8, 4, "tanh"), RegionalAttention(8, 4, "softplus")
    b.load_state_dict(a.state_dict())
    assert torch.allclose(a(k), F.softplus(a.score(torch.tanh(a.reduce(k)))).squeeze(-1))
    assert torch.allclose(b(k), F.softplus(a.score(F.softplus(a.reduce(k)))).squeeze(-1))
    assert not torch.allclose(a(k), b(k))
    with pytest.raises(ValueError, match="hidden_activation"):
        RegionalAttention(8, 4, "relu")

    bb = build_backbone("efficientnet_lite0", weights="random")
    raw = RegionalAttentionNet(bb, scales=2, pca_input="raw")
    paper = RegionalAttentionNet(bb, scales=2, pca_input="l2")
    x = torch.rand(1, 3, 96, 96)
    M = raw.pool_regions(x, 2, attention=False)["max"]
    assert torch.allclose(raw.regional_vectors(x), M) and torch.allclose(paper.regional_vectors(x), l2n(M))
    X = torch.randn(400, bb.out_channels).double().numpy()
    white = Whitening.learn(X, "pca", dims=16)
    raw.set_whitening(white)
    paper.set_whitening(white)
    m, P = torch.as_tensor(white.m).float(), torch.as_tensor(white.P[:16]).float()
    assert torch.allclose(raw.post_process(M), l2n((M - m) @ P.T), atol=1e-5)  # PCA of the raw MACs
    assert torch.allclose(paper.post_process(M), l2n((l2n(M) - m) @ P.T), atol=1e-5)  # L2 -> PCA -> L2
    with pytest.raises(ValueError, match="whitening.input"):
        RegionalAttentionNet(bb, pca_input="max")
