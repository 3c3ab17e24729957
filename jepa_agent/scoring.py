"""A cheap planning-quality score for an encoder and a cost space, before any expensive planning run.

Greedy search with PERFECT dynamics over a grid of arm poses (the reach tasks): every pose of a
``shoulder_steps x elbow_steps`` joint grid is rendered as a goal image would be (in one or several
scenes of the env), encoded by the world model's frozen encoder, and mapped into each cost space. From
random starts, each replan finds the cheapest pose within ``window`` rad in every joint (what a planner
with a perfect world model and horizon H reaches: H x max_delta), as an MPC agent does, and

* ``execute="action"`` (the default): moves ONE action towards it (``max_delta`` rad per joint at most,
  to the nearest grid pose), as the agent executes the first action of each plan and replans; up to
  ``replans`` (50, an episode) replans;
* ``execute="jump"``: jumps all the way to it, until it stops moving (the first score's search).

A pair succeeds, with ``success="task"`` (the default), when the end effector ends within the task's own
``success_threshold`` of the goal's (the rule ``plan.py`` counts); with ``success="pose"``, when it ends ON
the goal's grid pose (5 degrees apart: 1-2 cm at the fingertip, stricter than the task's 1 cm). A space
whose cost is flat or bumpy between poses whose arms do not overlap fails here however good the world
model is; a space that scores high leaves planning to the predictor. ``scripts/score.py`` prints it;
docs/benchmarks.md shows how well it predicts ``plan.py``'s success.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

import envs  # sets MUJOCO_GL=egl (when unset) before MuJoCo loads
from jepa_agent.costs import CostConfig, anchor_excess, check_anchor_tolerance

__all__ = [
    "EXECUTE",
    "SCORED_COST_KEYS",
    "SUCCESS",
    "cost_space_features",
    "greedy_success",
    "planning_score",
    "render_pose_grid",
]

EXECUTE = ("action", "jump")  # per replan: one action towards the window's cheapest pose | all the way there
SUCCESS = ("task", "pose")  # a pair succeeds: end effector within the task's threshold | on the goal pose


def render_pose_grid(
    env_name: str, image_size: int, shoulder_steps: int, elbow_steps: int, scene_seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint grid ``q [M, 2]``, the arm rendered at each pose ``[M, S, S, 3]`` (the goal renderer) in the
    scene of ``env.reset(seed=scene_seed)`` (a distracting env draws its distractions there), and the end
    effector's position at each pose ``[M, 2]`` (the goal's, as the task's success rule reads it)."""
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
    images, ee = [], []
    for pose in q:
        u.set_goal(pose)
        images.append(u.render_goal())
        ee.append(np.asarray(u.goal_ee, dtype=np.float64))
    env.close()
    return q, np.stack(images), np.stack(ee)


Space = Tensor | Callable[..., Tensor]  # features [M, F], or goal index (+ current pose, moves) -> costs [M]


