"""``StateGoalEnv``: a task as a goal env on its TRUE state, the labelled baseline of the RL comparison.

The latent arms see only pixels and goal images; this one sees what the simulator knows. It is the
``observation=state`` arm of ``scripts/rl.py``: SAC (+ HER) on the true state, the reference the latent
goal env is measured against (FetchReach-style). It reads recorded states, so results that use it are
labelled ``"state_labels": true``.

* ``observation``: the simulator state (``env.unwrapped.get_state()``, float32).
* ``achieved_goal`` / ``desired_goal``, in one of two layouts, chosen from what the task offers:
  the end effector's ``xy`` and the goal's (``ee_pos()`` / ``goal_ee``: reach, Fetch's layout), or the
  leading entries of the state in the goal state's layout (``get_state()[:G]`` / ``goal_state()``: push,
  whose goal is a pose of pusher and block).
* ``compute_reward`` (vectorised, HER's): the task's own success rule between the two goals:
  ``env.unwrapped.hindsight_success`` for the state layout, the end-effector distance within
  ``success_threshold`` for the ee layout; ``sparse``: ``-(not success)``, ``dense``: ``-distance``.
  The step reward is the same function of the observed goals, bit for bit.

Like :class:`~jepa_agent.rl.goal_env.LatentGoalEnv` it composes the task env (so SB3's ``check_env`` runs
its goal-env checks), never terminates on success, and ends episodes by the task's ``TimeLimit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

STATE_REWARDS = ("sparse", "dense")


def _box(size: int) -> spaces.Box:
    return spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)


class StateGoalEnv(gym.Env):
    """A task env as a goal env on its true state (see the module docstring).

    Args:
        env: one of this library's tasks (``envs.make_env("reach")``, ``"push"``): ``get_state()``, and
            either ``ee_pos()`` / ``goal_ee`` / ``success_threshold`` or ``goal_state()`` /
            ``hindsight_success(states, goal_states)`` on ``env.unwrapped``.
        reward: ``sparse`` (``-1`` until the task's success rule holds, then ``0``) or ``dense``
            (``-distance`` in the task's units).

    Raises:
        ValueError: an unknown reward, or an env without the state methods above (one line, naming them).
    """

    def __init__(self, env: gym.Env, reward: str = "sparse") -> None:
        if reward not in STATE_REWARDS:
            raise ValueError(f"reward={reward!r}; expected one of {list(STATE_REWARDS)}")
        u = env.unwrapped
        has = lambda name: callable(getattr(u, name, None))  # noqa: E731
        if not has("get_state"):
            raise ValueError(
                f"env {type(u).__name__} has no get_state(); observation=state needs the true state "
                "(our reach and push tasks have it)"
            )
        if has("ee_pos") and hasattr(u, "goal_ee") and hasattr(u, "success_threshold"):
            self.layout = "end_effector"
            self._goals: Callable[[], tuple[np.ndarray, np.ndarray]] = lambda: (u.ee_pos(), u.goal_ee)
        elif has("goal_state") and has("hindsight_success"):
            self.layout = "state"
            size = len(np.asarray(u.goal_state()).ravel())
            self._goals = lambda: (u.get_state()[:size], u.goal_state())
        else:
            raise ValueError(
                f"env {type(u).__name__} offers no true goal: observation=state needs ee_pos() / goal_ee "
                "(reach) or goal_state() / hindsight_success(states, goal_states) (push)"
            )
        self.env, self.reward_kind = env, reward
        self.action_space = env.action_space
        achieved, _ = self._goals()
        g, s = len(np.ravel(achieved)), len(np.ravel(u.get_state()))
        self.observation_space = spaces.Dict({"observation": _box(s), "achieved_goal": _box(g),
                                              "desired_goal": _box(g)})  # fmt: skip
        self.metadata = dict(getattr(env, "metadata", {}))
        self.render_mode = getattr(env, "render_mode", None)

    def _observation(self) -> dict[str, np.ndarray]:
        achieved, desired = self._goals()
        return {
            "observation": np.asarray(self.env.unwrapped.get_state(), np.float32).ravel(),
            "achieved_goal": np.asarray(achieved, np.float32).ravel(),
            "desired_goal": np.asarray(desired, np.float32).ravel(),
        }

    def success(self, achieved_goal: np.ndarray, desired_goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The task's rule between goals ``[..., G]`` -> (distance ``[...]``, success ``[...]``)."""
        a, d = np.asarray(achieved_goal, np.float64), np.asarray(desired_goal, np.float64)
        u = self.env.unwrapped
        if self.layout == "state":
            return u.hindsight_success(a, d)
        distance = np.linalg.norm(a - d, axis=-1)
        return distance, distance <= u.success_threshold

    def compute_reward(
        self, achieved_goal: np.ndarray, desired_goal: np.ndarray, info: Any = None
    ) -> np.ndarray:
        """Reward of goals ``[G]`` or ``[B, G]`` -> float32 ``[]`` or ``[B]`` (``info`` is unused)."""
        distance, success = self.success(achieved_goal, desired_goal)
        if self.reward_kind == "sparse":
            return -(~np.asarray(success, bool)).astype(np.float32)
        return -np.asarray(distance, np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        _, info = self.env.reset(seed=seed, options=options)
        return self._observation(), info

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        _, env_reward, terminated, truncated, info = self.env.step(action)
        obs = self._observation()
        info = dict(info, env_reward=float(env_reward))
        reward = float(self.compute_reward(obs["achieved_goal"], obs["desired_goal"], info))
        return obs, reward, bool(terminated), bool(truncated), info

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()
        super().close()
