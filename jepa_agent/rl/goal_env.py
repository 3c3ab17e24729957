"""``LatentGoalEnv``: a pixel task as a goal-conditioned env in the world model's planning space, for HER.

SAC + ``HerReplayBuffer`` need a goal env: a Dict observation ``observation`` / ``achieved_goal`` /
``desired_goal`` and a vectorised ``compute_reward(achieved_goal, desired_goal, info)`` that reproduces
the step reward. Here all three are features of the planning space (:class:`PlanningSpace`): the
observed frame's (``observation``, ``achieved_goal``) and the goal image's (``desired_goal``, from the
env's ``render_goal()`` at every reset). The frozen encoder runs here, once per step, not inside the
policy's networks (where SAC would run it on five batches per update, in three copies).

It composes the pixel env instead of wrapping it, so it is its own ``unwrapped`` and SB3's ``check_env``
runs its goal-env checks (they look for ``env.unwrapped.compute_reward``). It never terminates on
success (HER relabels goals; an episode cut at success would bias it): ``terminated`` is the pixel env's
own (never, for our tasks) and episodes end by the pixel env's ``TimeLimit``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from jepa_agent.costs import CostConfig
from jepa_agent.rl.space import GOAL_METHOD, PlanningSpace, check_image_size, goal_image_fn
from jepa_agent.world_model import WorldModel


def pixel_spaces(observation_space: spaces.Space, what: str, proprio: bool) -> spaces.Dict:
    """Check that ``observation_space`` is our tasks' Dict (``pixels`` and, when asked, ``proprio``)."""
    keys = list(observation_space.spaces) if isinstance(observation_space, spaces.Dict) else None
    if keys is None or "pixels" not in keys:
        raise ValueError(
            f"{what} observes {observation_space}; expected a Dict with 'pixels' (uint8 [H, W, 3]), as "
            "envs.make_env(...) gives"
        )
    if proprio and "proprio" not in keys:
        raise ValueError(f"proprio=True but {what} observes only {keys}; expected a 'proprio' entry")
    return observation_space


def checked_pixel_space(
    model: WorldModel,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    env_id: str | None,
    what: str,
    proprio: bool,
) -> spaces.Dict:
    """The checks every wrapper makes before encoding an env's frames (one clear line each): pixels (and
    proprio when asked) in the observation, of the model's image size, and the model's env and action size;
    returns the pixel entries' space."""
    pixel_space = pixel_spaces(observation_space, what, proprio)
    check_image_size(model, pixel_space["pixels"].shape, what)
    model.check_compatible(env_id=env_id, action_dim=int(np.prod(action_space.shape)))
    return pixel_space


def goal_observation_space(space: PlanningSpace, pixel_space: spaces.Dict, proprio: bool) -> spaces.Dict:
    """``observation`` (features, + proprio), ``achieved_goal`` and ``desired_goal`` (features)."""
    feats = space.box()
    obs = feats
    if proprio:
        p = pixel_space["proprio"]
        low = np.concatenate([feats.low, p.low.reshape(-1)]).astype(np.float32)
        high = np.concatenate([feats.high, p.high.reshape(-1)]).astype(np.float32)
        obs = spaces.Box(low, high, dtype=np.float32)
    return spaces.Dict({"observation": obs, "achieved_goal": feats, "desired_goal": space.box()})


