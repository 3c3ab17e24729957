"""Cross-entropy method (CEM): sample around a Gaussian, refit it to the elites, repeat.

As in V-JEPA 2-AC / TD-MPC2: diagonal Gaussian over the ``[H, A]`` action sequence, samples clamped to
the bounds, elites = the lowest-cost samples, mean/std moved towards the elites' with momentum,
std floored at ``min_std``. The current mean is itself evaluated as one of the samples, so a good
warm start is never lost.

Defaults: 200 samples x 10 iterations x horizon 5, the control budget ``scripts/plan.py`` replans with at
every step (``planner=cem`` is this constructor's signature, as a typed config). V-JEPA 2-AC's 300 x 30
is the benchmark budget of ``scripts/bench_plan.py``.
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


def num_elites(population: int, elites: int | None, elite_frac: float | None) -> int:
    """Elite count from an absolute number or a fraction of the population, checked."""
    k = int(round(elite_frac * population)) if elite_frac is not None else elites
    if k is None or not 1 <= k <= population:
        raise ValueError(
            f"elites={elites}, elite_frac={elite_frac} gives {k} elites; "
            f"expected 1 <= elites <= population={population}"
        )
    return k


def cem(
    rollout_fn: RolloutFn,
    cost_fn: CostFn,
    z0: Any,
    action_dim: int | None = None,
    horizon: int = 5,
    population: int = 200,
    elites: int | None = 20,
    iterations: int = 10,
    momentum: float = 0.1,
    action_low: Bound = -1.0,
    action_high: Bound = 1.0,
    init_mean: Tensor | None = None,
    init_std: float | Tensor = 1.0,
    min_std: float = 0.05,
    elite_frac: float | None = None,
    include_mean: bool = True,
    generator: torch.Generator | None = None,
) -> PlanResult:
    """Plan an action sequence with CEM.

    Args:
        rollout_fn: ``(z0, actions [S, H, A]) -> pred [S, H, ...]``.
        cost_fn: ``(pred, actions) -> [S]``.
        z0: the current (latent) state, passed through to ``rollout_fn`` untouched.
        action_dim: ``A``; inferred from ``init_mean`` or per-dimension bounds when None.
        horizon: ``H``, planned steps.
        population: ``S``, samples per iteration.
        elites: number of elites (ignored when ``elite_frac`` is set).
        iterations: refits of the Gaussian.
        momentum: weight of the previous mean/std in each update (0 = jump to the elites').
        action_low, action_high: scalar or ``[A]`` bounds; samples are clamped to them.
        init_mean: ``[H, A]`` warm start (e.g. ``shift_plan(previous.mean)``); None = bounds' centre.
        init_std: initial std, scalar or ``[H, A]``.
        min_std: floor on the std (keeps exploring).
        elite_frac: elites as a fraction of the population.
        include_mean: evaluate the current mean as sample 0 of every iteration.
        generator: torch RNG on ``z0``'s device for reproducible plans.

    Returns:
        :class:`PlanResult` with ``actions`` = the final mean (clamped) and its cost.
    """
    with Timer() as timer:
        check_positive(horizon=horizon, population=population, iterations=iterations, min_std=min_std)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} must be in [0, 1)")
        k = num_elites(population, elites, elite_frac)
        A = resolve_action_dim(action_dim, init_mean, action_low, action_high)
        device = device_of(init_mean, z0)
        low, high = resolve_bounds(action_low, action_high, A, device)
        mean = initial_mean(init_mean, horizon, low, high)  # [H, A]
        std = torch.as_tensor(init_std, dtype=torch.float32, device=device).expand(horizon, A).clone()
        if not bool((std > 0).all()):
            raise ValueError(f"init_std must be > 0; got {init_std}")
        trace = torch.empty(iterations, device=device)  # filled on the device: one sync at the end
        best_cost, best_actions = torch.tensor(float("inf"), device=device), mean.clone()
        for it in range(iterations):
            noise = torch.randn((population, horizon, A), generator=generator, device=device)
            samples = torch.maximum(torch.minimum(mean + std * noise, high), low)  # [S, H, A]
            if include_mean:
                samples[0] = mean
            costs = evaluate(rollout_fn, cost_fn, z0, samples)  # [S]
            top = torch.topk(costs, k, largest=False)
            elite = samples[top.indices]  # [k, H, A]
            mean = momentum * mean + (1 - momentum) * elite.mean(0)
            std = (momentum * std + (1 - momentum) * elite.std(0, unbiased=False)).clamp_(min=min_std)
            best_cost, best_actions, trace[it] = keep_best((best_cost, best_actions), top.values, elite)
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
        info={"best_actions": best_actions, "best_cost": best_cost, "elites": k},
    )


class CEMPlanner(Planner):
    """CEM with its hyperparameters held; build with ``hydra.utils.instantiate(cfg.planner, action_dim=A)``.

    See :func:`cem` for the meaning of each argument.
    """

    algorithm = staticmethod(cem)

    def __init__(
        self,
        action_dim: int | None = None,
        horizon: int = 5,
        population: int = 200,
        elites: int | None = 20,
        iterations: int = 10,
        momentum: float = 0.1,
        action_low: Bound = -1.0,
        action_high: Bound = 1.0,
        init_std: float = 1.0,
        min_std: float = 0.05,
        elite_frac: float | None = None,
        include_mean: bool = True,
    ) -> None:
        check_positive(horizon=horizon, population=population, iterations=iterations, init_std=init_std)
        num_elites(population, elites, elite_frac)
        self.action_dim, self.horizon, self.population = action_dim, horizon, population
        self.elites, self.iterations, self.momentum = elites, iterations, momentum
        self.action_low, self.action_high = action_low, action_high
        self.init_std, self.min_std, self.elite_frac, self.include_mean = (
            init_std,
            min_std,
            elite_frac,
            include_mean,
        )
