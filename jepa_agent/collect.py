"""Collect episodes from our envs with scripted policies, several envs in parallel, into a dataset.

Episode ``i`` of a run is fully determined by ``seed + i``: the env is reset with that seed and the
policy draws from its own generator seeded from it, whichever worker runs it. Re-running the same
command therefore resumes: finished episodes are kept untouched and only the missing ones are
computed (see :class:`~jepa_agent.data.EpisodeWriter` for the on-disk guarantees). With ``branches``
(several continuations of each recorded state), episodes come in groups that share a reset seed
(:func:`episode_plan`).

Parallelism: ``gymnasium.vector.AsyncVectorEnv`` in ``autoreset_mode=DISABLED``; each finished env
is reset explicitly with the next episode's seed (``reset_mask``), so no frame of one episode can
leak into another. Workers are forked, or started through a ``forkserver`` once this process has
rendered with EGL (a child forked after that deadlocks). Finished episodes are encoded by a small
thread pool (each ``ffmpeg`` encode is its own process), so stepping never waits for encoding.

Worker processes import this module, so its top-level imports stay free of torch (a 2 s import).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

# ------------------------------------------------------------------------------------- policies


class RandomPolicy:
    """Uniform random actions in the action box."""

    env_keys: tuple[str, ...] = ()  # what it needs from RecordingWrapper.env_info besides the action box

    def __init__(self, low: np.ndarray, high: np.ndarray, rng: np.random.Generator, **_: Any) -> None:
        self.low, self.high, self.rng = np.asarray(low), np.asarray(high), rng

    def __call__(self, proprio: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


def _check_segments(smoothing: float, retarget_min: int, retarget_max: int) -> None:
    """The settings the segment-based policies share: AR(1) noise correlation and segment lengths."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing={smoothing!r}: expected a number in [0, 1)")
    if not 1 <= retarget_min <= retarget_max:
        raise ValueError(
            f"retarget_min={retarget_min}, retarget_max={retarget_max}: expected 1 <= min <= max"
        )


def _ar1(rng: np.random.Generator, eps: np.ndarray, rho: float, std: float) -> np.ndarray:
    """One step of AR(1) noise with correlation ``rho`` and stationary standard deviation ``std``."""
    return rho * eps + np.sqrt(1 - rho**2) * std * rng.standard_normal(len(eps))


