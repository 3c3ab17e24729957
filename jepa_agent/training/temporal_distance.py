"""The label-free planning space: train a :class:`~jepa_agent.models.latent.TemporalDistanceHead`.

Runs first in a world-model run, on the latent cache (:class:`LatentEpisodes`): encoded frames, actions
and the episode boundaries, nothing else. No proprio, no simulator state, no reward: it works on any
recorded episodes. Each step samples a frame ``s``, its successor ``s'`` and a goal ``g`` (a later frame of
the same episode at a geometric offset, or a random frame) and takes one step of
:func:`jepa_agent.losses.temporal_distance_loss` (HILP), with an EMA target head. The head is then frozen
and the predictor trains with an extra term that puts its predictions where the head puts the true frames
(``train.metric.predictor_weight``), the label-free counterpart of the readout term.

Measured on the flat reach (``scripts/score.py``, docs/benchmarks.md): greedy planning with perfect
dynamics reaches 100% of grid goals in this space, against 58% in the latent itself.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from jepa_agent.losses import ema_update, goal_critic_loss, temporal_distance_loss
from jepa_agent.models.latent import GoalCritic, TemporalDistanceHead
from jepa_agent.training.latent_cache import LatentEpisodes

__all__ = ["STEP_COSTS", "MetricTrainConfig", "sample_goals", "train_metric_head"]


STEP_COSTS = ("step", "action")


@dataclass
class MetricTrainConfig:
    """Settings of the temporal-distance stage (``train.metric.*``).

    Attributes:
        steps: optimisation steps (0: skip the stage).
        step_cost: what a transition costs: ``"step"`` (1: the distance counts steps, flat within one
            step of the goal) or ``"action"`` (the norm of the standardised action taken, over sqrt(A):
            the distance measures the least effort, so poses closer than one step still differ).
        batch_size: (state, goal) pairs per step.
        lr: Adam learning rate.
        gamma: discount: distances count steps up to about ``1 / (1 - gamma)``.
        expectile: HILP's expectile ``tau`` (> 0.5: the fewest steps the data shows, not the average).
        ema: target-head update rate.
        random_goals: share of goals drawn from anywhere in the data (the rest: later in the same episode).
        predictor_weight: the predictor then trains with ``predictor_weight *`` the squared error of its
            predictions in the (frozen) head's space added to its own loss: the label-free counterpart of
            the readout term, so imagination is accurate where the cost looks.
        value_weight: a goal critic only (``world_model.metric.kind=critic``): the predictor also trains with
            ``value_weight *`` the squared error of the steps the (frozen) critic reads from its predicted
            latents against those it reads from the true frames, over their variance. The goals are each
            window's last true frame and another window's: what the planner ranks its candidates by, where
            ``predictor_weight`` compares only the critic's first (linear) layer. 0: off. With ``joint``,
            the critic trains on this term too, every layer, towards its frozen copy's steps of the true
            frames, on predicted and encoded latents: it learns to read imagined futures.
        joint: keep training the head with the predictor, as the labelled readout is: on encoded AND
            predicted latents, towards a frozen copy of itself (as this stage left it) on the true frames.
            The head then reads imagined futures where the true ones would be (like the readout), instead
            of the predictor alone having to land in a frozen head's space; the targets stay fixed, so
            the space cannot collapse.
        env_steps: for a model of macro-actions (``action_chunk`` K > 1), count env steps: the head learns
            from every frame, not every K-th, so its distances are K times finer near the goal, where one
            macro-step moves the pusher up to 12 cm (push, from the true state: the goal critic plans 0 of
            10 goals counting macro-steps, 6-7 of 10 counting env steps; docs/benchmarks.md). False: the
            macro-steps the predictor takes (the sixteenth session's push models). No effect with K = 1.
        datasets: with several datasets (``data.path=[A, B, ...]``), the positions in that list of the ones
            the head learns from (None: all). E.g. ``[0]`` keeps the planner's own recorded episodes
            (``plan.py record=DIR``, long stretches at rest near the goal) out of the head's distances
            while the predictor still trains on them.
    """

    steps: int = 6000
    step_cost: str = "step"
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.98
    expectile: float = 0.9
    ema: float = 0.005
    random_goals: float = 0.3
    predictor_weight: float = 10.0
    value_weight: float = 0.0
    joint: bool = False
    env_steps: bool = True
    datasets: list[int] | None = None

    def __post_init__(self) -> None:
        if int(self.steps) < 0 or int(self.batch_size) < 1:
            raise ValueError(
                f"train.metric.steps={self.steps}, batch_size={self.batch_size}; expected steps >= 0 and "
                "batch_size >= 1"
            )
        for key in ("gamma", "expectile", "ema"):
            if not 0.0 < float(getattr(self, key)) < 1.0:
                raise ValueError(f"train.metric.{key}={getattr(self, key)}; expected a number in (0, 1)")
        if not 0.0 <= float(self.random_goals) <= 1.0:
            raise ValueError(f"train.metric.random_goals={self.random_goals}; expected a fraction in [0, 1]")
        for key in ("joint", "env_steps"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"train.metric.{key}={getattr(self, key)!r}; expected true or false")
        if self.step_cost not in STEP_COSTS:
            raise ValueError(f"train.metric.step_cost={self.step_cost!r}; expected one of {list(STEP_COSTS)}")
        if not self.lr > 0:
            raise ValueError(f"train.metric.lr={self.lr}; expected > 0")
        for key in ("predictor_weight", "value_weight"):
            if not float(getattr(self, key)) >= 0:
                raise ValueError(f"train.metric.{key}={getattr(self, key)}; expected >= 0")
        if self.datasets is not None:
            picked = list(self.datasets)
            if (
                not picked
                or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in picked)
                or len(set(picked)) != len(picked)
            ):
                raise ValueError(
                    f"train.metric.datasets={self.datasets!r}; expected null or distinct positions in "
                    "data.path (ints >= 0), e.g. [0]"
                )
            self.datasets = picked


def _last_frames(data: LatentEpisodes) -> Tensor:
    """Per frame: the global index of its episode's last frame."""
    starts = torch.tensor(data.starts)
    lengths = torch.tensor(data.lengths)
    return torch.repeat_interleave(starts + lengths - 1, lengths)


def sample_goals(
    t: Tensor, last: Tensor, num_frames: int, gamma: float, random_goals: float, gen: torch.Generator
) -> Tensor:
    """Goals for states ``t``: ``t + Geometric(1 - gamma)`` capped at the episode's ``last`` frame, or
    (with probability ``random_goals``) any frame."""
    u = torch.rand(len(t), generator=gen)
    geo = torch.log(torch.rand(len(t), generator=gen).clamp_min(1e-12)) / math.log(gamma)
    g = torch.minimum(t + 1 + geo.long(), last[t])
    return torch.where(u < random_goals, torch.randint(num_frames, (len(t),), generator=gen), g)


def train_metric_head(
    head: TemporalDistanceHead | GoalCritic,
    data: LatentEpisodes,
    cfg: MetricTrainConfig,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``head`` (in place) on the latent cache; returns ``{"metric_loss", "metric_seconds"}``.

    Args:
        head: the temporal-distance head, or a :class:`GoalCritic` (trained by
            :func:`~jepa_agent.losses.goal_critic_loss`, the same samples).
        data: the latent cache (``z``, episode ``starts`` / ``lengths``; nothing else is read).
        cfg: the stage's settings.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    dev = data.z.device
    last = _last_frames(data).to(dev)
    num = len(last)
    states = torch.nonzero(torch.arange(num, device=dev) < last).squeeze(1).cpu()  # frames with a successor
    if len(states) == 0:
        raise ValueError("the temporal-distance head needs episodes of at least 2 frames")
    step_cost = (
        data.actions.norm(dim=-1) / math.sqrt(data.actions.shape[-1])  # row t: the action after frame t
        if cfg.step_cost == "action"
        else torch.ones(num, device=dev)
    )
    gen = torch.Generator().manual_seed(seed)
    target = copy.deepcopy(head).requires_grad_(False)
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    head.train()
    loss = torch.zeros(())
    for _ in tqdm(range(cfg.steps), desc="temporal distance", disable=not progress, leave=False):
        t = states[torch.randint(len(states), (cfg.batch_size,), generator=gen)]
        g = sample_goals(t, last.cpu(), num, cfg.gamma, cfg.random_goals, gen)
        t, g = t.to(dev), g.to(dev)
        if isinstance(head, GoalCritic):
            loss = goal_critic_loss(
                head, target, data.z[t], data.z[t + 1], data.z[g], g == t, g == t + 1, cfg.gamma,
                cfg.expectile, step_cost[t],
            )  # fmt: skip
        else:
            loss = temporal_distance_loss(
                head, target, data.z[t], data.z[t + 1], data.z[g], g == t, cfg.gamma, cfg.expectile,
                step_cost[t],
            )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update(target, head, 1.0 - cfg.ema)
    head.eval()
    value = loss.item()
    if not math.isfinite(value):
        from jepa_agent.training.pretrain import NonFiniteLossError

        raise NonFiniteLossError(f"non-finite temporal-distance loss {value}; try a lower train.metric.lr")
    return {"metric_loss": value, "metric_seconds": time.perf_counter() - t0}
