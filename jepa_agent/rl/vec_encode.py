"""``VecLatentEncode``: :class:`~jepa_agent.rl.goal_env.LatentGoalEnv`'s transform, batched over a VecEnv.

Wraps an SB3 VecEnv of pixel envs (``DummyVecEnv`` / ``SubprocVecEnv`` of ``envs.make_env(...)``) and
gives the same goal-env observations and rewards, with one encoder call per step for all envs: their new
frames, the last frames of the episodes that just ended (``infos[i]["terminal_observation"]``, which SB3
needs for bootstrapping and HER) and the goal images of the envs that auto-reset (fetched with
``env_method("render_goal")``). An ended episode's last transition is rewarded against its own goal; the
next observation already carries the new episode's goal.

HER asks ``env.env_method("compute_reward", ..., indices=[0])``: the wrapper answers that call itself
(the pixel envs have no ``compute_reward``) with the same vectorised reward as its steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from jepa_agent.costs import CostConfig
from jepa_agent.rl.goal_env import checked_pixel_space, goal_observation_space
from jepa_agent.rl.space import GOAL_METHOD, PlanningSpace, check_image_size
from jepa_agent.world_model import WorldModel


class VecLatentEncode(VecEnvWrapper):
    """Batched latent goal observations and rewards over a VecEnv of pixel envs (see the module docstring).

    Args:
        venv: a VecEnv of pixel envs (Dict observations with ``pixels`` uint8 ``[S, S, 3]``; channel-last,
            so not under ``VecTransposeImage``), each with a goal-image method.
        model, space, metric, reward, epsilon, proprio, goal_method: as :class:`LatentGoalEnv`.

    ``infos[i]`` gains ``planning_distance`` and ``env_reward`` (the pixel env's reward, replaced).

    Raises:
        ValueError: as :class:`LatentGoalEnv` (pixels, image size, env, goal method, cost space).
    """

    def __init__(
        self,
        venv: VecEnv,
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
        spec = venv.get_attr("spec", indices=[0])[0] if venv.has_attr("spec") else None
        what = f"the VecEnv of {spec.id!r}" if spec is not None else "the VecEnv"
        env_id = spec.id if spec is not None else None
        obs_space, act_space = venv.observation_space, venv.action_space
        pixel_space = checked_pixel_space(model, obs_space, act_space, env_id, what, proprio)
        if not venv.has_attr(goal_method):
            raise ValueError(
                f"the envs of {what} have no {goal_method}() method; expected envs whose {goal_method}() "
                "returns the goal image (uint8 [H, W, 3]), or pass goal_method=<their goal-image method>"
            )
        self.planning = PlanningSpace(model, space, metric, reward, epsilon, latent_weight=latent_weight)
        self.proprio, self.goal_method = proprio, goal_method
        super().__init__(venv, observation_space=goal_observation_space(self.planning, pixel_space, proprio))
        self._goals = np.zeros((self.num_envs, self.planning.dim), np.float32)  # [n, F]

    def _goal_images(self, indices: list[int]) -> list[np.ndarray]:
        images = [np.asarray(g) for g in self.venv.env_method(self.goal_method, indices=indices)]
        for g in images:
            check_image_size(self.planning.model, g.shape, "the goal image")
        return images

    def _observation(self, achieved: np.ndarray, goals: np.ndarray, proprio: Any) -> dict[str, np.ndarray]:
        """Goal-env observation for rows ``achieved [B, F]``, ``goals [B, F]`` (``proprio [B, P]``)."""
        observation = achieved
        if self.proprio:
            p = np.asarray(proprio, np.float32).reshape(achieved.shape[0], -1)  # [B, P]
            observation = np.concatenate([achieved, p], axis=1)
        return {"observation": observation, "achieved_goal": achieved.copy(), "desired_goal": goals.copy()}

    def reset(self) -> VecEnvObs:
        """Reset every env; encode the first frames and the goal images in one call."""
        obs = self.venv.reset()
        n = self.num_envs
        goals = self._goal_images(list(range(n)))
        feats = self.planning.features(np.concatenate([obs["pixels"], np.stack(goals)]))  # [2n, F]
        self._goals = feats[n:].copy()
        return self._observation(feats[:n], self._goals, obs.get("proprio"))

    def step_wait(self) -> VecEnvStepReturn:
        """Step every env; one encoder call for new frames, ended episodes' last frames and new goals."""
        obs, env_rewards, dones, infos = self.venv.step_wait()
        n = self.num_envs
        ended = [i for i in np.flatnonzero(dones) if "terminal_observation" in infos[i]]
        last = [infos[i]["terminal_observation"]["pixels"] for i in ended]
        new_goals = self._goal_images(ended) if ended else []
        frames = np.concatenate([obs["pixels"], *(np.stack(x) for x in (last, new_goals) if len(x))])
        feats = self.planning.features(frames)  # [n + 2k, F]: new frames, last frames, new goals
        k = len(ended)
        achieved = feats[:n].copy()  # the frame each action led to: the last one where an episode ended
        achieved[ended] = feats[n : n + k]
        rewards = self.planning.reward(achieved, self._goals)  # [n], against each episode's own goal
        distances = self.planning.distance(achieved, self._goals)
        for j, i in enumerate(ended):
            term = infos[i]["terminal_observation"]
            term_obs = self._observation(feats[n + j][None], self._goals[i][None], term.get("proprio"))
            infos[i]["terminal_observation"] = {key: v[0] for key, v in term_obs.items()}
        for i in range(n):
            infos[i]["env_reward"] = float(env_rewards[i])
            infos[i]["planning_distance"] = float(distances[i])
        self._goals[ended] = feats[n + k :]
        return self._observation(feats[:n], self._goals, obs.get("proprio")), rewards, dones, infos

    def compute_reward(
        self, achieved_goal: np.ndarray, desired_goal: np.ndarray, info: Any = None
    ) -> np.ndarray:
        """Reward of features ``[F]`` or ``[B, F]`` -> float32 ``[]`` or ``[B]`` (``info`` is unused)."""
        return self.planning.reward(achieved_goal, desired_goal)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """``compute_reward`` is answered here (HER's call); any other method goes to the pixel envs."""
        if method_name == "compute_reward":
            reward = self.compute_reward(*method_args, **method_kwargs)
            return [reward for _ in self._get_indices(indices)]
        return self.venv.env_method(method_name, *method_args, indices=indices, **method_kwargs)
