"""``WorldModelVecEnv``: the world model as an SB3 VecEnv, so a policy can train in imagination.

Each of the ``num_envs`` envs holds an imagined latent state: a rolling context of the last ``context``
latent frames and the actions between them (as the MPC agent's short-term memory holds encoded
observations). A step imagines every env's next latent in ONE predictor call (``WorldModel.rollout`` of
one step from the batch of contexts, under ``torch.inference_mode()``), then the new frame enters the
context and the oldest leaves it.

* **Starts** are real: a window of ``context`` encoded frames of a recorded episode and the actions
  between them (:class:`LatentStarts`: an episodes directory as ``scripts/collect.py`` writes it, or
  pre-encoded latents), never latents drawn from a prior (the MBPO / Dreamer recipe).
* **Goals** come from the same data (hindsight: the frame ``k`` steps after the start, in the same
  episode, ``k`` drawn from ``goal_offset``) or from goal images given by the user (one drawn per start).
* **Observations** are :class:`~jepa_agent.rl.goal_env.LatentGoalEnv`'s and
  :class:`~jepa_agent.rl.vec_encode.VecLatentEncode`'s: ``observation`` / ``achieved_goal`` /
  ``desired_goal``, features of the same :class:`~jepa_agent.rl.space.PlanningSpace` (the planning cost's
  space), so a policy trained here runs unchanged on the real env wrapped by either.
* **Reward** is the planning space's (``-distance`` or sparse), ``compute_reward`` of the stored features
  bit for bit; ``info["is_success"]`` is ``distance <= epsilon`` (the sparse reward's radius: imagined
  success, where the real wrappers report the task's own).
* **Episodes** last exactly ``horizon`` imagined steps: never terminated (HER relabels goals), truncated
  at the horizon with ``TimeLimit.truncated``, then auto-reset as ``DummyVecEnv`` does
  (``infos[i]["terminal_observation"]`` holds the last observation, against its own goal; the returned
  observation is the next episode's first; ``reset_infos[i]`` describes its start).
* **HER**: ``HerReplayBuffer`` calls ``env_method("compute_reward", achieved, desired, infos,
  indices=[0])``; it is answered by the same vectorised reward.
* **Seeding**: env ``i`` draws its starts and goals from its own generator, seeded ``seed + i`` (the
  constructor's, or ``VecEnv.seed(seed)`` at the next ``reset()``, as SB3 seeds its VecEnvs), so env ``i``
  of a batch runs as a one-env VecEnv seeded ``seed + i`` does.

Models that read proprio (``world_model.use_proprio``) are refused: their predictor would need the
imagined proprio, which ``WorldModel.rollout`` does not return.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn
from torch import Tensor

from jepa_agent.costs import CostConfig
from jepa_agent.rl.goal_env import goal_observation_space
from jepa_agent.rl.space import PlanningSpace, check_image_size
from jepa_agent.training.latent_cache import window_starts
from jepa_agent.world_model import Context, WorldModel


@dataclass
class LatentStarts:
    """Encoded recorded episodes: where imagined episodes start, and their hindsight goals.

    Every frame's latent, episodes concatenated. Build it with :meth:`from_episodes` (encodes an episodes
    directory) or :meth:`from_latents` (pre-encoded).

    Attributes:
        z: ``[F, N, D]`` latents as ``WorldModel.encode_pixels`` gives them (pooled and normalised).
        actions: ``[F, A]`` env-unit actions; row ``t`` is the action taken after frame ``t`` (the last row
            of each episode is padding).
        starts / lengths: each episode's first row in ``z`` and its number of frames.
        action_low / action_high: the action box of the recorded env (``[A]``).
        env_id / image_size: what the frames were recorded from (checked against the model when known).
    """

    z: Tensor
    actions: Tensor
    starts: list[int]
    lengths: list[int]
    action_low: np.ndarray
    action_high: np.ndarray
    env_id: str | None = None
    image_size: int | None = None

    @property
    def num_episodes(self) -> int:
        return len(self.lengths)

    def window_starts(self, window: int) -> np.ndarray:
        """Rows of ``z`` where ``window`` frames fit inside one episode (``int64 [W]``)."""
        return window_starts(self.starts, self.lengths, window).numpy()

    @classmethod
    def from_latents(
        cls,
        latents: Sequence[Tensor | np.ndarray],
        actions: Sequence[Tensor | np.ndarray],
        action_low: float | np.ndarray = -1.0,
        action_high: float | np.ndarray = 1.0,
        env_id: str | None = None,
        image_size: int | None = None,
    ) -> LatentStarts:
        """Pre-encoded episodes: ``latents[e]`` ``[T_e, N, D]`` (as ``encode_pixels`` gives) and
        ``actions[e]`` ``[T_e - 1, A]`` (env units).

        Raises:
            ValueError: no episodes, or shapes that do not agree (naming the episode).
        """
        if len(latents) == 0:
            raise ValueError("no episodes: expected at least one episode's latents [T, N, D]")
        if len(latents) != len(actions):
            raise ValueError(f"{len(latents)} episodes of latents but {len(actions)} of actions")
        zs, acts, lengths = [], [], []
        for e, (z, a) in enumerate(zip(latents, actions, strict=True)):
            z = torch.as_tensor(np.asarray(z) if not isinstance(z, Tensor) else z, dtype=torch.float32)
            a = torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a, dtype=torch.float32)
            if z.dim() != 3 or z.shape[0] < 1:
                raise ValueError(f"episode {e}: latents of shape {tuple(z.shape)}; expected [T, N, D]")
            if a.dim() != 2 or a.shape[0] != z.shape[0] - 1:
                raise ValueError(
                    f"episode {e}: actions of shape {tuple(a.shape)} for {z.shape[0]} frames; "
                    f"expected [{z.shape[0] - 1}, A]"
                )
            zs.append(z.cpu())
            acts.append(torch.cat([a.cpu(), a.new_zeros(1, a.shape[1])]))  # [T, A]: padded last row
            lengths.append(int(z.shape[0]))
        if len({tuple(z.shape[1:]) for z in zs}) > 1 or len({a.shape[1] for a in acts}) > 1:
            raise ValueError("episodes disagree on the latent shape [N, D] or the action size")
        dim = acts[0].shape[1]
        low = np.broadcast_to(np.asarray(action_low, np.float32), (dim,)).copy()
        high = np.broadcast_to(np.asarray(action_high, np.float32), (dim,)).copy()
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
        return cls(torch.cat(zs), torch.cat(acts), starts, lengths, low, high, env_id, image_size)

    @classmethod
    def from_episodes(
        cls,
        model: WorldModel,
        episodes: str | os.PathLike | Any,
        split: str | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 256,
        progress: bool = False,
    ) -> LatentStarts:
        """Encode every frame of recorded episodes once with ``model``'s encoder (batched).

        Args:
            model: the world model whose encoder, pooler and normaliser encode the frames.
            episodes: an episodes directory (``scripts/collect.py``), or an object with ``num_episodes``
                and ``episode(i)`` (``frames`` uint8 ``[T, H, W, 3]``, ``action`` ``[T-1, A]``), e.g.
                :class:`~jepa_agent.data.EpisodeDataset`.
            split, val_fraction: which episodes of a directory (``EpisodeDataset``'s split: ``"train"``
                leaves out the world model's held-out episodes).
            batch_size: frames per encoder call.
            progress: a tqdm bar over episodes (stderr).

        Raises:
            DataError: a missing or empty directory, or no readable episode (naming the directory).
            ValueError: episodes of another env, image size or action size than the model's (naming both).
        """
        from tqdm.auto import tqdm

        from jepa_agent.data import EpisodeDataset

        source = episodes
        if isinstance(episodes, (str, os.PathLike)):
            source = EpisodeDataset(episodes, window=1, split=split, val_fraction=val_fraction, cache=False)
        meta = dict(getattr(source, "meta", None) or {})
        box = meta.get("action_space") or {}
        a_dim = int(np.prod(box["shape"])) if "shape" in box else None
        model.check_compatible(env_id=meta.get("env_id"), image_size=meta.get("image_size"), action_dim=a_dim)
        if source.num_episodes < 1:
            raise ValueError(f"{episodes!r} holds no episodes")
        latents, actions = [], []
        for i in tqdm(range(source.num_episodes), desc="encode starts", disable=not progress, leave=False):
            ep = source.episode(i)
            frames = np.asarray(ep["frames"])
            check_image_size(model, frames.shape[1:], f"episode {i}")
            with torch.inference_mode():
                z = model.encode_pixels(frames, batch_size=batch_size)  # [T, N, D]
            latents.append(z.float().cpu().clone())  # a normal tensor (not an inference-mode one)
            actions.append(np.asarray(ep["action"], np.float32))
        return cls.from_latents(
            latents,
            actions,
            box.get("low", -1.0),
            box.get("high", 1.0),
            env_id=meta.get("env_id"),
            image_size=meta.get("image_size", model.image_size),
        )


def _goal_offsets(goal_offset: int | tuple[int, int] | None, horizon: int) -> tuple[int, int]:
    """``goal_offset`` (an int ``k`` or an inclusive range ``(lo, hi)``; None: ``(1, horizon)``) checked."""
    if goal_offset is None:
        return 1, horizon
    pair = (goal_offset, goal_offset) if np.isscalar(goal_offset) else tuple(goal_offset)
    ok = len(pair) == 2 and all(isinstance(k, (int, np.integer)) for k in pair) and 1 <= pair[0] <= pair[1]
    if not ok:
        raise ValueError(
            f"goal_offset={goal_offset!r}: expected an int k >= 1 or a range (lo, hi) with 1 <= lo <= hi "
            "(the goal is the frame k steps after the start)"
        )
    return int(pair[0]), int(pair[1])


class WorldModelVecEnv(VecEnv):
    """The world model as an SB3 VecEnv over imagined latents (see the module docstring).

    Args:
        model: the world model (its predictor imagines; its planning space observes and rewards).
        starts: :class:`LatentStarts`, or an episodes directory (encoded with
            :meth:`LatentStarts.from_episodes`).
        epsilon: the success radius in the planning space's ``metric`` units: ``info["is_success"]`` is
            ``distance <= epsilon``, and the sparse reward's radius (as :class:`LatentGoalEnv`'s).
        num_envs: imagined envs stepped together (one predictor call per step for all).
        horizon: imagined steps per episode (>= 1); episodes are truncated there.
        goal_offset: hindsight goals: the frame ``k`` steps after the start frame, ``k`` an int or drawn
            uniformly from an inclusive range ``(lo, hi)``; None: ``(1, horizon)``.
        goal_images: goals given as images instead (uint8 ``[G, S, S, 3]`` or ``[S, S, 3]``, ``S`` the
            model's image size); one is drawn per episode.
        context: latent frames the predictor sees (>= 1; at most its ``max_steps``): starts are windows of
            that many recorded frames, and the last ``context`` imagined ones are kept. None: the model's
            ``context_frames`` (what it was trained to imagine from; the MPC agent's default memory).
        space, metric, reward: as :class:`~jepa_agent.rl.goal_env.LatentGoalEnv`.
        seed: env ``i``'s generator is seeded ``seed + i`` (None: fresh entropy).

    Raises:
        ValueError: a model of another env / image / action size than the episodes, a proprio model,
            ``horizon < 1``, ``num_envs < 1``, a bad ``goal_offset`` or one longer than every episode,
            goal images of another size than the model's, ``epsilon <= 0``, or a context the predictor
            cannot take (one line each).
        DataError: a missing or empty episodes directory.
    """

    render_mode: str | None = None  # read by VecEnv.__init__ (through get_attr) before anything else

    def __init__(
        self,
        model: WorldModel,
        starts: LatentStarts | str | os.PathLike,
        *,
        epsilon: float,
        num_envs: int = 16,
        horizon: int = 15,
        goal_offset: int | tuple[int, int] | None = None,
        goal_images: np.ndarray | None = None,
        context: int | None = None,
        space: str = "auto",
        metric: str = CostConfig.metric,
        reward: str = "dense",
        seed: int | None = None,
        latent_weight: float = 0.0,
    ) -> None:
        if model.action_chunk != 1:
            raise ValueError(
                f"this world model steps action_chunk={model.action_chunk} env steps at a time; imagination "
                "trains policies of single env actions: use a model trained with action_chunk=1"
            )
        context = model.context_frames if context is None else context
        for name, value in (("num_envs", num_envs), ("horizon", horizon), ("context", context)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r}: expected an int >= 1")
        if epsilon is None or not float(epsilon) > 0:
            raise ValueError(
                f"epsilon={epsilon!r}: expected the success radius > 0 in {metric} units (info['is_success'] "
                "is distance <= epsilon); calibrate it on data, e.g. the distance at the task's is_success"
            )
        if model.predictor.proprio_dim:
            raise ValueError(
                "this world model reads proprio (world_model.use_proprio=true): imagination would need the "
                "predicted proprio; use a model trained without it"
            )
        if context > model.predictor.max_steps:
            raise ValueError(
                f"context={context} frames exceeds the predictor's max_steps={model.predictor.max_steps}"
            )
        if not isinstance(starts, LatentStarts):
            starts = LatentStarts.from_episodes(model, starts)
        have = (list(starts.z.shape[1:]), int(starts.actions.shape[1]))
        if have != (list(model.latent_shape), model.action_dim):
            raise ValueError(
                f"starts have latents {have[0]} and actions of size {have[1]}; the world model has latents "
                f"{list(model.latent_shape)} and action_dim={model.action_dim} "
                "(encode the episodes with this model: LatentStarts.from_episodes(model, ...))"
            )
        model.check_compatible(env_id=starts.env_id, image_size=starts.image_size)
        self.model, self.horizon, self.context = model, int(horizon), int(context)
        self.planning = PlanningSpace(
            model, space, metric, reward, float(epsilon), latent_weight=latent_weight
        )
        device = model.device
        self._z_all = starts.z.to(device)  # [F, N, D]
        self._a_all = starts.actions.to(device)  # [F, A], env units
        self._episode_starts = np.asarray(starts.starts)
        self.starts = starts
        self._goal_feats: np.ndarray | None = None
        if goal_images is not None and goal_offset is not None:
            raise ValueError("goal_offset (hindsight goals) and goal_images: pass one of them, not both")
        if goal_images is not None:
            images = np.asarray(goal_images)
            images = images[None] if images.ndim == 3 else images
            if images.ndim != 4 or len(images) < 1:
                raise ValueError(f"goal_images of shape {list(images.shape)}; expected uint8 [G, S, S, 3]")
            check_image_size(model, images.shape[1:], "a goal image")
            self._goal_feats = self.planning.features(images)  # [G, F]
            self.goal_range = (0, 0)
            self._firsts = [starts.window_starts(self.context)]
            if not len(self._firsts[0]):
                raise ValueError(
                    f"context={context} frames but the longest episode has {max(starts.lengths)} frames"
                )
        else:
            self.goal_range = _goal_offsets(goal_offset, self.horizon)
            lo, hi = self.goal_range
            need = self.context + hi  # the context window, then the goal hi steps after its last frame
            if max(starts.lengths) < need:
                raise ValueError(
                    f"goal_offset up to {hi} steps after a {context}-frame start needs episodes of at least "
                    f"{need} frames, but the longest has {max(starts.lengths)}; lower goal_offset or horizon"
                )
            self._firsts = [starts.window_starts(self.context + k) for k in range(lo, hi + 1)]  # per k
        box = spaces.Box(starts.action_low, starts.action_high, dtype=np.float32)
        obs_space = goal_observation_space(self.planning, spaces.Dict({}), proprio=False)
        super().__init__(int(num_envs), obs_space, box)
        n, (N, D), A = self.num_envs, model.latent_shape, model.action_dim
        self._rngs = [np.random.default_rng(None if seed is None else seed + i) for i in range(n)]
        self._z = torch.zeros(n, self.context, N, D, device=device)  # [n, C, N, D] rolling context
        self._a = torch.zeros(n, self.context - 1, A, device=device)  # [n, C-1, A] normalised actions
        self._t = np.zeros(n, np.int64)  # imagined steps so far
        self._achieved = np.zeros((n, self.planning.dim), np.float32)  # [n, F]
        self._goals = np.zeros((n, self.planning.dim), np.float32)  # [n, F]
        self._actions: np.ndarray | None = None
        self._ready = False

    @property
    def epsilon(self) -> float:
        """The success radius (``info["is_success"]``, the sparse reward's): the planning space's."""
        return float(self.planning.epsilon)

    @property
    def latents(self) -> Tensor:
        """Every env's imagined context ``[num_envs, context, N, D]`` (the last frame is the current one)."""
        return self._z

    # -- starts ----------------------------------------------------------------------------------
    def _draw(self, i: int) -> tuple[int, int, int]:
        """Env ``i``'s next start: (first context row, goal row or -1, goal image or -1)."""
        rng = self._rngs[i]
        if self._goal_feats is not None:
            firsts = self._firsts[0]
            return int(firsts[rng.integers(len(firsts))]), -1, int(rng.integers(len(self._goal_feats)))
        lo, hi = self.goal_range
        k = int(rng.integers(lo, hi + 1))
        firsts = self._firsts[k - lo]
        first = int(firsts[rng.integers(len(firsts))])
        return first, first + self.context - 1 + k, -1

    @torch.inference_mode()
    def _start(self, rows: np.ndarray) -> None:
        """Start new episodes in ``rows`` (their contexts, goals, step counts and ``reset_infos``)."""
        draws = np.array([self._draw(int(i)) for i in rows], np.int64).reshape(-1, 3)  # [r, 3]
        firsts, goal_rows, goal_imgs = draws.T
        device = self._z_all.device
        idx = torch.as_tensor(firsts[:, None] + np.arange(self.context), device=device)  # [r, C] rows of z
        at = torch.as_tensor(rows, device=device)
        self._z[at] = self._z_all[idx]  # [r, C, N, D]
        if self.context > 1:
            self._a[at] = self.model.normalizer.actions(self._a_all[idx[:, :-1]])  # [r, C-1, A]
        hindsight = self._goal_feats is None
        frames = (
            torch.cat([idx[:, -1], torch.as_tensor(goal_rows, device=device)]) if hindsight else idx[:, -1]
        )
        feats = self.planning.project_latents(self._z_all[frames]).float().cpu().numpy()  # [r or 2r, F]
        r = len(rows)
        self._achieved[rows] = feats[:r]
        self._goals[rows] = feats[r:] if hindsight else self._goal_feats[goal_imgs]
        self._t[rows] = 0
        dist = self.planning.distance(self._achieved[rows], self._goals[rows])
        last = firsts + self.context - 1  # the start frame: the context's last
        episodes = np.searchsorted(self._episode_starts, firsts, side="right") - 1
        for j, i in enumerate(rows):
            e = int(episodes[j])
            frame = int(last[j] - self._episode_starts[e])
            goal = {"goal_frame": frame + int(goal_rows[j] - last[j])} if hindsight else {
                "goal_image": int(goal_imgs[j])}  # fmt: skip
            self.reset_infos[i] = {"episode": e, "frame": frame, **goal, "planning_distance": float(dist[j])}

    def _observation(self, rows: Any = slice(None)) -> dict[str, np.ndarray]:
        achieved, goals = self._achieved[rows], self._goals[rows]
        return {
            "observation": achieved.copy(),
            "achieved_goal": achieved.copy(),
            "desired_goal": goals.copy(),
        }

    # -- VecEnv ----------------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        """Start every env anew (seeded by ``seed()`` when it was called since the last reset)."""
        for i, s in enumerate(self._seeds):
            if s is not None:
                self._rngs[i] = np.random.default_rng(s)
        self._start(np.arange(self.num_envs))
        self._reset_seeds()
        self._reset_options()
        self._ready = True
        return self._observation()

    def step_async(self, actions: np.ndarray) -> None:
        a = np.asarray(actions, np.float32)
        want = (self.num_envs, *self.action_space.shape)
        if a.shape != want:
            raise ValueError(f"actions of shape {list(np.shape(actions))}; expected {list(want)}")
        if not np.all(np.isfinite(a)):
            raise ValueError("actions are not finite")
        self._actions = np.clip(a, self.action_space.low, self.action_space.high)  # as the real envs clip

    def step_wait(self) -> VecEnvStepReturn:
        """Imagine one step for every env (one predictor call), reward it, auto-reset at the horizon."""
        if not self._ready or self._actions is None:
            raise RuntimeError("WorldModelVecEnv.step() before reset() / step_async(): call reset() first")
        with torch.inference_mode():
            act = torch.as_tensor(self._actions, device=self._z.device)  # [n, A]
            ctx = Context(self._z, self._a if self.context > 1 else None)
            z_next = self.model.rollout(ctx, act[:, None])[:, 0]  # [n, N, D]
            self._achieved[:] = self.planning.project_latents(z_next).float().cpu().numpy()  # [n, F]
            self._z = torch.cat([self._z[:, 1:], z_next[:, None]], dim=1)  # [n, C, N, D]
            if self.context > 1:
                self._a = torch.cat([self._a[:, 1:], self.model.normalizer.actions(act)[:, None]], dim=1)
        self._actions = None
        self._t += 1
        rewards = self.compute_reward(self._achieved, self._goals)  # [n] float32
        dist = self.planning.distance(self._achieved, self._goals)
        dones = self._t >= self.horizon  # never terminated: truncated at the horizon
        obs = self._observation()
        infos: list[dict[str, Any]] = [
            {"is_success": bool(dist[i] <= self.epsilon), "planning_distance": float(dist[i]),
             "TimeLimit.truncated": bool(dones[i])}
            for i in range(self.num_envs)
        ]  # fmt: skip
        ended = np.flatnonzero(dones)
        if len(ended):
            for i in ended:
                infos[i]["terminal_observation"] = {k: v[i].copy() for k, v in obs.items()}
            self._start(ended)
            for k, v in self._observation(ended).items():
                obs[k][ended] = v
        return obs, rewards, dones.copy(), infos

    def compute_reward(
        self, achieved_goal: np.ndarray, desired_goal: np.ndarray, info: Any = None
    ) -> np.ndarray:
        """Reward of features ``[F]`` or ``[B, F]`` -> float32 ``[]`` or ``[B]`` (``info`` is unused)."""
        return self.planning.reward(achieved_goal, desired_goal)

    def close(self) -> None:
        self._ready = False

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The attribute of this VecEnv, once per index (the imagined envs share every attribute)."""
        value = getattr(self, attr_name)  # AttributeError when absent (VecEnv.has_attr relies on it)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set a shared attribute (for all envs at once: the imagined envs share every attribute)."""
        if len(list(self._get_indices(indices))) != self.num_envs:
            raise ValueError(
                f"set_attr({attr_name!r}) for some envs only: the imagined envs share their attributes"
            )
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of this VecEnv (e.g. HER's ``compute_reward``) once, its result once per index."""
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """No images: imagination has no decoder."""
        return [None for _ in range(self.num_envs)]
