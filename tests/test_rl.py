"""RL bridge: the latent goal env (check_env, compute_reward, no termination, HER), its VecEnv form
(terminal_observation, one encoder call per step), the features extractor (frozen, eval mode, PPO's
orthogonal init, save/load), the planner behind SB3's predict (evaluate_policy), and their bad input.

Tiny random-init world models on 16 x 16 renders of the reach task keep the file fast; one test uses the
shipped checkpoint."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC, HerReplayBuffer
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecTransposeImage

import envs
from jepa_agent.agent import MPCAgent
from jepa_agent.checkpoint import CheckpointError
from jepa_agent.config import compose_config
from jepa_agent.rl import (
    GOAL_KEY,
    GoalImageObservation,
    JepaFeaturesExtractor,
    LatentGoalEnv,
    PlannerPolicy,
    PlanningSpace,
    VecLatentEncode,
)
from jepa_agent.rl.space import FastFeatures
from jepa_agent.world_model import WorldModel, build_world_model, save_world_model
from planners import CEMPlanner

IMG = 16
REPO_CHECKPOINT = "checkpoints/reach"
TINY_PLAN = ["planner.population=8", "planner.iterations=2", "planner.elites=2", "planner.horizon=2"]


def tiny_model(readout: bool = True, metric: bool = False, env_id: str = "JepaAgent/Reach-v0") -> WorldModel:
    """A random-init world model on 16 x 16 frames: 2 x 2 pooled tokens of width 32."""
    torch.manual_seed(0)
    cfg = {
        "encoder": {"name": "vit_micro", "img_size": IMG, "patch_size": 4, "num_frames": 2, "embed_dim": 32,
                    "depth": 1, "num_heads": 2},
        "world_model": {"pooling": "grid", "grid_size": 2, "attentive_queries": 2, "attentive_heads": 2,
                        "normalize": True, "flatten": False, "use_proprio": False,
                        "predictor": {"dim": 32, "depth": 1, "num_heads": 2, "max_steps": 8},
                        "readout": {"angles": 2 if readout else 0, "wrap": [0], "hidden": 16},
                        "metric": {"dim": 8 if metric else 0, "hidden": 16}},
        "action_dim": 2, "proprio_dim": 4, "env_id": env_id,
    }  # fmt: skip
    model = build_world_model(cfg)
    if metric:
        model.meta["metric_steps"] = 1  # counts as trained: cost.space=auto picks it
    return model


def tiny_episodes(root, steps: int = 12, episodes: int = 4) -> str:
    """Record ``episodes`` noisy-policy reach episodes of ``steps`` steps at 16 x 16 into ``root``."""
    from jepa_agent.collect import collect

    env_kwargs = {"image_size": IMG, "max_episode_steps": steps}
    collect(
        root, episodes, env="reach", env_kwargs=env_kwargs, policy="noisy", seed=3, num_envs=1, progress=False
    )
    return str(root)


def reach(steps: int = 6, size: int = IMG) -> gym.Env:
    return envs.make_env("reach", image_size=size, max_episode_steps=steps)


class NoGoalEnv(gym.Env):
    """Pixels and proprio like our tasks, but no goal image."""

    observation_space = spaces.Dict(
        {
            "pixels": spaces.Box(0, 255, (IMG, IMG, 3), np.uint8),
            "proprio": spaces.Box(-1, 1, (4,), np.float32),
        }
    )
    action_space = spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {"is_success": False}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {"is_success": False}


class FrameLog(gym.Wrapper):
    """Keeps every frame the env returned (to check what VecLatentEncode encoded)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.frames: list[np.ndarray] = []

    def reset(self, **kw):
        obs, info = self.env.reset(**kw)
        self.frames.append(obs["pixels"].copy())
        return obs, info

    def step(self, action):
        out = self.env.step(action)
        self.frames.append(out[0]["pixels"].copy())
        return out


