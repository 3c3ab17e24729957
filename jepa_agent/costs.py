"""Costs over imagined futures: ``cost_fn(pred [S, H, ...], actions [S, H, A]) -> [S]`` (lower is better).

* :class:`LatentGoalCost`: distance between predicted latents and a goal latent (L1 / MSE / L2 / cosine),
  on the final step or averaged over all steps with an optional discount.
* :class:`ProjectedGoalCost`: the same after a projection (a state readout, a temporal-distance head).
* :class:`MetricLatentCost`: the label-free cost (head distance + latent term), fused into the rollout.
* :class:`CriticGoalCost`: the steps to the goal a goal-conditioned critic reads from each imagined frame.
* :class:`DisplacementCost`: the squared summed actions a displacement head reads from each imagined frame
  to the goal (fused into :class:`MetricLatentCost` when both are used).
* :class:`ActionMagnitudeCost`: ``mean_h ||a_h||_p^p`` penalty on the actions.
* Costs compose: ``LatentGoalCost(goal) + 0.01 * ActionMagnitudeCost()``.
* :class:`CostConfig`: the planning cost's settings (the ``cost`` config group); its defaults are the
  ones ``WorldModel.cost``, the oracle and ``scripts/plan.py`` use.

Any callable with the same signature (e.g. a true-state oracle cost) works with the planners.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METRICS = ("l1", "mse", "l2", "cosine")
REDUCTIONS = ("final", "all")
SPACES = ("auto", "metric", "readout", "latent")
LATENT_WEIGHT = 0.5  # the latent term's weight where no displacement term is in the cost


def default_latent_weight(displacement: bool) -> float:
    """``cost.latent_weight=null``'s value: 0 when the cost has a displacement term that reads the way to the
    goal exactly (a trained displacement head, ``displacement_weight > 0``, on a model that plans from one
    frame, where an action's effect is a displacement), else :data:`LATENT_WEIGHT`.

    Both terms make the cost sharp within a step of the goal, where the step count is flat. With such a
    displacement term there, the latent term only adds bumps far from the goal (in the elbow, 3.5-4.8 rad
    away on the flat reach), where greedy search stops: the flat reach scores 0.967 without it and 0.913
    with it, and plans 99/100 reached, 93/100 held, against 100/100 and 90/100. Where the summed actions
    are not the displacement (torques: the torque reach's ensemble held 39/50 goals without it, 42/50 with
    it) or there is no displacement head (the distracting reach's anchor model: 38/50 held without it,
    42/50 with it), the term stays (docs/benchmarks.md, label-free section)."""
    return 0.0 if displacement else LATENT_WEIGHT


@dataclass
class CostConfig:
    """How imagined futures are scored against the goal (``cost.*`` on the command line).

    Attributes:
        space: where predictions and goal are compared: ``metric`` (the world model's temporal-distance
            head, learned from frames and actions alone), ``readout`` (its state readout, a labelled
            baseline), ``latent`` (the latents themselves), or ``auto`` (the first the model has, in
            that order).
        metric: ``mse`` | ``l1`` | ``l2`` | ``cosine`` distance in that space.
        reduction: ``all`` scores every imagined step (arrive early *and stay*), ``final`` only the
            last (the path there is free, so the arm wanders once it has arrived).
        discount: per-step weight ``discount**h`` with ``reduction=all``.
        action_weight: ``+ action_weight * mean_h ||a_h||^2`` (0: no action penalty). A small one makes
            standing still the cheapest way to stay, so the arm does not chase the model's error once it
            has arrived (docs/benchmarks.md, "Holding the goal": the default 0.03 was measured there).
        latent_weight: with ``space=metric``, ``+ latent_weight x`` the latents' own mean
            squared distance to the goal latent (0: none). The temporal distance counts steps, so it is
            nearly flat within one step of the goal; the latent distance is sharp there, where the arm
            images overlap, and holds the arm on the goal (docs/benchmarks.md, label-free section).
            None (the default): the model picks, :func:`default_latent_weight`: 0 when its displacement
            head is in the cost and it plans from one frame (that term is then already sharp at the
            goal), else 0.5.
        displacement_weight: with ``space=metric`` and a model with a trained displacement head, ``+
            displacement_weight x`` the squared summed actions it reads from each imagined frame to the goal
            (0: none): the actions still needed, as sharp at the goal as a state readout, label-free.
        anchor_weight: with ``space=metric`` and a model with a trained anchor head, ``+ anchor_weight x``
            the squared summed actions still needed after each planned step: the head's reading at the
            current (real) frame less the actions planned so far (:class:`AnchorCost`; 0: none). 3 was
            measured against 1 and 10 (docs/benchmarks.md, the anchor head).
        rest_weight: with ``space=metric``, ``+ rest_weight x`` the latents' mean squared change over the
            last imagined step: the motion left when the imagined future ends (0: none). Where one frame
            does not hold the state (a torque-driven arm coasts), an arm that arrives moving drifts past the
            goal after it; this makes arriving at rest the cheaper plan, read from the latents alone
            (:func:`rest_motion`; docs/benchmarks.md, momentum section, ninth session).
        smooth_weight: ``+ smooth_weight * mean_h ||a_h - a_{h-1}||^2``, ``a_{-1}`` the action the agent
            took last (0 at an episode's start; 0: none). On a torque-driven arm the planner can dither
            near the goal, alternating full torques each step while the frames barely move (every sampled
            frame shows the same pose); changing the torque then costs (:class:`ActionSmoothnessCost`;
            docs/benchmarks.md, momentum section, ninth session).
        anchor_shift: the anchor head reads the current frame and the goal image each through five views,
            themselves and translated by this many pixels both ways along each axis, and averages its
            readings (``WorldModel.encode(..., anchor_shift)``; 0: the frames alone). Measured against 0,
            1 and 3 (docs/benchmarks.md, eighth session).
        anchor_tolerance: the anchor term costs only what lies beyond this distance (in summed actions)
            from its reading: ``(max(0, ||d_0 - (a_1 + .. + a_h)|| - tolerance))^2`` (0: the plain square).
            The head reads the last centimetre about as badly as a centimetre (its held-out error near the
            goal), so within its error it stops pulling and the other terms, exact there, finish the reach.
    """

    space: str = "auto"
    metric: str = "mse"
    reduction: str = "all"
    discount: float = 1.0
    action_weight: float = 0.03
    latent_weight: Optional[float] = None  # noqa: UP045 - None: default_latent_weight (OmegaConf's typing)
    displacement_weight: float = 0.3
    anchor_weight: float = 3.0  # distracting reach, 50 goals, one view: 90% / 68% held (1.0: 86% / 60%)
    anchor_shift: int = 2  # px; 0: one view (docs/benchmarks.md, eighth session)
    anchor_tolerance: float = 0.0  # summed actions; 0: the plain square
    rest_weight: float = 0.0
    smooth_weight: float = 0.0

    def __post_init__(self) -> None:
        choices_of = {"space": SPACES, "metric": METRICS, "reduction": REDUCTIONS}
        for key, choices in choices_of.items():
            value = getattr(self, key)
            if value not in choices:
                raise ValueError(f"cost.{key}={value!r}; expected one of {list(choices)}")
        if not self.discount > 0:
            raise ValueError(f"cost.discount={self.discount:g}; expected a number > 0")
        w = self.latent_weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, numbers.Real) or not w >= 0):
            raise ValueError(
                f"cost.latent_weight={w!r}; expected a number >= 0 (0: no latent term) or null (the model's "
                "default: 0 with a one-frame model's displacement head, else 0.5)"
            )
        if not self.displacement_weight >= 0:
            raise ValueError(
                f"cost.displacement_weight={self.displacement_weight:g}; expected >= 0 (0: no such term)"
            )
        if not self.anchor_weight >= 0:
            raise ValueError(f"cost.anchor_weight={self.anchor_weight:g}; expected >= 0 (0: no such term)")
        check_anchor_tolerance(self.anchor_tolerance)
        if not self.smooth_weight >= 0:
            raise ValueError(f"cost.smooth_weight={self.smooth_weight:g}; expected >= 0 (0: no such term)")
        if not self.rest_weight >= 0:
            raise ValueError(f"cost.rest_weight={self.rest_weight:g}; expected >= 0 (0: no such term)")
        shift = self.anchor_shift
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
            raise ValueError(f"cost.anchor_shift={shift!r}; expected an int number of pixels >= 0 (0: none)")
        if not self.action_weight >= 0:  # a negative weight would reward large actions
            raise ValueError(
                f"cost.action_weight={self.action_weight:g}; expected >= 0 (0: no action penalty)"
            )


def latent_distance(pred: Tensor, goal: Tensor, metric: str = "l1") -> Tensor:
    """Per-step distance between ``pred [S, H, ..., D]`` and ``goal [..., D]`` (broadcast over S, H).

    ``l1``/``mse``: mean absolute/squared difference over all trailing dims; ``l2``: Euclidean norm over
    the last dim, averaged over the other trailing dims (tokens); ``cosine``: ``1 - cos`` over the last
    dim, averaged likewise.

    Returns:
        ``[S, H]``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}; expected one of {list(METRICS)}")
    if pred.dim() < 3:
        raise ValueError(f"pred must be [S, H, ..., D]; got shape {tuple(pred.shape)}")
    S, H = pred.shape[:2]
    if metric == "cosine":
        d = 1.0 - F.cosine_similarity(pred, goal.expand_as(pred), dim=-1)  # [S, H, ...]
    elif metric == "l2":
        d = torch.linalg.vector_norm(pred - goal, dim=-1)  # [S, H, ...]
    elif metric == "l1":
        d = (pred - goal).abs()
    else:
        d = (pred - goal).square()
    return d.reshape(S, H, -1).mean(-1)  # [S, H]


def reduce_steps(d: Tensor, reduction: str = "final", discount: float = 1.0) -> Tensor:
    """``d [S, H]`` -> ``[S]``: the last step, or the ``discount``-weighted mean over steps."""
    if reduction == "final":
        return d[:, -1]
    if reduction == "all":
        w = discount ** torch.arange(d.shape[1], dtype=d.dtype, device=d.device)  # [H]
        return (d * w).sum(1) / w.sum()
    raise ValueError(f"reduction={reduction!r}; expected one of {list(REDUCTIONS)}")


def rest_motion(pred: Tensor, width: int | None = None) -> Tensor:
    """The motion left at the end of an imagined future: ``mean ||x_H - x_{H-1}||^2`` over the trailing
    dims of ``pred [S, H, ...]`` -> ``[S]`` (``width``: divide the summed square by it instead, e.g. the
    latent dimension when ``pred`` holds basis coordinates).

    Raises:
        ValueError: fewer than 2 imagined steps (there is no last change to read).
    """
    if pred.dim() < 3 or pred.shape[1] < 2:
        raise ValueError(
            f"the rest term (cost.rest_weight) reads the change over the last imagined step and needs "
            f">= 2 imagined steps (planner.horizon >= 2); got predictions of shape {tuple(pred.shape)}"
        )
    change = (pred[:, -1] - pred[:, -2]).reshape(pred.shape[0], -1).square()
    return change.mean(-1) if width is None else change.sum(-1) / width


def goal_latent(goal: Any) -> Any:
    """A goal latent from :meth:`WorldModel.encode_goal`'s ``LatentState`` (its ``z``) or a bare tensor."""
    z = getattr(goal, "z", None)
    return z if isinstance(z, Tensor) else goal


def tensor_goal(goal: Any) -> Tensor:
    """:func:`goal_latent` of ``goal``, detached; anything but a tensor latent is refused (``TypeError``)."""
    goal = goal_latent(goal)
    if not isinstance(goal, Tensor):
        raise TypeError(f"goal must be a tensor latent; got {type(goal).__name__}")
    return goal.detach()


def check_reduction(reduction: str) -> None:
    """``reduction`` must be one of :data:`REDUCTIONS`, naming the bad value."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; expected one of {list(REDUCTIONS)}")


class Cost:
    """Base class: ``cost(pred [S, H, ...], actions [S, H, A]) -> [S]``; supports ``+`` and ``*`` (scalar).

    ``rollout_projection``: a linear map of one imagined frame's flattened latent that is all the cost
    reads of it (or None). A world model's rollout can then return the projection directly, fused into
    its output head, instead of the wide latents (``WorldModel.rollout(..., project=...)``); the cost
    accepts either. ``reads_predictions`` is False for costs of the actions alone.
    """

    rollout_projection: nn.Linear | None = None
    reads_predictions: bool = True

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __add__(self, other: Cost) -> SumCost:
        if not callable(other):
            raise TypeError(f"can only add a cost (callable), not {type(other).__name__}")
        return SumCost([self, other])

    def __mul__(self, weight: float) -> ScaledCost:
        return ScaledCost(self, float(weight))

    __rmul__ = __mul__


class SumCost(Cost):
    """Sum of several costs."""

    def __init__(self, terms: list) -> None:
        self.terms = []
        for t in terms:  # flatten nested sums
            self.terms.extend(t.terms if isinstance(t, SumCost) else [t])

    def set_goal(self, goal: Tensor) -> None:
        """Forward the goal to every term that has one."""
        for t in self.terms:
            if hasattr(t, "set_goal"):
                t.set_goal(goal)

    def set_start(self, state: Any) -> None:
        """Forward the current observation's encoded state to every term that reads it."""
        for t in self.terms:
            if hasattr(t, "set_start"):
                t.set_start(state)

    def set_last_action(self, action: Tensor | None) -> None:
        """Forward the action taken last to every term that reads it."""
        for t in self.terms:
            if hasattr(t, "set_last_action"):
                t.set_last_action(action)

    @property
    def rollout_projection(self) -> nn.Linear | None:  # type: ignore[override]
        """The projection every prediction-reading term accepts (None unless they share one)."""
        projs = [
            getattr(t, "rollout_projection", None)
            for t in self.terms
            if getattr(t, "reads_predictions", True)
        ]
        return projs[0] if projs and all(p is projs[0] for p in projs) else None

    @property
    def reads_predictions(self) -> bool:  # type: ignore[override]
        return any(getattr(t, "reads_predictions", True) for t in self.terms)

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        total = self.terms[0](pred, actions)
        for t in self.terms[1:]:
            total = total + t(pred, actions)
        return total

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)


