"""JepaAgent/Push-v0: Gymnasium API and determinism, goal image vs goal state, physics (settling,
penetration), the scripted expert and the data policy move the block, the true-state oracle, bad input."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs
from envs.push import PushEnv, check_pose
from envs.push_expert import (
    PUSHER_RADIUS,
    PUSHER_RANGE,
    T_BOXES,
    WALL,
    ScriptedPusher,
    distance_to_t,
    line_entries,
)
from jepa_agent.agent import MPCAgent
from jepa_agent.collect import collect, make_policy, make_recording_env, policy_rng
from jepa_agent.config import compose_config
from jepa_agent.evaluation import EVAL_SEED_OFFSET, RandomPolicy, ZeroPolicy, evaluate
from jepa_agent.oracle import ORACLES, PushSimulator, oracle_model
from planners import CEMPlanner

PUSH_ID = envs.ENV_IDS["push"]
GOAL_MODES = [("offset", 0.01, np.radians(5)), ("random", 0.05, np.radians(30))]  # mode, least move or turn


def _rollout(seed: int, steps: int = 8) -> tuple[np.ndarray, ...]:
    env = gym.make(PUSH_ID)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    goal = env.unwrapped.goal_state()
    frames, states = [obs["pixels"]], [env.unwrapped.get_state()]
    for _ in range(steps):
        obs, *_ = env.step(env.action_space.sample())
        frames.append(obs["pixels"])
        states.append(env.unwrapped.get_state())
    env.close()
    return np.stack(frames), np.stack(states), goal


def test_check_env_and_seeded_determinism():
    env = gym.make(PUSH_ID)
    check_env(env.unwrapped, skip_render_check=False)
    env.close()
    a, b, c = _rollout(3), _rollout(3), _rollout(4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)  # frames, states and the goal drawn by the expert's rollout
    assert not np.array_equal(a[2], c[2]) and a[0].std() > 5  # another seed, another goal; not black


def test_geometry_matches_the_asset():
    """envs/push_expert.py mirrors envs/assets/push.xml; the block's origin is its centre of mass."""
    m = PushEnv().model
    for i, name in enumerate(("bar", "stem")):
        g = m.geom(name)
        np.testing.assert_allclose(g.pos[:2], T_BOXES[i, :2], atol=1e-6)
        np.testing.assert_allclose(g.size[:2], T_BOXES[i, 2:], atol=1e-9)
    np.testing.assert_allclose(m.body("block").ipos, 0.0, atol=1e-5)
    assert m.geom("pusher").size[0] == PUSHER_RADIUS
    assert m.geom("wall_e").pos[0] - m.geom("wall_e").size[0] == pytest.approx(WALL)
    np.testing.assert_allclose(m.jnt_range[:2], [[-PUSHER_RANGE, PUSHER_RANGE]] * 2)
    assert [m.joint(j).qposadr[0] for j in ("pusher_x", "pusher_y", "block_x", "block_y", "block_yaw")] == [
        0, 1, 2, 3, 4
    ]  # fmt: skip


def test_goal_image_is_the_scene_at_the_goal_state():
    env = envs.make_env("push")
    env.reset(seed=7)
    u = env.unwrapped
    goal_img = u.render_goal()
    u.set_state(u.goal_state())  # teleport to the goal: the observation must be the goal image
    np.testing.assert_array_equal(u._get_obs()["pixels"], goal_img)
    info = u._get_info()
    assert info["is_success"] and info["distance"] < 1e-9 and info["yaw_error"] < 1e-9
    assert u.render_goal(32).shape == (32, 32, 3)
    env.close()


