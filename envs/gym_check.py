"""``check_goal_env``: is an adapted env (``envs/gym_adapter.py``) a usable task? Each check comes from a
failure seen in peer libraries or on this machine (shared/research/push_and_byo_env.md, C.4): black or
constant frames, a reset the seed does not fix, a goal image that is not its goal state, success never true
at the goal or always true at the start, frames that actions never change, an unbounded action space, and
slow rendering (a warning).
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.gym_adapter import SLOW_STEP_MS, GoalImageEnv, _check_int, _env_name, _has_pixels, _sample


def _frame_fault(frame: Any, shape: tuple[int, ...], what: str) -> str | None:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.shape != shape:
        return f"{what} is {frame.dtype} {frame.shape}; expected uint8 {shape}"
    if frame.max() == 0:
        return f"{what} is black (a broken renderer: see shared/MACHINE-NOTES.md)"
    if np.ptp(frame.reshape(-1, 3), axis=0).max() == 0:
        return f"{what} is one constant colour (the camera sees nothing)"
    return None


def _info_fault(info: dict[str, Any], when: str) -> str | None:
    missing = [k for k in ("is_success", "distance") if k not in info]
    return f"{when} info lacks {missing}" if missing else None


def _same(a: np.ndarray, b: np.ndarray, tolerance: float = 1.0) -> bool:
    """Equal images, up to ``tolerance`` grey levels of mean absolute difference."""
    return a.shape == b.shape and float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) <= tolerance


def check_goal_env(env: gym.Env, episodes: int = 3, seed: int = 0, steps: int = 5) -> dict[str, Any]:
    """Check that ``env`` (a :func:`make_goal_env` env, or any env of this library) is a usable task.

    Per episode (``reset(seed + i)``): the first frame and the goal image are uint8 ``[S, S, 3]``, neither
    black nor one colour; a second ``reset`` with the seed gives the same pixels and goal; ``info`` has
    ``is_success`` and ``distance``; the goal state, set and drawn, is the goal image (when it is a
    simulator state that can be set); success holds at the goal itself (a distance rule at the goal
    state; a rollout goal's actions replayed from the start, which must reach the goal image too); then
    ``steps`` random steps (their frames, their time). Over all: the action space is a bounded ``Box``;
    success is not true at every start (trivial goals) nor false at every goal; random actions change
    the frames. The env is left reset.

    Returns:
        ``{"env", "ok", "failures": ["<check>: <fault>", ...], "warnings", "checks": {check: "ok" |
        "failed: ..." | "skipped: ..."}, "episodes", "step_ms", "success_at_reset", "success_at_goal"}``.
    """
    _check_int("episodes", episodes, 1)
    u, space, checks = env.unwrapped, env.action_space, {}
    adapter = u if isinstance(u, GoalImageEnv) else None

    def note(check: str, fault: str | None = None, skipped: str | None = None) -> None:
        old = checks.get(check, "")
        if old.startswith("failed") or (skipped and old == "ok"):
            return  # a check keeps its first fault; a skip never hides a pass
        checks[check] = f"failed: {fault}" if fault else f"skipped: {skipped}" if skipped else "ok"

    if not isinstance(space, spaces.Box):
        note("action_space", f"the action space {space} is not a Box")
    elif not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        note("action_space", f"the action space {space} is unbounded; the planner samples inside the box")
    else:
        note("action_space")
    missing = [m for m in ("render_goal", "goal_state", "get_state") if not callable(getattr(u, m, None))]
    if not _has_pixels(env.observation_space):
        missing.append("a Dict observation with 'pixels'")
    if missing:
        note("protocol", f"missing {missing}; make it with envs.gym_adapter.make_goal_env")
        return _report(env, checks, episodes, [], [], [])
    shape = tuple(env.observation_space["pixels"].shape)
    at_reset, at_goal, step_s, moved = [], [], [], False
    rng = np.random.default_rng(seed)
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        first, goal_image = obs["pixels"], np.asarray(u.render_goal())
        goal_state = np.asarray(u.goal_state(), dtype=np.float64)
        note("frames", _frame_fault(first, shape, f"the first frame of episode {i}"))
        note("goal_image", _frame_fault(goal_image, shape, f"the goal image of episode {i}"))
        note("info", _info_fault(info, "reset"))
        at_reset.append(bool(info.get("is_success", False)))
        again, _ = env.reset(seed=seed + i)
        same = _same(first, again["pixels"]) and _same(goal_image, np.asarray(u.render_goal()))
        note(
            "deterministic_reset",
            None if same else f"reset(seed={seed + i}) twice gives other pixels or goals",
        )

        drawable = adapter is not None and adapter.can_set_state and adapter._draw() is not None
        if drawable and goal_state.shape == adapter.get_state().shape:
            adapter.set_state(goal_state)
            drawn = adapter.render()
            note("goal_matches_state", None if _same(drawn, goal_image) else
                 f"episode {i}'s goal state, set and drawn, differs from its goal image")  # fmt: skip
            if callable(adapter.success_rule) or adapter.success_rule == "distance":
                at_goal.append(adapter.distance(adapter.get_state(), goal_state) < adapter.success_threshold)
            env.reset(seed=seed + i)
        else:
            note("goal_matches_state", skipped="the goal state is not a simulator state that can be set")
        if adapter is not None and adapter.goal_source == "rollout":
            replay, info = obs, {}
            for action in list(adapter.goal_actions):
                replay, _, _, _, info = adapter.step(action)
            at_goal.append(bool(info.get("is_success", False)))
            reached = _same(replay["pixels"], goal_image)
            note(
                "goal_replay",
                None if reached else f"episode {i}'s goal actions, replayed, miss its goal image",
            )
            env.reset(seed=seed + i)

        for _ in range(steps):
            action = _sample(rng, space) if isinstance(space, spaces.Box) else space.sample()
            t0 = time.perf_counter()
            obs, _, terminated, truncated, info = env.step(action)
            step_s.append(time.perf_counter() - t0)
            note("frames", _frame_fault(obs["pixels"], shape, f"a frame of episode {i}"))
            note("info", _info_fault(info, "step"))
            moved = moved or not _same(obs["pixels"], first, 0.0)
            if terminated or truncated:
                break

    trivial = (
        f"success is true at the start of all {episodes} episodes: trivial goals (lower success_threshold?)"
    )
    note("trivial_goals", trivial if all(at_reset) else None)
    if at_goal:
        never = "success is never true at the goal itself (use success=distance with success_slice?)"
        note("success_at_goal", None if any(at_goal) else never)
    else:
        note("success_at_goal", skipped="no goal state to test success at")
    note("frames_change", None if moved else "random actions never change the frames")
    env.reset(seed=seed)
    return _report(env, checks, episodes, at_reset, at_goal, step_s)


def _report(
    env: gym.Env, checks: dict[str, str], episodes: int, at_reset: list, at_goal: list, step_s: list
) -> dict[str, Any]:
    failures = [f"{k}: {v.removeprefix('failed: ')}" for k, v in checks.items() if v.startswith("failed")]
    step_ms = 1000.0 * float(np.median(step_s)) if step_s else float("nan")
    warnings = []
    if step_ms > SLOW_STEP_MS:
        warnings.append(
            f"a step with its frame takes {step_ms:.1f} ms (> {SLOW_STEP_MS} ms): render at the model's "
            "size, without shadows (shadowsize 0) and anti-aliasing (offsamples 0)"
        )
    return {
        "env": _env_name(env),
        "ok": not failures,
        "failures": failures,
        "warnings": warnings,
        "checks": checks,
        "episodes": episodes,
        "step_ms": step_ms,
        "success_at_reset": float(np.mean(at_reset)) if at_reset else None,
        "success_at_goal": float(np.mean(at_goal)) if at_goal else None,
    }


__all__ = ["check_goal_env"]
