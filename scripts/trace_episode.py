"""Trace one planned episode step by step: what the arm did, what the agent chose, and what its plan cost.

    python scripts/trace_episode.py --checkpoint outputs/train_all/reach_torque/world_model --index 4

Runs ``plan.py``'s agent (its default planner, agent and cost, ``--action-weight`` aside) on ``plan.py``'s
held-out goal number ``--index`` (seed 0), and prints per step the joint angles and velocities (read from
the simulator, for diagnosis only: the agent sees pixels), the action, the end-effector distance to the
goal and the planner's cost. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

import envs
from jepa_agent.agent import MPCAgent
from jepa_agent.costs import CostConfig
from jepa_agent.evaluation import EVAL_SEED_OFFSET
from jepa_agent.utils import emit_json_line, int_at_least, set_threads
from jepa_agent.world_model import WorldModel
from planners import CEMPlanner


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="world-model checkpoint (or its run dir)")
    p.add_argument(
        "--env", default="reach_torque", help="a reach task: reach | reach_torque | reach_distracting"
    )
    p.add_argument("--index", type=int_at_least(0), default=0, help="plan.py's held-out goal number (seed 0)")
    p.add_argument("--action-weight", type=float, default=CostConfig.action_weight, help="cost.action_weight")
    p.add_argument(
        "--image-size", type=int_at_least(8), default=64, help="the env's (and model's) image size"
    )
    p.add_argument("--max-steps", type=int_at_least(1), default=50, help="episode length")
    p.add_argument("--every", type=int_at_least(1), default=1, help="print every N-th step (and successes)")
    p.add_argument("--threads", type=int_at_least(0), default=1, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if not args.env.startswith("reach"):
        raise SystemExit(
            f"trace_episode.py: --env={args.env!r}; expected a reach task (its joints are traced)"
        )
    set_threads(args.threads)
    torch.manual_seed(0)
    env = envs.make_env(args.env, image_size=args.image_size, max_episode_steps=args.max_steps)
    model = WorldModel.from_checkpoint(
        args.checkpoint, device="cpu", env_id=env.spec.id, image_size=env.unwrapped.image_size
    )
    agent = MPCAgent(model, CEMPlanner(action_dim=model.action_dim),
                     cost={"action_weight": args.action_weight})  # fmt: skip
    obs, info = env.reset(seed=EVAL_SEED_OFFSET + args.index)
    u = env.unwrapped
    agent.reset({"image": u.render_goal(), "state": u.goal_state()})
    print(f"start q {u.data.qpos.round(2)}  goal q {u.goal_qpos.round(2)}  distance {info['distance']:.3f} m")
    reached, t = False, 0
    for t in range(env.spec.max_episode_steps):
        action = agent.act(obs)
        obs, _, terminated, truncated, info = env.step(action)
        reached |= bool(info["is_success"])
        if t % args.every == 0 or info["is_success"]:
            print(f"{t:3d} q {u.data.qpos.round(2)} v {u.data.qvel.round(2)} a {np.round(action, 2)} "
                  f"d {info['distance']:.3f} cost {agent.last_plan.cost:.3f}")  # fmt: skip
        if terminated or truncated:
            break
    emit_json_line({"index": args.index, "reached": reached, "at_end": bool(info["is_success"]),
                    "final_distance": float(info["distance"]), "steps": t + 1,
                    "memory": agent.memory.capacity})  # fmt: skip
    env.close()


if __name__ == "__main__":
    sys.exit(main())