def test_goal_not_visible_and_success_rule():
    env = envs.make_env("push")
    start = np.array([0.0, -0.15, 0.0, 0.0, 0.0])
    goal = np.array([0.0, -0.1, 0.0, 0.05, 0.3])
    obs1, info = env.reset(seed=1, options={"qpos": start, "goal_state": goal})
    obs2, _ = env.reset(seed=1, options={"qpos": start, "goal_state": goal + [0.05, 0, 0.02, 0, -0.5]})
    np.testing.assert_array_equal(obs1["pixels"], obs2["pixels"])  # no goal marker in the pixels
    u = env.unwrapped
    u.set_goal(goal)
    near = goal + [0.01, 0.0, 0.0, 0.01, np.pi / 9 - 0.01]  # 1.41 cm < 1.68 cm, yaw just inside pi/9
    u.set_state(near)
    assert u._get_info()["is_success"]
    u.set_state(near + [0.0, 0.0, 0.0, 0.0, 0.02])  # yaw just outside
    assert not u._get_info()["is_success"]
    u.set_state(goal + [0.012, 0.0, 0.0, 0.012, 0.0])  # 1.70 cm: outside
    assert not u._get_info()["is_success"]
    assert u.success_threshold == pytest.approx(0.04 * 0.42)
    env.close()


@pytest.mark.parametrize("mode, move, turn", GOAL_MODES)
def test_goals_move_the_block(mode, move, turn):
    env = envs.make_env("push", goal=mode)
    u = env.unwrapped
    for seed in range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 5):
        _, info = env.reset(seed=seed)
        q, g = u.data.qpos, u.goal_state()
        moved = np.linalg.norm(g[2:4] - q[2:4]) >= move
        assert moved or abs((g[4] - q[4] + np.pi) % (2 * np.pi) - np.pi) >= turn
        assert not info["is_success"]
        check_pose(g, "goal")  # a valid pose
    env.close()


def test_block_settles_within_a_step_and_contacts_stay_shallow():
    """A push then a zero action: the block stops within one step; penetration stays <= 2 mm throughout,
    including the pusher's impact and the block against a wall."""
    env = envs.make_env("push")
    start = {"qpos": np.array([0.0, -0.14, 0.0, 0.0, 0.0])}  # 3 cm behind the stem's foot
    env.reset(seed=0, options=start)
    u = env.unwrapped
    deepest = 0.0
    for step in range(12):  # 12 steps up: pushes the T into the north wall
        u.data.ctrl[:] = np.clip(u.data.qpos[:2] + [0.0, u.max_delta], -PUSHER_RANGE, PUSHER_RANGE)
        for _ in range(u.frame_skip):  # env.step's physics, one substep at a time to see every contact
            mujoco.mj_step(u.model, u.data)
            if u.data.ncon:
                deepest = max(deepest, -min(c.dist for c in u.data.contact[: u.data.ncon]))
        if step == 3:
            assert u.data.qpos[3] > 0.02  # the block moves with the pusher
    assert deepest <= 0.002, f"penetration {deepest * 1000:.2f} mm"
    assert u.data.qpos[3] + T_BOXES[0, 1] + T_BOXES[0, 3] == pytest.approx(WALL, abs=0.002)  # at the wall
    env.reset(seed=0, options=start)
    for _ in range(3):
        env.step(np.array([0.0, 1.0], np.float32))
    assert np.abs(u.data.qvel[2:4]).max() > 0.05  # moving at the end of a push step
    env.step(np.zeros(2, np.float32))
    assert np.abs(u.data.qvel[2:5]).max() < 5e-3  # one step after the push: ~1% of the pushing speed left
    before = u.data.qpos.copy()
    env.step(np.zeros(2, np.float32))
    assert np.abs(u.data.qpos[2:4] - before[2:4]).max() < 1e-4  # and it moves < 0.1 mm in the next
    env.close()


def test_line_entries_are_where_the_pusher_touches():
    pose = np.array([0.02, -0.01, 0.7])
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.uniform(-np.pi, np.pi)
        u = np.array([np.cos(a), np.sin(a)])
        origin = pose[:2] + rng.uniform(-0.04, 0.04) * np.array([-u[1], u[0]]) - 0.3 * u
        s = min(line_entries(origin, u, pose, PUSHER_RADIUS))
        assert distance_to_t(origin + s * u, pose) == pytest.approx(PUSHER_RADIUS, abs=1e-6)
        assert distance_to_t(origin + (s - 0.002) * u, pose) > PUSHER_RADIUS


