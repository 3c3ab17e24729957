"""Cost module: metrics, step reductions, composition, shape errors."""

from __future__ import annotations

import pytest
import torch

from jepa_agent.costs import (
    ActionMagnitudeCost,
    LatentGoalCost,
    latent_distance,
    latent_goal_cost,
    reduce_steps,
)

S, H, N, D, A = 4, 3, 2, 8, 2


def test_metrics_zero_at_goal_and_positive_elsewhere():
    goal = torch.randn(N, D)
    pred = goal.expand(S, H, N, D).clone()
    pred[1] += 0.5
    for metric in ["l1", "mse", "l2", "cosine"]:
        d = latent_distance(pred, goal, metric)
        assert d.shape == (S, H)
        assert torch.allclose(d[0], torch.zeros(H), atol=1e-6)
        assert bool((d[1] > 0).all())


def test_metric_values():
    goal = torch.zeros(1, 2)
    pred = torch.tensor([3.0, 4.0]).view(1, 1, 1, 2)
    assert latent_distance(pred, goal, "l1").item() == pytest.approx(3.5)
    assert latent_distance(pred, goal, "mse").item() == pytest.approx(12.5)
    assert latent_distance(pred, goal, "l2").item() == pytest.approx(5.0)
    assert latent_distance(pred, torch.tensor([[-3.0, -4.0]]), "cosine").item() == pytest.approx(2.0)


def test_reductions_and_discount():
    d = torch.tensor([[1.0, 2.0, 4.0]])
    assert reduce_steps(d, "final").item() == 4.0
    assert reduce_steps(d, "all").item() == pytest.approx(7.0 / 3)
    assert reduce_steps(d, "all", discount=0.5).item() == pytest.approx((1 + 1 + 1) / 1.75)


def test_composition_and_set_goal():
    goal = torch.zeros(N, D)
    pred = torch.ones(S, H, N, D)
    actions = torch.full((S, H, A), 0.5)
    cost = LatentGoalCost(goal) + 0.1 * ActionMagnitudeCost(p=2.0)
    c = cost(pred, actions)
    assert c.shape == (S,)
    assert torch.allclose(c, torch.full((S,), 1.0 + 0.1 * A * 0.25))
    cost.set_goal(torch.ones(1, N, D))  # leading 1 allowed
    assert torch.allclose(cost(pred, actions), torch.full((S,), 0.1 * A * 0.25))
    f = latent_goal_cost(goal, metric="l2", action_weight=0.5)
    assert f(pred, actions).shape == (S,)


def test_clear_errors():
    with pytest.raises(ValueError, match="action weight=-1.0; expected >= 0"):
        ActionMagnitudeCost(weight=-1.0)
    with pytest.raises(ValueError, match="action_weight=-0.1; expected >= 0"):
        latent_goal_cost(torch.zeros(N, D), action_weight=-0.1)
    with pytest.raises(ValueError, match="metric"):
        LatentGoalCost(metric="l3")
    with pytest.raises(ValueError, match="reduction"):
        LatentGoalCost(reduction="sum")
    with pytest.raises(ValueError, match="set_goal"):
        LatentGoalCost()(torch.zeros(S, H, N, D), torch.zeros(S, H, A))
    with pytest.raises(ValueError, match=r"does not match one predicted step"):
        LatentGoalCost(torch.zeros(4, D))(torch.zeros(S, H, N, D), torch.zeros(S, H, A))


def test_gradients_flow_from_inference_goal():
    with torch.inference_mode():
        goal = torch.zeros(N, D)
    cost = LatentGoalCost(goal, metric="cosine")
    pred = torch.randn(S, H, N, D, requires_grad=True)
    cost(pred, torch.zeros(S, H, A)).sum().backward()
    assert pred.grad is not None
