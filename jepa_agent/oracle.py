"""True-state baseline for the reach task: a planner given the real state and a kinematic model.

The "oracle" of the evaluation protocol: it plans with the same planner and budget as the JEPA agent,
but its rollout is the arm's known kinematics (servo targets ``q + a * max_delta``, clipped to the
joint ranges; the servos track them within ~1% per step) and its cost is the true end-effector
distance to the goal, reduced over the imagined steps as the world model's cost is (``cost.reduction``,
``cost.discount``, ``cost.action_weight``: the same :class:`~jepa_agent.costs.CostConfig`). It bounds what a
perfect world model and cost could reach. The kinematic model is valid for this position-servoed arm only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from envs.reach import LINK_LENGTHS
from jepa_agent.costs import REDUCTIONS, ActionMagnitudeCost, Cost, CostConfig, reduce_steps


class ReachKinematics:
    """Batched kinematic model of ``JepaAgent/Reach-v0`` (a ``PlanningModel``); state: joint angles."""

    def __init__(self, max_delta: float, joint_low: np.ndarray, joint_high: np.ndarray, device="cpu") -> None:
        self.max_delta = float(max_delta)
        self.device = torch.device(device)
        self.low = torch.as_tensor(joint_low, dtype=torch.float32, device=self.device)
        self.high = torch.as_tensor(joint_high, dtype=torch.float32, device=self.device)
        self.action_dim = int(self.low.numel())

    @classmethod
    def from_env(cls, env, device="cpu") -> ReachKinematics:
        u = env.unwrapped
        return cls(u.max_delta, u.joint_low, u.joint_high, device=device)

    def encode(self, obs: dict[str, np.ndarray]) -> Tensor:
        """The true state of an observation: its joint angles (first half of proprio)."""
        proprio = torch.as_tensor(obs["proprio"], dtype=torch.float32, device=self.device)
        return proprio[: self.action_dim]

    def encode_goal(self, goal: dict[str, np.ndarray]) -> Tensor:
        """The goal's end-effector ``xy`` (the last two entries of the env's goal state)."""
        return torch.as_tensor(goal["state"][-2:], dtype=torch.float32, device=self.device)

    def context(self, states: list[Tensor], actions: list[Tensor]) -> Tensor:
        """The true state is Markov: only the latest joint angles matter."""
        return states[-1]

    def cost(self, goal_ee: Tensor, **options: Any) -> Cost:
        """True end-effector distance (metres) to ``goal_ee``, reduced over the steps like the world
        model's cost, plus the same action penalty: ``options`` are :class:`CostConfig`'s fields (checked
        there). ``space`` and ``metric`` choose how a *world model* compares latents; the oracle always
        measures the true distance."""
        c = CostConfig(**options)
        cost = EndEffectorCost(goal_ee, reduction=c.reduction, discount=c.discount, device=self.device)
        return cost + ActionMagnitudeCost(c.action_weight) if c.action_weight else cost

    def rollout(self, q0: Tensor, actions: Tensor) -> Tensor:
        """Joint angles after each action: ``q0 [n]``, ``actions [S, H, n]`` -> ``[S, H, n]``."""
        q = q0.expand(actions.shape[0], -1)
        out = []
        for t in range(actions.shape[1]):  # H is small (the horizon); batched over samples
            q = torch.minimum(torch.maximum(q + actions[:, t] * self.max_delta, self.low), self.high)
            out.append(q)
        return torch.stack(out, dim=1)


def forward_kinematics_torch(q: Tensor) -> Tensor:
    """End-effector ``xy`` for joint angles ``q [..., 2]`` -> ``[..., 2]`` (torch twin of envs.reach)."""
    l1, l2 = LINK_LENGTHS
    q1, q12 = q[..., 0], q[..., 0] + q[..., 1]
    return torch.stack(
        [l1 * torch.cos(q1) + l2 * torch.cos(q12), l1 * torch.sin(q1) + l2 * torch.sin(q12)], -1
    )


class EndEffectorCost(Cost):
    """True-state cost: end-effector distance (m) to the goal per imagined step, reduced over the steps
    (``reduction="all"``: the discounted mean, so arriving early and staying scores best; ``"final"``: the
    last step only)."""

    def __init__(self, goal_ee: np.ndarray | Tensor, reduction: str = CostConfig.reduction,
                 discount: float = CostConfig.discount, device="cpu") -> None:  # fmt: skip
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r}; expected one of {list(REDUCTIONS)}")
        self.goal_ee = torch.as_tensor(goal_ee, dtype=torch.float32, device=device)  # [2]
        self.reduction, self.discount = reduction, float(discount)

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        """``pred [S, H, 2]`` joint angles -> cost ``[S]``."""
        dist = (forward_kinematics_torch(pred) - self.goal_ee).norm(dim=-1)  # [S, H]
        return reduce_steps(dist, self.reduction, self.discount)