def test_block_moves_under_the_scripted_policies():
    env = envs.make_env("push")
    u = env.unwrapped
    moved = []
    for seed in range(3):
        env.reset(seed=seed)
        expert = ScriptedPusher(np.random.default_rng(seed), u.max_delta)
        states = [u.get_state()]
        for _ in range(40):
            env.step(expert(u.data.qpos))
            states.append(u.get_state())
        moved.append(u.object_moved(np.stack(states)).mean())
    assert np.mean(moved) > 0.3, moved
    # the data policy (expert set to seek contact, noise, random actions): seeded, bounded, moves the block
    rec = make_recording_env("push", {})
    info = rec.env_info()
    runs = []
    for _ in range(2):
        obs, inf = rec.reset(seed=11)
        policy = make_policy("push", info, policy_rng(11))
        states, actions = [inf["state"]], []
        for _ in range(40):
            actions.append(policy(obs["proprio"], states[-1]))
            obs, _, _, _, inf = rec.step(actions[-1])
            states.append(inf["state"])
        runs.append((np.stack(actions), np.stack(states)))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][0].dtype == np.float32 and np.abs(runs[0][0]).max() <= 1.0
    assert info["object_moved"](runs[0][1]).mean() > 0.3
    rec.close()


def test_collect_reports_how_often_the_block_moves(tmp_path):
    m = collect(tmp_path / "ds", 2, env="push", env_kwargs={"image_size": 16, "max_episode_steps": 20},
                policy="push", num_envs=1, progress=False)  # fmt: skip
    assert m["frames"] == 42 and 0.0 <= m["object_moved_fraction"] <= 1.0
    reach = collect(tmp_path / "r", 1, env_kwargs={"image_size": 16, "max_episode_steps": 3}, num_envs=1,
                    progress=False)  # fmt: skip
    assert reach["object_moved_fraction"] is None  # no object in reach


def test_oracle_rollout_is_the_env():
    env = envs.make_env("push")
    obs, _ = env.reset(seed=2)
    model = oracle_model(env)
    assert isinstance(model, PushSimulator) and set(ORACLES) >= {PushEnv}
    actions = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (3, 4, 2)), dtype=torch.float32)
    pred = model.rollout(model.context([model.encode(obs)], []), actions)  # [3, 4, 5]
    for t in range(4):
        env.step(actions[1, t].numpy())
        np.testing.assert_allclose(pred[1, t].numpy(), env.unwrapped.data.qpos, atol=1e-6)
    with pytest.raises(ValueError, match="latest observation"):
        model.encode(obs)  # the env has moved on since obs
    env.close()


def test_oracle_macro_actions_are_env_steps():
    env = envs.make_env("push")
    obs, _ = env.reset(seed=3)
    model = oracle_model(env, action_chunk=3)
    assert model.action_dim == 6 and model.action_chunk == 3
    actions = torch.as_tensor(np.random.default_rng(1).uniform(-1, 1, (2, 2, 6)), dtype=torch.float32)
    pred = model.rollout(model.context([model.encode(obs)], []), actions)  # [2, 2, 5]: a pose per macro
    assert pred.shape == (2, 2, 5)
    for t in range(2):
        for sub in actions[0, t].reshape(3, 2):
            env.step(sub.numpy())
        np.testing.assert_allclose(pred[0, t].numpy(), env.unwrapped.data.qpos, atol=1e-6)
    with pytest.raises(ValueError, match="action_chunk=0"):
        oracle_model(env, action_chunk=0)
    env.close()


def test_oracle_rollouts_are_the_same_on_two_threads():
    """plan.py gives the simulator oracle its threads: each candidate is its own simulation, so the
    rollouts do not depend on how many threads step them."""
    env = envs.make_env("push")
    obs, _ = env.reset(seed=4)
    one, two = oracle_model(env, action_chunk=5), oracle_model(env, action_chunk=5, threads=2)
    actions = torch.as_tensor(np.random.default_rng(2).uniform(-1, 1, (16, 2, 10)), dtype=torch.float32)
    state = one.encode(obs)
    assert torch.equal(one.rollout(state, actions), two.rollout(state, actions))
    with pytest.raises(ValueError, match="threads=0"):
        oracle_model(env, threads=0)
    reach = envs.make_env("reach")
    with pytest.raises(ValueError, match="threads=0"):  # refused for the kinematic oracle too
        oracle_model(reach, threads=0)
    reach.close()
    env.close()


