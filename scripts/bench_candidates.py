"""Does a push world model rank the planner's candidates as the true futures do?

    python scripts/bench_candidates.py --checkpoint CKPT [--goals 10] [--candidates 128]

Planning fails in one of two places: the cost (the planning space) or imagination (the predictor). This
splits the two on the candidates a planner weighs, faster than planning (``plan.py dynamics=simulator``
takes 20 min for 10 goals on 2 CPU cores; this about 5 s a goal). For each held-out start (``plan.py``'s
evaluation seeds) the scripted expert (``envs.push_expert``, the env's own goal generator) pushes for
``goal_steps`` env steps in a scratch copy; where it ends is the goal, so one candidate is known to reach
it. The candidates are that expert's macro-actions, the same with noise of several sizes, and samples of
CEM's first iteration (``N(0, 1)`` clipped). Each is scored three ways:

- ``true``: the task's distance at the last step (pusher and block, m, plus the yaw error in metres' worth,
  as the env's reward), from the simulator;
- ``sim``: the world model's cost (``CostConfig`` defaults, as ``plan.py``) on the true futures, rendered
  and encoded (:class:`~jepa_agent.oracle.SimulatorImagination`);
- ``model``: the same cost on the world model's own imagination.

Per goal: Spearman correlations between the three, and the true distance of the candidate each cost ranks
first (``pick``; the expert's own is ``expert``, the best candidate's ``best``). Medians over goals, then one
JSON line. Label-free models only need frames and actions; the true states here only score the outcome.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import envs  # noqa: E402
from envs.push import PushEnv  # noqa: E402
from envs.push_expert import ScriptedPusher  # noqa: E402
from jepa_agent.agent import encode_options, planning_rollout  # noqa: E402
from jepa_agent.checkpoint import render_settings  # noqa: E402
from jepa_agent.costs import CostConfig  # noqa: E402
from jepa_agent.evaluation import EVAL_SEED_OFFSET  # noqa: E402
from jepa_agent.oracle import PushSimulator, SimulatorImagination  # noqa: E402
from jepa_agent.world_model import WorldModel  # noqa: E402

NOISE = (0.0, 0.15, 0.4, 0.8)  # expert + N(0, s^2); the rest of the candidates are CEM's N(0, 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def expert_actions(env: PushEnv, start: np.ndarray, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The scripted expert's ``steps`` env actions from ``start`` (a scratch copy) and the pose it ends in."""
    import mujoco

    expert = ScriptedPusher(np.random.default_rng(seed), env.max_delta)
    sim = mujoco.MjData(env.model)
    sim.qpos[:], sim.ctrl[:] = start, start[:2]
    mujoco.mj_forward(env.model, sim)
    actions = []
    for _ in range(steps):
        a = np.clip(expert(sim.qpos), -1.0, 1.0)
        actions.append(a)
        sim.ctrl[:] = env.controls(sim.qpos, a)  # one env step, as the env takes it
        mujoco.mj_step(env.model, sim, nstep=env.frame_skip)
    return np.stack(actions), sim.qpos.copy()


