"""A cheap planning-quality score for an encoder and a cost space, before any expensive planning run.

Greedy search with PERFECT dynamics over a grid of arm poses (the reach tasks): every pose of a
``shoulder_steps x elbow_steps`` joint grid is rendered as a goal image would be (in one or several
scenes of the env), encoded by the world model's frozen encoder, and mapped into each cost space. From
random starts, each replan jumps to the cheapest pose within ``window`` rad in every joint (what a planner
with a perfect world model and horizon H reaches: H x max_delta) until it stops moving; a pair succeeds
when it stops ON the goal. A space whose cost is flat or bumpy between poses whose arms do not overlap
fails here however good the world model is; a space that scores high leaves planning to the predictor.
``scripts/score.py`` prints it; docs/benchmarks.md shows how well it predicts ``plan.py``'s success.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

import envs  # sets MUJOCO_GL=egl (when unset) before MuJoCo loads
from jepa_agent.costs import CostConfig

__all__ = ["cost_space_features", "greedy_success", "planning_score", "render_pose_grid"]


def render_pose_grid(
    env_name: str, image_size: int, shoulder_steps: int, elbow_steps: int, scene_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Joint grid ``q [M, 2]`` and the arm rendered at each pose ``[M, S, S, 3]`` (the goal renderer) in
    the scene of ``env.reset(seed=scene_seed)`` (a distracting env draws its distractions there)."""
    env = envs.make_env(env_name, image_size=image_size)
    u = env.unwrapped
    if not all(hasattr(u, a) for a in ("set_goal", "render_goal", "sample_low", "sample_high")):
        env.close()
        raise ValueError(
            f"env={env_name}: the pose-grid score needs a reach-style env (set_goal, render_goal and "
            "joint sampling ranges)"
        )
    env.reset(seed=scene_seed)
    lo, hi = u.sample_low, u.sample_high
    axes = [
        np.linspace(lo[0], hi[0], shoulder_steps, endpoint=not np.isclose(hi[0] - lo[0], 2 * np.pi)),
        np.linspace(lo[1], hi[1], elbow_steps),
    ]
    q = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    images = []
    for pose in q:
        u.set_goal(pose)
        images.append(u.render_goal())
    env.close()
    return q, np.stack(images)


Space = Tensor | Callable[..., Tensor]  # features [M, F], or goal index (+ current pose, moves) -> costs [M]


def greedy_success(
    feats: Space, q: np.ndarray, goals: np.ndarray, starts: np.ndarray, window: float, wrap: bool
) -> float:
    """Fraction of (start, goal) pairs where jumping to the cheapest pose in the window ends on the goal
    (cost: mean squared difference of ``feats [M, F]``, or ``feats(goal)`` when it is a cost function, or
    ``feats(goal, current, dq)`` when that function reads the current pose (``feats.reads_current``; ``dq
    [M, J]`` the joint moves from the current pose to every pose, wrapped))."""
    qs = torch.as_tensor(q, dtype=torch.float32)
    hits = 0
    current = callable(feats) and getattr(feats, "reads_current", False)
    for g, cur in zip(goals, starts, strict=True):
        if not current:
            cost = feats(int(g)) if callable(feats) else (feats - feats[g]).square().mean(1)  # [M]
        for _ in range(50):
            d = qs - qs[cur]
            if wrap:
                d[:, 0] = torch.remainder(d[:, 0] + np.pi, 2 * np.pi) - np.pi
            if current:
                cost = feats(int(g), int(cur), d)
            c = torch.where((d.abs() <= window).all(1), cost, torch.full_like(cost, float("inf")))
            nxt = int(c.argmin())
            if nxt == cur:
                break
            cur = nxt
        hits += int(cur == g)
    return hits / len(goals)


@torch.inference_mode()
def cost_space_features(model: Any, images: np.ndarray, max_delta: float | None = None) -> dict[str, Space]:
    """Each cost space the model offers, over ``images``: ``pixels``, ``latent`` and ``readout`` (a state
    readout) and ``metric_head`` (a trained temporal-distance head alone) as features ``[M, F]``; ``metric``
    as the label-free cost ``plan.py`` plans with (``WorldModel.cost``'s defaults, without the action term:
    the head, its latent term and, when trained, the displacement head), a function of the goal's index.
    With a trained anchor head and ``max_delta`` (joint move per unit action), ``metric`` adds its term as
    the planner reads it: the head's reading at the *current* pose (through ``cost.anchor_shift``'s views)
    less the actions a jump takes (``dq / max_delta``, perfect dynamics), and ``anchor`` scores that term
    alone."""
    anchored = bool(getattr(model, "anchor_trained", False))
    if anchored:  # [M, N, D] standardised latents, and the anchor head's embeddings [M, V, hidden] of V views
        z, h = model.encode_pixels(images, with_anchor=True, anchor_shift=CostConfig.anchor_shift)
        h = h.reshape(len(z), -1, h.shape[-1])
    else:
        z, h = model.encode_pixels(images), None
    spaces: dict[str, Space] = {
        "pixels": torch.as_tensor(images).flatten(1).float() / 255.0,
        "latent": z.flatten(1).float().cpu(),
    }
    if model.metric_trained:
        spaces["metric_head"] = model.metric(z).float().cpu()  # the temporal-distance head alone
        still = torch.zeros(len(z), 1, model.action_dim, device=z.device)  # the action term is left out

        @torch.inference_mode()
        def metric_cost(g: int) -> Tensor:
            cost = model.cost(z[g], space="metric", action_weight=0.0)
            return cost(z[:, None], still).float().cpu()  # every pose as a one-step imagined future

        spaces["metric"] = metric_cost
        if anchored and max_delta:
            weight, cache = CostConfig.anchor_weight, {}

            @torch.inference_mode()
            def anchor_cost(g: int, cur: int, dq: Tensor) -> Tensor:
                """The head's reading at the current pose (its views' mean, as the agent reads it), less each
                jump's summed actions."""
                reading = model.anchor.from_embeddings(h[cur], h[g]).mean(0, keepdim=True)  # [1, A]
                reading = reading.float().cpu()
                return (reading - dq / max_delta).square().sum(-1)  # [M]

            def anchored_metric(g: int, cur: int, dq: Tensor) -> Tensor:
                if g not in cache:
                    cache.clear()
                    cache[g] = metric_cost(g)
                return cache[g] + weight * anchor_cost(g, cur, dq)

            anchor_cost.reads_current = anchored_metric.reads_current = True
            spaces["metric"], spaces["anchor"] = anchored_metric, anchor_cost
    if model.readout is not None:
        spaces["readout"] = model.readout(z).float().cpu()
    return spaces


def planning_score(
    model: Any,
    env_name: str,
    shoulder_steps: int = 72,
    elbow_steps: int = 60,
    goals: int = 150,
    window: float = 1.25,
    scenes: int = 1,
    wrap: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Greedy success per cost space, averaged over ``scenes`` scenes (``goals`` pairs each)."""
    totals: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    probe = envs.make_env(env_name, image_size=model.image_size)
    max_delta = getattr(probe.unwrapped, "max_delta", None)  # joint move per unit action (servoed arms)
    probe.close()
    for scene in range(scenes):
        q, images = render_pose_grid(env_name, model.image_size, shoulder_steps, elbow_steps, seed + scene)
        g = rng.choice(len(q), goals, replace=False)
        s = rng.integers(len(q), size=goals)
        for name, f in cost_space_features(model, images, max_delta).items():
            totals[name] = totals.get(name, 0.0) + greedy_success(f, q, g, s, window, wrap) / scenes
    return totals
