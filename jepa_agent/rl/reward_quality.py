"""How well a planning space's distance works as a goal-reaching reward, measured on recorded episodes.

HER rewards a transition by the distance between its frame and a goal that is a later frame of the same
episode (the ``future`` strategy). This module scores that reward the way the issue asks, on held-out
episodes the world model never trained on:

* **AUROC for success**: how well ``-distance`` separates the pairs the task itself calls a success
  (the env's own rule between the two recorded states, ``env.unwrapped.hindsight_success``) from the
  others;
* **Spearman's rho** between the distance and the task's true goal distance (e.g. the end-effector
  distance on reach).

Pairs are hindsight goals: a frame ``i`` and a frame ``i + k`` of the same episode with ``k >= 1`` geometric
(``P(k = 1) = offset_p``: HER's future goals, near ones most often) plus a share drawn from other
episodes. ``k = 0`` (a frame and itself) is left out: every distance gets it right. Each space's distance
is scored on the same pairs, with pixel L2 beside it as the baseline a learned space must beat.

The same pairs calibrate the success radius of a sparse reward (:func:`calibrate_epsilon`): the distance
threshold that best separates the task's successes from its failures (Youden's J or F1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from jepa_agent.evaluation import auroc, spearman
from jepa_agent.rl.space import PlanningSpace

EPSILON_CRITERIA = ("youden", "f1")  # what calibrate_epsilon maximises


@dataclass
class HindsightPairs:
    """Frame pairs (achieved, goal) as indices into the concatenated frames, with the task's labels."""

    achieved: np.ndarray  # int [P]
    goal: np.ndarray  # int [P]
    true_distance: np.ndarray  # float [P], the task's own goal distance (m)
    success: np.ndarray  # bool [P], the task's own success rule


def hindsight_pairs(
    states: list[np.ndarray],
    success_fn: Any,
    pairs_per_episode: int = 50,
    offset_p: float = 0.2,
    other_episodes: float = 0.3,
    seed: int = 0,
) -> HindsightPairs:
    """Sample hindsight (frame, goal frame) pairs over episodes whose recorded states are ``states``.

    Args:
        states: per episode, the recorded states ``[T_e, S]`` (``EpisodeDataset.episode(i)["state"]``).
        success_fn: ``(states [P, S], goal_states [P, S]) -> (distance [P], success [P])``, the task's rule
            (``env.unwrapped.hindsight_success``).
        pairs_per_episode: pairs whose achieved frame is in each episode.
        offset_p: the geometric offset's ``P(k = 1)``: the goal is ``k >= 1`` frames later in the same
            episode (the episode's last frame when that is sooner).
        other_episodes: share of goals drawn from anywhere in the data instead.
        seed: the sampling seed.
    """
    if not states:
        raise ValueError("hindsight_pairs: no episodes")
    if not 0 < offset_p <= 1:
        raise ValueError(f"offset_p={offset_p!r}; expected in (0, 1]")
    if not 0 <= other_episodes <= 1:
        raise ValueError(f"other_episodes={other_episodes!r}; expected in [0, 1]")
    if min(len(s) for s in states) < 2:
        raise ValueError("hindsight_pairs: every episode needs at least 2 frames (a frame and a later goal)")
    if pairs_per_episode < 1:
        raise ValueError(f"pairs_per_episode={pairs_per_episode!r}; expected >= 1")
    rng = np.random.default_rng(seed)
    lengths = np.array([len(s) for s in states])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ep = np.repeat(np.arange(len(states)), pairs_per_episode)  # [P]
    i = (rng.random(len(ep)) * lengths[ep]).astype(np.int64)  # frame within its episode
    i = np.minimum(i, lengths[ep] - 2)  # every achieved frame has a later one
    k = rng.geometric(offset_p, size=len(ep))  # 1, 2, ... (1 with probability offset_p)
    j = np.minimum(i + k, lengths[ep] - 1)
    achieved, goal = starts[ep] + i, starts[ep] + j
    anywhere = rng.random(len(ep)) < other_episodes
    goal[anywhere] = rng.integers(0, int(lengths.sum()), size=int(anywhere.sum()))
    flat = np.concatenate(states)
    distance, success = success_fn(flat[achieved], flat[goal])
    distance, success = np.asarray(distance, dtype=np.float64), np.asarray(success, dtype=bool)
    return HindsightPairs(achieved, goal, distance, success)


