"""Planners on an analytic problem: rollout = z0 + cumsum(actions), quadratic goal cost (unique optimum)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jepa_agent.costs import LatentGoalCost
from planners import CEMPlanner, GDPlanner, MPPIPlanner, PlanResult, shift_plan
from planners.cem import cem
from planners.gd import gd
from planners.mppi import mppi

H, A = 5, 2


def cumsum_rollout(z0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return z0 + torch.cumsum(actions, dim=1)  # [S, H, A]


def make_problem(offset):
    z0 = torch.tensor([0.3, -0.2])
    goal = z0 + torch.tensor(offset)
    return z0, LatentGoalCost(goal, metric="mse", reduction="all")


# interior optimum: reach the goal in one step, then stand still
INTERIOR = ([0.6, -0.4], torch.tensor([[0.6, -0.4]] + [[0.0, 0.0]] * (H - 1)))
# the goal is beyond H full-speed steps: the optimum is the corner of the action box
BOUNDED = ([8.0, -8.0], torch.tensor([[1.0, -1.0]] * H))


def _planners():
    return {
        "cem": CEMPlanner(action_dim=A, horizon=H, population=200, elites=20, iterations=30, min_std=0.01),
        "mppi": MPPIPlanner(
            action_dim=A,
            horizon=H,
            population=200,
            iterations=30,
            temperature=0.5,
            elites=30,
            noise_std=0.5,
            adapt_std=True,
            min_std=0.01,
        ),
        "gd": GDPlanner(action_dim=A, horizon=H, restarts=4, iterations=200, lr=0.05, bound="clamp"),
        "gd_tanh": GDPlanner(action_dim=A, horizon=H, restarts=4, iterations=200, lr=0.05, bound="tanh"),
    }


@pytest.mark.parametrize("name", ["cem", "mppi", "gd", "gd_tanh"])
@pytest.mark.parametrize("problem", [INTERIOR, BOUNDED], ids=["interior", "bounded"])
def test_planner_converges_to_optimum(name, problem):
    offset, optimum = problem
    z0, cost = make_problem(offset)
    planner = _planners()[name]
    g = torch.Generator().manual_seed(0)
    res = planner.plan(cumsum_rollout, cost, z0, generator=g)
    assert isinstance(res, PlanResult)
    assert res.actions.shape == (H, A) and res.mean.shape == (H, A) and res.std.shape == (H, A)
    assert res.plan_seconds > 0 and len(res.cost_trace) == planner.iterations
    assert torch.allclose(res.actions, optimum, atol=0.05), (name, res.actions)
    opt_cost = float(cost(cumsum_rollout(z0, optimum[None]), optimum[None]))
    assert res.cost <= opt_cost * 1.01 + 1e-3
    assert float(res.cost_trace[-1]) <= float(res.cost_trace[0])


@pytest.mark.parametrize("fn", [cem, mppi, gd])
def test_bounds_respected(fn):
    z0, cost = make_problem([10.0, -10.0])
    seen = []

    def rollout(z, a):
        seen.append(a.detach().clone())
        return cumsum_rollout(z, a)

    low, high = torch.tensor([-0.5, -0.2]), torch.tensor([0.3, 0.7])
    res = fn(
        rollout,
        cost,
        z0,
        action_dim=A,
        horizon=H,
        iterations=10,
        action_low=low,
        action_high=high,
        generator=torch.Generator().manual_seed(1),
    )
    allv = torch.cat([s.reshape(-1, A) for s in seen])
    assert bool((allv >= low - 1e-6).all() and (allv <= high + 1e-6).all())
    assert bool((res.actions >= low - 1e-6).all() and (res.actions <= high + 1e-6).all())
    assert torch.allclose(res.actions[0], torch.tensor([0.3, -0.2]), atol=0.05)  # pushes into the corner


def test_shift_plan():
    plan = torch.arange(10.0).view(H, A)
    s = shift_plan(plan)
    assert torch.equal(s[:-1], plan[1:]) and torch.equal(s[-1], torch.zeros(A))
    assert torch.equal(shift_plan(plan, fill=None)[-1], plan[-1])
    assert torch.equal(shift_plan(plan, steps=2)[:3], plan[2:])
    with pytest.raises(ValueError, match="steps"):
        shift_plan(plan, steps=H + 1)


def test_warm_start_keeps_good_plan():
    offset, optimum = INTERIOR
    z0, cost = make_problem(offset)
    planner = CEMPlanner(action_dim=A, horizon=H, population=50, elites=5, iterations=1, init_std=0.5)
    res = planner.plan(
        cumsum_rollout, cost, z0, init_mean=optimum, generator=torch.Generator().manual_seed(0)
    )
    cold = planner.plan(cumsum_rollout, cost, z0, generator=torch.Generator().manual_seed(0))
    assert float(res.cost_trace[0]) <= 1e-9  # the warm-start mean is evaluated as a sample
    assert float(cold.cost_trace[0]) > 1e-3


def test_seeded_plans_are_reproducible():
    z0, cost = make_problem(INTERIOR[0])
    p = CEMPlanner(action_dim=A, horizon=H, population=64, elites=8, iterations=3)
    r1 = p.plan(cumsum_rollout, cost, z0, generator=torch.Generator().manual_seed(3))
    r2 = p.plan(cumsum_rollout, cost, z0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(r1.actions, r2.actions)


def test_bad_inputs_raise_clear_errors():
    z0, cost = make_problem(INTERIOR[0])
    with pytest.raises(ValueError, match="action_dim"):
        CEMPlanner(horizon=H).plan(cumsum_rollout, cost, z0)
    with pytest.raises(ValueError, match="elites"):
        CEMPlanner(action_dim=A, population=10, elites=20)
    with pytest.raises(ValueError, match="planner population='abc' must be a number > 0"):
        CEMPlanner(action_dim=A, population="abc")
    assert CEMPlanner(action_dim=A, population=np.int64(10), elites=2).population == 10  # numpy ints are fine
    with pytest.raises(ValueError, match="init_mean"):
        CEMPlanner(action_dim=A, horizon=H).plan(cumsum_rollout, cost, z0, init_mean=torch.zeros(3, A))
    with pytest.raises(ValueError, match=r"shape \[S\]"):
        CEMPlanner(action_dim=A, horizon=H, iterations=1).plan(cumsum_rollout, lambda p, a: p.sum(), z0)
    with pytest.raises(ValueError, match="action_low"):
        cem(cumsum_rollout, cost, z0, action_dim=A, action_low=1.0, action_high=-1.0)
    with pytest.raises(ValueError, match="differentiabl"):
        gd(lambda z, a: cumsum_rollout(z, a).detach(), cost, z0, action_dim=A, iterations=2)


def test_hydra_configs_instantiate():
    """``planner=NAME`` composes to the typed schema of the planner's constructor and instantiates it,
    with the constructor's own defaults (one source: the class)."""
    from hydra.utils import instantiate

    from jepa_agent.config import compose_config

    z0, cost = make_problem(INTERIOR[0])
    for name, cls in [("cem", CEMPlanner), ("mppi", MPPIPlanner), ("gd", GDPlanner)]:
        cfg = compose_config("plan", [f"planner={name}"]).planner
        assert repr(instantiate(cfg, action_dim=A)) == repr(cls(action_dim=A))  # the class's defaults
        overrides = {"restarts": 2} if name == "gd" else {"population": 16, "elites": 4}
        planner = instantiate(cfg, action_dim=A, iterations=2, **overrides)
        assert isinstance(planner, cls)
        res = planner.plan(cumsum_rollout, cost, z0)
        assert res.actions.shape == (planner.horizon, A)


def test_planners_sample_on_the_device_of_a_world_model_context():
    """A world model's ``Context`` names its device: planners must sample there (the CUDA path).

    The meta device stands in for a GPU here: CPU-only CI still catches a planner that falls back to
    the CPU for an object that is not a plain tensor.
    """
    from jepa_agent.world_model import Context
    from planners.base import device_of

    ctx = Context(z=torch.empty(1, 1, 4, 8, device="meta"))
    assert device_of(None, ctx) == torch.device("meta")
    assert device_of(None, {"z": torch.zeros(1)}) == torch.device("cpu")
    assert device_of(None, object()) == torch.device("cpu")
