"""Evaluation protocol: the same held-out goals for every policy, fixed step budget, success at any step
and at the end, mean with a 95% Wilson interval, episode videos (observation beside the goal).

A policy is anything with ``reset(goal)`` and ``act(obs) -> action``; ``goal`` is a dict with
``"image"`` (uint8 ``[H, W, 3]``: the env's rendered goal or a user image) and ``"state"`` (the goal's
true state, for the oracle only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np

from jepa_agent.utils import atomic_path

EVAL_SEED_OFFSET = 1_000_000  # evaluation goals come from seeds disjoint from collection seeds (0, 1, ...)


class Policy(Protocol):
    def reset(self, goal: dict[str, np.ndarray]) -> None: ...

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


class RandomPolicy:
    """Uniform random actions (the random baseline), seeded per episode."""

    def __init__(self, action_space: gym.spaces.Box, seed: int = 0) -> None:
        self.action_space = action_space
        self.seed = seed
        self._episode = 0

    def reset(self, goal: dict[str, np.ndarray]) -> None:
        self.action_space.seed(self.seed + self._episode)
        self._episode += 1

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.action_space.sample()


class ZeroPolicy:
    """Zero actions (the servo targets stay where the robot is): the do-nothing baseline, which measures
    how many goals are met without acting (already at the start, or by drifting there)."""

    def __init__(self, action_space: gym.spaces.Box) -> None:
        self.action = np.clip(np.zeros(action_space.shape), action_space.low, action_space.high).astype(
            action_space.dtype
        )

    def reset(self, goal: dict[str, np.ndarray]) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.action.copy()


@dataclass
class EpisodeResult:
    seed: int
    success_any: bool  # within the env's threshold at any step
    success_end: bool  # within the threshold at the last step
    final_distance: float
    min_distance: float
    steps: int
    seconds: float
    plan_seconds: list[float] = field(default_factory=list)
    # the env's other numbers in the last step's info (push: pusher_distance, block_distance, yaw_error),
    # so a miss can be told apart by what missed
    final_info: dict[str, float] = field(default_factory=dict)


def final_numbers(info: dict[str, Any]) -> dict[str, float]:
    """The real numbers of a step's ``info`` other than ``distance`` (recorded on its own) and ``is_success``:
    an env's own error terms, as floats (bools and non-finite or non-numeric values left out)."""
    out = {}
    for key, value in info.items():
        if key in ("distance", "is_success") or isinstance(value, (bool, np.bool_)):
            continue
        if isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate (well behaved at 0% and 100%)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]  # start of each run of equal values
    run = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(xs)]
    mean_rank = (starts + ends + 1) / 2.0  # average of the 1-based ranks starts+1 .. ends
    ranks = np.empty_like(x)
    ranks[order] = mean_rank[run]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's r of the tie-averaged ranks); nan for a constant input."""
    rx, ry = rankdata(x), rankdata(y)
    if len(rx) != len(ry):
        raise ValueError(f"spearman: {len(rx)} and {len(ry)} values; expected as many of each")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the True ``labels`` (higher score = more likely True),
    ties counted half (the Mann-Whitney U statistic); nan when one class is absent."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def side_by_side(obs: np.ndarray, goal: np.ndarray, scale: int = 2) -> np.ndarray:
    """``[H, 2W, 3]`` frame: observation (left) beside the goal image (right), upscaled by ``scale``."""
    frame = np.concatenate([obs, goal], axis=1)
    return np.kron(frame, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else frame


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """Write frames to an mp4 atomically (H.264 via imageio-ffmpeg)."""
    with atomic_path(path) as tmp:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as w:
            for f in frames:
                w.append_data(f)


def run_episode(
    env: gym.Env,
    policy: Policy,
    seed: int,
    goal_image: np.ndarray | None = None,
    video_path: Path | None = None,
) -> EpisodeResult:
    """Run one episode to the env's time limit. ``goal_image`` replaces the env's rendered goal image."""
    obs, info = env.reset(seed=seed)
    u = env.unwrapped
    goal = {"image": u.render_goal() if goal_image is None else goal_image, "state": u.goal_state()}
    policy.reset(goal)
    frames = [side_by_side(obs["pixels"], goal["image"])] if video_path else None
    distances, successes, plan_seconds = [info["distance"]], [bool(info["is_success"])], []
    t0 = time.perf_counter()
    done = False
    while not done:
        action = policy.act(obs)
        last = getattr(policy, "last_plan_seconds", None)
        if last is not None:
            plan_seconds.append(last)
        obs, _, terminated, truncated, info = env.step(action)
        distances.append(info["distance"])
        successes.append(bool(info["is_success"]))
        if frames is not None:
            frames.append(side_by_side(obs["pixels"], goal["image"]))
        done = terminated or truncated
    if video_path is not None:
        write_video(video_path, frames, fps=env.metadata.get("render_fps", 20))
    return EpisodeResult(
        seed=seed,
        success_any=any(successes),
        success_end=successes[-1],
        final_distance=float(distances[-1]),
        min_distance=float(min(distances)),
        steps=len(distances) - 1,
        seconds=time.perf_counter() - t0,
        plan_seconds=plan_seconds,
        final_info=final_numbers(info),
    )


def success_rates(reached: list[bool], ended: list[bool]) -> dict[str, Any]:
    """``episodes``, success at any step and at the end (``reached`` / ``ended``, one bool per episode) with
    their 95% Wilson intervals: the success block of every evaluation's report."""
    n, k_any, k_end = len(reached), int(sum(map(bool, reached))), int(sum(map(bool, ended)))
    return {
        "episodes": n,
        "success_rate": k_any / n if n else float("nan"),
        "success_ci95": list(wilson_interval(k_any, n)),
        "success_rate_end": k_end / n if n else float("nan"),
        "success_end_ci95": list(wilson_interval(k_end, n)),
    }


def summarize(results: list[EpisodeResult]) -> dict[str, Any]:
    """Success rates (any step / end) with 95% Wilson intervals, distances, plan time."""
    n = len(results)
    plan = [s for r in results for s in r.plan_seconds]
    return {
        **success_rates([r.success_any for r in results], [r.success_end for r in results]),
        "final_distance_mean": float(np.mean([r.final_distance for r in results])) if n else float("nan"),
        "min_distance_mean": float(np.mean([r.min_distance for r in results])) if n else float("nan"),
        "plan_seconds_median": float(np.median(plan)) if plan else None,
        "episode_seconds_median": float(np.median([r.seconds for r in results])) if n else float("nan"),
    }


def evaluate(
    env: gym.Env,
    policies: dict[str, Policy],
    seeds: list[int],
    goal_image: np.ndarray | None = None,
    video_dir: Path | None = None,
    video_policies: tuple[str, ...] = (),
    max_videos: int | None = None,
    progress: Callable[[str, int], None] | None = None,
    on_episode: Callable[[str, int, EpisodeResult], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every policy on the same goals (``env.reset(seed=s)`` for each seed in ``seeds``).

    ``on_episode(policy name, index, result)`` is called as each episode ends (e.g. to log it, so that
    an interrupted run keeps what it finished).

    Returns:
        ``{policy name: {**summarize(...), "per_episode": [asdict(EpisodeResult), ...]}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, policy in policies.items():
        results = []
        for i, seed in enumerate(seeds):
            video = None
            if video_dir is not None and name in video_policies and (max_videos is None or i < max_videos):
                video = Path(video_dir) / f"{name}_episode_{i:03d}.mp4"
            results.append(run_episode(env, policy, seed, goal_image=goal_image, video_path=video))
            if on_episode is not None:
                on_episode(name, i, results[-1])
            if progress is not None:
                progress(name, i)
        out[name] = {**summarize(results), "per_episode": [asdict(r) for r in results]}
    return out
