"""Gradient-based planning: Adam on the action sequence through a differentiable rollout.

Several restarts are optimised at once as one batch (restart 0 starts at ``init_mean``, the others at
Gaussian perturbations of it). Bounds are kept either by a ``tanh`` reparametrisation
(``a = mid + half * tanh(u)``) or by clamping after each step. The best (restart, iteration) seen is
returned. ``rollout_fn`` must be differentiable (e.g. ``WorldModel.rollout(..., grad=True)``): the
planner sets ``requires_grad = True`` so an agent can ask for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from planners.base import (
    Bound,
    CostFn,
    Planner,
    PlanResult,
    RolloutFn,
    Timer,
    check_positive,
    device_of,
    initial_mean,
    keep_best,
    resolve_action_dim,
    resolve_bounds,
)

BOUND_MODES = ("tanh", "clamp")


def _normal_tensors(obj: Any) -> Any:
    """Clone inference-mode tensors (they cannot enter autograd) inside tensors/dicts/lists/tuples."""
    if isinstance(obj, Tensor):
        return obj.clone() if obj.is_inference() else obj
    if isinstance(obj, dict):
        return {k: _normal_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_normal_tensors(v) for v in obj)
    return obj


def gd(
    rollout_fn: RolloutFn,
    cost_fn: CostFn,
    z0: Any,
    action_dim: int | None = None,
    horizon: int = 5,
    restarts: int = 8,
    iterations: int = 50,
    lr: float = 0.1,
    action_low: Bound = -1.0,
    action_high: Bound = 1.0,
    init_mean: Tensor | None = None,
    init_std: float = 0.5,
    bound: str = "clamp",
    generator: torch.Generator | None = None,
) -> PlanResult:
    """Plan an action sequence by gradient descent (Adam) with batched restarts.

    Args:
        rollout_fn, cost_fn, z0, action_dim, horizon, action_low, action_high, init_mean, generator:
            as in :func:`planners.cem.cem`; ``rollout_fn`` must be differentiable w.r.t. the actions.
        restarts: sequences optimised in parallel (the batch ``S`` seen by ``rollout_fn``).
        iterations: Adam steps.
        lr: Adam learning rate (on ``u`` for ``bound="tanh"``, on the actions for ``"clamp"``).
        init_std: std of the restarts' perturbation of the initial mean.
        bound: ``"clamp"`` (project after each step; reaches the bounds exactly) or ``"tanh"``
            (reparametrise; smooth, but optima on a bound are only approached).

    Returns:
        :class:`PlanResult`; ``actions`` = the best sequence seen, ``std`` = zeros.
    """
    if bound not in BOUND_MODES:
        raise ValueError(f"bound={bound!r}; expected one of {list(BOUND_MODES)}")
    # inference-mode tensors cannot enter autograd: build everything with inference mode off
    with Timer() as timer, torch.inference_mode(False), torch.enable_grad():
        check_positive(horizon=horizon, restarts=restarts, iterations=iterations, lr=lr)
        A = resolve_action_dim(action_dim, init_mean, action_low, action_high)
        device = device_of(init_mean, z0)
        low, high = resolve_bounds(action_low, action_high, A, device)
        mid, half = (low + high) / 2, (high - low) / 2
        mean = initial_mean(init_mean, horizon, low, high)  # [H, A]
        noise = torch.randn((restarts, horizon, A), generator=generator, device=device) * init_std
        noise[0] = 0
        a0 = torch.maximum(torch.minimum(mean + noise, high), low)  # [R, H, A]
        if bound == "tanh":
            u = torch.atanh(((a0 - mid) / half).clamp(-0.999, 0.999))
        else:
            u = a0.clone()
        z0 = _normal_tensors(z0)
        trace = torch.empty(iterations, device=device)  # filled on the device: one sync at the end
        best_cost, best_actions = torch.tensor(float("inf"), device=device), mean.clone()
        u = u.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=lr)
        for it in range(iterations):
            actions = mid + half * torch.tanh(u) if bound == "tanh" else u
            pred = rollout_fn(z0, actions)
            costs = cost_fn(pred, actions)  # [R]
            if tuple(costs.shape) != (restarts,):
                raise ValueError(f"cost_fn must return shape [S]=({restarts},); got {tuple(costs.shape)}")
            if not costs.requires_grad:
                raise ValueError(
                    "gd planner: the cost does not depend differentiably on the actions; pass a "
                    "differentiable rollout_fn (e.g. WorldModel.rollout(..., grad=True)) and cost_fn"
                )
            c = torch.nan_to_num(costs.detach(), nan=float("inf"))
            best_cost, best_actions, trace[it] = keep_best((best_cost, best_actions), c, actions.detach())
            opt.zero_grad(set_to_none=True)
            costs.sum().backward()
            opt.step()
            if bound == "clamp":
                with torch.no_grad():
                    u.copy_(torch.maximum(torch.minimum(u, high), low))
        with torch.no_grad():  # score the final iterate too
            actions = mid + half * torch.tanh(u) if bound == "tanh" else u
            c = torch.nan_to_num(cost_fn(rollout_fn(z0, actions), actions).detach().float(), nan=float("inf"))
            best_cost, best_actions, _ = keep_best((best_cost, best_actions), c, actions.detach())
        trace, best_cost = trace.cpu(), float(best_cost)
    best_actions = torch.maximum(torch.minimum(best_actions, high), low)
    return PlanResult(
        actions=best_actions,
        cost=best_cost,
        cost_trace=trace,
        mean=best_actions.clone(),
        std=torch.zeros_like(best_actions),
        plan_seconds=timer.seconds,
        info={"restarts": restarts},
    )


class GDPlanner(Planner):
    """Gradient-based planner with its hyperparameters held (see :func:`gd`)."""

    algorithm = staticmethod(gd)

    requires_grad = True

    def __init__(
        self,
        action_dim: int | None = None,
        horizon: int = 5,
        restarts: int = 8,
        iterations: int = 50,
        lr: float = 0.1,
        action_low: Bound = -1.0,
        action_high: Bound = 1.0,
        init_std: float = 0.5,
        bound: str = "clamp",
    ) -> None:
        check_positive(horizon=horizon, restarts=restarts, iterations=iterations, lr=lr)
        if bound not in BOUND_MODES:
            raise ValueError(f"bound={bound!r}; expected one of {list(BOUND_MODES)}")
        self.action_dim, self.horizon, self.restarts, self.iterations, self.lr = (
            action_dim,
            horizon,
            restarts,
            iterations,
            lr,
        )
        self.action_low, self.action_high, self.init_std, self.bound = (
            action_low,
            action_high,
            init_std,
            bound,
        )