class NoisyTargetPolicy:
    """Scripted motion towards random joint targets plus smoothed noise, for state-space coverage.

    ``action = clip(gain * (target - q) / max_delta + noise, low, high)`` with ``q`` the first ``n``
    proprio entries (joint angles). A new target is drawn uniformly within ``target_span`` rad of ``q``
    (clipped to the joint ranges when known) every ``retarget_min..retarget_max`` steps, so
    episodes mix saturated moves with fine approaches (start poses are random already);
    the noise is an AR(1) process with standard deviation ``noise`` and correlation ``smoothing``.
    With probability ``hold_prob`` a segment holds still instead: its target is the current pose and its
    noise ``hold_noise``, so the data shows what (almost) no action does -- what a planner does once it has
    arrived. Without such segments the world model imagines the arm drifting under zero action, and the
    agent wanders around the goal it reached.
    """

    env_keys = ("max_delta", "joint_low", "joint_high")

    def __init__(
        self,
        low: np.ndarray,
        high: np.ndarray,
        rng: np.random.Generator,
        max_delta: float,
        joint_low: np.ndarray | None = None,
        joint_high: np.ndarray | None = None,
        gain: float = 1.0,
        noise: float = 0.3,
        smoothing: float = 0.7,
        retarget_min: int = 4,
        retarget_max: int = 12,
        target_span: float = 1.5,
        hold_prob: float = 0.0,
        hold_noise: float = 0.02,
    ) -> None:
        _check_segments(smoothing, retarget_min, retarget_max)
        if not max_delta > 0:
            raise ValueError(f"max_delta={max_delta!r}: expected > 0 (rad per unit action)")
        if not (noise >= 0 and target_span >= 0 and hold_noise >= 0):
            raise ValueError(
                f"noise={noise!r}, target_span={target_span!r}, hold_noise={hold_noise!r}: expected all >= 0"
            )
        if not 0.0 <= hold_prob <= 1.0:
            raise ValueError(f"hold_prob={hold_prob!r}: expected a probability in [0, 1]")
        self.low, self.high, self.rng = np.asarray(low), np.asarray(high), rng
        self.n = len(self.low)
        self.max_delta, self.gain, self.noise, self.smoothing = float(max_delta), gain, noise, smoothing
        self.joint_low = None if joint_low is None else np.asarray(joint_low, np.float64)
        self.joint_high = None if joint_high is None else np.asarray(joint_high, np.float64)
        self.retarget = (int(retarget_min), int(retarget_max))
        self.target_span = float(target_span)
        self.hold_prob, self.hold_noise = float(hold_prob), float(hold_noise)
        self._holding = False
        self._eps = np.zeros(self.n)
        self._target: np.ndarray | None = None
        self._countdown = 0

    def __call__(self, proprio: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        q = np.asarray(proprio[: self.n], np.float64)  # joint angles
        if self._countdown <= 0 or self._target is None:
            # drawn only when holding is possible, so hold_prob=0 replays the older datasets' noise exactly
            self._holding = self.hold_prob > 0 and bool(self.rng.uniform() < self.hold_prob)
            offset = 0.0 if self._holding else self.rng.uniform(-self.target_span, self.target_span, self.n)
            target = q + offset
            if self.joint_low is not None and self.joint_high is not None:
                target = np.clip(target, self.joint_low, self.joint_high)  # inf bounds: no-op
            self._target = target
            self._countdown = int(self.rng.integers(self.retarget[0], self.retarget[1] + 1))
            if self._holding:
                self._eps = np.zeros(self.n)
        self._countdown -= 1
        self._eps = _ar1(
            self.rng, self._eps, self.smoothing, self.hold_noise if self._holding else self.noise
        )
        action = self.gain * (self._target - q) / self.max_delta + self._eps
        return np.clip(action, self.low, self.high).astype(np.float32)


class TorqueTargetPolicy:
    """Data for a torque-driven arm (``JepaAgent/ReachTorque-v0``): PD moves to random joint targets, with
    smoothed torque noise and coasting.

    Each segment (``retarget_min..retarget_max`` steps) is one of:

    * a move (the rest): ``torque = clip(kp * (target - q) - kd * qdot + noise, low, high)`` with ``q, qdot``
      the proprio's joint angles and velocities and the target drawn within ``target_span`` rad of ``q``.
      The gains vary per segment (``kp`` in ``kp_range``) so the arm arrives fast and overshoots, or
      slowly and stops;
    * with probability ``coast_prob``, zero torque plus ``coast_noise``: the arm glides to rest, which shows
      the world model what velocity alone does (and what standing still looks like);
    * with probability ``random_prob``, smoothed random torques (AR(1), std ``noise * 3``): fast swings
      through the whole speed range;
    * with probability ``settle_prob``, a small move: a target within ``settle_span`` rad, the same PD law
      with the velocity gain ``settle_kd`` and noise ``settle_noise``. The arm makes a short move and
      stops: fine control near rest, where a goal must be stopped at;
    * with probability ``jitter_prob``, the same small move plus torques that flip sign every step, of a
      size drawn per segment and joint up to ``jitter_amp``: the arm swings out and back between frames that
      show nearly the same pose, the state a dithering planner leaves it in.
    """

    env_keys = ("joint_low", "joint_high")

    def __init__(
        self,
        low: np.ndarray,
        high: np.ndarray,
        rng: np.random.Generator,
        joint_low: np.ndarray | None = None,
        joint_high: np.ndarray | None = None,
        kp_range: tuple[float, float] = (1.0, 6.0),
        kd: float = 0.3,
        noise: float = 0.2,
        smoothing: float = 0.7,
        retarget_min: int = 4,
        retarget_max: int = 15,
        target_span: float = 1.5,
        coast_prob: float = 0.2,
        coast_noise: float = 0.02,
        random_prob: float = 0.15,
        settle_prob: float = 0.0,
        settle_span: float = 0.2,
        settle_kd: float = 0.3,
        settle_noise: float = 0.05,
        jitter_prob: float = 0.0,
        jitter_amp: float = 1.0,
    ) -> None:
        _check_segments(smoothing, retarget_min, retarget_max)
        if not (0 < kp_range[0] <= kp_range[1] and kd >= 0 and noise >= 0 and coast_noise >= 0):
            raise ValueError(
                f"kp_range={list(kp_range)}, kd={kd!r}, noise={noise!r}, coast_noise={coast_noise!r}"
                ": expected 0 < kp_range[0] <= kp_range[1] and kd, noise, coast_noise >= 0"
            )
        if not (settle_span > 0 and settle_kd >= 0 and settle_noise >= 0):
            raise ValueError(
                f"settle_span={settle_span!r}, settle_kd={settle_kd!r}, settle_noise={settle_noise!r}"
                ": expected settle_span > 0 and settle_kd, settle_noise >= 0"
            )
        if not jitter_amp >= 0:
            raise ValueError(f"jitter_amp={jitter_amp!r}: expected >= 0")
        probs = {
            "coast_prob": coast_prob,
            "random_prob": random_prob,
            "settle_prob": settle_prob,
            "jitter_prob": jitter_prob,
        }
        if not (all(p >= 0.0 for p in probs.values()) and sum(probs.values()) <= 1.0):
            raise ValueError(
                ", ".join(f"{k}={v!r}" for k, v in probs.items()) + ": expected probabilities summing to <= 1"
            )
        self.low, self.high, self.rng = np.asarray(low), np.asarray(high), rng
        self.n = len(self.low)
        self.joint_low = None if joint_low is None else np.asarray(joint_low, np.float64)
        self.joint_high = None if joint_high is None else np.asarray(joint_high, np.float64)
        self.kp_range, self.kd = (float(kp_range[0]), float(kp_range[1])), float(kd)
        self.noise, self.smoothing, self.coast_noise = float(noise), float(smoothing), float(coast_noise)
        self.retarget = (int(retarget_min), int(retarget_max))
        self.target_span = float(target_span)
        self.coast_prob, self.random_prob = float(coast_prob), float(random_prob)
        self.settle_prob, self.settle_span = float(settle_prob), float(settle_span)
        self.settle_kd, self.settle_noise = float(settle_kd), float(settle_noise)
        self.jitter_prob, self.jitter_amp, self._amp = float(jitter_prob), float(jitter_amp), 0.0
        self._std = {  # the AR(1) noise of each segment kind
            "coast": self.coast_noise,
            "random": 3 * self.noise,
            "move": self.noise,
            "settle": self.settle_noise,
            "jitter": self.settle_noise,
        }
        self._mode, self._kp, self._countdown = "move", 1.0, 0
        self._target = np.zeros(self.n)
        self._eps = np.zeros(self.n)

    def __call__(self, proprio: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        q = np.asarray(proprio[: self.n], np.float64)
        qdot = np.asarray(proprio[self.n : 2 * self.n], np.float64)
        if self._countdown <= 0:
            u = self.rng.uniform()
            edges = np.cumsum([self.coast_prob, self.random_prob, self.settle_prob, self.jitter_prob])
            modes = ("coast", "random", "settle", "jitter", "move")
            self._mode = modes[int(np.searchsorted(edges, u, side="right"))]
            self._kp = self.rng.uniform(*self.kp_range)
            if self._mode == "jitter":  # drawn only here: settings without jitter keep their draws
                self._amp = self.rng.uniform(0.0, self.jitter_amp, self.n) * self.rng.choice(
                    [-1.0, 1.0], self.n
                )
            span = self.settle_span if self._mode in ("settle", "jitter") else self.target_span
            target = q + self.rng.uniform(-span, span, self.n)
            if self.joint_low is not None and self.joint_high is not None:
                target = np.clip(target, self.joint_low, self.joint_high)
            self._target = target
            self._countdown = int(self.rng.integers(self.retarget[0], self.retarget[1] + 1))
        self._countdown -= 1
        self._eps = _ar1(self.rng, self._eps, self.smoothing, self._std[self._mode])
        if self._mode in ("move", "settle", "jitter"):
            kd = self.kd if self._mode == "move" else self.settle_kd
            action = self._kp * (self._target - q) - kd * qdot + self._eps
            if self._mode == "jitter":  # torques that flip sign every step: the arm swings out and back
                self._amp = -self._amp  # between two frames that show the same pose (the planner's dither)
                action = action + self._amp
        else:
            action = self._eps
        return np.clip(action, self.low, self.high).astype(np.float32)


class PushPolicy:
    """Data that moves the block of ``JepaAgent/Push-v0``: the scripted approach-and-push expert
    (:class:`envs.push_expert.ScriptedPusher`, on the true state, set to seek contact: ``expert_settings``)
    with noise, mixed with random actions.

    Each episode is, with probability ``random_episodes``, temporally correlated random actions (an AR(1)
    process with correlation ``smoothing``, clipped to the box: the off-expert actions a planner samples);
    otherwise the expert's, each perturbed by Gaussian noise whose standard deviation is drawn per episode
    from ``U(0, noise)`` (OGBench draws its noise per episode), replaced by a uniform random action with
    probability ``random_prob`` and by the previous action with probability ``repeat_prob``.
    """

    env_keys = ("env_id", "max_delta")
    env_id = "JepaAgent/Push-v0"
    # the expert brushes past the T's corners on its way round and turns it less per push: the block moves
    # in ~80% of its steps instead of ~47% (envs.push_expert.ScriptedPusher)
    expert_settings = {"clearance": -0.005, "graze": 0.3, "max_offset": 0.015}

    def __init__(
        self,
        low: np.ndarray,
        high: np.ndarray,
        rng: np.random.Generator,
        env_id: str,
        max_delta: float,
        noise: float = 0.3,
        random_prob: float = 0.05,
        repeat_prob: float = 0.1,
        random_episodes: float = 0.15,
        smoothing: float = 0.8,
    ) -> None:
        from envs.push_expert import ScriptedPusher

        if env_id != self.env_id:
            raise ValueError(f"policy 'push' drives the pusher of {self.env_id}; the env is {env_id!r}")
        probs = {"random_prob": random_prob, "repeat_prob": repeat_prob, "random_episodes": random_episodes}
        if not all(0.0 <= v <= 1.0 for v in probs.values()):
            raise ValueError(f"{probs}: expected probabilities in [0, 1]")
        if not noise >= 0:
            raise ValueError(f"noise={noise!r}: expected >= 0 (largest per-episode action noise std)")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing={smoothing!r}: expected a number in [0, 1)")
        self.low, self.high, self.rng = np.asarray(low), np.asarray(high), rng
        self.random_prob, self.repeat_prob, self.smoothing = float(random_prob), float(repeat_prob), smoothing
        self.random_episode = bool(rng.uniform() < random_episodes)
        self.max_noise = float(noise)
        self.noise = float(rng.uniform(0.0, noise))  # this episode's noise std
        self.expert = ScriptedPusher(rng, max_delta, **self.expert_settings)
        self._last = np.zeros(len(self.low))
        self._eps = np.zeros(len(self.low))

    def branch(self, rng: np.random.Generator) -> None:
        """Continue on the stream ``rng`` (collect's ``branches``) with a new noise level: the expert keeps
        its sub-goal, and its later draws come from the new stream too (it shares the generator)."""
        self.rng.bit_generator.state = rng.bit_generator.state
        self.noise = float(self.rng.uniform(0.0, self.max_noise))

    def __call__(self, proprio: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        if state is None:
            raise ValueError("policy 'push' needs the simulator state (the block's pose), not proprio only")
        n = len(self.low)
        if self.random_episode:
            rho = self.smoothing
            self._eps = rho * self._eps + np.sqrt(1 - rho**2) * self.rng.standard_normal(n)
            action = self._eps
        else:
            action = self.expert(state)  # always called: the expert tracks its sub-goal every step
            u = self.rng.uniform()
            if u < self.random_prob:
                action = self.rng.uniform(self.low, self.high)
            elif u < self.random_prob + self.repeat_prob:
                action = self._last
            else:
                action = action + self.noise * self.rng.standard_normal(n)
        self._last = np.clip(action, self.low, self.high).astype(np.float32)
        return self._last


POLICIES = {
    "random": RandomPolicy,
    "noisy": NoisyTargetPolicy,
    "torque": TorqueTargetPolicy,
    "push": PushPolicy,
}


def make_policy(name: str, env_info: dict[str, Any], rng: np.random.Generator, **kwargs: Any):
    """Build policy ``name`` for an env described by :meth:`RecordingWrapper.env_info`. A policy is called
    with the latest ``(proprio, state)`` and returns an action.

    Raises:
        ValueError: unknown name (lists the available ones), or a policy that does not fit the env.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; available: {sorted(POLICIES)}")
    cls = POLICIES[name]
    env_args = {"low": env_info["action_low"], "high": env_info["action_high"], "rng": rng}
    env_args.update({key: env_info[key] for key in cls.env_keys})
    return cls(**env_args, **kwargs)


def branch_policy(policy: Any, rng: np.random.Generator) -> None:
    """Continue ``policy`` from where it is on the fresh stream ``rng`` (collect's ``branches``): its own
    ``branch(rng)`` where it has one, else its generator ``policy.rng`` takes ``rng``'s state in place (so
    every part of it that shares that generator, e.g. push's expert, draws from the new stream)."""
    if hasattr(policy, "branch"):
        policy.branch(rng)
    else:
        policy.rng.bit_generator.state = rng.bit_generator.state


BRANCH_STREAM = 0xB4A7C4  # the key of the branch streams (branch step and policy draws), besides the seed


def episode_plan(index: int, seed: int, branches: int, branch_at: tuple[int, int]) -> dict[str, Any]:
    """Where episode ``index`` of a collection starts and branches.

    Without branches, episode ``i`` is reset with ``seed + i``. With ``branches = K``, episodes come in
    groups of ``K + 1`` reset with the same seed, ``seed + i // (K + 1)``: the first (the trunk) runs the
    policy as without branches; each other one replays it up to a step drawn from ``branch_at`` (inclusive,
    its own stream) and from there continues it on a fresh stream (:func:`branch_policy`), recording from
    that step on. So the data shows several continuations of one state.
    """
    if not branches:
        return {"seed": seed + index, "branch_step": 0, "branch_of": None, "branch_seed": ()}
    group, member = divmod(index, branches + 1)
    reset_seed = seed + group
    if member == 0:
        return {"seed": reset_seed, "branch_step": 0, "branch_of": None, "branch_seed": ()}
    key = (reset_seed, BRANCH_STREAM, member)
    step = int(np.random.default_rng(key).integers(branch_at[0], branch_at[1] + 1))
    return {"seed": reset_seed, "branch_step": step, "branch_of": index - member, "branch_seed": (*key, 1)}


# --------------------------------------------------------------------------------- worker side
class RecordingWrapper(gym.Wrapper):
    """Puts the simulator state in ``info["state"]`` (and the goal in ``info["goal_state"]`` at reset).

    Runs inside the vector-env workers, so one step returns everything an episode file needs. Only
    the info keys in ``keep_info`` are passed on: every key costs pickling and batching per step.
    """

    def __init__(self, env: gym.Env, keep_info: tuple[str, ...] = ("is_success",)) -> None:
        super().__init__(env)
        self.keep_info = keep_info

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        out = {k: info[k] for k in self.keep_info if k in info}
        out["state"] = self.env.unwrapped.get_state()
        return out

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        info = self._info(info)
        info["goal_state"] = self.env.unwrapped.goal_state()
        return obs, info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._info(info)

    def env_info(self) -> dict[str, Any]:
        """What the dataset meta and the policies need to know about the env (no rendering)."""
        base = self.env.unwrapped
        space = self.action_space
        return {
            "env_id": self.spec.id if self.spec is not None else type(base).__name__,
            "image_size": int(self.observation_space["pixels"].shape[0]),
            "fps": float(self.metadata.get("render_fps") or 0.0),
            "action_low": np.asarray(space.low, np.float32),
            "action_high": np.asarray(space.high, np.float32),
            "proprio_dim": int(self.observation_space["proprio"].shape[0]),
            "state_dim": int(base.get_state().shape[0]),
            "goal_dim": int(base.goal_state().shape[0]),
            "max_delta": float(getattr(base, "max_delta", 1.0)),
            "joint_low": getattr(base, "joint_low", None),
            "joint_high": getattr(base, "joint_high", None),
            # states [T, S] -> [T-1] bool: which steps moved an object (envs with one, e.g. Push-v0)
            "object_moved": getattr(base, "object_moved", None),
        }


def make_recording_env(name: str, env_kwargs: dict[str, Any]) -> RecordingWrapper:
    """``envs.make_env(name, **env_kwargs)`` wrapped for recording (picklable worker entry point)."""
    import envs

    return RecordingWrapper(envs.make_env(name, **env_kwargs))


class _EnvFactory:
    """Picklable ``env_fn`` for the vector env.

    In a worker process (``worker=True``) it first asks Mesa's software rasteriser (llvmpipe, behind
    EGL here) for a single render thread unless the user chose: with one env per process, its
    per-frame thread hand-offs cost more than they save on 64x64 frames (measured: ~1.3 -> ~0.75 ms
    CPU per frame with two busy processes on two cores).
    """

    def __init__(self, name: str, env_kwargs: dict[str, Any], worker: bool) -> None:
        self.name, self.env_kwargs, self.worker = name, dict(env_kwargs), worker

    def __call__(self) -> RecordingWrapper:
        if self.worker and multiprocessing.parent_process() is not None:  # not the vector env's probe
            os.environ.setdefault("LP_NUM_THREADS", "1")
        return make_recording_env(self.name, self.env_kwargs)


def safe_start_method() -> str:
    """``"fork"`` while this process has no EGL display (fast start), else ``"forkserver"``.

    A child forked after MuJoCo rendered through EGL deadlocks at its first render; other GL
    back-ends are not checked, so they always get the forkserver.
    """
    if sys.platform != "linux" or os.environ.get("MUJOCO_GL", "egl") != "egl":
        return "forkserver" if sys.platform != "win32" else "spawn"
    egl = sys.modules.get("mujoco.egl")
    return "fork" if egl is None or getattr(egl, "EGL_DISPLAY", None) is None else "forkserver"


def make_vector_env(name: str, env_kwargs: dict[str, Any], num_envs: int, mp_context: str = "auto"):
    """Vector env of ``num_envs`` recording envs, autoreset disabled (``SyncVectorEnv`` for one env).

    ``mp_context="auto"`` picks :func:`safe_start_method`.
    """
    if num_envs == 1:
        fn = _EnvFactory(name, env_kwargs, worker=False)
        return SyncVectorEnv([fn], copy=False, autoreset_mode=AutoresetMode.DISABLED)
    fns = [_EnvFactory(name, env_kwargs, worker=True) for _ in range(num_envs)]
    if mp_context == "auto":
        mp_context = safe_start_method()
    if mp_context == "forkserver":
        # the server imports these once; workers fork from it ready to run
        multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", "envs", __name__])
    return AsyncVectorEnv(
        fns, shared_memory=True, copy=False, context=mp_context, autoreset_mode=AutoresetMode.DISABLED
    )


# ------------------------------------------------------------------------------- main process
@dataclass
class _Episode:
    """Buffers of one episode in progress."""

    index: int
    seed: int
    policy: Any
    frames: list[np.ndarray] = field(default_factory=list)
    proprio: list[np.ndarray] = field(default_factory=list)
    state: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    goal_state: np.ndarray | None = None
    branch_step: int = 0  # > 0: a branch (collect's ``branches``), recorded from this step on
    branch_of: int | None = None  # the index of the episode it branches off
    branch_seed: tuple[int, ...] = ()  # its policy's stream from branch_step on

    def first_step(self) -> int:
        """The first step recorded: a branch keeps its own steps only (at least the last one, should its
        episode end before it branched)."""
        return min(self.branch_step, len(self.actions) - 1)


def _write_episode(writer: Any, ep: _Episode) -> int:
    t0 = ep.first_step()
    extras = {"next.reward": np.asarray(ep.rewards[t0:], np.float32)}
    if len(ep.success) == len(ep.rewards):
        extras["next.success"] = np.asarray(ep.success[t0:], bool)
    if ep.branch_of is not None:
        extras["branch_of"] = np.asarray(ep.branch_of, np.int64)
        extras["branch_step"] = np.asarray(t0, np.int64)
    return writer.write(
        ep.index,
        frames=np.stack(ep.frames[t0:]),  # [T, H, W, 3]
        action=np.stack(ep.actions[t0:]),  # [T-1, A]
        proprio=np.stack(ep.proprio[t0:]),  # [T, P]
        state=np.stack(ep.state[t0:]),  # [T, S]
        goal_state=ep.goal_state,
        seed=ep.seed,
        extras=extras,
    )


def dataset_meta(
    info: dict[str, Any], env_kwargs: dict[str, Any], video: dict[str, Any] | None, collection: dict[str, Any]
) -> dict[str, Any]:
    """The ``meta.json`` of a new dataset of the env that ``info`` describes
    (:meth:`RecordingWrapper.env_info`), with the H.264 settings ``video`` over the lossless defaults."""
    from jepa_agent.data import build_meta
    from jepa_agent.data.video_io import DEFAULT_CRF, DEFAULT_PIX_FMT, DEFAULT_PRESET

    defaults = {"codec": "h264", "crf": DEFAULT_CRF, "preset": DEFAULT_PRESET, "pix_fmt": DEFAULT_PIX_FMT}
    return build_meta(
        env_id=info["env_id"],
        env_kwargs=dict(env_kwargs),
        image_size=info["image_size"],
        fps=info["fps"],
        action_low=info["action_low"],
        action_high=info["action_high"],
        proprio_dim=info["proprio_dim"],
        state_dim=info["state_dim"],
        goal_dim=info["goal_dim"],
        video={**defaults, **(video or {})},
        collection=collection,
    )


def _as_recorded(out_dir: str | os.PathLike, policy: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` as an existing dataset of ``policy`` in ``out_dir`` records them: a setting the policy
    gained after that dataset was recorded, given at its default (which draws as before), is left out, so
    the dataset still resumes. Any other difference stays and is refused by the writer."""
    import inspect
    import json

    try:
        old = json.loads((Path(out_dir) / "meta.json").read_text())["collection"]
    except (OSError, ValueError, KeyError, TypeError):
        return kwargs
    if (
        not isinstance(old, dict)
        or old.get("policy") != policy
        or not isinstance(old.get("policy_kwargs"), dict)
    ):
        return kwargs
    defaults = {
        k: p.default
        for k, p in inspect.signature(POLICIES[policy]).parameters.items()
        if p.default is not p.empty
    }
    recorded = old["policy_kwargs"]
    return {
        k: v
        for k, v in kwargs.items()
        if k in recorded or k not in defaults or json.dumps(v) != json.dumps(defaults[k])
    }


def task_policy_kwargs(env: str, policy: str) -> dict[str, Any]:
    """What ``collect.py env=ENV policy=POLICY`` passes as the policy's settings: its block in
    ``configs/collect.yaml`` composed with the task's env config (``reach_distracting``'s noisy targets
    within ``env.data_target_span`` = 3 rad, where the policy's own default is 1.5); ``{}`` for a policy
    with no block (``random``) or an env with no config. :func:`collect` starts from these, so the API
    records the script's data.

    ``env`` is a config name (``reach_distracting``, ``gym``) or a registered id (``JepaAgent/Push-v0``)."""
    import envs
    from jepa_agent.config import CONFIGS, compose_config

    name = {v: k for k, v in envs.ENV_IDS.items()}.get(env, env)
    if policy not in POLICIES or not (CONFIGS / "env" / f"{name}.yaml").is_file():
        return {}
    return policy_settings(compose_config("collect", [f"env={name}"]), policy)


def policy_settings(cfg: Any, policy: str) -> dict[str, Any]:
    """Policy ``policy``'s settings in a composed ``collect`` config: its block of the same name, resolved
    (``{}`` for a policy with none, e.g. ``random``). ``collect.py`` passes these to :func:`collect`."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg[policy], resolve=True) if policy in POLICIES and policy in cfg else {}


def policy_rng(episode_seed: int) -> np.random.Generator:
    """The policy's generator for the episode reset with ``episode_seed``.

    A stream distinct from the env's own ``np_random``, which is seeded with the same number.
    """
    return np.random.default_rng([episode_seed, 0x5EED])


def collect(
    out_dir: str | os.PathLike,
    num_episodes: int,
    env: str = "reach",
    env_kwargs: dict[str, Any] | None = None,
    policy: str = "random",
    policy_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    num_envs: int = 2,
    video: dict[str, Any] | None = None,
    mp_context: str = "auto",
    progress: bool = True,
    branches: int = 0,
    branch_at: tuple[int, int] | list[int] = (1, 24),
) -> dict[str, Any]:
    """Record episodes ``0 .. num_episodes-1`` of ``env`` into ``out_dir``, resuming what is there.

    Args:
        out_dir: dataset directory (created, or resumed when it holds the same dataset).
        num_episodes: episodes the dataset should hold when done.
        env: env name for ``envs.make_env`` (``"reach"`` or a full id; ``"gym"``: any Gymnasium env, its id
            in ``env_kwargs["id"]``).
        env_kwargs: env constructor kwargs (``image_size``, ``frame_skip``, ``max_delta``, ...).
        policy: ``"random"``, ``"noisy"``, ``"torque"`` or ``"push"`` (see :data:`POLICIES`).
            ``train_all`` collects with the task's own, ``env.data_policy`` (reach: noisy).
        policy_kwargs: the policy's settings, over the task's (:func:`task_policy_kwargs`: what
            ``collect.py env=NAME policy=P`` passes, e.g. ``reach_distracting``'s noisy targets within
            3 rad), so ``collect(out, n, env="reach_distracting", policy="noisy")`` records the script's data.
        seed: episode ``i`` is reset with ``seed + i``.
        num_envs: parallel envs (worker processes; 1 runs in-process).
        video: encoder settings ``crf``, ``preset``, ``pix_fmt`` (defaults in ``data.video_io``).
        mp_context: worker start method: ``"auto"`` (fork unless this process rendered with EGL,
            then forkserver), ``"fork"``, ``"forkserver"`` or ``"spawn"``.
        progress: show a tqdm bar on stderr.
        branches: ``K > 0``: episodes come in groups of ``K + 1`` from one start, each after the first a
            branch of it from a step drawn in ``branch_at`` (:func:`episode_plan`): the same state under
            several continuations of the policy. Episode ``i`` is then reset with ``seed + i // (K + 1)``;
            a branch records its own steps only, and ``branch_of`` / ``branch_step`` say where it starts.
            It needs an env whose episodes replay exactly (a deterministic reset and step, as ours).
        branch_at: ``[first, last]`` step a branch may start at (inclusive; 0: from the reset).

    Returns:
        Metrics: ``out``, ``episodes`` / ``frames`` (finished in the requested range),
        ``collected_episodes`` / ``collected_frames`` (this run), ``skipped_existing``,
        ``frames_per_s`` (collected frames per second of stepping + encoding, after worker start-up),
        ``frames_per_s_wall`` (per second of the whole call), ``object_moved_fraction`` (the steps that
        moved an object, for envs with one), timings and settings.

    Raises:
        ValueError: bad arguments (unknown env or policy, negative counts).
        DataError: ``out_dir`` holds another dataset (env, image size, settings) or is being written.
    """
    import envs  # registers the env ids
    from jepa_agent.data import EpisodeWriter

    t_start = time.perf_counter()
    if not isinstance(num_episodes, (int, np.integer)) or num_episodes < 0:
        raise ValueError(f"num_episodes={num_episodes!r}: expected an int >= 0")
    if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs={num_envs!r}: expected an int >= 1")
    contexts = ("auto", *multiprocessing.get_all_start_methods())
    if mp_context not in contexts:
        raise ValueError(f"mp_context={mp_context!r}: expected one of {list(contexts)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an int >= 0")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; available: {sorted(POLICIES)}")
    if not isinstance(branches, (int, np.integer)) or isinstance(branches, bool) or branches < 0:
        raise ValueError(f"branches={branches!r}: expected an int >= 0 (continuations per recorded episode)")
    try:
        lo, hi = (int(v) for v in branch_at)
        if list(branch_at) != [lo, hi] or not 0 <= lo <= hi:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(
            f"branch_at={branch_at!r}: expected [first, last], ints with 0 <= first <= last (the steps a "
            "branch may start at)"
        ) from None
    branch_at = (lo, hi)
    if env != envs.GYM:  # the adapter's env is named by env_kwargs["id"]
        envs.resolve_env_id(env)  # an unknown name fails here, before any env is made
    env_kwargs = dict(env_kwargs or {})
    # the task's settings of the policy (collect.py's: reach_distracting's target span), under the caller's
    policy_kwargs = {**task_policy_kwargs(env, policy), **(policy_kwargs or {})}

    probe = make_recording_env(env, env_kwargs)  # no rendering in this process: safe to fork later
    info = probe.env_info()
    probe.close()
    worker_kwargs = env_kwargs
    if env == envs.GYM and env_kwargs.get("check", True):  # the probe has checked the env: once is enough
        worker_kwargs = {**env_kwargs, "check": False}
    try:
        make_policy(policy, info, policy_rng(0), **policy_kwargs)
    except TypeError as e:
        raise ValueError(f"policy={policy!r}: bad policy_kwargs {policy_kwargs}: {e}") from e
    collection = {
        "policy": policy,
        "policy_kwargs": _as_recorded(out_dir, policy, policy_kwargs),
        "seed": int(seed),
    }
    if branches:  # only then: datasets without branches keep the meta they were recorded with
        collection.update(branches=int(branches), branch_at=list(branch_at))
    plans = [episode_plan(i, seed, int(branches), branch_at) for i in range(num_episodes)]
    meta = dataset_meta(info, env_kwargs, video, collection)
    with EpisodeWriter(out_dir, meta) as writer:
        todo = [i for i in range(num_episodes) if not writer.is_finished(i, plans[i]["seed"])]
        rewritten = sum(i in writer.invalid for i in todo)
        t_loop, collected_frames, moved = time.perf_counter(), 0, None
        if todo:
            t_loop, collected_frames, moved = _run(
                writer,
                todo,
                env=env,
                env_kwargs=worker_kwargs,
                info=info,
                policy=policy,
                policy_kwargs=policy_kwargs,
                plans=plans,
                num_envs=min(num_envs, len(todo)),
                mp_context=mp_context,
                progress=progress,
            )
        meta = writer.finalize()
        done = [i for i in range(num_episodes) if i in writer.lengths]
        frames = int(sum(writer.lengths[i] for i in done))
        removed = writer.removed_temp_files
    t_end = time.perf_counter()
    loop_s, wall_s = t_end - t_loop, t_end - t_start
    return {
        "out": str(out_dir),
        "env_id": meta["env_id"],
        "episodes": len(done),
        "frames": frames,
        "collected_episodes": len(todo),
        "collected_frames": collected_frames,
        "skipped_existing": num_episodes - len(todo),
        "rewritten_invalid": rewritten,
        "removed_temp_files": removed,
        "frames_per_s": collected_frames / loop_s if collected_frames else 0.0,
        # steps of this run that moved an object (> 1 mm or > 1 degree), for envs with one (push); else None
        "object_moved_fraction": moved,
        "frames_per_s_wall": collected_frames / wall_s if collected_frames else 0.0,
        "startup_s": t_loop - t_start,
        "loop_s": loop_s,
        "wall_s": wall_s,
        "num_envs": min(num_envs, max(len(todo), 1)),
        "policy": policy,
        "seed": int(seed),
        "branches": int(branches),
        "image_size": meta["image_size"],
        "dataset_episodes": meta["total_episodes"],
        "dataset_frames": meta["total_frames"],
    }


def _run(
    writer: Any,
    todo: list[int],
    *,
    env: str,
    env_kwargs: dict[str, Any],
    info: dict[str, Any],
    policy: str,
    policy_kwargs: dict[str, Any],
    plans: list[dict[str, Any]],
    num_envs: int,
    mp_context: str,
    progress: bool,
) -> tuple[float, int, float | None]:
    """The stepping loop; returns (time the first reset finished, frames written, fraction of the steps
    that moved an object or None when the env has none)."""
    from tqdm import tqdm

    n = num_envs
    vec = make_vector_env(env, env_kwargs, n, mp_context)
    queue: deque[int] = deque(todo)
    slots: list[_Episode | None] = [None] * n
    pending: deque[Future] = deque()
    pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="encode")
    bar = tqdm(total=len(todo), unit="ep", desc="collect", disable=not progress, dynamic_ncols=True)
    frames_written, t_loop, ok = 0, None, False
    object_moved = info.get("object_moved")
    moved_steps, steps = 0, 0

    def drain(block: bool) -> None:
        nonlocal frames_written
        while pending and (block or pending[0].done()):
            frames_written += pending.popleft().result()
            bar.update(1)
            if t_loop is not None:
                fps = frames_written / (time.perf_counter() - t_loop)
                bar.set_postfix(frames_per_s=f"{fps:.0f}", refresh=False)

    try:
        to_reset = list(range(n))
        actions = np.zeros((n, *info["action_low"].shape), np.float32)  # [n, A]
        while True:
            if to_reset:
                seeds: list[int | None] = [None] * n
                mask = np.zeros(n, dtype=bool)
                for k in to_reset:
                    i = queue.popleft()
                    plan = plans[i]
                    pol = make_policy(policy, info, policy_rng(plan["seed"]), **policy_kwargs)
                    slots[k] = _Episode(index=i, policy=pol, **plan)
                    seeds[k], mask[k] = plan["seed"], True
                obs, infos = vec.reset(seed=seeds, options={"reset_mask": mask})
                if t_loop is None:
                    t_loop = time.perf_counter()  # workers are up
                for k in to_reset:
                    ep = slots[k]
                    ep.frames.append(np.array(obs["pixels"][k]))
                    ep.proprio.append(np.array(obs["proprio"][k]))
                    ep.state.append(np.array(infos["state"][k]))
                    ep.goal_state = np.array(infos["goal_state"][k])
                to_reset = []
            if all(ep is None for ep in slots):
                break
            actions[:] = 0.0  # idle envs (no episode left for them) step with zeros, ignored
            for k, ep in enumerate(slots):
                if ep is not None:
                    if ep.branch_of is not None and len(ep.actions) == ep.branch_step:
                        branch_policy(ep.policy, np.random.default_rng(ep.branch_seed))
                    actions[k] = ep.policy(ep.proprio[-1], ep.state[-1])
            obs, reward, terminated, truncated, infos = vec.step(actions)
            success = infos.get("is_success")
            for k, ep in enumerate(slots):
                if ep is None:
                    continue
                ep.actions.append(actions[k].copy())
                ep.frames.append(np.array(obs["pixels"][k]))
                ep.proprio.append(np.array(obs["proprio"][k]))
                ep.state.append(np.array(infos["state"][k]))
                ep.rewards.append(float(reward[k]))
                if success is not None:
                    ep.success.append(bool(success[k]))
                if terminated[k] or truncated[k]:
                    if object_moved is not None:
                        moved_steps += int(object_moved(np.stack(ep.state[ep.first_step() :])).sum())
                        steps += len(ep.actions) - ep.first_step()
                    pending.append(pool.submit(_write_episode, writer, ep))
                    slots[k] = None
                    if len(queue) > len(to_reset):
                        to_reset.append(k)
            drain(block=False)
            while len(pending) > 2 * n:  # bound the memory held by queued encodes
                pending[0].result()
                drain(block=False)
        drain(block=True)
        ok = True
    finally:
        pool.shutdown(wait=True, cancel_futures=not ok)
        bar.close()
        with warnings.catch_warnings():  # an interrupted step is expected here: no "pending call" warning
            warnings.simplefilter("ignore")
            vec.close(terminate=not ok) if n > 1 else vec.close()
    return t_loop, frames_written, (moved_steps / steps if steps else None)


# ------------------------------------------------------------------ recording any policy's episodes
class EpisodeRecorder(gym.Wrapper):
    """Writes every episode run through it into an episode dataset, in :func:`collect`'s format, whatever
    acts on it. ``plan.py record=DIR`` keeps the planner's own episodes this way: the states the planner
    visits, as training data for the world model (``train_world_model.py 'data.path=[SCRIPTED,DIR]'``).

    Episodes are numbered from 0 in the order they are reset, and each is written when it ends (terminated
    or truncated), atomically: an episode cut short is not written. Reset with a seed; the episode file
    records it. Opening a directory that holds episodes from other settings is refused
    (:class:`~jepa_agent.data.EpisodeWriter`); re-running the same command writes the same episodes again.

    Args:
        env: an env of this library or the Gymnasium adapter (``pixels`` and ``proprio`` observations,
            ``get_state`` and ``goal_state``).
        root: the dataset directory.
        env_kwargs: the settings ``env`` was made with (``envs.env_kwargs_from_config``): the dataset's meta,
            which training checks against the other datasets it reads.
        collection: what produced the episodes (the meta's ``collection``; a JSON-able dict).
        video: H.264 settings (defaults: :func:`collect`'s lossless ones).
    """

    def __init__(
        self,
        env: gym.Env,
        root: str | os.PathLike,
        env_kwargs: dict[str, Any],
        collection: dict[str, Any],
        video: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(env)
        from jepa_agent.data import EpisodeWriter

        meta = dataset_meta(RecordingWrapper(env).env_info(), env_kwargs, video, collection)
        self.writer = EpisodeWriter(root, meta)
        self.episodes_written, self.frames_written = 0, 0
        self._index, self._episode = 0, None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            raise ValueError("EpisodeRecorder: reset(seed=...) is needed, the episode file records its seed")
        obs, info = self.env.reset(seed=seed, options=options)
        self.writer.is_finished(self._index, seed)  # an episode of another seed under this index: refused
        base = self.env.unwrapped
        self._episode = _Episode(index=self._index, seed=int(seed), policy=None)
        self._episode.goal_state = np.array(base.goal_state())
        self._index += 1
        self._add(obs)
        return obs, info

    def _add(self, obs: dict[str, np.ndarray]) -> None:
        ep = self._episode
        ep.frames.append(np.array(obs["pixels"]))
        ep.proprio.append(np.array(obs["proprio"]))
        ep.state.append(np.array(self.env.unwrapped.get_state()))

    def step(self, action: Any):
        if self._episode is None:
            raise RuntimeError("EpisodeRecorder: step() before reset()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        ep = self._episode
        ep.actions.append(np.asarray(action, np.float32).copy())
        ep.rewards.append(float(reward))
        if "is_success" in info:
            ep.success.append(bool(info["is_success"]))
        self._add(obs)
        if terminated or truncated:
            self.frames_written += _write_episode(self.writer, ep)
            self.episodes_written += 1
            self.writer.finalize()  # the meta's counts stay current if the run is killed
            self._episode = None
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        """Finish the dataset's meta and release the directory (the env is closed too)."""
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer = None
        super().close()