def candidates(expert: np.ndarray, n: int, gen: torch.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """``[n, H, A]`` candidates: the expert's, noised copies (``NOISE``), CEM's first draws; and each one's
    noise level (-1: CEM's)."""
    per = n // (len(NOISE) + 1)
    e = torch.as_tensor(expert, dtype=torch.float32)
    out, level = [e[None]], [0.0]
    for s in NOISE[1:]:
        out.append((e + s * torch.randn((per, *e.shape), generator=gen)).clamp(-1, 1))
        level += [s] * per
    rest = n - 1 - per * (len(NOISE) - 1)
    out.append(torch.randn((rest, *e.shape), generator=gen).clamp(-1, 1))
    level += [-1.0] * rest
    return torch.cat(out), np.asarray(level)


def scorer(m: Any, obs: dict, goal: dict, encoding: dict) -> Callable[[torch.Tensor, dict], np.ndarray]:
    """``(actions [S, H, A], cost options) -> costs [S]``: what ``m`` (a world model, or its cost on the
    true futures) charges each candidate from ``obs`` to ``goal``, as the planner scores it; the observation
    and the goal are encoded once. ``obs`` must be the env's latest (the simulator reads its state then)."""
    state = m.encode(obs, **encoding)
    goal_encoded, context = m.encode_goal(goal, **encoding), m.context([state], [])

    def score(actions: torch.Tensor, options: dict) -> np.ndarray:
        cost_fn = m.cost(goal_encoded, **options)
        if hasattr(cost_fn, "set_start"):  # a cost that reads the current frame itself
            cost_fn.set_start(state)
        return cost_fn(planning_rollout(m, cost_fn)(context, actions), actions).numpy()

    return score


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a push world model (train_world_model.py env=push)")
    p.add_argument("--goals", type=int, default=10, help="held-out starts (plan.py's evaluation seeds)")
    p.add_argument("--candidates", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="the goal set, as plan.py's seed")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.goals < 1 or args.candidates < 2 * (len(NOISE) + 1):
        raise SystemExit(
            f"bench_candidates.py: error: --goals must be >= 1 and --candidates >= {2 * (len(NOISE) + 1)}; "
            f"got {args.goals}, {args.candidates}"
        )
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = WorldModel.from_checkpoint(args.checkpoint, device="cpu")
    if model.meta.get("env_id") != "JepaAgent/Push-v0":
        raise SystemExit(f"bench_candidates.py: error: {args.checkpoint} is a model of "
                         f"{model.meta.get('env_id')!r}; expected a JepaAgent/Push-v0 model")  # fmt: skip
    env = envs.make_env("push", image_size=model.image_size, **render_settings(args.checkpoint))
    u: PushEnv = env.unwrapped
    chunk = model.action_chunk
    steps = u.goal_steps
    if steps % chunk:
        raise SystemExit(f"bench_candidates.py: error: goal_steps {steps} is not a multiple of the model's "
                         f"action_chunk {chunk}")  # fmt: skip
    horizon = steps // chunk
    sim_img = SimulatorImagination(model, env)
    truth = PushSimulator(env, action_chunk=chunk)
    options = asdict(CostConfig())
    encoding = encode_options(model, options)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for i in range(args.goals):
        seed = EVAL_SEED_OFFSET + 10_000 * args.seed + i
        obs, _ = env.reset(seed=seed)
        start = u.data.qpos.copy()
        acts, goal_pose = expert_actions(u, start, steps, seed)
        u.set_goal(goal_pose)
        goal = {"image": u.render_goal(), "state": u.goal_state()}
        macro, level = candidates(acts.reshape(horizon, chunk * acts.shape[-1]), args.candidates, gen)
        poses = truth.rollout(truth.encode(obs), macro).numpy()  # [S, H, 5]
        err = u.pose_errors(poses[:, -1], goal["state"])
        true = err["distance"] + err["yaw_error"] * u.success_threshold / u.yaw_threshold
        score = {name: scorer(m, obs, goal, encoding) for name, m in (("model", model), ("sim", sim_img))}
        costs = {name: f(macro, options) for name, f in score.items()}
        # how well imagination ranks the candidates round the expert at each step ahead: each prefix of
        # h macro-actions scored at its last step, imagined against simulated (does the error build up?)
        near = level == NOISE[1]
        final = {**options, "reduction": "final"}
        per_step = {}
        for h in range(1, horizon + 1):
            prefix = {name: f(macro[near, :h], final) for name, f in score.items()}
            per_step[f"rho_model_sim_s{NOISE[1]}_h{h}"] = spearman(prefix["model"], prefix["sim"])
        row = {
            "seed": seed,
            "expert": float(true[0]),
            "best": float(true.min()),
            "expert_success": bool(err["is_success"][0]),
            "rho_model_true": spearman(costs["model"], true),
            "rho_sim_true": spearman(costs["sim"], true),
            "rho_model_sim": spearman(costs["model"], costs["sim"]),
            "pick_model": float(true[np.argmin(costs["model"])]),
            "pick_sim": float(true[np.argmin(costs["sim"])]),
            "expert_rank_model": int((costs["model"] < costs["model"][0]).sum()),
            "expert_rank_sim": int((costs["sim"] < costs["sim"][0]).sum()),
            **per_step,
        }
        # the same within each kind of candidate: CEM's own draws (what its first iteration sees), and each
        # noise level round the expert (the fine ranking near the goal, where the last centimetres are won)
        for name, pick in [("cem", level < 0)] + [(f"s{n}", level == n) for n in NOISE[1:]]:
            row[f"rho_model_true_{name}"] = spearman(costs["model"][pick], true[pick])
            row[f"rho_sim_true_{name}"] = spearman(costs["sim"][pick], true[pick])
        # which part of the outcome each cost follows round the expert: the pusher's or the block's error
        block = err["block_distance"] + err["yaw_error"] * u.success_threshold / u.yaw_threshold
        for part, value in (("pusher", err["pusher_distance"]), ("block", block)):
            row[f"rho_model_{part}_s{NOISE[1]}"] = spearman(costs["model"][near], value[near])
            row[f"rho_sim_{part}_s{NOISE[1]}"] = spearman(costs["sim"][near], value[near])
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k not in ("seed", "expert_success")]
    summary = {
        "checkpoint": args.checkpoint,
        "goals": len(rows),
        "candidates": args.candidates,
        "noise_levels": list(NOISE),
        **{f"median_{k}": float(np.median([r[k] for r in rows])) for k in keys},
        "expert_success_rate": float(np.mean([r["expert_success"] for r in rows])),
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
