"""Actor + short-term memory: a receding-horizon (MPC) agent over any planning model and planner.

The agent plans ``horizon`` actions in the model's state space, executes the first ``execute_steps`` of
them, and replans (warm-starting from the shifted previous plan). Its short-term memory holds the last
few encoded observations and the actions between them: the world model's context. Planning runs under
``torch.inference_mode()``.

A model whose imagined step spans ``action_chunk`` > 1 env steps (``model.action_chunk``, 1 when absent)
plans *macro-actions*: each is ``action_chunk`` env actions, concatenated (``model.action_dim`` wide),
as DINO-WM's "frameskip" does. The agent then executes a macro-action as that many env steps, observes
only at its boundaries (the frames the model steps between), and replans there.

A *planning model* supplies the four pieces the agent needs (see :class:`PlanningModel`); the JEPA
world model (``jepa_agent.world_model``) and the true-state oracle (``jepa_agent.oracle``) both do.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from jepa_agent.costs import CostConfig
from jepa_agent.utils import check_int
from planners.base import PlanResult, shift_plan


class PlanningModel(Protocol):
    """What an MPC agent needs from a model: encode, build the context, roll out, and a goal cost.

    ``action_dim`` is the width of one imagined step's action: ``action_chunk`` env actions (an optional
    attribute, 1 when absent) concatenated."""

    action_dim: int

    def encode(self, obs: dict[str, np.ndarray]) -> Any:
        """One observation -> the state the memory stores (e.g. latent tokens ``[N, D]``)."""

    def encode_goal(self, goal: dict[str, np.ndarray]) -> Any:
        """A goal dict (``image`` and/or ``state``) -> what the cost compares predictions with."""

    def context(self, states: list[Any], actions: list[Tensor]) -> Any:
        """The rollout context from memory: ``states`` (oldest first) and the actions between them."""

    def rollout(self, context: Any, actions: Tensor) -> Tensor:
        """Imagine ``actions [S, H, A]`` from ``context`` -> predicted states ``[S, H, ...]``."""

    def cost(self, goal: Any, **options: Any) -> Callable[[Tensor, Tensor], Tensor]:
        """A cost function ``(pred [S, H, ...], actions [S, H, A]) -> [S]`` towards ``goal``; ``options``
        are :class:`~jepa_agent.costs.CostConfig`'s fields (the model's defaults are that class's)."""


def planning_rollout(model: PlanningModel, cost_fn: Any) -> Callable[[Any, Tensor], Any]:
    """``model.rollout``, returning only what ``cost_fn`` reads when it names a ``rollout_projection``
    (a world model then fuses that projection into its head instead of materialising wide latents)."""
    project = getattr(cost_fn, "rollout_projection", None)
    return model.rollout if project is None else functools.partial(model.rollout, project=project)


def encode_options(model: Any, cost_options: dict[str, Any]) -> dict[str, Any]:
    """How the agent asks ``model`` to encode frames for these cost settings: ``anchor_shift`` for a model
    whose cost reads an anchor head (:class:`~jepa_agent.costs.AnchorCost`), nothing for any other."""
    if not getattr(model, "anchor_trained", False):
        return {}
    return {"anchor_shift": int(cost_options.get("anchor_shift", CostConfig.anchor_shift))}