# -- LatentGoalEnv ----------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["auto", "latent", "metric"])
def test_latent_goal_env_passes_check_env(space):
    model = tiny_model(metric=space == "metric")
    env = LatentGoalEnv(reach(), model, space=space)
    assert env.unwrapped is env  # so check_env runs its goal-env checks (compute_reward equality)
    check_env(env, warn=True)
    assert env.planning.name == ("readout" if space == "auto" else space)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"observation", "achieved_goal", "desired_goal"}
    assert obs["desired_goal"].shape == (env.planning.dim,) and obs["desired_goal"].dtype == np.float32
    assert "is_success" in info and "planning_distance" in info


@pytest.mark.parametrize("reward", ["dense", "sparse"])
def test_compute_reward_is_vectorised_and_equals_the_step_reward(reward):
    env = LatentGoalEnv(
        reach(steps=8), tiny_model(), reward=reward, epsilon=0.05 if reward == "sparse" else None
    )
    obs, _ = env.reset(seed=1)
    achieved, desired, rewards, infos = [], [], [], []
    for _ in range(8):
        obs, r, terminated, truncated, info = env.step(env.action_space.sample())
        achieved.append(obs["achieved_goal"])
        desired.append(obs["desired_goal"])
        rewards.append(r)
        infos.append(info)
        assert r == env.compute_reward(obs["achieved_goal"], obs["desired_goal"], info)
    a, d = np.stack(achieved), np.stack(desired)
    batch = env.compute_reward(a, d, infos)
    assert batch.shape == (8,) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.array(rewards, np.float32))  # bit-equal
    np.testing.assert_array_equal(env.compute_reward(a, d, np.array(infos)), batch)
    # HER relabels with other goals: a batch of goals gives each row's own reward
    goals = np.random.default_rng(0).permutation(a)
    relabelled = env.compute_reward(a, goals, infos)
    np.testing.assert_array_equal(
        relabelled, [env.compute_reward(x, g, {}) for x, g in zip(a, goals, strict=True)]
    )
    if reward == "sparse":
        assert set(np.unique(relabelled)) <= {0.0, -1.0}
        assert env.compute_reward(a[0], a[0], {}) == 0.0


@pytest.mark.parametrize("space", ["readout", "metric", "latent"])
def test_reward_is_minus_the_planning_costs_distance(space):
    """The features and distance are the planning cost's own: -reward equals the cost of a one-step
    "rollout" that lands on the achieved frame, towards the goal frame's latent."""
    model = tiny_model(metric=space == "metric")
    planning = PlanningSpace(model, space=space)
    frames = np.random.default_rng(0).integers(0, 256, (2, IMG, IMG, 3), dtype=np.uint8)
    feats = planning.features(frames)  # [2, F]
    with torch.inference_mode():
        z = model.encode_pixels(frames)  # [2, N, D]
        cost = model.cost(z[1], space=space, reduction="final", action_weight=0.0, latent_weight=0.0)
        expected = cost(z[0][None, None], torch.zeros(1, 1, 2))  # pred [1, 1, N, D] -> [1]
    assert float(-planning.reward(feats[0], feats[1])) == pytest.approx(
        float(expected[0]), rel=1e-5, abs=1e-7
    )


def test_reward_with_the_latent_term_is_minus_the_planning_costs_two_terms():
    """``latent_weight``: the features hold the head's and the latent's, and -reward is the planning cost's
    metric term plus its latent term at that weight; the traced path gives the same features."""
    model = tiny_model(metric=True)
    planning = PlanningSpace(model, space="metric", latent_weight=0.5)
    frames = np.random.default_rng(0).integers(0, 256, (2, IMG, IMG, 3), dtype=np.uint8)
    feats = planning.features(frames)
    n, d = model.latent_shape
    assert feats.shape == (2, PlanningSpace(model, space="metric").dim + n * d) == (2, planning.dim)
    with torch.inference_mode():
        z = model.encode_pixels(frames)
        cost = model.cost(z[1], space="metric", reduction="final", action_weight=0.0, latent_weight=0.5,
                          displacement_weight=0.0)  # fmt: skip
        expected = cost(z[0][None, None], torch.zeros(1, 1, 2))
    assert float(-planning.reward(feats[0], feats[1])) == pytest.approx(float(expected[0]), rel=1e-4)
    np.testing.assert_allclose(FastFeatures(planning)(frames), feats, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="latent_weight=0.5 .* needs space=metric and metric=mse, got "
                       "space=latent and metric=mse"):  # fmt: skip
        PlanningSpace(model, space="latent", latent_weight=0.5)
    with pytest.raises(ValueError, match="metric=l1"):
        PlanningSpace(model, space="metric", metric="l1", latent_weight=0.5)
    with pytest.raises(ValueError, match="latent_weight=-1"):
        PlanningSpace(model, space="metric", latent_weight=-1)


