"""How well does a checkpoint's anchor head alone read the way to the goal from real frames?

    python scripts/bench_anchor_greedy.py --checkpoint checkpoints/reach_distracting --shifts 0,2

A diagnostic for the anchor term of the label-free cost, with no imagination and no search: on ``plan.py``'s
held-out goals (reset seeds ``1_000_000 + 10_000 * seed + i``, goals given only as images) the policy takes,
at every step, the action the :class:`~jepa_agent.models.latent.AnchorHead` reads from the current frame and
the goal image, clipped to the box (``a = clip(d_0)``: the head reads the summed actions still needed). It
reads them as the planner does (:class:`~jepa_agent.costs.AnchorCost` after ``WorldModel.encode(...,
anchor_shift)``), once per ``--shifts`` value (``cost.anchor_shift``; 0: the frames alone). Reports, per
shift, goals reached at any step and held at the end (within the task's radius), the median final distance,
and the seconds per decision. Takes a minute or two per shift for 50 goals. One JSON line per shift.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import envs
from jepa_agent.costs import AnchorCost
from jepa_agent.evaluation import EVAL_SEED_OFFSET, success_rates
from jepa_agent.world_model import WorldModel


def greedy_episode(model: WorldModel, env, seed: int, shift: int) -> tuple[bool, bool, float, list[float]]:
    """One episode of ``a = clip(anchor reading)``: (reached, held at the end, final distance, seconds)."""
    obs, _ = env.reset(seed=seed)
    goal = model.encode_goal({"image": env.unwrapped.render_goal()}, anchor_shift=shift)
    cost = AnchorCost(model.anchor, goal)
    low, high = env.action_space.low, env.action_space.high
    reached, seconds = False, []
    while True:
        t0 = time.perf_counter()
        cost.set_start(model.encode(obs, anchor_shift=shift))
        action = np.clip(cost.start.float().cpu().numpy(), low, high).astype(np.float32)
        seconds.append(time.perf_counter() - t0)
        obs, _, terminated, truncated, info = env.step(action)
        reached = reached or bool(info["is_success"])
        if terminated or truncated:
            return reached, bool(info["is_success"]), float(info["distance"]), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a world model with a trained anchor head")
    p.add_argument("--env", default=None, help="the env (default: the checkpoint's)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="the held-out goal set, as plan.py's seed")
    p.add_argument("--shifts", default="0,2", help="comma-separated cost.anchor_shift values (pixels)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    try:
        shifts = [int(s) for s in args.shifts.split(",") if s.strip()]
    except ValueError:
        p.error(f"--shifts={args.shifts!r}: expected comma-separated ints (pixels), e.g. 0,2")
    if not shifts or args.episodes < 1:
        p.error(f"--shifts={args.shifts!r}, --episodes={args.episodes}: expected shifts and >= 1 episode")
    torch.set_num_threads(args.threads)
    model = WorldModel.from_checkpoint(args.checkpoint, device="cpu")
    if not model.anchor_trained:
        p.error(f"{args.checkpoint} has no trained anchor head (world_model.anchor.hidden > 0 trains one)")
    env = envs.make_env(args.env or model.meta["env_id"], image_size=model.image_size)
    seeds = [EVAL_SEED_OFFSET + 10_000 * args.seed + i for i in range(args.episodes)]
    for shift in shifts:
        try:
            model.encode_goal({"image": env.unwrapped.render_goal()}, anchor_shift=shift)
        except ValueError as e:
            p.error(str(e))
        t0 = time.perf_counter()
        runs = [greedy_episode(model, env, s, shift) for s in seeds]
        reached, held, final, seconds = zip(*runs, strict=True)
        print(json.dumps({"anchor_shift": shift, **success_rates(list(reached), list(held)),
                          "final_distance_median": float(np.median(final)),
                          "decision_seconds_median": float(np.median(sum(seconds, []))),
                          "checkpoint": args.checkpoint, "seeds": [seeds[0], seeds[-1]],
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)  # fmt: skip
    env.close()


if __name__ == "__main__":
    main()
