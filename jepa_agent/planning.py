"""The library behind ``scripts/plan.py``: build agents, run the evaluation, plot what planning saw.

Plots: the planner's cost per iteration (median and quartiles over every replan of the run) and an
energy landscape, the cost over a 2-D grid of first actions from an episode's first observation
(later actions held at zero), as in V-JEPA 2's figures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from jepa_agent.agent import MPCAgent, PlanningModel, encode_options, planning_rollout  # noqa: E402
from jepa_agent.checkpoint import render_settings  # noqa: E402
from jepa_agent.ensemble import WorldModelEnsemble  # noqa: E402
from jepa_agent.world_model import WorldModel  # noqa: E402
from planners.base import PlanResult  # noqa: E402


def load_planning_model(
    checkpoint: str | Sequence[str],
    env_id: str,
    image_size: int,
    action_dim: int,
    cost_space: str,
    device: Any,
    disagreement: float = 1.0,
    render: dict[str, Any] | None = None,
) -> WorldModel | WorldModelEnsemble:
    """The world model of ``checkpoint``, checked against the env (a mismatch names both values) and
    against the cost space it will be asked for (``cost.space``; a model without that head is refused).
    A list of checkpoints is a :class:`~jepa_agent.ensemble.WorldModelEnsemble` (``disagreement``: the
    weight of its members' cost spread). ``render``: the env's rendering settings
    (:data:`~jepa_agent.checkpoint.RENDER_SETTINGS`, e.g. ``{"antialias": 4}``): a model trained on frames
    rendered otherwise is refused, naming the setting and both values."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        paths = [str(c) for c in checkpoint]
        if len(set(paths)) != len(paths):
            raise ValueError(
                f"checkpoint={paths}: a checkpoint is listed twice; an ensemble needs distinct models"
            )
        if len(paths) == 1:
            checkpoint = paths[0]
        else:
            members = [
                load_planning_model(p, env_id, image_size, action_dim, cost_space, device, render=render)
                for p in paths
            ]
            model = WorldModelEnsemble(members, disagreement=disagreement)
            model.resolve_cost_space(cost_space)
            return model
    if render is not None:
        trained = render_settings(checkpoint)
        for key, value in render.items():
            if key in trained and value != trained[key]:
                raise ValueError(
                    f"checkpoint {str(checkpoint)!r} was trained on frames rendered with env.{key}="
                    f"{trained[key]}; this env renders with env.{key}={value}: pass env.{key}={trained[key]}"
                )
    model = WorldModel.from_checkpoint(
        checkpoint, device=device, env_id=env_id, image_size=image_size, action_dim=action_dim
    )
    model.resolve_cost_space(cost_space)  # its error names the checkpoint and the option
    return model


def build_planner(planner_cfg: DictConfig, action_dim: int) -> Any:
    """Instantiate the ``planner=`` config group (``_target_`` class) for ``action_dim`` actions."""
    try:
        return instantiate(planner_cfg, action_dim=action_dim)
    except Exception as e:  # hydra wraps constructor errors; surface the planner's own message
        cause = e.__cause__ or e
        raise ValueError(f"planner config {dict(planner_cfg)} is invalid: {cause}") from e


def build_agent(
    model: PlanningModel,
    planner_cfg: DictConfig,
    agent_cfg: DictConfig,
    cost_cfg: DictConfig,
    action_space: Any,
) -> MPCAgent:
    """An MPC agent over ``model`` from the run's ``planner``, ``agent`` and ``cost`` configs, acting
    within the env's ``action_space`` bounds. The planner plans the model's actions: ``model.action_dim``
    wide, i.e. ``model.action_chunk`` env actions per imagined step (the env's width when it does not say)."""
    planner = build_planner(planner_cfg, int(getattr(model, "action_dim", action_space.shape[0])))
    return MPCAgent(
        model,
        planner,
        **OmegaConf.to_container(agent_cfg, resolve=True),
        action_low=float(action_space.low.min()),
        action_high=float(action_space.high.max()),
        cost=OmegaConf.to_container(cost_cfg, resolve=True),
    )


@torch.inference_mode()
def energy_landscape(
    model: PlanningModel,
    obs: dict[str, np.ndarray],
    goal: dict[str, np.ndarray],
    action_dim: int,
    horizon: int,
    grid: int = 41,
    dims: tuple[int, int] = (0, 1),
    cost_options: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cost of every first action on a ``grid x grid`` lattice over ``[-1, 1]^2`` (other dims and steps 0),
    under the cost settings ``cost_options`` (an agent's ``cost_options``; None: the model's defaults).

    Returns:
        ``(values [grid], costs [grid, grid])`` with ``costs[i, j]`` for ``a[dims[0]] = values[j]``,
        ``a[dims[1]] = values[i]``.
    """
    values = torch.linspace(-1.0, 1.0, grid)
    a0, a1 = torch.meshgrid(values, values, indexing="xy")  # [grid, grid]
    actions = torch.zeros(grid * grid, horizon, action_dim)
    actions[:, 0, dims[0]] = a0.reshape(-1)
    actions[:, 0, dims[1]] = a1.reshape(-1)
    encoding = encode_options(model, cost_options or {})
    state = model.encode(obs, **encoding)
    context = model.context([state], [])
    cost_fn = model.cost(model.encode_goal(goal, **encoding), **(cost_options or {}))
    if hasattr(cost_fn, "set_start"):  # a cost that reads the current frame itself (costs.AnchorCost)
        cost_fn.set_start(state)
    costs = cost_fn(planning_rollout(model, cost_fn)(context, actions), actions)  # [grid*grid]
    return values.numpy(), costs.reshape(grid, grid).float().cpu().numpy()


def plot_energy(
    values: np.ndarray, costs: dict[str, np.ndarray], path: Path, planned: np.ndarray | None
) -> None:
    """One heat map per model (e.g. JEPA world model vs true state), the planned first action marked."""
    fig, axes = plt.subplots(1, len(costs), figsize=(4.2 * len(costs), 3.8), squeeze=False)
    for ax, (name, c) in zip(axes[0], costs.items(), strict=True):
        im = ax.imshow(
            c, origin="lower", extent=[values[0], values[-1], values[0], values[-1]], cmap="viridis"
        )
        i, j = np.unravel_index(np.argmin(c), c.shape)
        ax.plot(values[j], values[i], "w*", ms=12, label="grid minimum")
        if planned is not None:
            ax.plot(planned[0], planned[1], "rx", ms=10, mew=2, label="planned first action")
        ax.set_title(f"energy: {name}")
        ax.set_xlabel("action[0] (shoulder)")
        ax.set_ylabel("action[1] (elbow)")
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0][0].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost_traces(plans: dict[str, list[PlanResult]], path: Path) -> dict[str, list[float]]:
    """Median (and quartiles) of the planner's per-iteration best cost over all replans; returns medians."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    medians: dict[str, list[float]] = {}
    for name, results in plans.items():
        traces = [r.cost_trace.float().cpu().numpy() for r in results if r.cost_trace.numel()]
        if not traces:
            continue
        n = min(len(t) for t in traces)
        t = np.stack([x[:n] for x in traces])  # [plans, iterations]
        t = t / np.maximum(t[:, :1], 1e-12)  # relative to the first iteration: comparable across plans
        q1, med, q3 = np.percentile(t, [25, 50, 75], axis=0)
        it = np.arange(1, n + 1)
        ax.plot(it, med, label=f"{name} (median of {len(traces)} plans)")
        ax.fill_between(it, q1, q3, alpha=0.25)
        medians[name] = med.tolist()
    ax.set_xlabel("planner iteration")
    ax.set_ylabel("best cost / first-iteration best cost")
    ax.set_title("planning cost per iteration")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return medians


def write_plan_report(
    env: Any, policies: dict[str, Any], seed: int, goal_image: np.ndarray | None, out: Path, grid: int
) -> dict[str, Any]:
    """Cost-per-iteration and energy-landscape plots for the run's MPC agents; returns their paths."""
    agents = {name: p for name, p in policies.items() if isinstance(p, MPCAgent)}
    report: dict[str, Any] = {}
    if not agents:
        return report
    out.mkdir(parents=True, exist_ok=True)
    report["cost_per_iteration"] = {
        "path": str(out / "cost_per_iteration.png"),
        "median_relative_cost": plot_cost_traces(
            {n: a.plans for n, a in agents.items()}, out / "cost_per_iteration.png"
        ),
    }
    if grid > 1:
        obs, _ = env.reset(seed=seed)
        u = env.unwrapped
        goal = {"image": u.render_goal() if goal_image is None else goal_image, "state": u.goal_state()}
        costs, planned = {}, None
        for name, agent in agents.items():
            values, costs[name] = energy_landscape(
                agent.model, obs, goal, int(agent.model.action_dim), agent.horizon, grid,
                cost_options=agent.cost_options,
            )  # fmt: skip
            if planned is None:
                agent.reset(goal)
                planned = agent.act(obs)
        plot_energy(values, costs, out / "energy_landscape.png", planned)
        report["energy_landscape"] = {"path": str(out / "energy_landscape.png"), "seed": seed}
    return report