def test_never_terminates_on_success_and_truncates_at_the_time_limit():
    env = LatentGoalEnv(reach(steps=5), tiny_model())
    goal = np.array([0.3, -0.8])
    obs, info = env.reset(seed=0, options={"qpos": goal, "goal_qpos": goal})  # start on the goal
    assert info["is_success"] and info["planning_distance"] == 0.0  # goal image == first frame
    assert env.compute_reward(obs["achieved_goal"], obs["desired_goal"], info) == 0.0
    for t in range(5):
        obs, r, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        assert info["is_success"] and not terminated
        assert truncated == (t == 4)


def test_her_sac_runs_on_the_latent_goal_env():
    env = LatentGoalEnv(reach(steps=10), tiny_model())
    batches = []
    compute = env.compute_reward
    env.compute_reward = lambda a, d, info: batches.append(np.shape(a)) or compute(a, d, info)  # HER's calls
    model = SAC(
        "MultiInputPolicy", env, replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs={"n_sampled_goal": 4, "goal_selection_strategy": "future"},
        learning_starts=30, batch_size=32, buffer_size=1000, gamma=0.95,
        policy_kwargs={"net_arch": [32, 32]}, seed=0,
    )  # fmt: skip
    model.learn(300)
    assert model.num_timesteps == 300 and model.replay_buffer.size() > 0
    assert any(len(b) == 2 and b[0] > 1 for b in batches)  # HER relabelled sampled batches through it


# -- VecLatentEncode --------------------------------------------------------------------------------
def _vec(model: WorldModel, lengths=(3, 4), **kw) -> tuple[VecLatentEncode, list[FrameLog]]:
    venv = DummyVecEnv([lambda n=n: FrameLog(reach(steps=n)) for n in lengths])
    venv.seed(0)
    return VecLatentEncode(venv, model, **kw), [e for e in venv.envs]


def test_vec_latent_encode_matches_the_env_and_encodes_terminal_observations():
    model = tiny_model()
    vec, logs = _vec(model)
    calls = []
    encode = model.encode_pixels
    model.encode_pixels = lambda x, **kw: calls.append(len(x)) or encode(x, **kw)  # count encoder calls
    obs = vec.reset()
    assert calls == [4]  # two frames and two goal images, one call
    single = PlanningSpace(model)
    goal_images = [e.unwrapped.render_goal() for e in logs]
    np.testing.assert_allclose(obs["desired_goal"], single.features(np.stack(goal_images)), atol=1e-5)
    seen_done = [False, False]
    for t in range(4):
        old_goals = obs["desired_goal"].copy()
        calls.clear()
        obs, rewards, dones, infos = vec.step(np.zeros((2, 2), np.float32))
        assert calls == [2 + 2 * int(dones.sum())]  # frames + (last frames + new goals) of ended episodes
        achieved = [
            infos[i]["terminal_observation"]["achieved_goal"] if dones[i] else obs["achieved_goal"][i]
            for i in range(2)
        ]  # the frame each action led to
        np.testing.assert_array_equal(rewards, vec.compute_reward(np.stack(achieved), old_goals, infos))
        for i in np.flatnonzero(dones):
            seen_done[i] = True
            term = infos[i]["terminal_observation"]
            assert set(term) == {"observation", "achieved_goal", "desired_goal"}
            assert term["achieved_goal"].shape == (vec.planning.dim,)
            last_frame = logs[i].frames[-2]  # the frame before the auto-reset's
            np.testing.assert_allclose(term["achieved_goal"], single.features(last_frame[None])[0], atol=1e-5)
            np.testing.assert_array_equal(term["desired_goal"], old_goals[i])  # its own episode's goal
            new_goal = single.features(logs[i].unwrapped.render_goal()[None])[0]
            np.testing.assert_allclose(obs["desired_goal"][i], new_goal, atol=1e-5)  # re-encoded at reset
            assert not np.allclose(obs["desired_goal"][i], old_goals[i])
        assert dones.tolist() == [t == 2, t == 3]
    assert all(seen_done)
    assert "env_reward" in infos[0] and "is_success" in infos[0]


