"""Which planning-space objective plans push, given a perfect representation? A labelled diagnostic.

    python scripts/bench_state_value.py --kind critic                  # the goal critic, env steps
    python scripts/bench_state_value.py --kind distance                # HILP's distance head
    python scripts/bench_state_value.py --kind critic --macro-steps    # counting macro-steps (5 env steps)

The label-free planning space is a head trained on the world model's latents by expectile TD on recorded
episodes (``jepa_agent.training.temporal_distance.train_metric_head``). Where planning fails, is it the
latent (what the frames keep of the pusher and the T's turn), the imagination, or the objective itself?
This script removes the first two: the same head (``--kind``: :class:`~jepa_agent.models.latent.
TemporalDistanceHead` or :class:`~jepa_agent.models.latent.GoalCritic`), the same training code and
settings, fitted on the recorded TRUE states of the episodes (pusher xy and block xy over 0.1 m, the
yaw's sine and cosine; a labelled input, so a diagnostic only), then planned by ``plan.py``'s CEM and
MPC agent on the true simulator (``PushSimulator``, macro-actions of ``env.action_chunk`` env steps) with
the head's steps to the goal as the cost. Its success is the most a head of that objective can give.
Prints each episode on stderr, then one JSON line.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

import envs  # noqa: E402
from jepa_agent.agent import MPCAgent  # noqa: E402
from jepa_agent.costs import Cost, CostConfig, reduce_steps, with_action_terms  # noqa: E402
from jepa_agent.evaluation import EVAL_SEED_OFFSET, evaluate  # noqa: E402
from jepa_agent.models.latent import GoalCritic, TemporalDistanceHead  # noqa: E402
from jepa_agent.oracle import PushSimulator  # noqa: E402
from jepa_agent.training.latent_cache import LatentEpisodes  # noqa: E402
from jepa_agent.training.temporal_distance import MetricTrainConfig, train_metric_head  # noqa: E402
from jepa_agent.utils import emit_json_line, int_at_least  # noqa: E402
from planners import CEMPlanner  # noqa: E402


def state_features(q: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Push poses ``[..., 5]`` (pusher xy, block xy, yaw) -> ``[..., 6]``: xy over 0.1 m, sin and cos yaw."""
    q = torch.as_tensor(q, dtype=torch.float32)
    return torch.cat([q[..., :4] / 0.1, torch.sin(q[..., 4:5]), torch.cos(q[..., 4:5])], -1)


def state_episodes(path: str) -> LatentEpisodes:
    """Every recorded episode's true poses as a one-token "latent" ``[F, 1, 6]`` (and its actions)."""
    files = sorted(glob.glob(os.path.join(path, "episode_*.npz")))
    if not files:
        raise SystemExit(
            f"--data {path}: no episode_*.npz files (record them with scripts/collect.py env=push)"
        )
    states, actions, starts, lengths, total = [], [], [], [], 0
    for f in files:
        d = np.load(f)
        if "state" not in d.files or d["state"].shape[-1] < 5:
            raise SystemExit(f"{f}: no push 'state' (qpos first); expected episodes of JepaAgent/Push-v0")
        a = d["action"]
        states.append(d["state"][:, :5])
        actions.append(np.concatenate([a, np.zeros((1, a.shape[1]), a.dtype)]))
        starts.append(total)
        lengths.append(len(d["state"]))
        total += len(d["state"])
    z = state_features(np.concatenate(states))[:, None, :]
    return LatentEpisodes(z, torch.as_tensor(np.concatenate(actions)), None, starts, lengths)


class HeadCost(Cost):
    """The head's steps from each imagined pose to the goal pose, over the steps (``reduction=all``)."""

    def __init__(self, head: torch.nn.Module, goal_state: torch.Tensor) -> None:
        self.head, self.goal = head, state_features(goal_state)[None, None]  # [1, 1, 6]

    def __call__(self, pred: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        z = state_features(pred)[..., None, :]  # [S, H, 1, 6]
        if isinstance(self.head, GoalCritic):
            steps = self.head.distance(z, self.goal)
        else:  # the distance head's cost is its squared distance (WorldModel.cost's metric space, mse)
            steps = (self.head(z) - self.head(self.goal)).square().sum(-1)
        return reduce_steps(steps, "all", 1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="outputs/train_all/push/episodes", help="push episodes (collect.py)")
    p.add_argument("--kind", choices=("distance", "critic"), default="critic")
    p.add_argument("--macro-steps", action="store_true", help="count macro-steps, not env steps")
    p.add_argument("--steps", type=int_at_least(1), default=6000, help="head training steps")
    p.add_argument("--episodes", type=int_at_least(1), default=10, help="held-out goals (plan.py's, seed 0)")
    p.add_argument("--population", type=int_at_least(2), default=200)
    p.add_argument("--iterations", type=int_at_least(1), default=10)
    p.add_argument(
        "--action-chunk", type=int_at_least(1), default=5, help="env steps per planned step (push: 5)"
    )
    p.add_argument("--threads", type=int_at_least(1), default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    env = envs.make_env("push")
    chunk = args.action_chunk
    data = state_episodes(args.data)
    head_data = data.strided(chunk) if args.macro_steps else data
    head = GoalCritic(6, 256) if args.kind == "critic" else TemporalDistanceHead(6, 32, 256)
    t0 = time.perf_counter()
    fit = train_metric_head(head, head_data, MetricTrainConfig(steps=args.steps), progress=False)
    head.eval().requires_grad_(False)
    print(f"head: {fit} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    class HeadSimulator(PushSimulator):
        def cost(self, goal_state: torch.Tensor, **options) -> Cost:
            c = CostConfig(**options)
            return with_action_terms(HeadCost(head, goal_state), c.action_weight, c.smooth_weight)

    model = HeadSimulator(env, action_chunk=chunk)
    planner = CEMPlanner(
        model.action_dim,
        population=args.population,
        iterations=args.iterations,
        elites=max(args.population // 10, 1),
    )
    agent = MPCAgent(model, planner, memory=1)
    seeds = [EVAL_SEED_OFFSET + i for i in range(args.episodes)]

    def log(name: str, i: int, r) -> None:
        print(f"{i}: reached {r.success_any}, held {r.success_end}, final {r.final_distance:.3f} m",
              file=sys.stderr, flush=True)  # fmt: skip

    with torch.inference_mode():
        res = evaluate(env, {"state_value": agent}, seeds, on_episode=log)["state_value"]
    res.pop("per_episode")
    emit_json_line({"kind": args.kind, "counts": "macro_steps" if args.macro_steps else "env_steps",
                    "action_chunk": chunk, "state_labels": True, **fit, **res})  # fmt: skip


if __name__ == "__main__":
    main()