class ScaledCost(Cost):
    """``weight * cost``."""

    def __init__(self, cost: Cost, weight: float) -> None:
        self.cost, self.weight = cost, weight
        self.rollout_projection = getattr(cost, "rollout_projection", None)
        self.reads_predictions = getattr(cost, "reads_predictions", True)

    def set_goal(self, goal: Tensor) -> None:
        """Forward the goal to the wrapped cost."""
        if hasattr(self.cost, "set_goal"):
            self.cost.set_goal(goal)

    def set_start(self, state: Any) -> None:
        """Forward the current observation's encoded state to the wrapped cost."""
        if hasattr(self.cost, "set_start"):
            self.cost.set_start(state)

    def set_last_action(self, action: Tensor | None) -> None:
        """Forward the action taken last to the wrapped cost."""
        if hasattr(self.cost, "set_last_action"):
            self.cost.set_last_action(action)

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        return self.weight * self.cost(pred, actions)

    def __repr__(self) -> str:
        return f"{self.weight} * {self.cost!r}"


class LatentGoalCost(Cost):
    """Distance of the imagined latents to a goal latent.

    Args:
        goal: goal latent with the trailing shape of one predicted step (e.g. ``[N, D]``; a leading 1
            is allowed); may be set later with :meth:`set_goal`.
        metric: ``"l1"`` (default, as V-JEPA 2-AC's energy), ``"mse"``, ``"l2"`` or ``"cosine"``.
        reduction: ``"final"`` (last imagined step) or ``"all"`` (weighted mean over steps).
        discount: per-step weight ``discount**h`` for ``reduction="all"``.
    """

    def __init__(
        self, goal: Tensor | None = None, metric: str = "l1", reduction: str = "final", discount: float = 1.0
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r}; expected one of {list(METRICS)}")
        check_reduction(reduction)
        if not discount > 0:
            raise ValueError(f"discount={discount} must be > 0")
        self.metric, self.reduction, self.discount = metric, reduction, float(discount)
        self.goal: Tensor | None = None
        if goal is not None:
            self.set_goal(goal)

    def set_goal(self, goal: Tensor) -> None:
        """Replace the goal latent (detached)."""
        self.goal = tensor_goal(goal)

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        if self.goal is None:
            raise ValueError("LatentGoalCost has no goal: call set_goal(latent) before planning")
        step_shape = tuple(pred.shape[2:])
        goal = self.goal
        while goal.dim() > len(step_shape) and goal.shape[0] == 1:
            goal = goal[0]
        if tuple(goal.shape) != step_shape:
            raise ValueError(
                f"goal latent shape {tuple(self.goal.shape)} does not match one predicted step {step_shape} "
                "(were the goal and the state encoded with the same world model / pooling?)"
            )
        goal = goal.to(device=pred.device, dtype=pred.dtype)
        if goal.is_inference() and torch.is_grad_enabled():
            goal = goal.clone()  # inference tensors cannot be saved for backward (gradient planner)
        if self.reduction == "final":  # only the last step counts: skip the distance of the others
            return latent_distance(pred[:, -1:], goal, self.metric)[:, 0]
        return reduce_steps(latent_distance(pred, goal, self.metric), self.reduction, self.discount)

    def __repr__(self) -> str:
        return (
            f"LatentGoalCost(metric={self.metric!r}, reduction={self.reduction!r}, discount={self.discount})"
        )