def test_her_sac_runs_on_vec_latent_encode():
    vec, _ = _vec(tiny_model(), lengths=(6, 6))
    model = SAC(
        "MultiInputPolicy", VecMonitor(vec), replay_buffer_class=HerReplayBuffer, learning_starts=24,
        batch_size=16, buffer_size=500, policy_kwargs={"net_arch": [16]}, seed=0,
    )  # fmt: skip
    batches = []
    compute = vec.compute_reward
    vec.compute_reward = lambda a, d, info: batches.append(np.shape(a)) or compute(a, d, info)
    model.learn(60)
    assert model.num_timesteps == 60
    assert any(b[0] > 1 for b in batches)  # HER's env_method("compute_reward") reached it
    goals = np.ones((3, vec.planning.dim), np.float32)
    r = vec.env_method("compute_reward", 0 * goals, goals, [{}] * 3, indices=[0])  # HER's call
    assert len(r) == 1 and r[0].shape == (3,)


# -- JepaFeaturesExtractor --------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "wm"
    save_world_model(path, tiny_model(), encoder_name="vit_micro")
    return str(path)


def _pixel_vec(steps: int = 4) -> DummyVecEnv:
    return DummyVecEnv([lambda: Monitor(GoalImageObservation(reach(steps=steps)))])


