"""scripts/evaluate_planner_policy.py: plan.py's agent under SB3's evaluate_policy, on plan.py's own goals."""

from __future__ import annotations

import json
import subprocess
import sys

from jepa_agent.world_model import save_world_model
from tests.conftest import REPO, script_env
from tests.test_rl import IMG, TINY_PLAN, tiny_model


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=script_env(), timeout=600)


def test_runs_plan_py_goals_under_evaluate_policy(tmp_path):
    ckpt = tmp_path / "wm"
    save_world_model(ckpt, tiny_model(), encoder_name="vit_micro")
    common = [f"checkpoint={ckpt}", f"env.image_size={IMG}", "env.max_episode_steps=6", "episodes=3",
              "device=cpu", "threads=1", *TINY_PLAN]  # fmt: skip
    done = _run("evaluate_planner_policy.py", [*common, f"hydra.run.dir={tmp_path / 'epp'}"])
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["episodes"] == 3 and line["mean_length"] == 6.0  # every goal run to the time limit
    assert 0 <= line["success_rate_end"] <= line["success_rate"] <= 1
    assert line["state_labels"] is True and line["cost_space"] == "readout"
    out = tmp_path / "plan"
    plan = _run("plan.py", [*common, "baselines=false", "videos=0", "energy_grid=0", f"out={out}",
                            f"hydra.run.dir={out}"])  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-2000:]
    seeds = json.loads((out / "results.json").read_text())["seeds"]
    assert line["seeds"] == [seeds[0], seeds[-1]]  # the same held-out goals, in the same order
    bad = _run("evaluate_planner_policy.py", [*common, "goal=state", f"hydra.run.dir={tmp_path / 'bad'}"])
    assert bad.returncode != 0 and "goal='state'" in bad.stderr and "Traceback" not in bad.stderr