def greedy_success(
    feats: Space,
    q: np.ndarray,
    goals: np.ndarray,
    starts: np.ndarray,
    window: float,
    wrap: bool,
    step: float | None = None,
    replans: int = 50,
    ee: np.ndarray | None = None,
    threshold: float | None = None,
    record: list[dict[str, Any]] | None = None,
) -> float:
    """Fraction of (start, goal) pairs that greedy MPC with perfect dynamics brings to the goal.

    Each replan scores every pose within ``window`` rad (every joint) of the current one (cost: mean squared
    difference of ``feats [M, F]``, or ``feats(goal)`` when it is a cost function, or ``feats(goal,
    current, dq)`` when that function reads the current pose (``feats.reads_current``; ``dq [M, J]`` the
    joint moves from the current pose to every pose, wrapped)) and moves: with ``step=None`` all the way
    to the cheapest; else at most ``step`` rad per joint towards it, to the nearest grid pose (the plan's
    first action). It stops when the cheapest pose is the current one, or after ``replans`` replans. A pair
    succeeds when it ends on the goal pose, or, given the end effector's positions ``ee [M, E]`` and the
    task's ``threshold``, when the end effector ends within it of the goal's. Given a list, ``record`` gets
    one dict per pair: its ``start``, ``goal`` and ``end`` grid indices, ``moves`` made, ``success`` and,
    with ``ee``, ``distance`` (the end effector's from the goal's at the end)."""
    if (ee is None) != (threshold is None):
        raise ValueError("greedy_success: give both ee and threshold (the task's success rule) or neither")
    qs = torch.as_tensor(q, dtype=torch.float32)
    hits = 0
    current = callable(feats) and getattr(feats, "reads_current", False)

    for g, cur in zip(goals, starts, strict=True):
        if not current:
            cost = feats(int(g)) if callable(feats) else (feats - feats[g]).square().mean(1)  # [M]
        start, moves = int(cur), 0
        for _ in range(replans):
            d = qs - qs[cur]
            if wrap:
                d[:, 0] = torch.remainder(d[:, 0] + np.pi, 2 * np.pi) - np.pi
            if current:
                cost = feats(int(g), int(cur), d)
            c = torch.where((d.abs() <= window).all(1), cost, torch.full_like(cost, float("inf")))
            nxt = int(c.argmin())
            if nxt == cur:
                break
            if step is not None:  # one action towards it: the grid pose nearest the clipped move (not this)
                miss = (d - d[nxt].clamp(-step, step)).square().sum(1)
                miss[cur] = float("inf")  # a grid coarser than a step still moves one pose per replan
                nxt = int(miss.argmin())
            cur, moves = nxt, moves + 1
        dist = None if ee is None else float(np.linalg.norm(ee[cur] - ee[g]))
        hit = int(cur == g) if ee is None else int(dist <= threshold)
        hits += hit
        if record is not None:
            row = {"start": start, "goal": int(g), "end": int(cur), "moves": moves, "success": bool(hit)}
            record.append(row if dist is None else {**row, "distance": dist})
    return hits / len(goals)


SCORED_COST_KEYS = (
    "metric",
    "latent_weight",
    "displacement_weight",
    "anchor_weight",
    "anchor_shift",
    "anchor_tolerance",
)


