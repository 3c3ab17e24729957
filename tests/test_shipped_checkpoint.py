"""The shipped checkpoints (made by scripts/train_all.py env=... ship=checkpoints/...): they load, are
small, and plan one step. checkpoints/reach is the labelled readout baseline (the label-free flat model
is not yet at its bar, docs/benchmarks.md); checkpoints/reach_distracting is label-free."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

import envs
from jepa_agent.agent import MPCAgent
from jepa_agent.world_model import WorldModel
from planners import CEMPlanner
from tests.conftest import REPO

SHIPPED = {
    "reach": REPO / "checkpoints" / "reach",
    "reach_distracting": REPO / "checkpoints" / "reach_distracting",
}
SPACE = {"reach": "readout", "reach_distracting": "metric"}  # what cost.space=auto picks on each


def load(env_name: str) -> WorldModel:
    path = SHIPPED[env_name]
    if not (path / "meta.json").exists():
        pytest.fail(f"{path} is missing: regenerate it with scripts/train_all.py env={env_name} ship={path}")
    return WorldModel.from_checkpoint(
        path, device="cpu", env_id=envs.resolve_env_id(env_name), image_size=64, action_dim=2
    )


@pytest.mark.parametrize("env_name", sorted(SHIPPED))
def test_shipped_checkpoint_loads_is_small_and_plans_a_step(env_name):
    model = load(env_name)
    assert model.resolve_cost_space("auto") == SPACE[env_name]
    assert model.state_labels == (SPACE[env_name] == "readout")  # only the readout baseline read states
    size = sum(f.stat().st_size for f in SHIPPED[env_name].iterdir())
    assert size <= 10 * 2**20, f"{size / 2**20:.1f} MB"
    env = envs.make_env(env_name)
    obs, _ = env.reset(seed=10_000)
    agent = MPCAgent(model, CEMPlanner(action_dim=2, population=32, iterations=2, elites=4))
    agent.reset({"image": env.unwrapped.render_goal()})
    action = agent.act(obs)
    env.close()
    assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)


def test_shipped_checkpoint_reads_the_pose_from_a_goal_image():
    """The readout baseline recovers the goal joint angles from a goal image's latent."""
    model = load("reach")
    env = envs.make_env("reach")
    errors = []
    for seed in range(8):
        env.reset(seed=10_000 + seed)
        u = env.unwrapped
        with torch.inference_mode():
            r = model.readout(model.encode_pixels(u.render_goal())).numpy()  # [cos q0, sin q0, q1]
        shoulder = np.arctan2(r[1], r[0])
        d0 = (shoulder - u.goal_qpos[0] + np.pi) % (2 * np.pi) - np.pi
        errors.append(max(abs(d0), abs(r[2] - u.goal_qpos[1])))
    env.close()
    assert np.median(errors) < np.radians(8), np.degrees(errors)


def test_score_script_ranks_the_cost_spaces(run_env, python, tmp_path):
    """score.py on a coarse grid: the shipped model's planning space strands fewer goals than pixels."""
    proc = subprocess.run(
        [python, str(REPO / "scripts" / "score.py"), f"checkpoint={SHIPPED['reach']}",
         "shoulder_steps=16", "elbow_steps=12", "goals=20", "threads=1", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, env=run_env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"pixels", "latent", "readout"} <= set(out["spaces"]) and out["space"] == "readout"
    assert out["score"] == out["spaces"]["readout"] >= 0.9 and out["score"] > out["spaces"]["pixels"], out
    cmd = [python, str(REPO / "scripts" / "score.py"), "goals=0", f"hydra.run.dir={tmp_path}"]
    bad = subprocess.run(cmd, capture_output=True, text=True, env=run_env, cwd=REPO, timeout=120)
    assert bad.returncode != 0 and "goals=0; expected an int >= 1" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_score_of_the_label_free_distracting_model(run_env, python, tmp_path):
    """score.py on the shipped label-free model: its metric space is scored and reported beside the others."""
    proc = subprocess.run(
        [python, str(REPO / "scripts" / "score.py"), f"checkpoint={SHIPPED['reach_distracting']}",
         "env=reach_distracting", "shoulder_steps=12", "elbow_steps=10", "goals=10", "threads=1",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, env=run_env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["space"] == "metric" and out["state_labels"] is False
    assert set(out["spaces"]) == {"pixels", "latent", "metric"} and 0.0 <= out["score"] <= 1.0