class ShortTermMemory:
    """The last ``capacity`` encoded observations, each with the action taken after it (once known)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"memory capacity={capacity}: expected >= 1 observation")
        self.capacity = capacity
        self._entries: deque[list[Any]] = deque(maxlen=capacity)  # [state, action after it | None]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def observe(self, state: Any) -> None:
        self._entries.append([state, None])

    def acted(self, action: Tensor) -> None:
        """Record the action taken after the latest observation (it links it to the next one)."""
        if not self._entries:
            raise RuntimeError("ShortTermMemory.acted() before any observation")
        self._entries[-1][1] = action

    def snapshot(self) -> tuple[list[Any], list[Tensor]]:
        """States (oldest first) and the ``len(states) - 1`` actions between them."""
        states = [e[0] for e in self._entries]
        actions = [e[1] for e in list(self._entries)[:-1]]
        return states, actions


class MPCAgent:
    """Model-predictive control in a learned (or true) state space.

    Every default is ``scripts/plan.py``'s: ``MPCAgent(WorldModel.from_checkpoint(path),
    CEMPlanner(action_dim=2))`` plans as the script does.

    Args:
        model: a :class:`PlanningModel`.
        planner: an object with ``plan(rollout_fn, cost_fn, z0, init_mean=None) -> PlanResult``.
        horizon: planned actions per chunk (None: the planner's ``horizon``).
        execute_steps: actions executed from each plan before replanning (1 = replan every step).
        memory: observations kept as context (short-term memory); None: the model's ``context_frames``
            (what a world model was trained to imagine from; 1 for a model without the attribute). A
            world model refuses another value: its rollouts were trained from exactly that many frames.
        warm_start: start each plan from the previous plan shifted by ``execute_steps``.
        action_low / action_high: bounds of the executed actions.
        cost: the goal cost's settings (:class:`~jepa_agent.costs.CostConfig` or a dict of its fields),
            passed to ``model.cost``; None: the model's defaults (which are CostConfig's).
    """

    def __init__(
        self,
        model: PlanningModel,
        planner: Any,
        horizon: int | None = None,
        execute_steps: int = 1,
        memory: int | None = None,
        warm_start: bool = True,
        action_low: float = -1.0,
        action_high: float = 1.0,
        cost: CostConfig | Mapping[str, Any] | None = None,
    ) -> None:
        planner_horizon = getattr(planner, "horizon", None)
        if horizon is None:
            if planner_horizon is None:
                raise ValueError(f"horizon=None and the planner {type(planner).__name__} has no horizon")
            horizon = int(planner_horizon)
        elif planner_horizon is not None and planner_horizon != horizon:
            raise ValueError(
                f"horizon={horizon} but the planner plans {planner_horizon} steps; leave it None"
            )
        if not 1 <= execute_steps <= horizon:
            raise ValueError(
                f"execute_steps={execute_steps}: expected 1 <= execute_steps <= horizon={horizon}"
            )
        self.model = model
        self.planner = planner
        self.horizon = horizon
        self.execute_steps = execute_steps
        self.warm_start = warm_start
        self.action_low, self.action_high = action_low, action_high
        trained = getattr(model, "context_frames", None)
        if memory is None:
            memory = 1 if trained is None else int(trained)
        elif trained is not None and int(memory) != int(trained):
            where = getattr(model, "meta", {}).get("checkpoint", type(model).__name__)
            raise ValueError(
                f"agent.memory={memory} but the world model {where} was trained to imagine from "
                f"{trained} frame(s) (train.context={trained}): leave agent.memory unset (null) to use "
                f"{trained}, or retrain with train.context={memory}"
            )
        self.memory = ShortTermMemory(memory)
        self.chunk = model_chunk(model)
        width = getattr(model, "action_dim", None)  # checked when the model says (a PlanningModel does)
        if width is not None and width % self.chunk:
            raise ValueError(
                f"the model's actions are {width} wide, not a multiple of its action_chunk={self.chunk} env "
                "steps"
            )
        planned = getattr(planner, "action_dim", None)
        if width is not None and planned is not None and planned != width:
            raise ValueError(
                f"the planner plans {planned}-wide actions but the model takes {width} "
                f"({self.chunk} env action(s) per imagined step): make it with action_dim=model.action_dim"
            )
        if isinstance(cost, Mapping):
            unknown = sorted(set(cost) - {f.name for f in fields(CostConfig)})
            if unknown:
                raise ValueError(f"cost settings {unknown}; expected fields of CostConfig: "
                                 f"{[f.name for f in fields(CostConfig)]}")  # fmt: skip
            cost = CostConfig(**cost)  # checks the values, naming the key
        self.cost_options: dict[str, Any] = asdict(cost) if cost is not None else {}
        self.encode_options = encode_options(model, self.cost_options)
        self._queue: deque[Tensor] = deque()
        self._prev_mean: Tensor | None = None
        self._last_action: Tensor | None = None  # the action taken last (None: none yet this episode)
        self._macro: Tensor | None = None  # [chunk, A]: the env actions of the macro-action under way
        self._sub = 0  # env steps of it taken
        self._cost_fn: Callable[[Tensor, Tensor], Tensor] | None = None
        self._rollout_fn: Callable[[Any, Tensor], Any] | None = None  # set with the goal (reset)
        self.goal_encoded: Any = None
        self.last_plan: PlanResult | None = None
        self.last_plan_seconds: float | None = None
        self.plans: list[PlanResult] = []  # every plan since construction (for cost-per-iteration plots)

    def _no_grad(self):
        """``inference_mode`` (fastest) unless the planner differentiates through the model."""
        return torch.no_grad() if getattr(self.planner, "requires_grad", False) else torch.inference_mode()

    def reset(self, goal: dict[str, np.ndarray]) -> None:
        """Start an episode towards ``goal``: clear memory, the action queue and the warm start."""
        self.memory.clear()
        self._queue.clear()
        self._prev_mean = None
        self._last_action = None
        self._macro, self._sub = None, 0
        with self._no_grad():
            self.goal_encoded = self.model.encode_goal(goal, **self.encode_options)
            self._cost_fn = self.model.cost(self.goal_encoded, **self.cost_options)
            self._rollout_fn = planning_rollout(self.model, self._cost_fn)

    def plan(self) -> PlanResult:
        """Plan a chunk of ``horizon`` actions from the current memory (does not touch the queue)."""
        if self._cost_fn is None:
            raise RuntimeError("MPCAgent.plan() before reset(goal): the agent has no goal")
        states, actions = self.memory.snapshot()
        if not states:
            raise RuntimeError("MPCAgent.plan() before any observation: call act(obs)")
        init = self._prev_mean if self.warm_start else None
        with self._no_grad():  # gradient planners enable grad inside their own optimisation loop
            start = getattr(self._cost_fn, "set_start", None)
            if start is not None:  # a cost that reads the current frame itself (costs.AnchorCost)
                start(states[-1])
            last = getattr(self._cost_fn, "set_last_action", None)
            if last is not None:  # a cost that reads the action taken last (costs.ActionSmoothnessCost)
                last(self._last_action)
            context = self.model.context(states, actions)
            return self.planner.plan(self._rollout_fn, self._cost_fn, context, init_mean=init)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Observe, replan when the queue is empty, and return the next env action (numpy ``[A]``).

        With ``action_chunk`` > 1 it observes, replans and takes a macro-action only at a macro-action's
        boundary, and returns that macro-action's env actions one per call in between."""
        self.last_plan_seconds = None
        if self._sub == 0:
            with self._no_grad():
                self.memory.observe(self.model.encode(obs, **self.encode_options))
            if not self._queue:
                t0 = time.perf_counter()
                result = self.plan()
                self.last_plan_seconds = time.perf_counter() - t0
                self.last_plan = result
                self.plans.append(result)
                self._queue.extend(result.actions[: self.execute_steps])
                self._prev_mean = shift_plan(result.mean, self.execute_steps)
            action = self._queue.popleft().clamp(self.action_low, self.action_high)
            self.memory.acted(action)
            self._last_action = action
            self._macro = action.reshape(self.chunk, -1)
        action = self._macro[self._sub]
        self._sub = (self._sub + 1) % self.chunk
        return action.detach().cpu().numpy().astype(np.float32)


def model_chunk(model: Any) -> int:
    """Env steps per imagined step of ``model`` (its ``action_chunk``; 1 when it has none), checked."""
    return check_int("the model's action_chunk", getattr(model, "action_chunk", 1), 1, "env steps per step")
