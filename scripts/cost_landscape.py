"""Is a cost space a good reach cost? Greedy search with PERFECT dynamics on a grid of arm poses.

    python scripts/cost_landscape.py checkpoint=checkpoints/reach
    python scripts/cost_landscape.py checkpoint=RUN_DIR goals=300 shoulder_steps=96 elbow_steps=80

Renders the reach arm on a ``shoulder_steps x elbow_steps`` grid of joint angles, encodes every image
with the world model's frozen encoder, and for each cost space (``pixels``: MSE between images,
``latent``: MSE between standardised latents, ``readout``: MSE between state readouts) runs an idealised
MPC from random starts to random grid goals: each replan jumps to the lowest-cost grid pose within
``window`` rad of the current one in every joint (what a planner with a perfect world model and
horizon H can reach: H x max_delta), until it stops moving. ``success`` is the fraction that stops ON
the goal pose. A space whose cost is flat or bumpy between poses whose arms do not overlap fails
here no matter how good the world model is. Ends with one JSON line ``{space: success, ...}``.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

import envs  # sets MUJOCO_GL=egl (when unset) before MuJoCo loads
from jepa_agent.config import hydra_main
from jepa_agent.utils import check_int, cli_errors, emit_json_line, set_threads
from jepa_agent.world_model import WorldModel


def render_grid(env_name: str, image_size: int, shoulder_steps: int, elbow_steps: int):
    """Joint grid ``q [M, 2]`` and the arm rendered at each pose ``[M, S, S, 3]`` (the goal renderer)."""
    env = envs.make_env(env_name, image_size=image_size)
    u = env.unwrapped
    env.reset(seed=0)
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


def greedy_success(
    feats: torch.Tensor, q: np.ndarray, goals: np.ndarray, starts: np.ndarray, window: float, wrap: bool
) -> float:
    """Fraction of (start, goal) pairs where jumping to the cheapest pose in the window ends on the goal."""
    qs = torch.as_tensor(q, dtype=torch.float32)
    hits = 0
    for g, cur in zip(goals, starts, strict=True):
        cost = (feats - feats[g]).square().mean(1)  # [M]
        for _ in range(50):
            d = qs - qs[cur]
            if wrap:
                d[:, 0] = torch.remainder(d[:, 0] + np.pi, 2 * np.pi) - np.pi
            c = torch.where((d.abs() <= window).all(1), cost, torch.full_like(cost, float("inf")))
            nxt = int(c.argmin())
            if nxt == cur:
                break
            cur = nxt
        hits += int(cur == g)
    return hits / len(goals)


@hydra_main("cost_landscape")
@cli_errors
def main(cfg: DictConfig) -> None:
    for key, least in (("shoulder_steps", 2), ("elbow_steps", 2), ("goals", 1)):
        check_int(key, cfg[key], least)
    poses = cfg.shoulder_steps * cfg.elbow_steps
    if cfg.goals > poses:
        raise ValueError(f"goals={cfg.goals}; expected at most the grid's {poses} poses")
    if not cfg.window > 0:
        raise ValueError(f"window={cfg.window!r}; expected > 0 (rad reachable per replan)")
    set_threads(cfg.threads)
    model = WorldModel.from_checkpoint(cfg.checkpoint, device=cfg.device)
    if cfg.env.name != "reach":
        raise ValueError(f"env={cfg.env.name}: this diagnostic renders the 2-joint reach arm only")
    q, images = render_grid(cfg.env.name, model.image_size, cfg.shoulder_steps, cfg.elbow_steps)
    with torch.inference_mode():
        z = model.encode_pixels(images)  # [M, N, D] standardised latents
        spaces = {
            "pixels": torch.as_tensor(images).flatten(1).float() / 255.0,
            "latent": z.flatten(1).float().cpu(),
        }
        if model.readout is not None:
            spaces["readout"] = model.readout(z).float().cpu()
    rng = np.random.default_rng(cfg.seed)
    goals = rng.choice(len(q), cfg.goals, replace=False)
    starts = rng.integers(len(q), size=cfg.goals)
    wrap = 0 in (cfg.env.get("continuous_joints") or [])  # the env config: is the shoulder continuous?
    out = {name: greedy_success(f, q, goals, starts, cfg.window, wrap) for name, f in spaces.items()}
    emit_json_line({"success": out, "goals": int(cfg.goals), "grid": [cfg.shoulder_steps, cfg.elbow_steps],
                    "window": cfg.window, "checkpoint": str(cfg.checkpoint)})  # fmt: skip


if __name__ == "__main__":
    main()
