"""How finely a reach world model's planning cost resolves the last centimetre, seen and imagined.

    python scripts/bench_near_goal.py --checkpoint CKPT --goals 30

Two measurements at random goal poses of the flat reach (seeds disjoint from collection and from
``plan.py``'s goals), in the cost space ``plan.py`` uses (``cost.space=auto``; for the label-free model the
metric head plus its latent term):

* **seen**: frames of poses 0-3 cm (end effector) from the goal, encoded: the cost's median per distance
  band, its rank correlation with the distance, and how often a pose within 0.5 cm costs less than one at
  1-2 cm (1.0: the cost on observed frames resolves the last centimetre);
* **imagined**: from the goal pose itself, the cost (``reduction=all``, no action penalty) of the world
  model's 5-step imagination of constant actions of size 0, 0.05, 0.1, 0.2 and 0.4 (in random directions),
  and how often a moving candidate beats standing still. A 0.1 action held 5 steps moves the arm 1-2.5 cm,
  so an imagination that resolves the last centimetre prices it far above zero.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import envs
from envs.reach import forward_kinematics
from jepa_agent.evaluation import spearman
from jepa_agent.world_model import WorldModel

SEED = 3_000_000  # goal poses: disjoint from collection (0, ...) and plan.py's goals (1_000_000, ...)
BANDS_CM = ((0.0, 0.3), (0.3, 0.6), (0.6, 1.0), (1.0, 1.5), (1.5, 3.0))
SIZES = (0.0, 0.05, 0.1, 0.2, 0.4)


def goal_pose(env, rng: np.random.Generator) -> np.ndarray:
    u = env.unwrapped
    q = rng.uniform(u.sample_low, u.sample_high)
    q[1] = np.clip(q[1], -2.3, 2.3)  # away from the elbow's limit, so poses around it are reachable
    return q


def frame(env, q: np.ndarray) -> np.ndarray:
    env.unwrapped.set_state(q)
    return env.unwrapped.render()


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--goals", type=int, default=30)
    p.add_argument("--poses", type=int, default=24, help="poses around each goal (the first is the goal)")
    p.add_argument("--directions", type=int, default=8, help="random directions per action size")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.goals < 1 or args.poses < 2 or args.directions < 1:
        raise SystemExit("bench_near_goal.py: error: --goals >= 1, --poses >= 2 and --directions >= 1")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = WorldModel.from_checkpoint(args.checkpoint, device="cpu")
    space = model.resolve_cost_space("auto")
    env = envs.make_env("reach", image_size=model.image_size, render_mode="rgb_array")
    env.reset(seed=SEED)
    rng = np.random.default_rng(SEED)
    dists, costs, rho, wins, imagined, beats = [], [], [], [], [], []
    for _ in range(args.goals):
        q0 = goal_pose(env, rng)
        ee0 = forward_kinematics(q0)
        poses = [q0]
        for _ in range(args.poses - 1):  # up to 0.3 rad in joint space: about 0-3 cm of end effector
            d = rng.normal(size=2)
            poses.append(q0 + d / np.linalg.norm(d) * rng.uniform(0, 0.3))
        dist = np.array([np.linalg.norm(forward_kinematics(q) - ee0) for q in poses])
        z = model.encode_pixels(np.stack([frame(env, q) for q in poses]))  # [P, N, D]
        cost = model.cost(z[0], space=space, reduction="all", action_weight=0.0)
        seen = cost(z[:, None], torch.zeros(len(z), 1, model.action_dim)).numpy()  # [P]
        dists.append(dist)
        costs.append(seen)
        rho.append(spearman(dist, seen))
        near, far = seen[dist < 0.005], seen[(dist > 0.01) & (dist < 0.02)]
        if len(near) and len(far):
            wins.append(float((near[:, None] < far[None, :]).mean()))
        acts, sizes = [], []
        for s in SIZES:
            for _ in range(1 if s == 0 else args.directions):
                d = rng.normal(size=model.action_dim)
                acts.append(d / np.linalg.norm(d) * s)
                sizes.append(s)
        a = torch.tensor(np.array(acts), dtype=torch.float32)[:, None].repeat(1, 5, 1)  # [S, 5, A]
        c = cost(model.rollout(z[0], a), a).numpy()  # [S]
        sizes = np.array(sizes)
        imagined.append([float(np.median(c[sizes == s])) for s in SIZES])
        beats.append(float((c[1:] < c[0]).mean()))
    d, c = np.concatenate(dists) * 100, np.concatenate(costs)
    bands = {
        f"{lo}-{hi} cm": round(float(np.median(c[(d > lo) & (d <= hi)])), 4)
        for lo, hi in BANDS_CM
        if ((d > lo) & (d <= hi)).any()
    }
    bands["0 cm (the goal frame)"] = round(float(np.median(c[d == 0])), 4)
    by_size = np.round(np.median(imagined, 0), 4).tolist()
    print(json.dumps({
        "checkpoint": args.checkpoint, "space": space, "state_labels": model.state_labels,
        "goals": args.goals,
        "seen": {"median_cost_by_distance": bands, "spearman_median": round(float(np.median(rho)), 3),
                 "p_within_0.5cm_beats_1_to_2cm": round(float(np.mean(wins)), 3)},
        "imagined_5_steps": {"median_cost_by_action_size": dict(zip(map(str, SIZES), by_size, strict=True)),
                             "p_moving_beats_standing_still": round(float(np.mean(beats)), 3)},
        "seconds": round(time.perf_counter() - t0, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