class LatentGoalEnv(gym.Env):
    """A pixel env with goal images seen through a world model's planning space (see the module docstring).

    Args:
        env: a pixel env of this library (``envs.make_env(...)``): Dict observations with ``pixels``
            (uint8 ``[S, S, 3]``, ``S`` the model's image size) and ``proprio``, a goal-image method,
            and ``info["is_success"]``.
        model: the world model whose planning space is used.
        space: ``auto`` | ``metric`` | ``readout`` | ``latent`` (as ``cost.space``).
        metric: the distance in that space (default: the planning cost's).
        reward: ``dense`` (``-distance``) or ``sparse`` (``-(distance > epsilon)``).
        epsilon: the sparse reward's radius (required for ``sparse``).
        proprio: append the env's proprio to ``observation`` (a labelled input; off by default).
        goal_method: the env method returning the goal image.

    ``info`` carries the pixel env's own (``is_success`` ...) plus ``planning_distance`` and
    ``env_reward`` (the pixel env's reward, which the latent reward replaces).

    Raises:
        ValueError: an env without pixels or a goal-image method, pixels of another size than the model's,
            a model of another env or action size, or a cost space the model lacks (one line each).
    """

    def __init__(
        self,
        env: gym.Env,
        model: WorldModel,
        *,
        space: str = "auto",
        metric: str = CostConfig.metric,
        reward: str = "dense",
        epsilon: float | None = None,
        proprio: bool = False,
        goal_method: str = GOAL_METHOD,
        latent_weight: float = 0.0,
    ) -> None:
        spec = getattr(env, "spec", None)
        what = f"env {spec.id!r}" if spec is not None else f"env {type(env.unwrapped).__name__}"
        env_id = spec.id if spec is not None else None
        obs_space, act_space = env.observation_space, env.action_space
        pixel_space = checked_pixel_space(model, obs_space, act_space, env_id, what, proprio)
        self.env = env
        self.planning = PlanningSpace(model, space, metric, reward, epsilon, latent_weight=latent_weight)
        self.proprio = proprio
        self._render_goal = goal_image_fn(env, goal_method)
        self.action_space = env.action_space
        self.observation_space = goal_observation_space(self.planning, pixel_space, proprio)
        self.metadata = dict(getattr(env, "metadata", {}))
        self.render_mode = getattr(env, "render_mode", None)
        self._goal = np.zeros(self.planning.dim, np.float32)

    def _observation(self, obs: dict[str, np.ndarray], achieved: np.ndarray) -> dict[str, np.ndarray]:
        observation = achieved
        if self.proprio:
            observation = np.concatenate([achieved, np.asarray(obs["proprio"], np.float32).reshape(-1)])
        return {
            "observation": observation,
            "achieved_goal": achieved.copy(),
            "desired_goal": self._goal.copy(),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset the pixel env (its goal too) and encode the first frame and the goal image together."""
        super().reset(seed=seed)
        obs, info = self.env.reset(seed=seed, options=options)
        if "is_success" not in info:
            raise ValueError(f"the env's info has keys {sorted(info)}; expected 'is_success' (task success)")
        goal_image = np.asarray(self._render_goal())
        check_image_size(self.planning.model, goal_image.shape, "the goal image")
        feats = self.planning.features(np.stack([obs["pixels"], goal_image]))  # [2, F]: frame, goal
        self._goal = feats[1]
        info = dict(info, planning_distance=float(self.planning.distance(feats[0], self._goal)))
        return self._observation(obs, feats[0]), info

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Step the pixel env; reward = ``compute_reward`` of the new frame's features and the goal's."""
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        achieved = self.planning.features(obs["pixels"][None])[0]  # [F]
        info = dict(info, env_reward=float(env_reward))
        info["planning_distance"] = float(self.planning.distance(achieved, self._goal))
        reward = float(self.compute_reward(achieved, self._goal, info))
        return self._observation(obs, achieved), reward, bool(terminated), bool(truncated), info

    def compute_reward(
        self, achieved_goal: np.ndarray, desired_goal: np.ndarray, info: Any = None
    ) -> np.ndarray:
        """Reward of features ``[F]`` or ``[B, F]`` -> float32 ``[]`` or ``[B]`` (``info`` is unused)."""
        return self.planning.reward(achieved_goal, desired_goal)

    def goal_image(self) -> np.ndarray:
        """The current goal image (uint8 ``[S, S, 3]``), rendered by the pixel env."""
        return np.asarray(self._render_goal())

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()
        super().close()
