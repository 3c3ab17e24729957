"""Physics and data checks of JepaAgent/Push-v0: contact penetration, settling, how often each policy
moves the block, and the cost of a step and of a reset (the goal rollout).

    python scripts/bench_push.py                  # 30 episodes x 50 steps per policy, seeds 0..29

Penetration is the deepest contact (``-mjContact.dist``) over every physics substep, pusher-block and
block-wall separately. "Moves the block": > 1 mm or > 1 degree in a step (``PushEnv.object_moved``).
Policies: ``expert`` (``envs.push_expert.ScriptedPusher``, the goal generator), ``push`` (the data policy,
``jepa_agent.collect.PushPolicy``), ``random`` (uniform actions). Prints a table on stderr, then one
JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402
from envs.push_expert import PUSHER_RANGE, ScriptedPusher  # noqa: E402
from jepa_agent.collect import make_policy, make_recording_env, policy_rng  # noqa: E402
from jepa_agent.utils import emit_json_line, int_at_least  # noqa: E402


def run_policy(name: str, episodes: int, steps: int) -> dict[str, float]:
    """Step the env substep by substep under policy ``name``; penetration and block-move statistics."""
    rec = make_recording_env("push", {"max_episode_steps": steps})
    info, u = rec.env_info(), rec.unwrapped
    pusher_body = u.model.body("pusher").id
    deepest = {"pusher": 0.0, "wall": 0.0}
    moved = []
    for ep in range(episodes):
        obs, inf = rec.reset(seed=ep)
        expert = ScriptedPusher(np.random.default_rng(ep), u.max_delta) if name == "expert" else None
        policy = None if expert else make_policy(name, info, policy_rng(ep))
        states = [u.get_state()]
        for _ in range(steps):
            proprio = np.concatenate([u.data.qpos[:2], u.data.qvel[:2]])
            action = np.clip(expert(states[-1]) if expert else policy(proprio, states[-1]), -1, 1)
            u.data.ctrl[:] = np.clip(u.data.qpos[:2] + action * u.max_delta, -PUSHER_RANGE, PUSHER_RANGE)
            for _ in range(u.frame_skip):  # PushEnv.step's physics, a substep at a time
                mujoco.mj_step(u.model, u.data)
                for c in u.data.contact[: u.data.ncon]:
                    pusher = pusher_body in (u.model.geom_bodyid[c.geom1], u.model.geom_bodyid[c.geom2])
                    key = "pusher" if pusher else "wall"
                    deepest[key] = max(deepest[key], -c.dist)
            states.append(u.get_state())
        moved.append(u.object_moved(np.stack(states)))
    rec.close()
    return {
        "moved_fraction": float(np.concatenate(moved).mean()),
        "pusher_block_penetration_mm": 1000 * deepest["pusher"],
        "block_wall_penetration_mm": 1000 * deepest["wall"],
    }


def settling(seed: int = 0) -> dict[str, float]:
    """Block speed at the end of a push step, one zero-action step later, and its drift the step after."""
    env = envs.make_env("push")
    u = env.unwrapped
    env.reset(seed=seed, options={"qpos": np.array([0.0, -0.14, 0.0, 0.0, 0.0])})
    for _ in range(3):
        env.step(np.array([0.0, 1.0], np.float32))
    pushing = float(np.abs(u.data.qvel[2:4]).max())
    env.step(np.zeros(2, np.float32))
    after = float(np.abs(u.data.qvel[2:4]).max())
    q = u.data.qpos.copy()
    env.step(np.zeros(2, np.float32))
    drift = float(np.abs(u.data.qpos[2:4] - q[2:4]).max())
    env.close()
    return {"speed_pushing_m_s": pushing, "speed_one_step_later_m_s": after, "drift_next_mm": 1000 * drift}


def timing(resets: int = 20, steps: int = 200) -> dict[str, float]:
    env = envs.make_env("push", max_episode_steps=steps + 1)
    t0 = time.perf_counter()
    for seed in range(resets):
        env.reset(seed=seed)
    reset_ms = 1000 * (time.perf_counter() - t0) / resets
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(-1, 1, 2).astype(np.float32))
    step_ms = 1000 * (time.perf_counter() - t0) / steps
    env.close()
    return {"reset_ms": reset_ms, "step_ms": step_ms}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int_at_least(1), default=30)
    p.add_argument("--steps", type=int_at_least(1), default=50)
    args = p.parse_args(argv)
    policies = {name: run_policy(name, args.episodes, args.steps) for name in ("expert", "push", "random")}
    for name, r in policies.items():
        print(
            f"{name:7s} block moves in {r['moved_fraction']:.1%} of steps; deepest contact: pusher-block "
            f"{r['pusher_block_penetration_mm']:.2f} mm, block-wall {r['block_wall_penetration_mm']:.2f} mm",
            file=sys.stderr,
        )
    out = {"policies": policies, "settling": settling(), "timing": timing(), **vars(args)}
    print(f"settling: {out['settling']}\ntiming (1 process): {out['timing']}", file=sys.stderr)
    emit_json_line(out)


if __name__ == "__main__":
    main()
