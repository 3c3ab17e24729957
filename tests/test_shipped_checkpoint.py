"""The checkpoint shipped in checkpoints/reach (made by scripts/train_all.py ... ship=checkpoints/reach)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs
from jepa_agent.world_model import WorldModel
from tests.conftest import REPO

SHIPPED = REPO / "checkpoints" / "reach"


@pytest.fixture(scope="module")
def model() -> WorldModel:
    if not (SHIPPED / "meta.json").exists():
        pytest.fail(
            f"{SHIPPED} is missing: regenerate it with scripts/train_all.py env=reach ship=checkpoints/reach"
        )
    return WorldModel.from_checkpoint(
        SHIPPED, device="cpu", env_id="JepaAgent/Reach-v0", image_size=64, action_dim=2
    )


def test_shipped_checkpoint_reads_the_pose_from_a_goal_image(model):
    """The readout of a goal image's latent recovers the goal joint angles (the cost's metric space)."""
    assert model.readout is not None and model.readout.wrap == [0]
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


def test_shipped_checkpoint_predicts_the_effect_of_actions(model):
    """Imagined 5-step futures read out closer to the true end pose than 'nothing moves' does."""
    env = envs.make_env("reach")
    obs, _ = env.reset(seed=10_100)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(5, 2)).astype(np.float32)
    for a in actions:
        final, *_ = env.step(a)
    with torch.inference_mode():
        state = model.encode(obs)
        pred = model.rollout(state, torch.as_tensor(actions)[None])  # [1, 5, N, D]
        r_pred = model.readout(pred[0, -1])
        r_start = model.readout(state.z)
        target = model.readout.targets(torch.as_tensor(final["proprio"]))
    env.close()
    assert (r_pred - target).square().sum() < 0.25 * (r_start - target).square().sum()


def test_cost_landscape_script_ranks_the_readout_cost(run_env, python, tmp_path):
    """scripts/cost_landscape.py on a coarse grid: the readout cost strands fewer goals than pixels."""
    import json
    import subprocess

    proc = subprocess.run(
        [python, str(REPO / "scripts" / "cost_landscape.py"), f"checkpoint={SHIPPED}",
         "shoulder_steps=16", "elbow_steps=12", "goals=20", "threads=1", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, env=run_env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out["success"]) == {"pixels", "latent", "readout"}
    assert out["success"]["readout"] >= 0.9 and out["success"]["readout"] > out["success"]["pixels"], out
    cmd = [python, str(REPO / "scripts" / "cost_landscape.py"), "goals=0", f"hydra.run.dir={tmp_path}"]
    bad = subprocess.run(cmd, capture_output=True, text=True, env=run_env, cwd=REPO, timeout=120)
    assert bad.returncode != 0 and "goals=0; expected an int >= 1" in bad.stderr
    assert "Traceback" not in bad.stderr