class ProjectedGoalCost(LatentGoalCost):
    """:class:`LatentGoalCost` measured after a projection of each latent frame (e.g. a state readout).

    Args:
        project: maps one frame's latent ``[..., N, D]`` to features ``[..., F]``. When it also has an
            ``input_layer`` (an ``nn.Linear`` on the flattened frame) and ``from_input_layer`` (the rest of
            the map), that layer is the cost's ``rollout_projection``: predictions may then arrive as
            ``input_layer(z)`` ``[S, H, F']`` (fused into the world model's rollout) instead of ``z``.
        goal: goal latent ``[N, D]`` (projected once, when set).
        metric, reduction, discount: as :class:`LatentGoalCost`.
    """

    def __init__(
        self,
        project: Callable[[Tensor], Tensor],
        goal: Tensor | None = None,
        metric: str = "l1",
        reduction: str = "final",
        discount: float = 1.0,
    ) -> None:
        self.project = project
        self.rollout_projection = getattr(project, "input_layer", None)
        super().__init__(goal, metric, reduction, discount)

    def set_goal(self, goal: Tensor) -> None:
        """Project the goal latent ``[N, D]`` (or ``[1, N, D]``) once."""
        goal = tensor_goal(goal)
        with torch.no_grad():
            self.goal = self.project(goal).reshape(1, -1)  # [1, F]: one "token" of features

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        """``pred``: latents ``[S, H, N, D]``, or ``rollout_projection`` of them ``[S, H, F']``."""
        fused = pred.dim() == 3 and self.rollout_projection is not None
        if pred.dim() != 4 and not fused:
            raise ValueError(f"predicted latents must be [S, H, N, D]; got shape {tuple(pred.shape)}")
        if self.reduction == "final":
            pred = pred[:, -1:]
        feats = self.project.from_input_layer(pred) if fused else self.project(pred)  # [S, H, F]
        return super().__call__(feats.unsqueeze(-2), actions)  # [S, H, 1, F]

    def __repr__(self) -> str:
        return "Projected" + super().__repr__()