def test_oracle_pushes_the_block_to_a_nearby_goal():
    torch.manual_seed(0)
    env = envs.make_env("push", max_episode_steps=12)
    start = np.array([0.0, -0.125, 0.0, 0.0, 0.0])  # the pusher just behind the stem's foot
    goal = np.array([0.01, -0.07, 0.01, 0.05, 0.0])  # the block 5 cm further on, the pusher behind it
    planner = CEMPlanner(action_dim=2, horizon=3, population=48, elites=6, iterations=3)
    oracle = MPCAgent(oracle_model(env), planner)
    obs, info = env.reset(seed=0, options={"qpos": start, "goal_state": goal})
    oracle.reset({"image": env.unwrapped.render_goal(), "state": env.unwrapped.goal_state()})
    start_distance, success = info["distance"], False
    while True:
        obs, _, terminated, truncated, info = env.step(oracle.act(obs))
        success |= info["is_success"]
        if terminated or truncated or success:
            break
    assert success, info
    assert start_distance > 3 * env.unwrapped.success_threshold
    env.close()


def test_random_and_zero_baselines_run_on_push():
    env = envs.make_env("push", image_size=16, max_episode_steps=5)
    policies = {"random": RandomPolicy(env.action_space), "zero": ZeroPolicy(env.action_space)}
    res = evaluate(env, policies, [EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 1])
    assert res["zero"]["episodes"] == 2 and res["zero"]["success_rate"] == 0.0
    assert np.array_equal(policies["zero"].act({}), np.zeros(2, np.float32))
    # each episode records what missed: the env's numbers at its last step (pusher, block and yaw errors)
    for ep in res["zero"]["per_episode"]:
        assert {"pusher_distance", "block_distance", "yaw_error"} <= set(ep["final_info"])
        assert np.hypot(ep["final_info"]["pusher_distance"], ep["final_info"]["block_distance"]) == (
            pytest.approx(ep["final_distance"])
        )
    env.close()


def test_env_config_composes_and_makes_push():
    cfg = compose_config("plan", ["env=push", "env.goal=random", "env.image_size=32"])
    kwargs = envs.env_kwargs_from_config(cfg.env)
    assert kwargs["goal"] == "random" and not set(envs.META_KEYS) & set(kwargs)
    env = envs.make_env_from_config(cfg.env)
    assert env.unwrapped.goal_mode == "random" and env.spec.max_episode_steps == 50
    assert env.reset(seed=0)[0]["pixels"].shape == (32, 32, 3)
    env.close()
    with pytest.raises(Exception, match="goal_steps"):
        compose_config("plan", ["env=push", "env.goal_steps=many"])


@pytest.mark.parametrize(
    "goal, match",
    [
        ([0.5, 0.0, 0.0, 0.0, 0.0], "goal_state: pusher at .* outside its range"),
        ([0.0, -0.15, 0.18, 0.0, 0.0], "goal_state: block pose .* outside the walls"),
        ([0.0, 0.0, 0.0, 0.0, 0.0], "goal_state: the pusher .* overlaps the block"),
        ([0.0, 0.0, 0.0], r"goal_state has shape \(3,\)"),
        ([0.0, -0.15, np.nan, 0.0, 0.0], "goal_state=.* is not finite"),
    ],
)
def test_bad_goal_state_is_one_clear_error(goal, match):
    env = envs.make_env("push")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.unwrapped.set_goal(np.array(goal))
    with pytest.raises(ValueError, match=match):
        env.reset(seed=0, options={"goal_state": np.array(goal)})
    env.close()


@pytest.mark.filterwarnings("ignore:.*render_mode.*:UserWarning")  # gymnasium warns before our error
def test_bad_arguments_are_one_clear_error():
    for kwargs, match in [
        ({"goal": "far"}, r"goal='far': expected one of \['offset', 'random'\]"),
        ({"goal_steps": 0}, "goal_steps=0"),
        ({"max_delta": 0.0}, "max_delta=0.0"),
        ({"frame_skip": 0}, "frame_skip"),
        ({"render_mode": "depth_array"}, "render_mode"),
    ]:
        with pytest.raises(ValueError, match=match):
            envs.make_env("push", **kwargs)
    env = envs.make_env("push")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="not finite"):
        env.step(np.array([np.inf, 0.0]))
    with pytest.raises(ValueError, match="qpos: pusher"):
        env.reset(seed=0, options={"qpos": np.array([0.3, 0.0, 0.0, 0.0, 0.0])})
    env.close()


