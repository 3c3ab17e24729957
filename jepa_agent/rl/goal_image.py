"""``GoalImageObservation``: the goal image as an observation entry, so that a policy sees its goal.

SB3 hands a policy nothing but the observation (``predict(observation, state, episode_start)``,
``evaluate_policy``), and a VecEnv auto-resets an env, new goal included, inside ``step``. So the goal
image travels with the observation: this wrapper adds ``goal_pixels`` (the env's ``render_goal()``,
fetched at every reset) beside ``pixels``. It works with any VecEnv (``SubprocVecEnv`` too) and gives
:class:`~jepa_agent.rl.planner_policy.PlannerPolicy` and pixel policies
(:class:`~jepa_agent.rl.extractor.JepaFeaturesExtractor`) their goal.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from jepa_agent.rl.space import GOAL_METHOD, goal_image_fn

GOAL_KEY = "goal_pixels"


class GoalImageObservation(gym.ObservationWrapper):
    """Adds ``obs[goal_key]``: the episode's goal image, uint8 like ``obs["pixels"]``.

    Args:
        env: a pixel env with Dict observations (``pixels`` uint8 ``[S, S, 3]``) and a goal-image method.
        goal_key: the new entry's name.
        goal_method: the env method returning the goal image.

    Raises:
        ValueError: no ``pixels``, ``goal_key`` already taken, no goal-image method, or a goal image of
            another shape than the frames'.
    """

    def __init__(self, env: gym.Env, goal_key: str = GOAL_KEY, goal_method: str = GOAL_METHOD) -> None:
        super().__init__(env)
        base = env.observation_space
        if not isinstance(base, spaces.Dict) or "pixels" not in base.spaces:
            raise ValueError(f"env observes {base}; expected a Dict with 'pixels' (uint8 [H, W, 3])")
        if goal_key in base.spaces:
            raise ValueError(f"goal_key={goal_key!r} is already an observation; expected a new name")
        self.goal_key = goal_key
        self._render_goal = goal_image_fn(env, goal_method)
        self.observation_space = spaces.Dict({**base.spaces, goal_key: base["pixels"]})
        self._goal: np.ndarray | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reset the env, then fetch the new episode's goal image."""
        obs, info = self.env.reset(seed=seed, options=options)
        goal = np.asarray(self._render_goal())
        want = self.observation_space[self.goal_key]
        if goal.shape != want.shape or goal.dtype != want.dtype:
            raise ValueError(
                f"the goal image is {goal.dtype} {goal.shape}; expected {want.dtype} {want.shape} "
                "like 'pixels'"
            )
        self._goal = goal
        return self.observation(obs), info

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        if self._goal is None:
            raise RuntimeError("GoalImageObservation.step() before reset(): the episode has no goal yet")
        return {**observation, self.goal_key: self._goal}
