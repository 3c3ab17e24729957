"""MuJoCo tasks as Gymnasium envs. Importing this package registers the ids below.

``MUJOCO_GL`` is set to ``egl`` (headless) only when unset, before MuJoCo is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402

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


__all__ = ["ENV_IDS", "make_env", "resolve_env_id"]
