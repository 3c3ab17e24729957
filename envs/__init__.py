"""MuJoCo tasks as Gymnasium envs. Importing this package registers the ids below.

``MUJOCO_GL`` is set to ``egl`` (headless) only when unset, before MuJoCo is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
from omegaconf import MISSING  # noqa: E402

ENV_IDS: dict[str, str] = {
    "reach": "JepaAgent/Reach-v0",
    "reach_distracting": "JepaAgent/ReachDistracting-v0",  # same task, distracting visuals (envs/reach.py)
}

if ENV_IDS["reach"] not in gym.registry:
    gym.register(id=ENV_IDS["reach"], entry_point="envs.reach:ReachEnv", max_episode_steps=50)
if ENV_IDS["reach_distracting"] not in gym.registry:
    gym.register(
        id=ENV_IDS["reach_distracting"],
        entry_point="envs.reach:ReachEnv",
        max_episode_steps=50,
        kwargs={"distracting": True},
    )


@dataclass
class EnvConfig:
    """The ``env`` config group's schema: which task, and how it is made. A schema only: every value comes
    from the group's YAML file (configs/env/*.yaml extend it), so none is written twice here."""

    name: str = MISSING  # a key of ENV_IDS (or a full id)
    id: str = MISSING
    image_size: int = MISSING  # observation pixels are image_size x image_size x 3
    frame_skip: int = MISSING  # physics steps per env step
    max_delta: float = MISSING  # rad of servo-target displacement per unit action
    max_episode_steps: int = MISSING
    joint_angles: int = MISSING  # leading proprio dims that are joint angles (the labelled readout baseline)
    continuous_joints: list[int] = MISSING  # joints that turn freely


def make_env_from_config(cfg: Any) -> gym.Env:
    """The env an ``env`` config (:class:`EnvConfig` or its Hydra node) describes."""
    return make_env(
        cfg.name,
        image_size=int(cfg.image_size),
        frame_skip=int(cfg.frame_skip),
        max_delta=float(cfg.max_delta),
        max_episode_steps=int(cfg.max_episode_steps),
    )


def resolve_env_id(name: str) -> str:
    """Map a short name (``"reach"``) or a full id (``"JepaAgent/Reach-v0"``) to the registered id."""
    if name in ENV_IDS:
        return ENV_IDS[name]
    if name in ENV_IDS.values():
        return name
    available = sorted(ENV_IDS) + sorted(ENV_IDS.values())
    raise ValueError(f"unknown env {name!r}; available: {available}")


def make_env(name: str = "reach", max_episode_steps: int | None = None, **kwargs) -> gym.Env:
    """``gymnasium.make`` for our tasks; ``max_episode_steps`` overrides the 50-step default."""
    env_id = resolve_env_id(name)
    if max_episode_steps is not None:
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps!r}: expected an int >= 1")
        kwargs["max_episode_steps"] = int(max_episode_steps)
    return gym.make(env_id, **kwargs)


__all__ = ["ENV_IDS", "EnvConfig", "make_env", "make_env_from_config", "resolve_env_id"]