class CriticGoalCost(Cost):
    """The steps to the goal that a :class:`~jepa_agent.models.latent.GoalCritic` reads from each imagined
    frame, reduced over the steps as the goal costs are (the metric space of a critic model).

    Fused (``rollout_projection``): the rollout may return the critic's frame layer ``[S, H, hidden]``
    instead of the latents; the goal's part of that layer is computed once, at :meth:`set_goal`.

    Args:
        critic: the critic (``features``, ``goal_features``, ``steps_from_features``, ``input_layer``).
        goal: goal latent ``[N, D]`` (may be set later with :meth:`set_goal`).
        reduction, discount: as :class:`LatentGoalCost`.
    """

    def __init__(
        self, critic: nn.Module, goal: Tensor | None = None, reduction: str = "final", discount: float = 1.0
    ) -> None:
        check_reduction(reduction)
        self.critic, self.reduction, self.discount = critic, reduction, float(discount)
        self.rollout_projection = critic.input_layer
        self.goal_features: Tensor | None = None
        if goal is not None:
            self.set_goal(goal)

    def set_goal(self, goal: Tensor) -> None:
        """The goal latent ``[N, D]`` (or ``[1, N, D]``): its part of the critic's first layer, once."""
        goal = tensor_goal(goal)
        with torch.no_grad():
            self.goal_features = self.critic.goal_features(goal.reshape(*goal.shape[-2:]))  # [hidden]

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        """``pred``: latents ``[S, H, N, D]``, or the critic's frame layer of them ``[S, H, hidden]``."""
        if self.goal_features is None:
            raise ValueError("CriticGoalCost has no goal: call set_goal(latent) before planning")
        if pred.dim() not in (3, 4):
            raise ValueError(f"predicted latents must be [S, H, N, D]; got shape {tuple(pred.shape)}")
        if self.reduction == "final":
            pred = pred[:, -1:]
        h = self.critic.features(pred) if pred.dim() == 4 else pred
        steps = self.critic.steps_from_features(h, self.goal_features.to(h))  # [S, H']
        return reduce_steps(steps, self.reduction, self.discount)


