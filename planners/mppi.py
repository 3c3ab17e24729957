"""Model-predictive path integral (MPPI): a cost-weighted average of Gaussian perturbations.

Each iteration samples ``population`` sequences around the mean with std ``noise_std``, keeps the
``elites`` best (as in TD-MPC2; None keeps all), weights them by
``softmax(-(cost - min) / (temperature * scale))`` (``scale`` = the median cost gap when ``normalize``,
so the temperature is unit-free and robust to outliers), and moves the mean to the weighted average;
``adapt_std`` refits the std to the weighted spread (floored at ``min_std``).
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
    evaluate,
    initial_mean,
    keep_best,
    resolve_action_dim,
    resolve_bounds,
)


def mppi(
    rollout_fn: RolloutFn,
    cost_fn: CostFn,
    z0: Any,
    action_dim: int | None = None,
    horizon: int = 5,
    population: int = 200,
    iterations: int = 10,
    temperature: float = 0.5,
    noise_std: float | Tensor = 0.5,
    action_low: Bound = -1.0,
    action_high: Bound = 1.0,
    init_mean: Tensor | None = None,
    elites: int | None = 20,
    normalize: bool = True,
    adapt_std: bool = True,
    min_std: float = 0.05,
    momentum: float = 0.0,
    generator: torch.Generator | None = None,
) -> PlanResult:
    """Plan an action sequence with MPPI.

    Args:
        rollout_fn, cost_fn, z0, action_dim, horizon, population, action_low, action_high, init_mean,
            generator: as in :func:`planners.cem.cem`.
        iterations: weighted-average updates.
        temperature: softmax temperature (in units of the costs' std when ``normalize``).
        noise_std: std of the perturbations, scalar or ``[H, A]``.
        elites: weight only this many best samples (None = all).
        normalize: divide cost gaps by the median gap of the weighted samples (scale-free temperature).
        adapt_std: refit the std to the weighted spread each iteration (floored at ``min_std``).
        momentum: weight of the previous mean in each update.

    Returns:
        :class:`PlanResult` with ``actions`` = the final mean (clamped) and its cost.
    """
    with Timer() as timer:
        check_positive(horizon=horizon, population=population, iterations=iterations, temperature=temperature)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} must be in [0, 1)")
        if elites is not None and not 1 <= elites <= population:
            raise ValueError(f"elites={elites} must be in [1, population={population}] or None")
        A = resolve_action_dim(action_dim, init_mean, action_low, action_high)
        device = device_of(init_mean, z0)
        low, high = resolve_bounds(action_low, action_high, A, device)
        mean = initial_mean(init_mean, horizon, low, high)  # [H, A]
        std = torch.as_tensor(noise_std, dtype=torch.float32, device=device).expand(horizon, A).clone()
        if not bool((std > 0).all()):
            raise ValueError(f"noise_std must be > 0; got {noise_std}")
        trace = torch.empty(iterations, device=device)  # filled on the device: one sync at the end
        best_cost, best_actions = torch.tensor(float("inf"), device=device), mean.clone()
        for it in range(iterations):
            noise = torch.randn((population, horizon, A), generator=generator, device=device)
            samples = torch.maximum(torch.minimum(mean + std * noise, high), low)  # [S, H, A]
            samples[0] = mean
            costs = evaluate(rollout_fn, cost_fn, z0, samples)  # [S]
            if elites is not None:
                costs, idx = torch.topk(costs, elites, largest=False)
                samples = samples[idx]
            finite = torch.isfinite(costs)
            worst = torch.where(finite, costs, float("-inf")).max()  # the worst finite cost (-inf if none)
            c = torch.where(finite, costs, torch.where(finite.any(), worst, 0.0))
            gap = c - c.min()
            scale = (c.median() - c.min()).clamp(min=1e-8) if normalize and c.numel() > 1 else 1.0
            w = torch.softmax(-gap / (temperature * scale), dim=0)
            w = torch.where(finite, w, torch.zeros_like(w))
            w = w / w.sum().clamp(min=1e-12)  # [S']
            new_mean = torch.einsum("s,sha->ha", w, samples)
            if adapt_std:
                var = torch.einsum("s,sha->ha", w, (samples - new_mean) ** 2)
                std = var.sqrt().clamp(min=min_std)
            mean = momentum * mean + (1 - momentum) * new_mean
            best_cost, best_actions, trace[it] = keep_best((best_cost, best_actions), costs, samples)
        actions = torch.maximum(torch.minimum(mean, high), low)
        cost = float(evaluate(rollout_fn, cost_fn, z0, actions[None])[0])
        trace, best_cost = trace.cpu(), float(best_cost)
    return PlanResult(
        actions=actions,
        cost=cost,
        cost_trace=trace,
        mean=mean,
        std=std,
        plan_seconds=timer.seconds,
        info={"best_actions": best_actions, "best_cost": best_cost},
    )


class MPPIPlanner(Planner):
    """MPPI with its hyperparameters held (see :func:`mppi`)."""

    algorithm = staticmethod(mppi)

    def __init__(
        self,
        action_dim: int | None = None,
        horizon: int = 5,
        population: int = 200,
        iterations: int = 10,
        temperature: float = 0.5,
        noise_std: float = 0.5,
        action_low: Bound = -1.0,
        action_high: Bound = 1.0,
        elites: int | None = 20,
        normalize: bool = True,
        adapt_std: bool = True,
        min_std: float = 0.05,
        momentum: float = 0.0,
    ) -> None:
        check_positive(
            horizon=horizon,
            population=population,
            iterations=iterations,
            temperature=temperature,
            noise_std=noise_std,
        )
        self.action_dim, self.horizon, self.population, self.iterations = (
            action_dim,
            horizon,
            population,
            iterations,
        )
        self.temperature, self.noise_std = temperature, noise_std
        self.action_low, self.action_high, self.elites = action_low, action_high, elites
        self.normalize, self.adapt_std, self.min_std, self.momentum = normalize, adapt_std, min_std, momentum
