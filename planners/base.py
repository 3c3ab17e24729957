"""Shared pieces of the planners: the result record, warm-start shifting, bounds and input checks.

Every planner optimises an action sequence ``[H, A]`` against two callables::

    rollout_fn(z0, actions [S, H, A]) -> pred [S, H, ...]   # imagined future (any trailing shape)
    cost_fn(pred [S, H, ...], actions [S, H, A]) -> [S]     # lower is better

Planners are pure: they never touch an environment, a logger or a hard-coded device (tensors are
created on the device of ``z0`` / ``init_mean``), and they return a :class:`PlanResult`.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

RolloutFn = Callable[[Any, Tensor], Any]
CostFn = Callable[[Any, Tensor], Tensor]
Bound = float | Sequence[float] | Tensor


@dataclass
class PlanResult:
    """What a planner returns.

    Attributes:
        actions: ``[H, A]`` the planned action sequence (within bounds); execute ``actions[0]`` (or a few).
        cost: the cost of ``actions`` under ``cost_fn``.
        cost_trace: ``[iterations]`` best sampled cost of each iteration (for convergence plots).
        mean: ``[H, A]`` final sampling mean (warm-start the next plan with ``shift_plan(mean)``).
        std: ``[H, A]`` final sampling std (or zeros for deterministic planners).
        plan_seconds: wall time of the whole ``plan`` call.
        info: planner-specific extras (e.g. the best sample seen and its cost).
    """

    actions: Tensor
    cost: float
    cost_trace: Tensor
    mean: Tensor
    std: Tensor
    plan_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def shift_plan(plan: Tensor, steps: int = 1, fill: float | Tensor | None = 0.0) -> Tensor:
    """Warm start: drop the first ``steps`` actions of ``plan [H, A]`` and pad the end.

    Args:
        plan: ``[H, A]`` previous mean (or actions).
        steps: how many actions were executed since it was planned.
        fill: value of the new trailing actions; ``None`` repeats the last action.

    Returns:
        ``[H, A]`` shifted plan (a new tensor).
    """
    if plan.dim() != 2:
        raise ValueError(f"shift_plan expects a [H, A] plan; got shape {tuple(plan.shape)}")
    H = plan.shape[0]
    if not 0 <= steps <= H:
        raise ValueError(f"shift_plan steps={steps} must be in [0, H={H}]")
    kept = plan[steps:]
    if fill is None:
        pad = plan[-1:].expand(steps, -1)
    else:
        pad = torch.as_tensor(fill, dtype=plan.dtype, device=plan.device).expand(steps, plan.shape[1])
    return torch.cat([kept, pad], dim=0).clone()


def device_of(*objs: Any) -> torch.device:
    """Device of the first tensor in ``objs`` (tensors, dicts/lists/tuples of them, or any object with
    a ``device`` attribute, such as a world model's context); CPU if none."""
    for o in objs:
        if isinstance(o, Tensor):
            return o.device
        if isinstance(getattr(o, "device", None), torch.device):
            return o.device
        if isinstance(o, dict):
            o = list(o.values())
        if isinstance(o, (list, tuple)):
            for x in o:
                if isinstance(x, Tensor):
                    return x.device
    return torch.device("cpu")


def resolve_bounds(low: Bound, high: Bound, action_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Broadcast scalar or per-dimension bounds to two ``[A]`` tensors and check ``low < high``."""
    lo = torch.as_tensor(low, dtype=torch.float32, device=device).flatten()
    hi = torch.as_tensor(high, dtype=torch.float32, device=device).flatten()
    for name, b in (("action_low", lo), ("action_high", hi)):
        if b.numel() not in (1, action_dim):
            raise ValueError(f"{name} has {b.numel()} values; expected 1 or action_dim={action_dim}")
    lo, hi = lo.expand(action_dim).clone(), hi.expand(action_dim).clone()
    if not bool((lo < hi).all()):
        raise ValueError(f"action_low {lo.tolist()} must be < action_high {hi.tolist()} in every dimension")
    return lo, hi


def resolve_action_dim(action_dim: int | None, init_mean: Tensor | None, low: Bound, high: Bound) -> int:
    """``action_dim`` if given, else inferred from ``init_mean`` or per-dimension bounds."""
    if action_dim is not None:
        if int(action_dim) < 1:
            raise ValueError(f"action_dim={action_dim} must be >= 1")
        return int(action_dim)
    if init_mean is not None:
        return int(init_mean.shape[-1])
    for b in (low, high):
        n = torch.as_tensor(b).numel()
        if n > 1:
            return n
    raise ValueError(
        "action_dim is unknown: pass action_dim= to the planner (e.g. "
        "hydra.utils.instantiate(cfg.planner, action_dim=env.action_space.shape[0])) or give init_mean"
    )


def initial_mean(init_mean: Tensor | None, horizon: int, low: Tensor, high: Tensor) -> Tensor:
    """``init_mean`` checked against ``[H, A]`` and clamped to the bounds, or the bounds' centre."""
    A = low.shape[0]
    if init_mean is None:
        return ((low + high) / 2).expand(horizon, A).clone()
    mean = torch.as_tensor(init_mean, dtype=torch.float32, device=low.device)
    if tuple(mean.shape) != (horizon, A):
        raise ValueError(
            f"init_mean has shape {tuple(mean.shape)}; expected (horizon={horizon}, action_dim={A})"
        )
    return torch.maximum(torch.minimum(mean, high), low).clone()


def evaluate(rollout_fn: RolloutFn, cost_fn: CostFn, z0: Any, actions: Tensor) -> Tensor:
    """Cost ``[S]`` of ``actions [S, H, A]``, checked for shape; NaN costs become +inf (never selected)."""
    costs = cost_fn(rollout_fn(z0, actions), actions)
    S = actions.shape[0]
    if not isinstance(costs, Tensor) or tuple(costs.shape) != (S,):
        got = tuple(costs.shape) if isinstance(costs, Tensor) else type(costs).__name__
        raise ValueError(f"cost_fn must return a tensor of shape [S]=({S},) for {S} samples; got {got}")
    return torch.nan_to_num(costs.float(), nan=float("inf"))


def keep_best(
    best: tuple[Tensor, Tensor], costs: Tensor, candidates: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Track the lowest-cost candidate seen so far, on the device (no host sync inside a planning loop).

    Args:
        best: ``(cost [], actions [H, A])`` so far.
        costs: ``[S]`` this iteration's costs; ``candidates``: ``[S, H, A]`` their action sequences.

    Returns:
        ``(best cost [], best actions [H, A], this iteration's lowest cost [])``.
    """
    i = torch.argmin(costs)
    c = costs[i]
    better = c < best[0]
    return torch.where(better, c, best[0]), torch.where(better, candidates[i], best[1]), c


def check_positive(**values: float) -> None:
    """Raise ValueError naming any hyperparameter that is not a number > 0."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
            raise ValueError(f"planner {name}={v!r} must be a number > 0")


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


class Planner:
    """Base class: hyperparameters live on the instance; :meth:`plan` runs one optimisation.

    A subclass names its pure planning function (``algorithm = staticmethod(cem)``) and stores exactly
    that function's hyperparameters as public attributes in ``__init__`` (``action_dim`` included);
    :meth:`plan` passes them on. Subclasses set ``requires_grad = True`` when ``rollout_fn`` must be
    differentiable.
    """

    requires_grad: bool = False
    algorithm: Callable[..., PlanResult]

    def plan(
        self,
        rollout_fn: RolloutFn,
        cost_fn: CostFn,
        z0: Any,
        init_mean: Tensor | None = None,
        generator: torch.Generator | None = None,
        action_dim: int | None = None,
    ) -> PlanResult:
        """Run the planning function with this planner's hyperparameters (``action_dim`` overrides)."""
        hparams = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        if action_dim is not None:
            hparams["action_dim"] = action_dim
        return self.algorithm(rollout_fn, cost_fn, z0, init_mean=init_mean, generator=generator, **hparams)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"