class DisplacementCost(Cost):
    """``||D(z_h, goal)||^2`` per imagined step, reduced over steps as the goal costs are: the summed
    actions still needed to reach the goal, read by a :class:`~jepa_agent.models.latent.DisplacementHead`.

    Args:
        head: the displacement head (``embed``, ``from_embeddings``, ``input_layer``, ``from_input_layer``).
        goal: goal latent ``[N, D]`` (embedded once, when set).
        reduction, discount: as :class:`LatentGoalCost`.
    """

    def __init__(
        self, head: nn.Module, goal: Tensor | None = None, reduction: str = "final", discount: float = 1.0
    ) -> None:
        check_reduction(reduction)
        self.head, self.reduction, self.discount = head, reduction, float(discount)
        self.goal_embedding: Tensor | None = None
        self._towards: Callable[[Tensor], Tensor] | None = None
        if goal is not None:
            self.set_goal(goal)

    def set_goal(self, goal: Tensor) -> None:
        """Embed the goal latent ``[N, D]`` (or ``[1, N, D]``) once."""
        goal = tensor_goal(goal)
        with torch.no_grad():
            self.goal_embedding = self.head.embed(goal.reshape(1, *goal.shape[-2:]))  # [1, hidden]
            towards = getattr(self.head, "towards", None)
            self._towards = towards(self.goal_embedding) if towards is not None else None

    def from_embeddings(self, h: Tensor) -> Tensor:
        """Per-frame embeddings ``[S, H', hidden]`` (cut to the last step for ``final``) -> ``[S]``."""
        if self.goal_embedding is None:
            raise ValueError("DisplacementCost has no goal: call set_goal(latent) before planning")
        if self._towards is not None and h.dtype == self.goal_embedding.dtype:
            sums = self._towards(h)  # [S, H', A]: the goal's share of the first layer computed once
        else:
            sums = self.head.from_embeddings(h, self.goal_embedding.to(h))
        return reduce_steps(sums.square().sum(-1), self.reduction, self.discount)

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        """``pred``: latents ``[S, H, N, D]``."""
        if pred.dim() != 4:
            raise ValueError(f"predicted latents must be [S, H, N, D]; got shape {tuple(pred.shape)}")
        if self.reduction == "final":
            pred = pred[:, -1:]
        return self.from_embeddings(self.head.embed(pred))

    def __repr__(self) -> str:
        return f"DisplacementCost(reduction={self.reduction!r}, discount={self.discount})"