def test_bad_policy_and_oracle_input_is_one_clear_error():
    infos = {}
    for name in ("reach", "push"):
        rec = make_recording_env(name, {})
        infos[name] = rec.env_info()
        rec.close()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="policy 'push' drives the pusher of JepaAgent/Push-v0"):
        make_policy("push", infos["reach"], rng)
    with pytest.raises(ValueError, match="random_prob"):
        make_policy("push", infos["push"], rng, random_prob=2)
    with pytest.raises(ValueError, match="needs the simulator state"):
        make_policy("push", infos["push"], rng)(np.zeros(4))
    with pytest.raises(ValueError, match="no true-state oracle for Pendulum-v1; available for"):
        oracle_model(gym.make("Pendulum-v1"))


@pytest.mark.slow  # ~16 s on the 2-core VM (a script end to end); CI runs it (.ci/run: -m slow)
def test_state_value_diagnostic_trains_a_head_on_true_states_and_plans_with_it(tmp_path, python, run_env):
    """``scripts/bench_state_value.py``: the library's metric head (either kind), trained on recorded true
    push states, planned on the true simulator; one JSON line that says it used state labels. A directory
    without push episodes is refused in one line."""
    import json
    import subprocess

    from tests.conftest import REPO

    collect(tmp_path / "ds", 3, env="push", env_kwargs={"max_episode_steps": 12}, policy="push", num_envs=1,
            progress=False)  # fmt: skip
    script = str(REPO / "scripts" / "bench_state_value.py")
    for kind in ("critic", "distance"):
        args = [python, script, "--data", str(tmp_path / "ds"), "--kind", kind, "--steps", "20", "--episodes",
                "1", "--population", "8", "--iterations", "1"]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True, env=run_env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        assert res["kind"] == kind and res["state_labels"] is True and res["episodes"] == 1
        assert res["counts"] == "env_steps" and np.isfinite(res["metric_loss"])
    bad = subprocess.run([python, script, "--data", str(tmp_path)], capture_output=True, text=True,
                         env=run_env, timeout=300)  # fmt: skip
    assert bad.returncode != 0 and "no episode_*.npz" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_candidates_scores_imagined_and_true_futures_of_the_same_candidates(tmp_path, python, run_env):
    """``scripts/bench_candidates.py`` on a tiny untrained push model: the expert's candidate reaches the
    goal it defines (the scratch rollout is the env's), every figure is a finite correlation or distance,
    and a model of another env is refused in one line."""
    import json
    import subprocess

    from jepa_agent.world_model import save_world_model
    from tests.conftest import REPO
    from tests.test_world_model import tiny_world_model

    model = tiny_world_model(action_chunk=5)  # 16 px frames, 2-d env actions, macro-actions of 5 env steps
    model.meta["env_id"] = "JepaAgent/Push-v0"
    save_world_model(tmp_path / "wm", model, {"env_id": "JepaAgent/Push-v0"}, encoder_name="vit_micro")
    args = [python, str(REPO / "scripts" / "bench_candidates.py"), "--checkpoint", str(tmp_path / "wm"),
            "--goals", "2", "--candidates", "16", "--threads", "1"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    rows, summary = lines[:-1], lines[-1]
    assert len(rows) == 2 and summary["goals"] == 2 and summary["candidates"] == 16
    assert summary["expert_success_rate"] == 1.0 and all(r["expert"] < 1e-6 for r in rows)
    for r in rows:
        assert all(-1.0 <= r[k] <= 1.0 for k in r if k.startswith("rho_")), r
        assert 0 <= r["expert_rank_model"] < 16 and r["best"] <= r["pick_model"]
    other = tiny_world_model(action_chunk=5)
    other.meta["env_id"] = "JepaAgent/Reach-v0"
    save_world_model(tmp_path / "reach", other, {"env_id": "JepaAgent/Reach-v0"}, encoder_name="vit_micro")
    args[3] = str(tmp_path / "reach")
    proc = subprocess.run(args, capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0 and "expected a JepaAgent/Push-v0 model" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # ~17 s on the 2-core VM (a script end to end); CI runs it (.ci/run: -m slow)
def test_bench_branches_compares_imagined_and_recorded_differences(tmp_path, python, run_env):
    """``scripts/bench_branches.py`` on a tiny push model and a tiny branched collection: every pair is read,
    each figure is a finite cosine or ratio per imagined step; data without branches and a horizon longer
    than the branches are refused in one line."""
    import json
    import subprocess

    from jepa_agent.collect import collect
    from jepa_agent.world_model import save_world_model
    from tests.conftest import REPO
    from tests.test_world_model import tiny_world_model

    model = tiny_world_model(action_chunk=5, displacement={"hidden": 16})  # 16 px, macro-actions of 5 steps
    model.meta.update(env_id="JepaAgent/Push-v0", displacement_weight=2.0)  # as if its head were trained
    save_world_model(tmp_path / "wm", model, {"env_id": "JepaAgent/Push-v0"}, encoder_name="vit_micro")
    push = {"image_size": 16, "max_episode_steps": 14}
    collect(tmp_path / "br", 6, env="push", env_kwargs=push, policy="push", branches=2, branch_at=(1, 3),
            num_envs=1, progress=False)  # fmt: skip
    collect(tmp_path / "plain", 2, env="push", env_kwargs=push, policy="push", num_envs=1, progress=False)
    script = str(REPO / "scripts" / "bench_branches.py")
    base = [python, script, "--checkpoint", str(tmp_path / "wm"), "--threads", "1"]

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *extra], capture_output=True, text=True, env=run_env, cwd=tmp_path,
                              timeout=300)  # fmt: skip

    proc = run("--data", str(tmp_path / "br"), "--horizon", "2", "--held-out", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pairs"] == 4 and out["skipped_short"] == 0 and out["horizon"] == 2
    for h in (1, 2):
        assert -1.0 <= out[f"median_latent_cos_h{h}"] <= 1.0 and out[f"median_latent_ratio_h{h}"] >= 0.0
        assert 0.0 <= out[f"median_latent_span_h{h}"] <= 1.0 + 1e-6 and out[f"median_latent_error_h{h}"] >= 0
        assert -1.0 <= out[f"median_displacement_cos_h{h}"] <= 1.0  # the head, read on both futures
        assert out[f"median_displacement_ratio_h{h}"] >= 0.0
    assert not any(k.startswith("probe_") for k in out)  # the labelled diagnostic is off by default
    # --probe-state: a ridge probe on the training groups' frames reads each part of the recorded state
    proc = run("--data", str(tmp_path / "br"), "--horizon", "2", "--held-out", "0.5", "--probe-state")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pairs"] == 2  # the second group's two branches; the first group fits the probe
    for part in ("pusher", "block", "yaw"):
        for h in (1, 2):
            for key in ("diff_explained", "diff_explained_encoded"):
                assert np.isfinite(out[f"probe_{part}_{key}_h{h}"]) and out[f"probe_{part}_{key}_h{h}"] <= 1.0
            for key in ("error_over_copy", "error_over_copy_encoded"):
                assert out[f"probe_{part}_{key}_h{h}"] >= 0.0
    for extra, message in (
        (("--data", str(tmp_path / "plain")), "was not collected with branches"),
        (("--data", str(tmp_path / "br"), "--horizon", "3", "--held-out", "1"), "lower --horizon"),
        (
            ("--data", str(tmp_path / "br"), "--horizon", "2", "--held-out", "1", "--probe-state"),
            "training groups before the held-out ones",
        ),
        (("--data", str(tmp_path / "br"), "--probe-state", "--probe-episodes", "0"), "--probe-episodes"),
    ):
        proc = run(*extra)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # ~10 s on the 2-core VM (a script end to end); CI runs it (.ci/run: -m slow)
def test_bench_smoothness_reports_how_consistently_each_space_follows_the_pusher(tmp_path, python, run_env):
    """``scripts/bench_smoothness.py`` on a tiny push model: a cosine per space and step size, the pixels a
    step changes; a model of another env is refused in one line."""
    import json
    import subprocess

    from jepa_agent.world_model import save_world_model
    from tests.conftest import REPO
    from tests.test_world_model import tiny_world_model

    for env_id, name in (("JepaAgent/Push-v0", "push"), ("JepaAgent/Reach-v0", "reach")):
        model = tiny_world_model(action_chunk=5)
        model.meta["env_id"] = env_id
        save_world_model(tmp_path / name, model, {"env_id": env_id}, encoder_name="vit_micro")
    args = [python, str(REPO / "scripts" / "bench_smoothness.py"), "--checkpoint", str(tmp_path / "push"),
            "--starts", "2", "--moves-mm", "2", "8", "--threads", "1"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["starts"] == 2 and out["antialias"] == 0  # as the model was trained: no anti-aliasing
    for tag in ("2mm", "8mm"):
        assert all(-1.0 <= out[f"cos_{space}_{tag}"] <= 1.0 for space in ("pixels", "latent")), out
        assert out[f"pixels_changed_{tag}"] > 0  # the pusher moved in the frame
    proc = subprocess.run([*args, "--antialias", "4"], capture_output=True, text=True, env=run_env,
                          cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and json.loads(proc.stdout.strip().splitlines()[-1])["antialias"] == 4
    args[3] = str(tmp_path / "reach")
    proc = subprocess.run(args, capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0 and "expected a JepaAgent/Push-v0 model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_antialias_renders_smoother_frames_and_a_model_of_other_renders_is_refused(tmp_path):
    """``env.antialias``: the env renders with that many multisamples (0, the default, as before), datasets
    recorded at the default keep their settings (the key is left out), bad values are refused, and planning
    a model trained on frames rendered otherwise is refused, naming the setting and both values."""
    from jepa_agent.checkpoint import render_settings
    from jepa_agent.planning import load_planning_model
    from jepa_agent.world_model import save_world_model
    from tests.test_world_model import tiny_world_model

    plain, smooth = envs.make_env("push", image_size=32), envs.make_env("push", image_size=32, antialias=4)
    a, _ = plain.reset(seed=3)
    b, _ = smooth.reset(seed=3)
    assert [e.unwrapped.model.vis.quality.offsamples for e in (plain, smooth)] == [0, 4]
    colours = [len(np.unique(o["pixels"].reshape(-1, 3), axis=0)) for o in (a, b)]
    assert colours[1] > colours[0]  # blended edge colours, which the plain render never shows
    np.testing.assert_array_equal(plain.unwrapped.get_state(), smooth.unwrapped.get_state())  # same physics
    assert "antialias" not in envs.env_kwargs_from_config({"name": "push", "antialias": 0, "image_size": 64})
    assert envs.env_kwargs_from_config({"name": "push", "antialias": 4})["antialias"] == 4
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match=rf"antialias={bad!r}: expected an int in \[0, 16\]"):
            envs.make_env("push", antialias=bad)
    model = tiny_world_model(action_chunk=5)
    model.meta["env_id"] = "JepaAgent/Push-v0"
    save_world_model(tmp_path / "wm", model, {"env_id": "JepaAgent/Push-v0", "env": {"antialias": 4}},
                     encoder_name="vit_micro")  # fmt: skip
    run = tmp_path / "run"  # a training run's directory, its checkpoint inside
    save_world_model(run / "checkpoint", model, {"env": {"antialias": 4}}, encoder_name="vit_micro")
    assert render_settings(tmp_path / "wm") == render_settings(run) == {"antialias": 4}
    args = (str(tmp_path / "wm"), "JepaAgent/Push-v0", model.image_size, 2, "auto", "cpu")
    with pytest.raises(ValueError, match="with env.antialias=4; this env renders with env.antialias=0"):
        load_planning_model(*args, render={"antialias": 0})
    assert load_planning_model(*args, render={"antialias": 4}).image_size == model.image_size