@pytest.mark.parametrize("space", ["latent", "auto"])
def test_extractor_features_equal_the_world_models(checkpoint, space):
    env = GoalImageObservation(reach())
    chw = VecTransposeImage(DummyVecEnv([lambda: env])).observation_space  # what SB3 gives the extractor
    ext = JepaFeaturesExtractor(chw, checkpoint, space=space, keys=["pixels", GOAL_KEY])
    model = WorldModel.from_checkpoint(checkpoint, device="cpu")
    frames = np.random.default_rng(0).integers(0, 256, (3, IMG, IMG, 3), dtype=np.uint8)
    images = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255.0  # SB3's preprocessing
    with torch.no_grad():
        feats = ext({"pixels": images, GOAL_KEY: images.flip(0)})
    ref = PlanningSpace(model, space=space).features(frames) if space != "latent" else (
        model.encode_pixels(frames).reshape(3, -1).numpy())  # fmt: skip
    assert feats.shape == (3, ext.features_dim) and ext.features_dim == 2 * ref.shape[1]
    np.testing.assert_allclose(feats[:, : ref.shape[1]].numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(feats[:, ref.shape[1] :].numpy(), ref[::-1], atol=1e-5)


def test_extractor_is_frozen_in_eval_mode_untouched_by_ppo_init_and_reloads(checkpoint, tmp_path):
    kwargs = {
        "features_extractor_class": JepaFeaturesExtractor,
        "features_extractor_kwargs": {"checkpoint": checkpoint},  # a path: picklable, reloadable
        "net_arch": [16],
    }
    ppo = PPO(
        "MultiInputPolicy", _pixel_vec(), n_steps=8, batch_size=8, n_epochs=1, policy_kwargs=kwargs, seed=0
    )
    policy, ext = ppo.policy, ppo.policy.features_extractor
    assert policy.ortho_init and bool((policy.action_net.bias == 0).all())  # orthogonal init did run
    ref = JepaFeaturesExtractor(
        policy.observation_space, checkpoint
    ).pretrained.state_dict()  # the checkpoint's

    def check_untouched(p) -> None:
        state = p.features_extractor.pretrained.state_dict()
        assert state.keys() == ref.keys()
        for name, value in state.items():
            torch.testing.assert_close(value, ref[name], rtol=0, atol=0, msg=f"{name} changed")

    check_untouched(policy)
    assert not any(p.requires_grad for p in ext.pretrained.parameters())
    obs = preprocess_obs(policy.obs_to_tensor(ppo.env.reset())[0], policy.observation_space)
    policy.set_training_mode(False)
    eval_feats = ext(obs)
    policy.train()  # what SB3 does before each update
    assert policy.training and not any(m.training for m in ext.pretrained.modules())
    torch.testing.assert_close(ext(obs), eval_feats, rtol=0, atol=0)
    ppo.learn(16)  # rollouts and an update (SB3 switches train / eval modes)
    check_untouched(policy)
    assert not any(m.training for m in ext.pretrained.modules())

    ppo.save(tmp_path / "ppo")
    loaded = PPO.load(tmp_path / "ppo", env=_pixel_vec())
    assert isinstance(loaded.policy.features_extractor, JepaFeaturesExtractor)
    check_untouched(loaded.policy)
    for a, b in zip(ppo.policy.state_dict().values(), loaded.policy.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    raw = ppo.env.reset()
    np.testing.assert_array_equal(
        ppo.predict(raw, deterministic=True)[0], loaded.predict(raw, deterministic=True)[0]
    )


def test_trainable_extractor_is_fine_tuned_but_stays_in_eval_mode(checkpoint):
    kwargs = {
        "features_extractor_class": JepaFeaturesExtractor,
        "features_extractor_kwargs": {"checkpoint": checkpoint, "trainable": True},
        "net_arch": [16],
    }
    ppo = PPO(
        "MultiInputPolicy", _pixel_vec(), n_steps=8, batch_size=8, n_epochs=1, policy_kwargs=kwargs, seed=0
    )
    ext = ppo.policy.features_extractor
    assert all(p.requires_grad for p in ext.pretrained.parameters())
    before = [p.clone() for p in ext.pretrained["encoder"].parameters()]
    ppo.learn(8)
    after = list(ext.pretrained["encoder"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not any(m.training for m in ext.pretrained.modules())


# -- PlannerPolicy ----------------------------------------------------------------------------------
def test_evaluate_policy_runs_the_planner_policy():
    model = tiny_model()
    vec = DummyVecEnv([lambda: Monitor(GoalImageObservation(reach(steps=3))) for _ in range(2)])
    policy = PlannerPolicy.from_config(model, vec.action_space, compose_config("plan", TINY_PLAN))
    resets = []
    make = policy.make_agent

    def counting_agent():
        agent = make()
        reset = agent.reset
        agent.reset = lambda goal: resets.append(goal["image"].copy()) or reset(goal)
        return agent

    policy.make_agent = counting_agent
    mean, std = evaluate_policy(policy, vec, n_eval_episodes=4, warn=False)
    assert np.isfinite(mean) and len(policy.agents) == 2
    assert len(resets) >= 4  # one per episode started (auto-reset episodes beyond the 4 counted included)
    assert policy.agents[0].horizon == 2 and policy.agents[0].planner.population == 8


def test_planner_policy_resets_only_started_rows_and_plans_as_the_agent():
    model = tiny_model()
    envs_ = [GoalImageObservation(reach()) for _ in range(2)]
    obs = [e.reset(seed=s)[0] for e, s in zip(envs_, (0, 1), strict=True)]
    batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
    policy = PlannerPolicy(
        lambda: MPCAgent(model, CEMPlanner(action_dim=2, population=8, iterations=2, elites=2))
    )
    torch.manual_seed(0)
    actions, state = policy.predict(batch, episode_start=np.ones(2, bool))
    assert actions.shape == (2, 2) and state is None
    torch.manual_seed(0)  # the same agent by hand, as plan.py drives it, gives the same first action
    agent = MPCAgent(model, CEMPlanner(action_dim=2, population=8, iterations=2, elites=2))
    agent.reset({"image": obs[0][GOAL_KEY]})
    np.testing.assert_array_equal(agent.act({k: v for k, v in obs[0].items() if k != GOAL_KEY}), actions[0])

    goal0 = policy.agents[0].goal_encoded
    obs1, _ = envs_[1].reset(seed=7)  # row 1 starts a new episode with a new goal
    batch = {k: np.stack([obs[0][k], obs1[k]]) for k in obs1}
    prev_mean = policy.agents[0]._prev_mean
    policy.predict(batch, episode_start=np.array([False, True]))
    assert policy.agents[0].goal_encoded is goal0  # row 0 kept its episode
    assert prev_mean is not None and len(policy.agents[0].plans) == 2
    torch.testing.assert_close(policy.agents[1].goal_encoded, model.encode_goal({"image": obs1[GOAL_KEY]}))
    single, _ = policy.predict({k: v[1] for k, v in batch.items()})  # one unbatched observation
    assert single.shape == (2,)


# -- bad input ----------------------------------------------------------------------------------------
def test_bad_input_gets_one_clear_error(checkpoint):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"no render_goal\(\) method"):
        LatentGoalEnv(NoGoalEnv(), model)
    with pytest.raises(ValueError, match=r"\[32, 32, 3\].*\[16, 16, 3\].*image_size=16"):
        LatentGoalEnv(reach(size=32), model)
    with pytest.raises(
        ValueError, match=r"cost.space=metric: this world model has no temporal-distance head"
    ):
        LatentGoalEnv(reach(), model, space="metric")
    with pytest.raises(ValueError, match=r"env_id='JepaAgent/Push-v0'.*env_id='JepaAgent/Reach-v0'"):
        LatentGoalEnv(reach(), tiny_model(env_id="JepaAgent/Push-v0"))
    with pytest.raises(ValueError, match=r"reward='sparse' needs epsilon > 0"):
        LatentGoalEnv(reach(), model, reward="sparse")
    with pytest.raises(ValueError, match=r"no render_goal\(\) method"):
        GoalImageObservation(NoGoalEnv())
    with pytest.raises(ValueError, match=r"have no render_goal\(\) method"):
        VecLatentEncode(DummyVecEnv([NoGoalEnv]), model)
    transposed = VecTransposeImage(DummyVecEnv([reach]))
    with pytest.raises(
        ValueError, match=r"channel-first pixels \[3, 16, 16\]; expected .* channel-last \[16, 16, 3\]"
    ):
        VecLatentEncode(transposed, model)
    with pytest.raises(ValueError, match=r"channel-first \[3, 16, 16\]"):
        JepaFeaturesExtractor(reach().observation_space, checkpoint)  # channel-last: not what SB3 passes
    with pytest.raises(ValueError, match=r"keys \['goal'\] are not observations"):
        JepaFeaturesExtractor(transposed.observation_space, checkpoint, keys=["goal"])
    with pytest.raises(CheckpointError, match="nowhere"):
        JepaFeaturesExtractor(transposed.observation_space, "nowhere")
    policy = PlannerPolicy(lambda: MPCAgent(model, CEMPlanner(action_dim=2)))
    with pytest.raises(
        ValueError, match=r"'goal_pixels': wrap each env in jepa_agent.rl.GoalImageObservation"
    ):
        policy.predict(reach().reset(seed=0)[0])


def test_the_shipped_checkpoint_gives_a_usable_goal_env():
    """The shipped label-free model: check_env passes; the goal frame is at distance 0, the start is not."""
    model = WorldModel.from_checkpoint(REPO_CHECKPOINT, device="cpu")
    env = LatentGoalEnv(envs.make_env("reach", max_episode_steps=5), model)
    assert env.planning.name == "metric"
    check_env(env, warn=True)
    obs, info = env.reset(seed=1_000_000)
    assert not info["is_success"] and info["planning_distance"] > 0.01
    goal = env.env.unwrapped.goal_qpos
    _, info = env.reset(seed=0, options={"qpos": goal, "goal_qpos": goal})
    assert info["planning_distance"] == 0.0