@torch.inference_mode()
def cost_space_features(
    model: Any, images: np.ndarray, max_delta: float | None = None, cost: Mapping[str, Any] | None = None
) -> dict[str, Space]:
    """Each cost space the model offers, over ``images``: ``pixels``, ``latent`` and ``readout`` (a state
    readout) and ``metric_head`` (a trained temporal-distance head alone) as features ``[M, F]``; ``metric``
    as the label-free cost ``plan.py`` plans with (``WorldModel.cost`` with ``cost``'s settings, plan.py's
    ``cost.*``, defaults :class:`~jepa_agent.costs.CostConfig`'s; without the action term: the head, its
    latent term and, when trained, the displacement head), a function of the goal's index. Of ``cost``,
    the keys in ``SCORED_COST_KEYS`` are read; the others (the action, rest and smoothness terms, the
    reduction over imagined steps) score moves, not poses, and are left out.
    With a trained anchor head, ``anchor_weight > 0`` and ``max_delta`` (joint move per unit action),
    ``metric`` adds its term as the planner reads it: the head's reading at the *current* pose (through
    ``anchor_shift``'s views) less the actions a move takes (``dq / max_delta``, perfect dynamics), and
    ``anchor`` scores that term alone."""
    settings = {k: getattr(CostConfig, k) for k in SCORED_COST_KEYS}
    settings.update({k: v for k, v in (cost or {}).items() if k in SCORED_COST_KEYS})
    anchor_weight, anchor_shift = float(settings.pop("anchor_weight")), int(settings.pop("anchor_shift"))
    anchor_tolerance = settings.pop("anchor_tolerance")
    check_anchor_tolerance(anchor_tolerance)
    anchored = bool(getattr(model, "anchor_trained", False))
    if anchored:  # [M, N, D] standardised latents, and the anchor head's embeddings [M, V, hidden] of V views
        z, h = model.encode_pixels(images, with_anchor=True, anchor_shift=anchor_shift)
        h = h.reshape(len(z), -1, h.shape[-1])
    else:
        z, h = model.encode_pixels(images), None
    spaces: dict[str, Space] = {
        "pixels": torch.as_tensor(images).flatten(1).float() / 255.0,
        "latent": z.flatten(1).float().cpu(),
    }
    if model.metric_trained:
        if model.metric_kind == "distance":  # a distance head's space (a goal critic has none of its own)
            spaces["metric_head"] = model.metric(z).float().cpu()  # the temporal-distance head alone
        still = torch.zeros(len(z), 1, model.action_dim, device=z.device)  # the action term is left out

        @torch.inference_mode()
        def metric_cost(g: int) -> Tensor:
            goal_cost = model.cost(z[g], space="metric", action_weight=0.0, **settings)
            return goal_cost(z[:, None], still).float().cpu()  # every pose as a one-step imagined future

        spaces["metric"] = metric_cost
        if anchored and max_delta and anchor_weight > 0:
            cache: dict[int, Tensor] = {}

            @torch.inference_mode()
            def anchor_cost(g: int, cur: int, dq: Tensor) -> Tensor:
                """The head's reading at the current pose (its views' mean, as the agent reads it), less each
                jump's summed actions."""
                reading = model.anchor.from_embeddings(h[cur], h[g]).mean(0, keepdim=True)  # [1, A]
                reading = reading.float().cpu()
                return anchor_excess(reading - dq / max_delta, anchor_tolerance)  # [M]

            def anchored_metric(g: int, cur: int, dq: Tensor) -> Tensor:
                if g not in cache:
                    cache.clear()
                    cache[g] = metric_cost(g)
                return cache[g] + anchor_weight * anchor_cost(g, cur, dq)

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
    execute: str = "action",
    step: float | None = None,
    success: str = "task",
    replans: int = 50,
    cost: Mapping[str, Any] | None = None,
    pairs: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Greedy success per cost space, averaged over ``scenes`` scenes (``goals`` pairs each). ``execute``:
    ``action`` moves at most ``step`` rad per joint per replan (None: the env's ``max_delta``, one action),
    ``jump`` all the way; ``success``: ``task`` (the end effector within the task's threshold) or ``pose``
    (on the goal pose); ``cost``: plan.py's ``cost.*`` settings for the ``metric`` space. Given a list,
    ``pairs`` gets one dict per scene, space and pair: ``scene``, ``space``, ``greedy_success``'s record and
    the start, goal and end poses' joint angles (``start_q``, ``goal_q``, ``end_q``, rad)."""
    if execute not in EXECUTE:
        raise ValueError(f"execute={execute!r}; expected one of {list(EXECUTE)}")
    if getattr(model, "action_chunk", 1) != 1:
        raise ValueError(
            f"the pose-grid score moves one env action per replan; this model steps action_chunk="
            f"{model.action_chunk} env steps at a time: score a model trained with action_chunk=1"
        )
    if success not in SUCCESS:
        raise ValueError(f"success={success!r}; expected one of {list(SUCCESS)}")
    totals: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    probe = envs.make_env(env_name, image_size=model.image_size)
    max_delta = getattr(probe.unwrapped, "max_delta", None)  # joint move per unit action (servoed arms)
    threshold = getattr(probe.unwrapped, "success_threshold", None)
    probe.close()
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0):
        raise ValueError(f"step={step!r}; expected a number > 0 (rad moved per replan) or None")
    if execute == "action":
        step = max_delta if step is None else float(step)
        if step is None:
            raise ValueError(
                f"execute=action on env={env_name}: its actions are not joint moves (no max_delta, e.g. "
                "torques); pass step=RAD (the joint angle one action moves), or execute=jump"
            )
    else:
        step = None
    if success == "task" and threshold is None:
        raise ValueError(f"success=task on env={env_name}: it has no success_threshold; use success=pose")
    for scene in range(scenes):
        q, images, ee = render_pose_grid(
            env_name, model.image_size, shoulder_steps, elbow_steps, seed + scene
        )
        g = rng.choice(len(q), goals, replace=False)
        s = rng.integers(len(q), size=goals)
        rule = {"ee": ee, "threshold": float(threshold)} if success == "task" else {}
        for name, f in cost_space_features(model, images, max_delta, cost).items():
            record: list[dict[str, Any]] | None = None if pairs is None else []
            hit = greedy_success(f, q, g, s, window, wrap, step, replans, **rule, record=record)
            totals[name] = totals.get(name, 0.0) + hit / scenes
            for row in record or []:
                poses = {f"{k}_q": q[row[k]].tolist() for k in ("start", "goal", "end")}
                pairs.append({"scene": scene, "space": name, **row, **poses})
    return totals