class MetricLatentCost(Cost):
    """The label-free planning cost: squared distance in a temporal-distance head's space, plus
    ``latent_weight x`` the latents' own mean squared distance to the goal (sharp where a step count is
    flat, near the goal).

    Fused (``rollout_projection``): given an orthonormal ``basis [D, k]`` of the directions the imagined
    latents move in (``ACPredictor.motion_basis``), the rollout returns the head's first layer AND the
    ``k`` basis coordinates of each frame, ``[S, H, hidden + k]``, instead of the wide latents; the latent
    term is then exact up to a constant that is the same for every imagined future of one plan (the part
    of ``z0 - goal`` outside the basis), so candidates rank exactly as with the latents. Given latents
    ``[S, H, N, D]`` it computes both terms directly (e.g. for encoded frames).

    Args:
        head: the :class:`~jepa_agent.models.latent.TemporalDistanceHead` (``input_layer`` /
            ``from_input_layer``).
        goal: goal latent ``[N, D]`` (may be set later with :meth:`set_goal`).
        reduction, discount: as :class:`LatentGoalCost`.
        latent_weight: weight of the latent term.
        basis: ``[D, k]`` motion basis for single-token latents (``N == 1``); None: not fused.
        displacement: an optional :class:`~jepa_agent.models.latent.DisplacementHead`, whose
            :class:`DisplacementCost` is added with ``displacement_weight`` (its first layer fused too).
        displacement_weight: that term's weight.
        rest_weight: ``+ rest_weight x`` :func:`rest_motion` of the latents (their change over the last
            imagined step, exact from the basis coordinates when fused; 0: none).
    """

    def __init__(
        self,
        head: nn.Module,
        goal: Tensor | None = None,
        reduction: str = "final",
        discount: float = 1.0,
        latent_weight: float = 0.5,
        basis: Tensor | None = None,
        displacement: nn.Module | None = None,
        displacement_weight: float = 0.0,
        rest_weight: float = 0.0,
    ) -> None:
        if not latent_weight >= 0 or not displacement_weight >= 0 or not rest_weight >= 0:
            raise ValueError(
                f"latent_weight={latent_weight}, displacement_weight={displacement_weight}, "
                f"rest_weight={rest_weight}; expected >= 0"
            )
        self.head, self.latent_weight, self.basis = head, float(latent_weight), basis
        self.rest_weight = float(rest_weight)
        self.metric = ProjectedGoalCost(head, None, "mse", reduction, discount)
        self.latent = LatentGoalCost(None, "mse", reduction, discount)
        self.displacement_weight = float(displacement_weight) if displacement is not None else 0.0
        self.displacement = (
            DisplacementCost(displacement, None, reduction, discount) if self.displacement_weight else None
        )
        self.reduction, self.discount = reduction, float(discount)
        self.rollout_projection = None
        layer = getattr(head, "input_layer", None)
        if basis is not None and layer is not None and layer.in_features == basis.shape[0]:
            # [head's first layer | the displacement head's first layer | basis coordinates]
            layers = [layer] + ([displacement.input_layer] if self.displacement is not None else [])
            self.hidden = layer.out_features
            self.disp_hidden = layers[-1].out_features if self.displacement is not None else 0
            width = self.hidden + self.disp_hidden
            proj = nn.Linear(layer.in_features, width + basis.shape[1]).to(layer.weight)
            with torch.no_grad():
                proj.weight.copy_(torch.cat([*(m.weight for m in layers), basis.T.to(layer.weight)]))
                proj.bias.zero_()
                proj.bias[:width].copy_(torch.cat([m.bias for m in layers]))
            self.rollout_projection = proj.requires_grad_(False)
        self.goal_coords: Tensor | None = None
        if goal is not None:
            self.set_goal(goal)

    def set_goal(self, goal: Tensor) -> None:
        """Set the goal latent ``[N, D]`` (or ``[1, N, D]``) of both terms."""
        goal = goal_latent(goal)
        self.metric.set_goal(goal)
        self.latent.set_goal(goal)
        if self.displacement is not None:
            self.displacement.set_goal(goal)
        if self.rollout_projection is not None:
            g = goal.detach().reshape(-1).to(self.basis)
            self.goal_coords = g @ self.basis  # [k]

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        """``pred``: latents ``[S, H, N, D]``, or ``rollout_projection`` of them ``[S, H, hidden + k]``."""
        if pred.dim() != 3 or self.rollout_projection is None:
            cost = self.metric(pred, actions)
            if self.latent_weight:  # weight 0 (a displacement term alone): nothing to add
                cost = cost + self.latent_weight * self.latent(pred, actions)
            if self.displacement is not None:
                cost = cost + self.displacement_weight * self.displacement(pred, actions)
            if self.rest_weight:
                cost = cost + self.rest_weight * rest_motion(pred)
            return cost
        if self.goal_coords is None:
            raise ValueError("MetricLatentCost has no goal: call set_goal(latent) before planning")
        width = self.hidden + self.disp_hidden
        # the change of the latents over the last step lies in the basis: exact from the coordinates
        rest = rest_motion(pred[..., width:], self.basis.shape[0]) if self.rest_weight else None
        if self.reduction == "final":
            pred = pred[:, -1:]
        cost = self.metric(pred[..., : self.hidden], actions)
        if self.latent_weight:  # weight 0 (a displacement term alone): no latent term to compute
            coords = pred[..., width:]  # [S, H, k]
            goal = self.goal_coords.to(device=coords.device, dtype=coords.dtype)
            # [S, H]: the latent MSE, less a constant
            near = (coords - goal).square().sum(-1) / self.basis.shape[0]
            cost = cost + self.latent_weight * reduce_steps(near, self.reduction, self.discount)
        if self.displacement is not None:
            h = self.displacement.head.from_input_layer(pred[..., self.hidden : width])  # [S, H', hidden]
            cost = cost + self.displacement_weight * self.displacement.from_embeddings(h)
        if rest is not None:
            cost = cost + self.rest_weight * rest
        return cost

    def __repr__(self) -> str:
        fused = "fused" if self.rollout_projection is not None else "not fused"
        return (
            f"MetricLatentCost(latent_weight={self.latent_weight}, displacement_weight="
            f"{self.displacement_weight}, rest_weight={self.rest_weight}, reduction={self.reduction!r}, "
            f"{fused})"
        )


