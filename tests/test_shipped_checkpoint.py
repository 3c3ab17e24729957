"""The shipped checkpoints (made by scripts/train_all.py env=... ship=checkpoints/...): they load, are
label-free, plan one step in the metric space, and score.py ranks their space above the raw latent."""

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


def load(env_name: str) -> WorldModel:
    path = SHIPPED[env_name]
    if not (path / "meta.json").exists():
        pytest.fail(f"{path} is missing: regenerate it with scripts/train_all.py env={env_name} ship={path}")
    return WorldModel.from_checkpoint(
        path, device="cpu", env_id=envs.resolve_env_id(env_name), image_size=64, action_dim=2
    )


@pytest.mark.parametrize("env_name", sorted(SHIPPED))
def test_shipped_checkpoint_is_label_free_small_and_plans_a_step(env_name):
    model = load(env_name)
    assert not model.state_labels and model.metric_trained and model.resolve_cost_space("auto") == "metric"
    size = sum(f.stat().st_size for f in SHIPPED[env_name].iterdir())
    assert size <= 10 * 2**20, f"{size / 2**20:.1f} MB"
    env = envs.make_env(env_name)
    obs, _ = env.reset(seed=10_000)
    agent = MPCAgent(model, CEMPlanner(action_dim=2, population=32, iterations=2, elites=4))
    agent.reset({"image": env.unwrapped.render_goal()})
    action = agent.act(obs)
    env.close()
    assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)


def test_shipped_metric_orders_goal_distances():
    """In the shipped flat-reach metric space the goal image's own pose is nearest, and poses further
    from it in joint space are further away (rank correlation along a sweep of the elbow)."""
    model = load("reach")
    env = envs.make_env("reach")
    env.reset(seed=0)
    u = env.unwrapped
    images = []
    for elbow in np.linspace(-2.0, 2.0, 11):
        u.set_goal(np.array([0.5, elbow]))
        images.append(u.render_goal())
    env.close()
    with torch.inference_mode():
        phi = model.metric(model.encode_pixels(np.stack(images)))
    d = (phi - phi[5]).norm(dim=-1).numpy()  # from elbow 0
    assert int(np.argmin(d)) == 5
    assert d[0] > d[3] and d[10] > d[7], d


def test_score_script_ranks_the_metric_space(run_env, python, tmp_path):
    """scripts/score.py on a coarse grid: the metric space strands fewer goals than the raw latent."""
    proc = subprocess.run(
        [python, str(REPO / "scripts" / "score.py"), f"checkpoint={SHIPPED['reach']}",
         "shoulder_steps=16", "elbow_steps=12", "goals=20", "threads=1", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, env=run_env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out["spaces"]) == {"pixels", "latent", "metric"} and out["space"] == "metric"
    assert out["score"] == out["spaces"]["metric"] >= 0.9 and out["score"] > out["spaces"]["latent"], out
    cmd = [python, str(REPO / "scripts" / "score.py"), "goals=0", f"hydra.run.dir={tmp_path}"]
    bad = subprocess.run(cmd, capture_output=True, text=True, env=run_env, cwd=REPO, timeout=120)
    assert bad.returncode != 0 and "goals=0; expected an int >= 1" in bad.stderr
    assert "Traceback" not in bad.stderr
