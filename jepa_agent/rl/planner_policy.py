"""``PlannerPolicy``: the MPC agent behind SB3's ``predict()``, so SB3's ``evaluate_policy`` runs it.

SB3 accepts any object with ``predict(observation, state, episode_start, deterministic) -> (actions,
state)`` (``type_aliases.PolicyPredictor``) and always hands it a batch, one row per env of a VecEnv.
This policy keeps one :class:`~jepa_agent.agent.MPCAgent` per row: its short-term memory, action queue
and warm start are that env's episode, exactly as ``scripts/plan.py`` runs one agent per episode.

**The goal.** ``plan.py`` resets its agent with ``{"image": env.unwrapped.render_goal()}`` after each
``env.reset``. A policy sees only observations, and a VecEnv auto-resets (new goal included) inside
``step``, so the goal image travels in the observation: wrap every env in
:class:`~jepa_agent.rl.goal_image.GoalImageObservation`, which adds ``goal_pixels``. Row ``i``'s agent is
reset towards ``observation["goal_pixels"][i]`` when ``episode_start[i]`` is set, and also when that row
has no goal yet or its goal image changed (so a caller that passes no ``episode_start`` still plans
towards the right goal). Holding no VecEnv handle, the policy works with any VecEnv.

The planner's own state stays in the agents, so ``state`` is returned as None. ``deterministic`` is
accepted for the protocol: CEM / MPPI sample from torch's global generator (seed it for repeatable runs).
Rows are planned one after another (as ``plan.py`` does), not batched across envs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from gymnasium import spaces

from jepa_agent.agent import MPCAgent, PlanningModel
from jepa_agent.rl.goal_image import GOAL_KEY


def _channel_last(x: np.ndarray) -> np.ndarray:
    """Frames ``[B, H, W, 3]`` as they are; channel-first ones (``VecTransposeImage``) transposed."""
    if x.ndim == 4 and x.shape[-1] != 3 and x.shape[1] == 3:
        return x.transpose(0, 2, 3, 1)  # [B, H, W, 3]
    return x


class PlannerPolicy:
    """One MPC agent per env behind SB3's ``predict`` (see the module docstring).

    Args:
        make_agent: builds a fresh agent (called once per env row), e.g.
            ``lambda: MPCAgent(model, CEMPlanner(action_dim=2))`` (the agents may share the model).
        goal_key: the observation entry holding each env's goal image.
    """

    def __init__(self, make_agent: Callable[[], MPCAgent], goal_key: str = GOAL_KEY) -> None:
        if not callable(make_agent):
            raise TypeError(f"make_agent must build an MPCAgent; got {type(make_agent).__name__}")
        self.make_agent, self.goal_key = make_agent, goal_key
        self.agents: list[MPCAgent] = []
        self._goals: list[np.ndarray | None] = []

    @classmethod
    def from_config(
        cls,
        model: PlanningModel,
        action_space: spaces.Box,
        cfg: Mapping[str, Any] | None = None,
        goal_key: str = GOAL_KEY,
    ) -> PlannerPolicy:
        """Agents built as ``scripts/plan.py`` builds its own (``jepa_agent.planning.build_agent``).

        Args:
            model: the planning model (e.g. ``WorldModel.from_checkpoint(...)``).
            action_space: the env's action space (its bounds clamp the executed actions).
            cfg: a config with ``planner``, ``agent`` and ``cost`` nodes, e.g.
                ``compose_config("plan", ["planner.population=300"])``; None: ``plan.py``'s defaults.
            goal_key: as the constructor.
        """
        from omegaconf import DictConfig, OmegaConf

        from jepa_agent.config import compose_config
        from jepa_agent.planning import build_agent

        cfg = compose_config("plan") if cfg is None else cfg
        cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        missing = [k for k in ("planner", "agent", "cost") if k not in cfg]
        if missing:
            raise ValueError(
                f"cfg lacks {missing}; expected a config with planner, agent and cost (plan.yaml)"
            )
        return cls(
            lambda: build_agent(model, cfg["planner"], cfg["agent"], cfg["cost"], action_space), goal_key
        )

    def reset(self) -> None:
        """Forget every env's episode (the next ``predict`` resets each row towards its goal)."""
        self._goals = [None] * len(self._goals)

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Actions ``[n_envs, A]`` (or ``[A]`` for one unbatched observation) and ``None`` as the state.

        Args:
            observation: ``pixels`` uint8 ``[n_envs, S, S, 3]`` (or ``[S, S, 3]``), the goal images under
                ``goal_key``, and whatever else the model reads (``proprio``).
            state: ignored (the agents keep their own memory).
            episode_start: ``[n_envs]`` bool, True where an episode begins: that row's agent is reset.
            deterministic: ignored (see the module docstring).
        """
        if (
            not isinstance(observation, Mapping)
            or "pixels" not in observation
            or self.goal_key not in observation
        ):
            keys = sorted(observation) if isinstance(observation, Mapping) else type(observation).__name__
            raise ValueError(
                f"observation has {keys}; PlannerPolicy needs 'pixels' and the goal image {self.goal_key!r}: "
                "wrap each env in jepa_agent.rl.GoalImageObservation"
            )
        single = np.asarray(observation["pixels"]).ndim == 3
        batch = {k: np.asarray(v)[None] if single else np.asarray(v) for k, v in observation.items()}
        for key in ("pixels", self.goal_key):
            batch[key] = _channel_last(batch[key])
        n = batch["pixels"].shape[0]
        starts = np.zeros(n, bool) if episode_start is None else np.asarray(episode_start, bool).reshape(-1)
        if starts.shape != (n,):
            raise ValueError(f"episode_start has {starts.size} entries for {n} observations; expected {n}")
        while len(self.agents) < n:
            self.agents.append(self.make_agent())
            self._goals.append(None)
        actions = []
        for i in range(n):
            goal = batch[self.goal_key][i]
            known = self._goals[i]
            if starts[i] or known is None or not np.array_equal(goal, known):
                self.agents[i].reset({"image": goal})
                self._goals[i] = goal.copy()
            obs_i = {k: v[i] for k, v in batch.items() if k != self.goal_key}
            actions.append(self.agents[i].act(obs_i))
        acts = np.stack(actions).astype(np.float32)  # [n, A]
        return (acts[0] if single else acts), None
