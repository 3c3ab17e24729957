"""RL bridge, imagination: ``WorldModelVecEnv`` behaves like an SB3 VecEnv (reset / step shapes, auto-reset
with ``terminal_observation``, truncation at the horizon), starts and hindsight goals are recorded frames,
a step is the world model's own rollout (one predictor call for all envs), batched equals one at a time,
seeding is deterministic, SAC + HER trains on it and the policy then runs on the real ``LatentGoalEnv``,
and bad input gets one clear error.

A tiny random-init world model (``tests/test_rl.py``'s) and four recorded 12-step reach episodes at 16 x 16
keep the file fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC, HerReplayBuffer
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from jepa_agent.data import DataError, EpisodeDataset
from jepa_agent.rl import LatentGoalEnv, LatentStarts, PlanningSpace, VecLatentEncode, WorldModelVecEnv
from tests.test_rl import reach, tiny_episodes, tiny_model

EPISODE_STEPS = 12  # 13 frames per recorded episode
EPS = 1e-3  # success radius of the tiny model's readout features (its distances are O(1e-3))


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> str:
    return tiny_episodes(tmp_path_factory.mktemp("imagination") / "episodes", EPISODE_STEPS)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def starts(model, episodes) -> LatentStarts:
    return LatentStarts.from_episodes(model, episodes)


def imagined(model, starts, **kw) -> WorldModelVecEnv:
    kw = {"epsilon": EPS, "num_envs": 3, "horizon": 4, "seed": 0, **kw}
    return WorldModelVecEnv(model, starts, **kw)


def actions(n: int, steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (steps, n, 2)).astype(np.float32)


# -- the VecEnv contract ----------------------------------------------------------------------------
def test_reset_and_step_follow_the_vec_env_contract(model, starts):
    vec = imagined(model, starts)
    real = LatentGoalEnv(reach(), model, epsilon=EPS)
    assert vec.observation_space == real.observation_space  # a policy trained here runs there unchanged
    vec_real = VecLatentEncode(DummyVecEnv([reach]), model, epsilon=EPS)
    assert vec.observation_space == vec_real.observation_space
    assert vec.action_space == real.action_space
    assert vec.get_attr("render_mode") == [None] * 3 and vec.has_attr("horizon") and not vec.has_attr("nope")
    assert vec.env_is_wrapped(Monitor) == [False] * 3 and vec.get_attr("epsilon", indices=[1]) == [EPS]
    obs = vec.reset()
    assert set(obs) == {"observation", "achieved_goal", "desired_goal"}
    for key, space in vec.observation_space.spaces.items():
        assert obs[key].shape == (3, *space.shape) and obs[key].dtype == np.float32
    assert all({"episode", "frame", "goal_frame", "planning_distance"} <= set(i) for i in vec.reset_infos)
    obs, rewards, dones, infos = vec.step(actions(3, 1)[0])
    assert rewards.shape == (3,) and rewards.dtype == np.float32
    assert dones.shape == (3,) and dones.dtype == bool and not dones.any()
    assert len(infos) == 3
    assert all(set(i) == {"is_success", "planning_distance", "TimeLimit.truncated"} for i in infos)
    assert all(isinstance(i["is_success"], bool) for i in infos)
    assert [i["is_success"] for i in infos] == [i["planning_distance"] <= EPS for i in infos]
    np.testing.assert_array_equal(obs["observation"], obs["achieved_goal"])
    vec.set_attr("horizon", 5)
    assert vec.get_attr("horizon") == [5] * 3
    with pytest.raises(ValueError, match="share their attributes"):
        vec.set_attr("horizon", 6, indices=[0])


def test_auto_reset_puts_the_last_observation_in_terminal_observation_and_truncates(model, starts, episodes):
    vec = imagined(model, starts, horizon=3, reward="sparse")
    obs = vec.reset()
    for t, act in enumerate(actions(3, 7)):
        old_goals, old_infos = obs["desired_goal"].copy(), [dict(i) for i in vec.reset_infos]
        obs, rewards, dones, infos = vec.step(act)
        ended = t in (2, 5)
        assert dones.tolist() == [ended] * 3  # never terminated: truncated at the horizon only
        assert [i["TimeLimit.truncated"] for i in infos] == [ended] * 3
        assert all(("terminal_observation" in i) == ended for i in infos)
        if not ended:
            np.testing.assert_array_equal(obs["desired_goal"], old_goals)
            np.testing.assert_array_equal(rewards, vec.compute_reward(obs["achieved_goal"], old_goals, infos))
            continue
        last = {k: np.stack([i["terminal_observation"][k] for i in infos]) for k in obs}
        np.testing.assert_array_equal(last["desired_goal"], old_goals)  # its own episode's goal
        np.testing.assert_array_equal(rewards, vec.compute_reward(last["achieved_goal"], old_goals, infos))
        assert set(np.unique(rewards)) <= {0.0, -1.0}
        assert vec.reset_infos != old_infos  # new starts, new goals
        space = PlanningSpace(model)
        data = EpisodeDataset(episodes, window=1)  # the new starts and goals are recorded frames
        for i, info in enumerate(vec.reset_infos):
            frames = data.episode(info["episode"])["frames"]
            want = space.features(frames[[info["frame"], info["goal_frame"]]])
            np.testing.assert_allclose(obs["achieved_goal"][i], want[0], atol=1e-5)
            np.testing.assert_allclose(obs["desired_goal"][i], want[1], atol=1e-5)


def test_starts_and_hindsight_goals_are_recorded_frames(model, starts, episodes):
    vec = imagined(model, starts, num_envs=8, goal_offset=(2, 5))
    obs = vec.reset()
    data = EpisodeDataset(episodes, window=1)
    space = PlanningSpace(model)
    for i, info in enumerate(vec.reset_infos):
        assert 2 <= info["goal_frame"] - info["frame"] <= 5
        frames = data.episode(info["episode"])["frames"]
        want = space.features(frames[[info["frame"], info["goal_frame"]]])
        np.testing.assert_allclose(obs["achieved_goal"][i], want[0], atol=1e-5)
        np.testing.assert_allclose(obs["desired_goal"][i], want[1], atol=1e-5)
        assert info["planning_distance"] == pytest.approx(float(space.distance(want[0], want[1])), abs=1e-6)


@pytest.mark.parametrize("context", [1, 3])
def test_a_step_is_one_batched_rollout_of_the_rolling_context(model, starts, context, monkeypatch):
    """The imagined latents are ``WorldModel.rollout`` from the MPC agent's kind of context (the last
    ``context`` frames and the actions between), one call for all envs per step."""
    vec = imagined(model, starts, context=context, horizon=5)
    vec.reset()
    calls = []
    rollout = model.rollout
    monkeypatch.setattr(model, "rollout", lambda c, a, **kw: calls.append(a.shape) or rollout(c, a, **kw))
    first = vec.latents[:, -1].clone()
    history = [vec.latents[:, j].clone() for j in range(context)]  # oldest first: the recorded context
    data = vec.starts  # the actions between the recorded context frames
    rows = [
        data.starts[info["episode"]] + info["frame"] - context + 1 + np.arange(context - 1)
        for info in vec.reset_infos
    ]
    taken = [[data.actions[r[j]] for r in rows] for j in range(context - 1)]  # per step: [n] actions
    for act in actions(3, 4):
        calls.clear()
        obs, *_ = vec.step(act)
        assert calls == [(3, 1, 2)]  # one predictor rollout of one step for the 3 envs
        for i in range(3):
            states = [h[i] for h in history[-context:]]
            acts = [a[i] for a in taken[len(taken) - context + 1 :]] if context > 1 else []
            ctx = model.context(states, acts)
            want = model.step(ctx, torch.as_tensor(act[i])[None])[0]  # [N, D]
            torch.testing.assert_close(vec.latents[i, -1], want, atol=1e-5, rtol=1e-5)
        history.append(vec.latents[:, -1].clone())
        taken.append([torch.as_tensor(a) for a in act])
        assert obs["achieved_goal"].shape == (3, vec.planning.dim)
    assert not torch.equal(first, vec.latents[:, -1])


def test_batched_equals_one_env_at_a_time(model, starts):
    """Env ``i`` of a batch seeded ``s`` runs as a one-env VecEnv seeded ``s + i`` (across auto-resets)."""
    batch = imagined(model, starts, seed=5, horizon=3, context=2)
    singles = [imagined(model, starts, seed=5 + i, horizon=3, context=2, num_envs=1) for i in range(3)]
    obs = batch.reset()
    for i, s in enumerate(singles):
        np.testing.assert_allclose(obs["desired_goal"][i], s.reset()["desired_goal"][0], atol=1e-6)
    resets = 0
    for act in actions(3, 7, seed=1):
        obs, rewards, dones, infos = batch.step(act)
        for i, s in enumerate(singles):
            o, r, d, info = s.step(act[i : i + 1])
            for k in obs:
                np.testing.assert_allclose(obs[k][i], o[k][0], atol=1e-5)
            np.testing.assert_allclose(rewards[i], r[0], atol=1e-6)
            assert dones[i] == d[0]
            start, single_start = batch.reset_infos[i].copy(), s.reset_infos[0].copy()
            assert start.pop("planning_distance") == pytest.approx(
                single_start.pop("planning_distance"), abs=1e-6
            )
            assert start == single_start  # the same start frame and goal
        resets += int(dones.all())
    assert resets == 2  # across auto-resets


def test_seeding_is_deterministic(model, starts):
    def run(vec, seed=None):
        if seed is not None:
            vec.seed(seed)  # SB3's way: applies at the next reset
        out = [vec.reset()["desired_goal"]]
        out += [vec.step(a)[0]["achieved_goal"] for a in actions(3, 6)]
        return np.stack(out), [dict(i) for i in vec.reset_infos]

    a, infos_a = run(imagined(model, starts, seed=11))
    b, infos_b = run(imagined(model, starts, seed=11))
    np.testing.assert_array_equal(a, b)
    assert infos_a == infos_b
    c, _ = run(imagined(model, starts, seed=None), seed=11)  # vec.seed(11) == constructor seed 11
    np.testing.assert_array_equal(a, c)
    d, _ = run(imagined(model, starts, seed=12))
    assert not np.array_equal(a, d)


def test_goals_from_goal_images(model, starts):
    env = reach()
    images = []
    for s in range(3):
        env.reset(seed=s)
        images.append(env.unwrapped.render_goal())
    images = np.stack(images)
    vec = imagined(model, starts, num_envs=6, goal_images=images)
    obs = vec.reset()
    feats = PlanningSpace(model).features(images)
    for i, info in enumerate(vec.reset_infos):
        assert "goal_frame" not in info
        np.testing.assert_allclose(obs["desired_goal"][i], feats[info["goal_image"]], atol=1e-5)
    one = imagined(model, starts, goal_images=images[0])  # one image: [S, S, 3]
    np.testing.assert_allclose(one.reset()["desired_goal"], np.repeat(feats[:1], 3, 0), atol=1e-5)


def test_her_compute_reward_is_vectorised_and_bit_equal(model, starts):
    vec = imagined(model, starts, reward="sparse")
    vec.reset()
    obs, rewards, _, infos = vec.step(actions(3, 1)[0])
    her = vec.env_method("compute_reward", obs["achieved_goal"], obs["desired_goal"], infos, indices=[0])
    assert len(her) == 1 and her[0].dtype == np.float32
    np.testing.assert_array_equal(her[0], rewards)  # bit-equal to the step reward
    relabel = vec.env_method("compute_reward", obs["achieved_goal"], obs["achieved_goal"][::-1], [{}] * 3)
    assert len(relabel) == 3 and relabel[0].shape == (3,) and relabel[0][1] == 0.0


# -- training in imagination, then acting in the real env -----------------------------------------------
def test_sac_her_trains_in_imagination_and_the_policy_runs_in_the_real_env(model, starts):
    vec = imagined(model, starts, num_envs=4, horizon=5, reward="sparse")
    batches = []
    compute = vec.compute_reward
    vec.compute_reward = lambda a, d, info=None: batches.append(np.shape(a)) or compute(a, d, info)
    sac = SAC(
        "MultiInputPolicy", VecMonitor(vec), replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs={"n_sampled_goal": 4, "goal_selection_strategy": "future"},
        learning_starts=40, batch_size=32, buffer_size=2000, gamma=0.9, train_freq=1, gradient_steps=1,
        policy_kwargs={"net_arch": [32, 32]}, seed=0,
    )  # fmt: skip
    sac.learn(400)
    assert sac.num_timesteps == 400 and sac.replay_buffer.size() > 0
    assert any(len(b) == 2 and b[0] > 1 for b in batches)  # HER relabelled sampled batches through it
    assert len(sac.ep_success_buffer) > 0  # info["is_success"] at each episode's end

    real = Monitor(LatentGoalEnv(reach(steps=5), model, epsilon=EPS))  # the same spaces, the real task
    mean, _ = evaluate_policy(sac, real, n_eval_episodes=2, warn=False)
    assert np.isfinite(mean)
    obs, _ = real.reset(seed=0)
    action, _ = sac.predict(obs, deterministic=True)
    assert real.action_space.contains(action)


# -- bad input ----------------------------------------------------------------------------------------
def test_bad_input_gets_one_clear_error(model, starts, episodes, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="is empty"):
        WorldModelVecEnv(model, str(empty), epsilon=EPS)
    with pytest.raises(DataError, match="does not exist"):
        LatentStarts.from_episodes(model, tmp_path / "nowhere")
    with pytest.raises(
        ValueError, match=r"env_id='JepaAgent/Push-v0' but is used with env_id='JepaAgent/Reach"
    ):
        LatentStarts.from_episodes(tiny_model(env_id="JepaAgent/Push-v0"), episodes)
    with pytest.raises(
        ValueError, match=r"env_id='JepaAgent/Push-v0' but is used with env_id='JepaAgent/Reach"
    ):
        WorldModelVecEnv(tiny_model(env_id="JepaAgent/Push-v0"), starts, epsilon=EPS)
    for name in ("horizon", "num_envs", "context"):
        with pytest.raises(ValueError, match=rf"{name}=0: expected an int >= 1"):
            WorldModelVecEnv(model, starts, epsilon=EPS, **{name: 0})
    with pytest.raises(
        ValueError, match=r"goal_offset up to 20 steps .* at least 21 frames, but the longest has 13"
    ):
        WorldModelVecEnv(model, starts, epsilon=EPS, goal_offset=20)
    with pytest.raises(
        ValueError, match=r"at least 14 frames, but the longest has 13; lower goal_offset or horizon"
    ):
        WorldModelVecEnv(model, starts, epsilon=EPS, horizon=13)  # goals up to the horizon by default
    for bad in (0, (3, 2), (1, 2, 3), 1.5):
        with pytest.raises(ValueError, match=r"goal_offset=.*expected an int k >= 1"):
            WorldModelVecEnv(model, starts, epsilon=EPS, goal_offset=bad)
    big = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"a goal image has pixels of shape \[32, 32, 3\].*\[16, 16, 3\]"):
        WorldModelVecEnv(model, starts, epsilon=EPS, goal_images=big)
    with pytest.raises(ValueError, match="pass one of them, not both"):
        WorldModelVecEnv(model, starts, epsilon=EPS, goal_images=big[:, :16, :16], goal_offset=2)
    for eps in (None, 0.0, -1.0):
        with pytest.raises(ValueError, match=r"epsilon=.*expected the success radius > 0"):
            WorldModelVecEnv(model, starts, epsilon=eps)
    with pytest.raises(ValueError, match=r"context=9 frames exceeds the predictor's max_steps=8"):
        WorldModelVecEnv(model, starts, epsilon=EPS, context=9)
    other = LatentStarts.from_latents([torch.zeros(5, 1, 8)], [torch.zeros(4, 2)])
    with pytest.raises(
        ValueError, match=r"starts have latents \[1, 8\].*the world model has latents \[4, 32\]"
    ):
        WorldModelVecEnv(model, other, epsilon=EPS)
    with pytest.raises(ValueError, match=r"actions of shape \(3, 2\) for 5 frames; expected \[4, A\]"):
        LatentStarts.from_latents([torch.zeros(5, 4, 32)], [torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="no episodes"):
        LatentStarts.from_latents([], [])
    vec = imagined(model, starts)
    with pytest.raises(RuntimeError, match=r"before reset\(\)"):
        vec.step(actions(3, 1)[0])
    vec.reset()
    with pytest.raises(ValueError, match=r"actions of shape \[2, 2\]; expected \[3, 2\]"):
        vec.step(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="not finite"):
        vec.step(np.full((3, 2), np.nan, np.float32))
