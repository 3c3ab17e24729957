"""``scripts/compare_runs.py``: two plan.py runs compared goal by goal, on real push episodes."""

from __future__ import annotations

import json
import subprocess

import numpy as np

import envs
from jepa_agent.evaluation import EVAL_SEED_OFFSET, RandomPolicy, ZeroPolicy, evaluate
from tests.conftest import REPO

SCRIPT = str(REPO / "scripts" / "compare_runs.py")


def write_run(path, episodes, policy="jepa"):
    """An episodes.jsonl as plan.py writes it: one line per episode, ``policy`` and ``index`` first."""
    path.mkdir()
    with open(path / "episodes.jsonl", "w") as f:
        for i, ep in enumerate(episodes):
            f.write(json.dumps({"policy": policy, "index": i, **ep}) + "\n")
    return path


def test_compare_runs_pairs_goals_and_counts_what_missed(tmp_path, python, run_env):
    env = envs.make_env("push", image_size=16, max_episode_steps=5)
    seeds = [EVAL_SEED_OFFSET + i for i in range(3)]
    res = evaluate(
        env, {"zero": ZeroPolicy(env.action_space), "random": RandomPolicy(env.action_space, seed=1)}, seeds
    )
    env.close()
    zero, rand = res["zero"]["per_episode"], res["random"]["per_episode"]
    a = write_run(tmp_path / "a", zero)
    b = write_run(tmp_path / "b", rand[:2])  # B finished two goals: only those are compared

    def run(*args):
        return subprocess.run([python, SCRIPT, *map(str, args)], capture_output=True, text=True, env=run_env,
                              timeout=120)  # fmt: skip

    out = run(a, b / "episodes.jsonl", "--above", "yaw_error=0.1")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["goals"] == 2 and got["policy"] == "jepa"
    nearer = sum(r["final_distance"] < z["final_distance"] for z, r in zip(zero[:2], rand[:2], strict=True))
    assert got["b_nearer"] == nearer
    assert got["a"]["final_distance_mean"] == np.mean([z["final_distance"] for z in zero[:2]])
    assert got["b"]["final_distance_median"] == np.median([r["final_distance"] for r in rand[:2]])
    yaw = [z["final_info"]["yaw_error"] for z in zero[:2]]
    assert got["a"]["final_info_median"]["yaw_error"] == np.median(yaw)
    assert got["a"]["yaw_error_above_0.1"] == sum(y > 0.1 for y in yaw)
    assert {"pusher_distance", "block_distance"} <= set(got["b"]["final_info_median"])

    # bad input: one line naming what is wrong, never a traceback
    for args, message in [
        ((tmp_path / "nowhere", b), "no plan.py run here"),
        ((a, b, "--policy", "oracle"), "no episode of policy 'oracle'"),
        ((a, b, "--above", "yaw_error"), "expected KEY=NUMBER"),
        ((a, b, "--above", "speed=1"), "final_info['speed']"),
    ]:
        bad = run(*args)
        assert bad.returncode != 0 and message in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.stderr
    torn = write_run(tmp_path / "torn", [{"seed": zero[0]["seed"]}])  # a line that is not a whole episode
    bad = run(torn, b)
    assert bad.returncode != 0 and "not a plan.py episode line" in bad.stderr
    assert "Traceback" not in bad.stderr
    other = write_run(tmp_path / "c", [{**zero[0], "seed": 7}])
    bad = run(a, other)
    assert bad.returncode != 0 and "share no goal" in bad.stderr
