"""Train an SB3 agent to reach a task's goals, and measure it: the library side of ``scripts/rl.py``.

The arms of the RL comparison, one :class:`RLConfig` each (``scripts/rl.py`` takes the same keys, with the
same defaults):

* ``observation=latent``: the world model's planning space (:class:`~jepa_agent.rl.VecLatentEncode`: the
  frame's and the goal image's features); ``reward=latent``: minus the planning distance (``sparse``:
  ``-(distance > epsilon)``), HER-ready. ``imagination=true`` trains in the world model instead
  (:class:`~jepa_agent.rl.WorldModelVecEnv`, started from a recorded episodes directory) and evaluates in
  the real env.
* ``observation=pixels``: the task's frames and goal image (:class:`~jepa_agent.rl.GoalImageObservation`)
  through SB3's NatureCNN (``MultiInputPolicy``).
* ``observation=state``: the true state and goal (:class:`~jepa_agent.rl.StateGoalEnv`), the labelled
  baseline (``"state_labels": true``).
* ``reward=env``: the task's own: ``info["is_success"] - 1`` (sparse) or ``-info["distance"]`` (dense).

The sparse latent reward's radius (and imagined success's) is ``epsilon``, or, when not given, calibrated on
hindsight pairs of recorded episodes (:func:`calibrate_from_episodes`; the training data when
``episodes=`` names it, else ``calibration_episodes`` episodes recorded into the run dir).

Every ``eval_every`` training steps the policy runs ``eval_episodes`` held-out goals (seeds
``EVAL_SEED_OFFSET + 10_000 * eval_seed + i``, ``plan.py``'s for the same seed); the run dir gets
``curve.csv``, SB3's ``progress.csv`` (and TensorBoard events when ``tensorboard`` is installed),
``run.json`` (settings, then the result), and the policy as ``policy.safetensors`` + ``policy.json``
(:func:`~jepa_agent.rl.policy_io.load_policy` rebuilds it; SB3's pickle zip only with ``save_zip``)::

    from jepa_agent.rl.train import RLConfig, train_rl

    cfg = RLConfig(algo="sac", observation="latent", her=True, checkpoint="checkpoints/reach", steps=100_000)
    result = train_rl(cfg, env="reach", out="outputs/rl/sac_her_latent", progress=True)
    print(result["success_rate"], result["success_ci95"], result["steps_to_target"])
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3 import HerReplayBuffer
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import configure
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from jepa_agent.evaluation import EVAL_SEED_OFFSET
from jepa_agent.rl.curves import RUN_JSON, EvalCurveCallback, TqdmCallback, evaluate_success, steps_to_target
from jepa_agent.rl.goal_image import GoalImageObservation
from jepa_agent.rl.imagination import LatentStarts, WorldModelVecEnv
from jepa_agent.rl.policy_io import ALGORITHMS, save_policy
from jepa_agent.rl.reward_quality import EPSILON_CRITERIA, calibrate_epsilon, hindsight_pairs
from jepa_agent.rl.space import PlanningSpace
from jepa_agent.rl.state_env import StateGoalEnv
from jepa_agent.rl.vec_encode import VecLatentEncode
from jepa_agent.utils import atomic_write_json, check_int, resolve_device
from jepa_agent.world_model import WorldModel

OFF_POLICY = ("sac", "td3")
OBSERVATIONS = ("latent", "pixels", "state")
REWARDS = ("auto", "latent", "env")
CNN_MIN_SIZE = 36  # SB3's NatureCNN (8/4, 4/2, 3/1 convolutions) needs images at least this wide
CALIBRATION_SEED = 0  # recorded calibration episodes use the training data's seeds (0, 1, ...)


@dataclass
class RLConfig:
    """One arm of the RL comparison (``configs/rl.yaml`` has the same keys and defaults).

    Attributes:
        algo: ``sac`` | ``ppo`` | ``td3``.
        observation: ``latent`` (world-model planning space) | ``pixels`` (frames + goal image, SB3's CNN)
            | ``state`` (true state and goal: a labelled baseline).
        reward: ``latent`` (minus the planning distance) | ``env`` (the task's success or distance) |
            ``auto`` (``latent`` for latent observations, else ``env``).
        sparse: ``-1`` until success, then ``0`` (latent: ``distance <= epsilon``); else minus the distance.
        her: relabel goals with HER (off-policy algos and goal-dict observations: ``latent``, ``state``).
        imagination: train in the world model (from ``episodes``), evaluate in the real env.
        checkpoint: the world model (``observation=latent``).
        space: its cost space for latent observations and rewards (``auto`` | ``metric`` | ``readout`` |
            ``latent``, as ``cost.space``).
        latent_weight: with the ``metric`` space, the latents' own mean squared distance times this is added
            to the head's, as in the planning cost (0: the head alone; :class:`~jepa_agent.rl.PlanningSpace`).
        epsilon: the sparse latent reward's / imagined success's radius; None: calibrated.
        calibration: ``youden`` | ``f1``: what the calibrated radius maximises on hindsight pairs.
        calibration_episodes: episodes the radius is calibrated on (recorded into the run dir unless
            ``episodes`` is given).
        calibration_policy: the data policy that records them (the task's training data policy).
        episodes: recorded episodes (``collect.py``): imagination's starts and hindsight goals, and the
            calibration data.
        steps: training steps (env steps; imagined steps in imagination).
        n_envs: training envs stepped together (imagination: ``imagination_envs``).
        eval_every / eval_episodes / eval_envs / eval_seed: evaluation every ``eval_every`` steps on
            ``eval_episodes`` held-out goals, ``eval_envs`` at a time, goal set ``eval_seed``.
        target_success: the success rate whose first crossing is reported as ``steps_to_target``.
        max_seconds: stop training after this much wall time (the curve is then marked cut short).
        seed: training seed (SB3's, the training envs').
        device: ``auto`` | ``cpu`` | ``cuda[:i]`` for the world model and the policy.
        gamma, learning_rate, batch_size, net_arch: SB3's (None: the algorithm's default).
        buffer_size, learning_starts, train_freq, gradient_steps: off-policy algorithms only: ``train_freq``
            counts VecEnv steps, ``n_envs`` transitions each; ``gradient_steps=-1``: an update per transition.
        n_sampled_goal, goal_selection_strategy: HER's (the zoo's FetchReach settings by default).
        action_noise: TD3's Gaussian exploration noise (std, in action units).
        n_steps, n_epochs: PPO's rollout length per env and epochs per update (None: SB3's).
        imagination_envs / imagination_horizon / imagination_context: ``WorldModelVecEnv``'s
            ``num_envs``, ``horizon`` and ``context``.
        algo_kwargs: any other argument of the SB3 algorithm's constructor (e.g. ``{"tau": 0.01}``).
        save_zip: also write SB3's own ``model.zip`` (a pickle: it can run code when loaded).
    """

    algo: str = "sac"
    observation: str = "latent"
    reward: str = "auto"
    sparse: bool = True
    her: bool = False
    imagination: bool = False
    checkpoint: str | None = "checkpoints/reach"
    space: str = "auto"
    latent_weight: float = 0.0
    epsilon: float | None = None
    calibration: str = "youden"
    calibration_episodes: int = 20
    calibration_policy: str = "noisy"
    episodes: str | None = None
    steps: int = 100_000
    n_envs: int = 1
    eval_every: int = 5_000
    eval_episodes: int = 100
    eval_envs: int = 10
    eval_seed: int = 0
    target_success: float = 0.9
    max_seconds: float | None = None
    seed: int = 0
    device: str = "auto"
    gamma: float = 0.98  # SAC + HER, latent goals, 5 seeds at 10k: median 90% (0.95, 3 seeds: 88%)
    learning_rate: float | None = None
    batch_size: int | None = None
    net_arch: list[int] | None = None
    buffer_size: int = 100_000
    learning_starts: int = 1_000
    train_freq: int = 1
    gradient_steps: int = 1
    n_sampled_goal: int = 4
    goal_selection_strategy: str = "future"
    action_noise: float = 0.1
    n_steps: int | None = None
    n_epochs: int | None = None
    imagination_envs: int = 16
    imagination_horizon: int = 15
    imagination_context: int | None = None
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    save_zip: bool = False

    @property
    def resolved_reward(self) -> str:
        if self.reward == "auto":
            return "latent" if self.observation == "latent" else "env"
        return self.reward


def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r}; expected one of {list(options)}")


def check_config(cfg: RLConfig) -> None:
    """Refuse a config that cannot run, before anything is built: one line each, naming the key, the bad
    value and what was expected.

    Raises:
        ValueError: see the checks below.
    """
    _choice("algo", cfg.algo, tuple(ALGORITHMS))
    _choice("observation", cfg.observation, OBSERVATIONS)
    _choice("reward", cfg.reward, REWARDS)
    _choice("calibration", cfg.calibration, EPSILON_CRITERIA)
    _choice("goal_selection_strategy", cfg.goal_selection_strategy, ("future", "final", "episode"))
    for key in ("sparse", "her", "imagination", "save_zip"):
        if not isinstance(getattr(cfg, key), bool):
            raise ValueError(f"{key}={getattr(cfg, key)!r}; expected true or false")
    counts = {"steps": 1, "n_envs": 1, "eval_every": 1, "eval_episodes": 1, "eval_envs": 1, "eval_seed": 0,
              "seed": 0, "calibration_episodes": 1, "buffer_size": 1, "learning_starts": 0, "train_freq": 1,
              "n_sampled_goal": 1, "imagination_envs": 1, "imagination_horizon": 1}  # fmt: skip
    for key, least in counts.items():
        check_int(key, getattr(cfg, key), least)
    if cfg.imagination_context is not None:
        check_int("imagination_context", cfg.imagination_context, 1, "or null: the model's train.context")
    if cfg.gradient_steps != -1:
        check_int("gradient_steps", cfg.gradient_steps, 1, "or -1: one per transition collected")
    for key in ("batch_size", "n_steps", "n_epochs"):
        if getattr(cfg, key) is not None:
            check_int(key, getattr(cfg, key), 1, "or null: the algorithm's default")
    if cfg.net_arch is not None and (
        not cfg.net_arch
        or not all(isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in cfg.net_arch)
    ):
        raise ValueError(f"net_arch={cfg.net_arch!r}; expected a list of layer widths >= 1, or null")
    numbers = {"target_success": (0, 1, "a success rate in (0, 1]"), "gamma": (0, 1, "a discount in (0, 1]"),
               "epsilon": (0, None, "a radius > 0, or null: calibrated"),
               "max_seconds": (0, None, "seconds > 0, or null: no limit"),
               "learning_rate": (0, None, "a rate > 0, or null: the algorithm's default"),
               "action_noise": (None, None, "a std >= 0")}  # fmt: skip
    for key, (low, high, what) in numbers.items():
        value = getattr(cfg, key)
        if value is None and key in ("epsilon", "max_seconds", "learning_rate"):
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= 0 if low is None else value > low) and (high is None or value <= high)
        if not ok:
            raise ValueError(f"{key}={value!r}; expected {what}")
    reward = cfg.resolved_reward
    if reward == "latent" and cfg.observation != "latent":
        raise ValueError(
            f"reward=latent with observation={cfg.observation!r}: the latent reward is the planning distance "
            "of observation=latent's goals; use reward=env (the task's success or distance)"
        )
    if cfg.her and cfg.algo not in OFF_POLICY:
        raise ValueError(
            f"her=true with algo={cfg.algo!r}: HER relabels a replay buffer, so it needs an off-policy "
            f"algo ({' or '.join(OFF_POLICY)}); pass her=false"
        )
    if cfg.her and cfg.observation == "pixels":
        raise ValueError(
            "her=true with observation='pixels': HER needs goal-dict observations (achieved and desired "
            "goals: observation=latent or state); pass her=false"
        )
    if cfg.her and cfg.observation == "latent" and reward == "env":
        raise ValueError(
            "her=true with observation=latent and reward=env: HER recomputes the reward from latent goals, "
            "which cannot give the task's own; use reward=latent, or her=false"
        )
    if cfg.imagination:
        if cfg.observation != "latent" or reward != "latent":
            raise ValueError(
                f"imagination=true with observation={cfg.observation!r}, reward={reward!r}: imagination "
                "steps the world model's latents, so it needs observation=latent and reward=latent"
            )
        if not cfg.episodes:
            raise ValueError(
                "imagination=true needs episodes=DIR: the recorded episodes imagined episodes start from "
                "(e.g. the world model's training data, outputs/train_all/reach/data)"
            )
    if cfg.observation == "latent" and not cfg.checkpoint:
        raise ValueError(
            "observation=latent needs checkpoint=PATH: a world-model checkpoint (e.g. checkpoints/reach)"
        )
    if not isinstance(cfg.algo_kwargs, dict):
        raise ValueError(f"algo_kwargs={cfg.algo_kwargs!r}; expected a mapping of constructor arguments")


class VecTaskReward(VecEnvWrapper):
    """The task's own reward, read from each step's info: ``is_success - 1`` (sparse) or
    ``-info["distance"]`` (dense), for every observation kind (the env's original reward stays in
    ``infos[i]["env_reward"]`` when set there already)."""

    def __init__(self, venv: VecEnv, sparse: bool = True) -> None:
        super().__init__(venv)
        self.sparse = bool(sparse)

    def reset(self) -> VecEnvObs:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        if self.sparse:
            new = np.array([float(bool(info["is_success"])) - 1.0 for info in infos], np.float32)
        else:
            distance = np.array([info.get("distance", np.nan) for info in infos], np.float64)
            if not np.all(np.isfinite(distance)):
                raise ValueError(
                    "sparse=false with reward=env needs the task's info['distance'] at every step; this "
                    "env gives none: use sparse=true (info['is_success'])"
                )
            new = (-distance).astype(np.float32)
        for info, r in zip(infos, rewards, strict=True):
            info.setdefault("env_reward", float(r))
        return obs, new, dones, infos


def calibrate_from_episodes(
    space: PlanningSpace,
    episodes: str | os.PathLike,
    success_fn: Any,
    criterion: str = "youden",
    max_episodes: int = 20,
    seed: int = 0,
    expect_env_id: str | None = None,
) -> tuple[float, dict[str, Any]]:
    """Calibrate the success radius of ``space`` on hindsight pairs of recorded episodes.

    Pairs are :func:`~jepa_agent.rl.reward_quality.hindsight_pairs` of the first ``max_episodes`` episodes,
    labelled by the task's rule (``success_fn``: ``env.unwrapped.hindsight_success``); the radius is
    :func:`~jepa_agent.rl.reward_quality.calibrate_epsilon`'s.

    Returns:
        ``(epsilon, stats)``: stats name the episodes, pairs and the radius's true / false success rates.
    """
    from jepa_agent.data import EpisodeDataset

    data = EpisodeDataset(episodes, window=1, expect_env_id=expect_env_id,
                          expect_image_size=space.model.image_size, cache=False)  # fmt: skip
    chosen = [data.episode(i) for i in range(min(data.num_episodes, int(max_episodes)))]
    pairs = hindsight_pairs([e["state"] for e in chosen], success_fn, seed=seed)
    feats = space.features(np.concatenate([e["frames"] for e in chosen]))  # [frames, F]
    distance = space.distance(feats[pairs.achieved], feats[pairs.goal])
    epsilon = calibrate_epsilon(distance, pairs.success, criterion)
    within = distance <= epsilon
    return epsilon, {
        "criterion": criterion, "episodes": len(chosen), "episodes_dir": str(episodes),
        "pairs": int(len(distance)), "success_pairs": int(pairs.success.sum()),
        "true_success_rate": round(float(within[pairs.success].mean()), 4),
        "false_success_rate": round(float(within[~pairs.success].mean()), 4),
    }  # fmt: skip


def _env_factory(env: str, env_kwargs: dict[str, Any], observation: str, sparse: bool):
    def make() -> gym.Env:
        import envs

        task = envs.make_env(env, **env_kwargs)
        if observation == "pixels":
            return GoalImageObservation(task)
        if observation == "state":
            return StateGoalEnv(task, reward="sparse" if sparse else "dense")
        return task

    return make


def make_vec_env(
    cfg: RLConfig,
    env: str,
    env_kwargs: dict[str, Any],
    num_envs: int,
    model: WorldModel | None = None,
    epsilon: float | None = None,
) -> VecEnv:
    """The real task as ``cfg.observation`` sees it and ``cfg.reward`` rewards it, ``num_envs`` at once."""
    venv: VecEnv = DummyVecEnv([_env_factory(env, env_kwargs, cfg.observation, cfg.sparse)] * num_envs)
    if cfg.observation == "latent":
        sparse = cfg.sparse and cfg.resolved_reward == "latent"
        venv = VecLatentEncode(venv, model, space=cfg.space, reward="sparse" if sparse else "dense",
                               epsilon=epsilon if sparse else None,
                               latent_weight=cfg.latent_weight)  # fmt: skip
    if cfg.resolved_reward == "env" and cfg.observation != "state":
        venv = VecTaskReward(venv, sparse=cfg.sparse)
    return venv


def algo_arguments(cfg: RLConfig, action_dim: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SB3 constructor's keyword arguments for ``cfg`` and the same as JSON (for ``policy.json``).

    Raises:
        ValueError: ``algo_kwargs`` naming an argument the algorithm does not take, or one set elsewhere.
    """
    import inspect

    kwargs: dict[str, Any] = {"gamma": cfg.gamma}
    for key in ("learning_rate", "batch_size"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    if cfg.algo in OFF_POLICY:
        kwargs.update(buffer_size=cfg.buffer_size, learning_starts=cfg.learning_starts,
                      train_freq=cfg.train_freq, gradient_steps=cfg.gradient_steps)  # fmt: skip
    else:
        kwargs.update({k: getattr(cfg, k) for k in ("n_steps", "n_epochs") if getattr(cfg, k) is not None})
    hyper = dict(kwargs)
    if cfg.her:
        her = {"n_sampled_goal": cfg.n_sampled_goal, "goal_selection_strategy": cfg.goal_selection_strategy}
        kwargs.update(replay_buffer_class=HerReplayBuffer, replay_buffer_kwargs=her)
        hyper.update(replay_buffer_class="HerReplayBuffer", replay_buffer_kwargs=her)
    if cfg.algo == "td3" and cfg.action_noise > 0:
        kwargs["action_noise"] = NormalActionNoise(
            np.zeros(action_dim), np.full(action_dim, cfg.action_noise)
        )
        hyper["action_noise"] = {"normal_std": cfg.action_noise}
    if cfg.net_arch is not None:
        kwargs["policy_kwargs"] = {"net_arch": list(cfg.net_arch)}
    script = {"self", "policy", "env", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model"}
    accepted = set(inspect.signature(ALGORITHMS[cfg.algo].__init__).parameters)
    extra = dict(cfg.algo_kwargs)
    unknown = sorted(set(extra) - accepted)
    if unknown:
        free = sorted(accepted - script - set(kwargs))
        raise ValueError(f"algo_kwargs {unknown}: not arguments of {cfg.algo}; expected some of {free}")
    taken = sorted(set(extra) & (set(kwargs) | script | set(dataclasses.asdict(cfg))))
    if taken:
        raise ValueError(
            f"algo_kwargs {taken}: set by their own keys (or by the script); pass {taken[0]}= instead"
        )
    kwargs.update(extra)
    hyper.update(extra)
    return kwargs, hyper


def _available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_replay_memory(venv: VecEnv, buffer_size: int) -> None:
    """Refuse a replay buffer that would not fit in the memory available now (SB3 only warns, then the
    run dies hours later): observations and next observations per key, actions, rewards and flags.

    Raises:
        ValueError: naming the size, what one transition holds and the memory available.
    """
    obs_space = venv.observation_space
    keys = obs_space.spaces if isinstance(obs_space, gym.spaces.Dict) else {"obs": obs_space}
    per = sum(2 * int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in keys.values())
    per += int(np.prod(venv.action_space.shape)) * 4 + 12
    need, have = per * buffer_size, _available_bytes()
    if have is not None and need > have:
        raise ValueError(
            f"buffer_size={buffer_size} would need {need / 1e9:.1f} GB ({per / 1e3:.1f} kB per transition: "
            f"observation and next observation of {sorted(keys)}) but {have / 1e9:.1f} GB is available; "
            "lower buffer_size"
        )


def check_env_fits(cfg: RLConfig, probe: gym.Env) -> int | None:
    """Refuse an env that cannot run ``cfg`` (CNN image size, no true goal, HER's learning starts); returns
    the training episodes' length (None: no time limit).

    Raises:
        ValueError: one line each.
    """
    spec = probe.spec
    episode_steps = spec.max_episode_steps if spec is not None else None
    obs_space = probe.observation_space
    pixels = (
        obs_space["pixels"].shape
        if isinstance(obs_space, gym.spaces.Dict) and "pixels" in obs_space.spaces
        else None
    )
    if cfg.observation == "pixels" and pixels is not None and min(pixels[:2]) < CNN_MIN_SIZE:
        raise ValueError(
            f"observation=pixels trains SB3's NatureCNN, which needs images of at least {CNN_MIN_SIZE} x "
            f"{CNN_MIN_SIZE}; env.image_size={pixels[0]}: use a larger one (the task's default is 64)"
        )
    if cfg.observation == "state":
        StateGoalEnv(probe)  # an env without a true goal fails here, in one line
    if cfg.imagination:
        episode_steps, n_train = cfg.imagination_horizon, cfg.imagination_envs
    else:
        n_train = cfg.n_envs
    if cfg.her and episode_steps is not None and cfg.learning_starts < episode_steps * n_train:
        raise ValueError(
            f"her=true with learning_starts={cfg.learning_starts}: HER samples finished episodes only, so "
            f"learning_starts must be at least {episode_steps * n_train} (episodes of {episode_steps} steps "
            f"x {n_train} env{'s' if n_train > 1 else ''})"
        )
    return episode_steps


def resolve_epsilon(
    cfg: RLConfig,
    model: WorldModel | None,
    space: str | None,
    env: str,
    env_kwargs: dict[str, Any],
    probe: gym.Env,
    out: Path,
) -> tuple[float | None, dict[str, Any] | None]:
    """``cfg.epsilon``, or, where a radius is needed (sparse latent reward, imagined success) and none is
    given, one calibrated on ``cfg.episodes`` (else on episodes recorded into ``out/calibration``).

    Returns:
        ``(epsilon or None, calibration stats or None)``.
    """
    needed = cfg.imagination or (cfg.resolved_reward == "latent" and cfg.sparse)
    if cfg.epsilon is not None or not needed:
        return cfg.epsilon, None
    env_id = probe.spec.id if probe.spec is not None else str(env)
    success_fn = getattr(probe.unwrapped, "hindsight_success", None)
    if not callable(success_fn):
        raise ValueError(
            f"epsilon=null: calibrating the success radius needs {env_id}'s hindsight_success(states, "
            "goal_states) (the task's success rule between recorded states); pass epsilon=RADIUS"
        )
    root = cfg.episodes
    if root is None:
        from jepa_agent.collect import collect

        root = out / "calibration"
        collect(root, cfg.calibration_episodes, env=env, env_kwargs=env_kwargs, policy=cfg.calibration_policy,
                seed=CALIBRATION_SEED, num_envs=1, progress=False)  # fmt: skip
    space_ = PlanningSpace(model, space, latent_weight=cfg.latent_weight)
    return calibrate_from_episodes(space_, root, success_fn, cfg.calibration, cfg.calibration_episodes,
                                   cfg.seed, env_id)  # fmt: skip


def _summary(
    cfg: RLConfig, env_id: str, agent: Any, evals: EvalCurveCallback, env_steps: int, **more: Any
) -> dict:
    """The run's JSON summary from its last evaluation and its curve."""
    rows, last = evals.rows, evals.rows[-1]
    reached = steps_to_target(rows, cfg.target_success)
    imagined = last["train_success"] if cfg.imagination else None
    return {
        "algo": cfg.algo, "observation": cfg.observation, "reward": cfg.resolved_reward, "sparse": cfg.sparse,
        "her": cfg.her, "imagination": cfg.imagination, "env": env_id,
        "train_steps": agent.num_timesteps, "env_steps": env_steps, "eval_episodes": cfg.eval_episodes,
        "success_rate": last["success_rate"],
        "success_ci95": [last["success_ci_low"], last["success_ci_high"]],
        "success_rate_end": last["success_rate_end"],
        "success_end_ci95": [last["success_end_ci_low"], last["success_end_ci_high"]],
        "target_success": cfg.target_success, "steps_to_target": reached,
        "target_reached": reached is not None,
        "steps_to_target_end": steps_to_target(rows, cfg.target_success, "success_rate_end"),
        "imagined_success": imagined,
        "imagination_gap": None if imagined is None else round(imagined - last["success_rate_end"], 4),
        "cut_short": evals.cut_short,
        "steps_per_second": round(agent.num_timesteps / max(evals.train_seconds, 1e-9), 1),
        "eval_seconds": round(evals.eval_seconds, 1), **more,
    }  # fmt: skip


def train_rl(
    cfg: RLConfig,
    env: str = "reach",
    env_kwargs: dict[str, Any] | None = None,
    out: str | os.PathLike = "outputs/rl",
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``cfg``'s arm on ``env``, evaluating as it goes; write the run dir; return the summary.

    Args:
        cfg: the arm and its budget.
        env: the task (``envs.make_env`` name: ``reach``, ``push`` ...).
        env_kwargs: its settings (``image_size``, ``max_episode_steps`` ...; ``envs.env_kwargs_from_config``).
        out: the run dir.
        progress: a tqdm bar over training steps (stderr); nothing else is printed.

    Returns:
        The JSON summary ``scripts/rl.py`` prints: the arm, steps, final success with 95% CIs, steps to
        ``target_success`` (None: not reached), seconds, epsilon, state labels, the files written.

    Raises:
        ValueError: a bad config (:func:`check_config`), an env or world model that does not fit it.
        CheckpointError: a missing or unreadable world-model checkpoint.
    """
    import envs

    check_config(cfg)
    t0 = time.perf_counter()
    out, env_kwargs = Path(out), dict(env_kwargs or {})
    device = resolve_device(cfg.device)
    probe = envs.make_env(env, **env_kwargs)
    try:
        check_env_fits(cfg, probe)
        env_id = probe.spec.id if probe.spec is not None else str(env)
        kwargs, hyper = algo_arguments(cfg, int(np.prod(probe.action_space.shape)))
        model, space, state_labels = None, None, cfg.observation == "state"
        if cfg.observation == "latent":
            model = WorldModel.from_checkpoint(cfg.checkpoint, device=device, env_id=env_id,
                                               action_dim=int(np.prod(probe.action_space.shape)))  # fmt: skip
            space, state_labels = model.resolve_cost_space(cfg.space), model.state_labels
        out.mkdir(parents=True, exist_ok=True)
        epsilon, calibration = resolve_epsilon(cfg, model, space, env, env_kwargs, probe, out)
    finally:
        probe.close()
    recorded = None
    if cfg.imagination:
        starts = LatentStarts.from_episodes(model, cfg.episodes, progress=progress)
        recorded = sum(n - 1 for n in starts.lengths)  # real transitions behind every imagined step
        train_env: VecEnv = WorldModelVecEnv(
            model, starts, epsilon=epsilon, num_envs=cfg.imagination_envs, horizon=cfg.imagination_horizon,
            context=cfg.imagination_context, space=space, reward="sparse" if cfg.sparse else "dense",
            seed=cfg.seed, latent_weight=cfg.latent_weight,
        )  # fmt: skip
    else:
        train_env = make_vec_env(cfg, env, env_kwargs, cfg.n_envs, model, epsilon)
    train_env = VecMonitor(train_env)
    eval_env = make_vec_env(dataclasses.replace(cfg, imagination=False), env, env_kwargs,
                            min(cfg.eval_envs, cfg.eval_episodes), model, epsilon)  # fmt: skip
    if cfg.algo in OFF_POLICY:
        check_replay_memory(train_env, cfg.buffer_size)
    settings = {**dataclasses.asdict(cfg), "reward": cfg.resolved_reward, "env": env,
                "env_kwargs": env_kwargs, "env_id": env_id, "cost_space": space, "state_labels": state_labels,
                "epsilon": epsilon, "calibration": calibration, "hyper_parameters": hyper}  # fmt: skip
    atomic_write_json(out / RUN_JSON, {"settings": settings, "result": None})

    agent = ALGORITHMS[cfg.algo](
        "MultiInputPolicy", train_env, seed=cfg.seed, device=device, verbose=0, **kwargs
    )
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    agent.set_logger(configure(str(out), ["csv", "tensorboard"] if tensorboard else ["csv"]))
    first_seed = EVAL_SEED_OFFSET + 10_000 * cfg.eval_seed
    bar = TqdmCallback(desc=f"{cfg.algo} {cfg.observation}") if progress else None
    curve = EvalCurveCallback(
        lambda: evaluate_success(agent, eval_env, cfg.eval_episodes, first_seed),
        cfg.eval_every, out, (lambda steps: steps) if recorded is None else (lambda steps: recorded),
        cfg.max_seconds, on_row=(lambda row: bar.note(f"success {row['success_rate']:.2f}")) if bar else None,
    )  # fmt: skip
    agent.learn(cfg.steps, callback=CallbackList([c for c in (bar, curve) if c is not None]))
    weights = save_policy(agent, out, {"settings": settings})
    zip_path = None
    if cfg.save_zip:
        zip_path = out / "model.zip"
        agent.save(zip_path)  # SB3's format: cloudpickle inside, load only your own
    train_env.close()
    eval_env.close()
    source = None if epsilon is None else ("calibrated" if calibration else "given")
    result = _summary(
        cfg, env_id, agent, curve, agent.num_timesteps if recorded is None else recorded,
        seconds=round(time.perf_counter() - t0, 1), epsilon=epsilon, epsilon_source=source, cost_space=space,
        checkpoint=None if model is None else str(model.meta.get("checkpoint")), state_labels=state_labels,
        tensorboard=tensorboard, curve=str(out / "curve.csv"), policy=str(weights),
        zip=None if zip_path is None else str(zip_path), out=str(out),
    )  # fmt: skip
    atomic_write_json(out / RUN_JSON, {"settings": settings, "result": result})
    return result
