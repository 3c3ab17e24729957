"""JEPA maths: EMA exactness, layer-normed targets, loss only on masked tokens, collapse statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from jepa_agent.losses import (
    content_std,
    effective_rank,
    ema_update,
    feature_std,
    jepa_l1_loss,
    layer_norm_targets,
    masked_l1_loss,
    mean_over_masks,
    target_features,
)
from jepa_agent.models.vit import vit_micro
from jepa_agent.training.schedules import cosine_weight_decay, linear_momentum, warmup_cosine


def test_ema_update_is_exact() -> None:
    online = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o, rtol=0, atol=1e-6)
        assert not t.requires_grad or t.grad is None
    ema_update(target, online, 0.0)
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        assert torch.equal(t, o)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(target, online, 1.5)


def test_target_features_are_layer_normed_without_grad() -> None:
    enc = vit_micro(img_size=16, num_frames=2, depth=1)
    h = target_features(enc, torch.rand(2, 3, 2, 16, 16))
    assert not h.requires_grad
    torch.testing.assert_close(h.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-3, rtol=0)
    torch.testing.assert_close(layer_norm_targets(h), h, atol=1e-4, rtol=0)


def test_loss_reads_only_target_tokens() -> None:
    target = torch.randn(2, 10, 8)
    tgt_idx = torch.tensor([[1, 3, 5], [0, 2, 9]])
    pred = torch.randn(2, 3, 8)
    loss = jepa_l1_loss(pred, target, tgt_idx)
    expected = (pred - torch.stack([target[0, [1, 3, 5]], target[1, [0, 2, 9]]])).abs().mean()
    torch.testing.assert_close(loss, expected)
    changed = target.clone()
    changed[0, [0, 2, 4]] += 100.0  # context (unmasked) tokens
    changed[1, [1, 3]] -= 50.0
    torch.testing.assert_close(jepa_l1_loss(pred, changed, tgt_idx), loss)


def test_dense_masked_loss_ignores_unmasked_predictions() -> None:
    pred, target = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    loss = masked_l1_loss(pred, target, mask)
    pred2 = pred.clone()
    pred2[~mask] = 1e3
    torch.testing.assert_close(masked_l1_loss(pred2, target, mask), loss)
    torch.testing.assert_close(loss, (pred - target).abs()[mask].mean())
    with pytest.raises(ValueError, match="no token"):
        masked_l1_loss(pred, target, torch.zeros(2, 6, dtype=torch.bool))


def test_mean_over_masks() -> None:
    assert float(mean_over_masks([torch.tensor(1.0), torch.tensor(3.0)])) == 2.0


def test_collapse_statistics() -> None:
    torch.manual_seed(0)
    healthy = torch.randn(512, 32)
    collapsed = torch.randn(512, 1) * torch.ones(1, 32) + 1e-4 * torch.randn(512, 32)
    assert feature_std(healthy) > 0.9 and feature_std(torch.ones(10, 32)) == 0.0
    assert effective_rank(healthy) > 25
    assert effective_rank(collapsed) < 1.5
    assert effective_rank(torch.zeros(4, 8)) == 1.0
    positional = torch.randn(1, 6, 8).expand(5, -1, -1)  # same features for every clip
    assert content_std(positional) == 0.0 and feature_std(positional) > 0.5
    assert content_std(torch.randn(64, 6, 8)) > 0.9


def test_schedules() -> None:
    assert warmup_cosine(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert linear_momentum(0, 100, 0.996, 1.0) == 0.996
    assert linear_momentum(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert linear_momentum(200, 100, 0.996, 1.0) == 1.0
    assert cosine_weight_decay(0, 10, 0.04, 0.4) == pytest.approx(0.04)
    with pytest.raises(ValueError, match="warmup"):
        warmup_cosine(0, 10, 20, 1.0, 0.0)
    with pytest.raises(ValueError, match="total"):
        linear_momentum(0, 0, 0.9, 1.0)