class RestCost(Cost):
    """:func:`rest_motion` of imagined latents ``[S, H, N, D]``: their mean squared change over the last
    imagined step (unfused form of :class:`MetricLatentCost`'s ``rest_weight`` term)."""

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        if pred.dim() != 4:
            raise ValueError(f"predicted latents must be [S, H, N, D]; got shape {tuple(pred.shape)}")
        return rest_motion(pred)

    def __repr__(self) -> str:
        return "RestCost()"


def check_anchor_tolerance(tolerance: Any) -> None:
    """``cost.anchor_tolerance`` must be a number >= 0, naming the bad value."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance >= 0:
        raise ValueError(
            f"cost.anchor_tolerance={tolerance!r}; expected a number >= 0 of summed actions (0: the plain "
            "square)"
        )


def anchor_excess(left: Tensor, tolerance: float = 0.0) -> Tensor:
    """The anchor term of the summed actions still needed ``left`` ``[.., A]``: ``||left||^2``, or with
    ``tolerance > 0`` the square of what lies beyond it, ``max(0, ||left|| - tolerance)^2`` ``[..]``."""
    if not tolerance:
        return left.square().sum(-1)
    return (left.norm(dim=-1) - tolerance).clamp_min(0.0).square()


class AnchorCost(Cost):
    """``||d_0 - (a_1 + .. + a_h)||^2`` per planned step ``h``, reduced over steps as the goal costs are
    (with ``tolerance``: only the distance beyond it is squared).

    ``d_0`` is the :class:`~jepa_agent.models.latent.AnchorHead`'s reading of the summed actions from the
    current (real) frame to the goal; the actions still needed after the first ``h`` planned ones are
    ``d_0`` less their sum, exactly, by what the head's targets are (the summed recorded actions between
    two frames). So the term reads no imagined frame: the agent gives it each replan's frame
    (:meth:`set_start`, the state :meth:`WorldModel.encode` returned), and it costs one head call per replan.

    Args:
        head: the anchor head (``from_embeddings``).
        goal: the goal's anchor embedding ``[hidden]``, or its ``LatentState`` (``anchor`` field).
        reduction, discount: as :class:`LatentGoalCost`.
        tolerance: ``cost.anchor_tolerance`` (:func:`anchor_excess`).
    """

    reads_predictions = False

    def __init__(
        self,
        head: nn.Module,
        goal: Any = None,
        reduction: str = "final",
        discount: float = 1.0,
        tolerance: float = 0.0,
    ) -> None:
        check_reduction(reduction)
        check_anchor_tolerance(tolerance)
        self.head, self.reduction, self.discount = head, reduction, float(discount)
        self.tolerance = float(tolerance)
        self.goal_embedding: Tensor | None = None
        self.start: Tensor | None = None  # [A]: the reading at the current frame
        if goal is not None:
            self.set_goal(goal)

    @staticmethod
    def _embedding(x: Any, what: str) -> Tensor:
        h = getattr(x, "anchor", x)
        if not isinstance(h, Tensor):
            raise TypeError(
                f"AnchorCost: the {what} needs the anchor head's embedding: pass the LatentState that "
                f"WorldModel.encode / encode_goal returned for a model with a trained anchor head; got "
                f"{type(x).__name__} without one"
            )
        return h.detach().reshape(-1, h.shape[-1])  # [V, hidden]: one row per view of the frame

    def set_goal(self, goal: Any) -> None:
        """The goal's anchor embedding (``[hidden]``, ``[V, hidden]`` of V views, or a ``LatentState``
        with ``anchor``)."""
        self.goal_embedding = self._embedding(goal, "goal")
        self.start = None

    def set_start(self, state: Any) -> None:
        """Read the summed actions from the current frame (its ``LatentState`` or embedding) to the goal:
        the mean of the readings of each view of the frame against the same view of the goal."""
        if self.goal_embedding is None:
            raise ValueError("AnchorCost has no goal: call set_goal(goal state) before set_start")
        h = self._embedding(state, "current frame")
        if h.shape != self.goal_embedding.shape:
            raise ValueError(
                f"AnchorCost: the current frame has {h.shape[0]} anchor view(s) and the goal "
                f"{self.goal_embedding.shape[0]}: encode both with the same anchor_shift (cost.anchor_shift)"
            )
        with torch.no_grad():
            self.start = self.head.from_embeddings(h.to(self.goal_embedding), self.goal_embedding).mean(0)

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        if self.start is None:
            raise ValueError(
                "AnchorCost has no current frame: call set_start(state) before planning (MPCAgent does, "
                "every replan)"
            )
        if actions.dim() != 3:
            raise ValueError(f"actions must be [S, H, A]; got shape {tuple(actions.shape)}")
        left = self.start.to(actions) - actions.cumsum(1)  # [S, H, A]: still needed after each step
        return reduce_steps(anchor_excess(left, self.tolerance), self.reduction, self.discount)

    def __repr__(self) -> str:
        return f"AnchorCost(reduction={self.reduction!r})"


class ActionMagnitudeCost(Cost):
    """``weight * mean_h sum_a |a|^p``: discourages large actions.

    Args:
        weight: multiplier.
        p: exponent (1 = L1, 2 = squared L2).
    """

    def __init__(self, weight: float = 1.0, p: float = 2.0) -> None:
        if not p > 0:
            raise ValueError(f"p={p} must be > 0")
        if not weight >= 0:  # a negative weight would reward large actions
            raise ValueError(f"action weight={weight}; expected >= 0")
        self.weight, self.p = float(weight), float(p)

    reads_predictions = False

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        if actions.dim() != 3:
            raise ValueError(f"actions must be [S, H, A]; got shape {tuple(actions.shape)}")
        return self.weight * actions.abs().pow(self.p).sum(-1).mean(-1)

    def __repr__(self) -> str:
        return f"ActionMagnitudeCost(weight={self.weight}, p={self.p})"


class ActionSmoothnessCost(Cost):
    """``weight * mean_h ||a_h - a_{h-1}||^2`` over a plan, ``a_{-1}`` the action taken last
    (:meth:`set_last_action`; None: zeros, as at an episode's start): changing the action costs.

    Args:
        weight: multiplier (>= 0).
    """

    reads_predictions = False

    def __init__(self, weight: float = 1.0) -> None:
        if not weight >= 0:
            raise ValueError(f"smooth weight={weight}; expected >= 0")
        self.weight = float(weight)
        self.last: Tensor | None = None  # [A]

    def set_last_action(self, action: Tensor | None) -> None:
        """The action the agent took last ``[A]`` (None: zeros, as at an episode's start)."""
        self.last = None if action is None else torch.as_tensor(action).detach().reshape(-1)

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        if actions.dim() != 3:
            raise ValueError(f"actions must be [S, H, A]; got shape {tuple(actions.shape)}")
        S, _, A = actions.shape
        if self.last is not None and self.last.numel() != A:
            raise ValueError(f"the last action has {self.last.numel()} dims; the plan's actions have {A}")
        last = actions.new_zeros(A) if self.last is None else self.last.to(actions)
        prev = torch.cat([last.expand(S, 1, A), actions[:, :-1]], 1)
        return self.weight * (actions - prev).square().sum(-1).mean(-1)

    def __repr__(self) -> str:
        return f"ActionSmoothnessCost(weight={self.weight})"


def with_action_terms(cost: Cost, action_weight: float = 0.0, smooth_weight: float = 0.0) -> Cost:
    """``cost`` plus the action-only terms (:class:`ActionMagnitudeCost`, :class:`ActionSmoothnessCost`)
    whose weights are > 0: the same for a world model's cost and an oracle's."""
    if action_weight:
        cost = cost + ActionMagnitudeCost(action_weight)
    if smooth_weight:
        cost = cost + ActionSmoothnessCost(smooth_weight)
    return cost


def latent_goal_cost(
    goal: Tensor | None = None,
    metric: str = "l1",
    reduction: str = "final",
    discount: float = 1.0,
    action_weight: float = 0.0,
    action_p: float = 2.0,
) -> Cost:
    """Factory for configs: a :class:`LatentGoalCost`, plus an action penalty when ``action_weight > 0``."""
    if not action_weight >= 0:
        raise ValueError(f"action_weight={action_weight}; expected >= 0 (0: no action penalty)")
    cost: Cost = LatentGoalCost(goal, metric, reduction, discount)
    if action_weight > 0:
        cost = cost + ActionMagnitudeCost(action_weight, action_p)
    return cost
