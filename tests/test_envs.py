"""Every registered env id: Gymnasium API, determinism under a seed, goal image, success threshold."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.reach import REACH, forward_kinematics

ALL_IDS = sorted(envs.ENV_IDS.values())
REACH_NAMES = sorted(name for name in envs.ENV_IDS if name.startswith("reach"))  # push: tests/test_push.py


def _rollout(env_id: str, seed: int, steps: int = 12):
    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs, info = env.reset(seed=seed)
    frames, proprio, rewards = [obs["pixels"]], [obs["proprio"]], []
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        frames.append(obs["pixels"])
        proprio.append(obs["proprio"])
        rewards.append(reward)
    env.close()
    return np.stack(frames), np.stack(proprio), np.array(rewards)


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_seeded_determinism(env_id):
    a, b = _rollout(env_id, seed=3), _rollout(env_id, seed=3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = _rollout(env_id, seed=4)
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_time_limit_and_frames_not_black(env_id):
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        steps += 1
    assert steps == 50
    assert obs["pixels"].dtype == np.uint8 and obs["pixels"].std() > 5  # a real scene, not a black frame
    env.close()


@pytest.mark.parametrize("name", REACH_NAMES)
def test_goal_image_is_scene_at_goal_pose(name):
    env = envs.make_env(name)
    env.reset(seed=7)
    u = env.unwrapped
    goal_img = u.render_goal()
    u.set_state(u.goal_qpos)  # teleport the arm to the goal: its observation must equal the goal image
    np.testing.assert_array_equal(u._get_obs()["pixels"], goal_img)
    assert u._get_info()["is_success"] and u._get_info()["distance"] < 1e-9
    np.testing.assert_allclose(u.goal_state()[2:], forward_kinematics(u.goal_qpos))
    env.close()


def test_goal_not_visible_in_observation():
    env = envs.make_env("reach")
    obs1, _ = env.reset(seed=1, options={"qpos": np.zeros(2), "goal_qpos": np.array([1.0, 1.0])})
    obs2, _ = env.reset(seed=1, options={"qpos": np.zeros(2), "goal_qpos": np.array([-1.0, -1.0])})
    np.testing.assert_array_equal(obs1["pixels"], obs2["pixels"])
    env.close()


def test_success_threshold_and_goal_distance():
    env = envs.make_env("reach")
    u = env.unwrapped
    assert u.success_threshold == pytest.approx(0.05 * REACH)
    for seed in range(20):
        _, info = env.reset(seed=seed)
        assert info["distance"] >= u.min_goal_distance and not info["is_success"]
    env.close()


def test_equal_actions_equal_motions():
    env = envs.make_env("reach")
    env.reset(seed=0, options={"qpos": np.array([0.0, 0.5])})
    q0 = env.unwrapped.data.qpos.copy()
    env.step(np.array([0.5, -0.5], dtype=np.float32))  # the servo tracks within one step
    np.testing.assert_allclose(env.unwrapped.data.qpos - q0, [0.125, -0.125], atol=3e-3)
    for _ in range(4):  # zero actions hold the pose
        env.step(np.zeros(2, dtype=np.float32))
    np.testing.assert_allclose(env.unwrapped.data.qpos - q0, [0.125, -0.125], atol=3e-3)
    env.close()


def test_frames_survive_closing_another_env():
    a, b = envs.make_env("reach"), envs.make_env("reach")
    a.reset(seed=0)
    b.reset(seed=0)
    a.close()
    obs, *_ = b.step(np.zeros(2, dtype=np.float32))
    assert obs["pixels"].std() > 5
    b.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 0}, "image_size"),
        ({"frame_skip": 0}, "frame_skip"),
        ({"max_delta": -1.0}, "max_delta"),
        ({"render_mode": "depth_array"}, "render_mode"),
    ],
)
@pytest.mark.filterwarnings("ignore:.*render_mode.*:UserWarning")  # gymnasium warns before our error
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        envs.make_env("reach", **kwargs)


def test_bad_step_and_goal_inputs():
    env = envs.make_env("reach")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="not finite"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="outside the joint ranges"):
        env.unwrapped.set_goal(np.array([0.0, 3.0]))
    with pytest.raises(ValueError, match="available"):
        envs.make_env("nope")
    env.close()


def test_image_size_configurable():
    env = envs.make_env("reach", image_size=32)
    obs, _ = env.reset(seed=0)
    assert obs["pixels"].shape == (32, 32, 3) and env.unwrapped.render_goal().shape == (32, 32, 3)
    env.close()


def test_distracting_variant_redraws_the_scene_but_not_the_task():
    """ReachDistracting-v0: tiles, arm colours, decoys and camera change with the seed; physics does not."""
    plain, noisy = envs.make_env("reach"), envs.make_env("reach_distracting")
    m = noisy.unwrapped.model
    assert m.ngeom == plain.unwrapped.model.ngeom + 8 * 8 + 2 and m.nbody == plain.unwrapped.model.nbody
    assert not m.geom_contype.any() and not m.geom_conaffinity.any()  # nothing new collides

    def scene(seed):
        noisy.reset(seed=seed)
        return m.geom_rgba.copy(), m.geom_pos.copy(), m.cam_pos.copy()

    a, b, c = scene(1), scene(1), scene(2)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x, y)  # same seed, same scene
        assert not np.array_equal(x, z)  # another seed, another scene
    assert np.abs(c[2][0, :2]).max() <= 0.02  # camera shifted by at most 2 cm

    opts = {"qpos": np.array([0.3, -0.5]), "goal_qpos": np.array([1.0, 1.0])}
    actions = np.random.default_rng(0).uniform(-1, 1, (8, 2))
    traces = []
    for env in (plain, noisy):
        env.reset(seed=5, options=opts)
        traces.append([env.step(a)[0]["proprio"] for a in actions])
    np.testing.assert_array_equal(traces[0], traces[1])  # identical dynamics and actions
    plain.close()
    noisy.close()
