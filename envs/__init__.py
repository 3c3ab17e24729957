"""MuJoCo tasks as Gymnasium envs. Importing this package registers the ids below.

``make_env("gym", id=...)`` (``env=gym``) makes any Gymnasium env that renders RGB a task instead, through
the adapter of ``envs/gym_adapter.py``. ``MUJOCO_GL`` is set to ``egl`` (headless) only when unset,
before MuJoCo is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Optional

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
from omegaconf import MISSING, DictConfig, OmegaConf  # noqa: E402

from jepa_agent.checkpoint import RENDER_SETTINGS  # noqa: E402

ENV_IDS: dict[str, str] = {
    "reach": "JepaAgent/Reach-v0",
    "reach_distracting": "JepaAgent/ReachDistracting-v0",  # same task, distracting visuals (envs/reach.py)
    "reach_torque": "JepaAgent/ReachTorque-v0",  # same arm, joint torques: it coasts (envs/reach.py)
    "push": "JepaAgent/Push-v0",  # a point pusher moves a T block (envs/push.py)
}

GYM = "gym"  # the env name of the adapter: any Gymnasium env, by its id (envs/gym_adapter.py)

if ENV_IDS["reach"] not in gym.registry:
    gym.register(id=ENV_IDS["reach"], entry_point="envs.reach:ReachEnv", max_episode_steps=50)
if ENV_IDS["reach_distracting"] not in gym.registry:
    gym.register(
        id=ENV_IDS["reach_distracting"],
        entry_point="envs.reach:ReachEnv",
        max_episode_steps=50,
        kwargs={"distracting": True},
    )
if ENV_IDS["reach_torque"] not in gym.registry:
    gym.register(
        id=ENV_IDS["reach_torque"],
        entry_point="envs.reach:ReachEnv",
        max_episode_steps=50,
        kwargs={"control": "torque"},
    )
if ENV_IDS["push"] not in gym.registry:
    gym.register(id=ENV_IDS["push"], entry_point="envs.push:PushEnv", max_episode_steps=50)


@dataclass
class TaskConfig:
    """What every ``env`` config holds, whichever way its env is made (:class:`EnvConfig`,
    :class:`GymEnvConfig`). A schema only: every value comes from the group's YAML file (configs/env/*.yaml
    extend a schema), so none is written twice here."""

    name: str = MISSING  # a key of ENV_IDS (or a full id), or GYM
    id: str = MISSING
    image_size: int = MISSING  # observation pixels are image_size x image_size x 3
    max_episode_steps: int = MISSING
    joint_angles: int = MISSING  # leading proprio dims that are joint angles: readout targets (0: none)
    continuous_joints: list[int] = MISSING  # joints that turn freely
    data_policy: str = (
        MISSING  # collect.py's policy whose episodes train the world model (train_all's default)
    )
    data_target_span: float = 1.5  # collect.py's noisy.target_span for this task (rad; reach_distracting: 3)
    context_frames: int = MISSING  # frames that hold the state: 1 if one frame does, 2+ if velocity matters
    action_chunk: int = 1  # env steps per world-model step (a macro-action of that many env actions)
    metric_kind: str = "distance"  # world_model.metric.kind: distance (symmetric) | critic (push: asymmetric)
    frame_tokens: int = 1  # the compact latent's tokens per frame (world_model.frame_tokens; push: 4 rows)
    displacement_inputs: str = MISSING  # the displacement head: pair | diff (diff: a new scene per episode)
    displacement_hidden: int = MISSING  # world_model.displacement.hidden (0: none)
    anchor_hidden: int = MISSING  # the anchor head's width (world_model.anchor.hidden; 0: none)


@dataclass
class EnvConfig(TaskConfig):
    """The ``env`` config group's schema for our tasks: which task, and how it is made. A task with settings
    of its own extends it (:class:`PushEnvConfig`); its YAML file names that schema instead."""

    frame_skip: int = MISSING  # physics steps per env step
    max_delta: float = MISSING  # servo-target displacement per unit action (reach: rad per joint; push: m)


@dataclass
class PushEnvConfig(EnvConfig):
    """``env=push``: :class:`EnvConfig` plus where the goals come from (``envs.push.PushEnv``)."""

    goal: str = MISSING  # offset (the expert's pose goal_steps on) | random (an independent random pose)
    goal_steps: int = MISSING  # env steps between the start and an offset goal
    antialias: int = 0  # multisamples per pixel when rendering (0: none, the default; 4: smooth moves)


@dataclass
class TorqueEnvConfig(TaskConfig):
    """``env=reach_torque``: a task driven by joint torques (``envs.reach.ReachEnv(control="torque")``)."""

    frame_skip: int = MISSING  # physics steps per env step
    control: str = MISSING  # torque
    max_torque: float = MISSING  # N m per unit action
    damping: float = MISSING  # N m s / rad on each joint


@dataclass
class GymEnvConfig(TaskConfig):
    """``env=gym``: any Gymnasium env that renders RGB, by its ``id``, through the adapter
    (:func:`envs.gym_adapter.make_goal_env`, whose arguments these are: its docstring says what each is)."""

    goal: str = MISSING  # auto | env | rollout | state | file:<path>
    goal_steps: int = MISSING  # random steps from the start to a rollout goal
    goal_state: Optional[list[float]] = MISSING  # noqa: UP045 - the state goal (null: sampled)
    success: str = MISSING  # auto | distance | is_success | success | none
    success_slice: Optional[list[int]] = MISSING  # noqa: UP045 - [start, stop] of the state for distance
    success_threshold: float = MISSING  # success: distance < success_threshold
    proprio: Optional[list[int]] = MISSING  # noqa: UP045 - [start, stop] of the observation vector
    render: str = MISSING  # auto | obs | mujoco | env
    camera: Optional[str] = MISSING  # noqa: UP045 - a model camera (null: the env's own view)
    check: bool = MISSING  # run check_goal_env when the env is made; refuse it on a fault
    make_kwargs: dict[str, Any] = MISSING  # gymnasium.make arguments


ENV_SCHEMAS: dict[str, type] = {  # name in the env group -> schema
    "schema": EnvConfig,
    "push_schema": PushEnvConfig,
    "torque_schema": TorqueEnvConfig,
    "gym_schema": GymEnvConfig,
}
META_KEYS = (
    "name",
    "id",
    "joint_angles",
    "continuous_joints",
    "data_policy",
    "data_target_span",
    "context_frames",
    "action_chunk",
    "metric_kind",
    "frame_tokens",
    "displacement_inputs",
    "displacement_hidden",
    "anchor_hidden",
)  # env config keys that are not env arguments


# settings an env gained after datasets and checkpoints were made, and the default that leaves the env as it
# was: at that default they are left out of the kwargs, so what was recorded before still resumes and mixes.
# So far these are the render settings a checkpoint records (one table: jepa_agent.checkpoint.RENDER_SETTINGS)
LATER_DEFAULTS = dict(RENDER_SETTINGS)


def env_kwargs_from_config(cfg: Any) -> dict[str, Any]:
    """The keyword arguments for :func:`make_env` in an ``env`` config (a Hydra node, a schema instance or
    a dict): every key but :data:`META_KEYS`, which describe the task to the other parts."""
    if isinstance(cfg, DictConfig):
        values = OmegaConf.to_container(cfg, resolve=True)
    elif is_dataclass(cfg):
        values = asdict(cfg)
    else:
        values = dict(cfg)
    keep = ("id",) if values.get("name") == GYM else ()  # the adapter's id names the env it makes
    return {
        k: v
        for k, v in values.items()
        if (k not in META_KEYS or k in keep) and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])
    }


def make_env_from_config(cfg: Any) -> gym.Env:
    """The env an ``env`` config (:class:`EnvConfig` or its Hydra node) describes."""
    name = cfg["name"] if isinstance(cfg, Mapping) else cfg.name
    return make_env(name, **env_kwargs_from_config(cfg))


def resolve_env_id(name: str) -> str:
    """Map a short name (``"reach"``) or a full id (``"JepaAgent/Reach-v0"``) to the registered id."""
    if name in ENV_IDS:
        return ENV_IDS[name]
    if name in ENV_IDS.values():
        return name
    available = sorted(ENV_IDS) + sorted(ENV_IDS.values())
    if name == GYM:
        raise ValueError(f"env {GYM!r} names no task by itself: its id is the env.id setting")
    raise ValueError(f"unknown env {name!r}; available: {available}, or {GYM!r} with id=<any Gymnasium id>")


def make_env(name: str = "reach", max_episode_steps: int | None = None, **kwargs) -> gym.Env:
    """``gymnasium.make`` for our tasks; ``max_episode_steps`` overrides the 50-step default.

    ``make_env("gym", id="Pusher-v5", ...)`` adapts any Gymnasium env instead
    (:func:`envs.gym_adapter.make_goal_env`; the other keyword arguments are its settings)."""
    if max_episode_steps is not None:
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps!r}: expected an int >= 1")
        kwargs["max_episode_steps"] = int(max_episode_steps)
    if name == GYM:
        from envs.gym_adapter import make_goal_env

        if kwargs.get("id") in (None, MISSING):
            raise ValueError(f"env {GYM!r} needs an env id: pass env.id=<a Gymnasium env id>, e.g. Pusher-v5")
        return make_goal_env(kwargs.pop("id"), **kwargs)
    return gym.make(resolve_env_id(name), **kwargs)


__all__ = [
    "ENV_IDS",
    "ENV_SCHEMAS",
    "GYM",
    "META_KEYS",
    "EnvConfig",
    "GymEnvConfig",
    "PushEnvConfig",
    "TaskConfig",
    "TorqueEnvConfig",
    "env_kwargs_from_config",
    "make_env",
    "make_env_from_config",
    "resolve_env_id",
]