def pixel_distance(frames: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Mean squared pixel difference (in [0, 1] units) between frames ``a`` and ``b`` (index arrays)."""
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), chunk):
        x = frames[a[s : s + chunk]].astype(np.float32) / 255.0
        y = frames[b[s : s + chunk]].astype(np.float32) / 255.0
        out[s : s + chunk] = ((x - y) ** 2).reshape(len(x), -1).mean(axis=1)
    return out


def score_distance(distance: np.ndarray, pairs: HindsightPairs) -> dict[str, float]:
    """AUROC of ``-distance`` for the pairs' success, and Spearman's rho with their true distance."""
    return {
        "auroc": round(auroc(-distance, pairs.success), 4),
        "spearman": round(spearman(distance, pairs.true_distance), 4),
    }


def reward_quality(
    spaces: dict[str, PlanningSpace], frames: np.ndarray, pairs: HindsightPairs
) -> dict[str, dict[str, float]]:
    """Score each planning space's distance (and pixel L2, as ``"pixels"``) on the same hindsight pairs.

    Args:
        spaces: name -> :class:`PlanningSpace` (e.g. the space the planner uses and the raw latent).
        frames: every episode's frames concatenated, uint8 ``[N, H, W, 3]`` (the pairs index into it).
        pairs: from :func:`hindsight_pairs`.
    """
    out = {"pixels": score_distance(pixel_distance(frames, pairs.achieved, pairs.goal), pairs)}
    latents: dict[int, torch.Tensor] = {}  # one encoder pass over every frame per model, whatever its spaces
    for name, space in spaces.items():
        with torch.inference_mode():  # as PlanningSpace.features, from the shared latents
            if id(space.model) not in latents:
                latents[id(space.model)] = space.model.encode_pixels(frames, batch_size=space.batch_size)
            feats = space.project_latents(latents[id(space.model)]).float().cpu().numpy()  # [N, F]
        out[name] = score_distance(space.distance(feats[pairs.achieved], feats[pairs.goal]), pairs)
    return out


def calibrate_epsilon(distance: np.ndarray, success: np.ndarray, criterion: str = "youden") -> float:
    """The success radius ``epsilon`` for which ``distance <= epsilon`` best predicts ``success``.

    The sparse latent reward (``-(distance > epsilon)``) and imagined success (``distance <= epsilon``)
    stand in for the task's own success; this picks the radius on labelled pairs, e.g. hindsight pairs of
    recorded training episodes (:func:`hindsight_pairs`, their planning-space distance beside the task's
    success rule between the two recorded states).

    Args:
        distance: ``[P]`` distances of the pairs (any units; the radius is in the same).
        success: ``[P]`` the task's success for each pair.
        criterion: ``youden`` (maximise Youden's J = TPR - FPR: balanced, whatever the share of successes)
            or ``f1`` (maximise the F1 score of the successes: fewer false successes when they are rare).

    Returns:
        A radius > 0 halfway between the best threshold's distance and the next larger one (the largest
        distance when the best threshold takes every pair).

    Raises:
        ValueError: an unknown criterion, arrays of different lengths, pairs of one class only (no success
            or no failure: nothing to separate), or no positive radius (every distance is 0).
    """
    if criterion not in EPSILON_CRITERIA:
        raise ValueError(f"criterion={criterion!r}; expected one of {list(EPSILON_CRITERIA)}")
    d = np.asarray(distance, dtype=np.float64).ravel()
    y = np.asarray(success, dtype=bool).ravel()
    if len(d) != len(y):
        raise ValueError(f"calibrate_epsilon: {len(d)} distances but {len(y)} success labels")
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError(
            f"calibrate_epsilon: {pos} successful and {neg} failed pairs; expected some of each to place the "
            "radius between them (record more or longer episodes, or give epsilon)"
        )
    order = np.argsort(d, kind="stable")
    ds, ys = d[order], y[order]
    tp = np.cumsum(ys)  # successes within ds[i] (predicted success: distance <= ds[i])
    fp = np.cumsum(~ys)
    if criterion == "youden":
        score = tp / pos - fp / neg
    else:
        score = 2 * tp / (tp + fp + pos)  # F1 = 2 TP / (2 TP + FP + FN), FN = pos - TP
    distinct = np.r_[ds[1:] != ds[:-1], True]  # a threshold takes every pair tied with it
    i = int(np.argmax(np.where(distinct, score, -np.inf)))
    epsilon = float(ds[i] if i == len(ds) - 1 else (ds[i] + ds[i + 1]) / 2)
    if not epsilon > 0:
        raise ValueError("calibrate_epsilon: every distance is 0; expected distances that separate the pairs")
    return epsilon
