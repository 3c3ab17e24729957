"""Tasks where velocity matters: the torque-driven reach, its true-dynamics oracle, world models trained to
imagine from several frames (``train.context``), and the agent's memory matching them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import envs
from jepa_agent.agent import MPCAgent
from jepa_agent.oracle import ReachKinematics, ReachSimulator, oracle_model
from jepa_agent.training.latent_cache import LatentEpisodes
from jepa_agent.training.train_world_model import WorldModelTrainConfig, train_on_latents
from jepa_agent.world_model import Context, WorldModel, save_world_model
from planners import CEMPlanner
from tests.test_world_model import tiny_model, tiny_world_model

REPO = Path(__file__).resolve().parents[1]
TORQUE = envs.ENV_IDS["reach_torque"]


# -- the env ---------------------------------------------------------------------------------------
def test_the_arm_keeps_moving_after_a_torque_pulse():
    """Velocity is real: after one full-torque step the shoulder glides on under zero torque, slows
    (damping) and stops; the position arm under the same pulse holds still once its servo target is met."""
    env = envs.make_env("reach_torque")
    env.reset(seed=0, options={"qpos": np.array([0.0, 0.5])})
    u = env.unwrapped
    obs, *_ = env.step(np.array([1.0, 0.0], np.float32))
    pulse = u.data.qpos[0]
    assert obs["proprio"][2] > 1.0  # rad/s after the pulse: the observation's velocity is the simulator's
    angles = []
    for _ in range(20):
        env.step(np.zeros(2, np.float32))
        angles.append(u.data.qpos[0])
    glide = np.diff([pulse, *angles])
    assert angles[2] - pulse > 2 * pulse  # it coasts more than twice as far as it moved under the torque
    assert np.all(glide[:5] > 1e-3) and np.all(np.diff(glide[:8]) < 0)  # still moving, ever slower
    assert abs(u.data.qvel[0]) < 0.05  # and comes to rest
    env.close()


def test_settle_and_jitter_segments():
    """The torque data policy's settle segments (``settle_prob``) move the arm a little and stop it: fine
    control near rest; its moves swing it. Jitter segments (``jitter_prob``) flip the torque's sign every
    step."""
    from jepa_agent.collect import make_policy, make_recording_env

    def run(**kw):
        env = make_recording_env("reach_torque", {"image_size": 16})
        info = env.env_info()
        policy = make_policy("torque", info, np.random.default_rng(0), **kw)
        obs, _ = env.reset(seed=0)
        speed, acts = [], []
        for _ in range(120):
            a = policy(obs["proprio"])
            obs, *_ = env.step(a)
            acts.append(a)
            speed.append(np.abs(obs["proprio"][2:]).max())
        env.close()
        return np.array(speed), np.stack(acts)

    settle, settle_acts = run(coast_prob=0.0, random_prob=0.0, settle_prob=1.0)
    move, _ = run(coast_prob=0.0, random_prob=0.0, settle_prob=0.0)
    assert np.median(settle) < 0.5 * np.median(move)  # rad/s: small moves...
    assert (settle < 0.1).mean() > 0.1  # ...that come to rest
    assert np.abs(settle_acts).mean() < 0.3
    _, jitter_acts = run(coast_prob=0.0, random_prob=0.0, jitter_prob=1.0)
    flips = np.sign(jitter_acts[1:]) != np.sign(jitter_acts[:-1])
    assert flips.mean() > 0.7 and np.abs(jitter_acts).mean() > np.abs(settle_acts).mean()
    env = make_recording_env("reach_torque", {"image_size": 16})
    info = env.env_info()
    env.close()
    with pytest.raises(
        ValueError, match="coast_prob=0.5, random_prob=0.15, settle_prob=0.5, jitter_prob=0.0: expected"
    ):
        make_policy("torque", info, np.random.default_rng(0), coast_prob=0.5, settle_prob=0.5)
    with pytest.raises(ValueError, match="settle_span=0.0, settle_kd=0.3, settle_noise=0.05: expected"):
        make_policy("torque", info, np.random.default_rng(0), settle_span=0.0)
    with pytest.raises(ValueError, match="jitter_amp=-1.0: expected >= 0"):
        make_policy("torque", info, np.random.default_rng(0), jitter_amp=-1.0)


def test_torque_settings_are_checked():
    for kwargs, match in (
        ({"control": "velocity"}, r"control='velocity': expected one of \['position', 'torque'\]"),
        ({"control": "torque", "max_torque": 0.0}, "max_torque=0.0: expected a positive number"),
        ({"control": "torque", "damping": float("nan")}, "damping=nan"),
    ):
        with pytest.raises(ValueError, match=match):
            envs.make_env("reach", **kwargs)
    u = envs.make_env("reach_torque").unwrapped
    assert u.control == "torque" and not hasattr(u, "max_delta")  # a servo setting means nothing here


# -- the oracle ------------------------------------------------------------------------------------
def test_oracle_simulator_predicts_the_env_exactly():
    env = envs.make_env("reach_torque")
    obs, _ = env.reset(seed=3)
    model = oracle_model(env)
    assert isinstance(model, ReachSimulator)
    assert isinstance(oracle_model(envs.make_env("reach")), ReachKinematics)  # valid only for the servos
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(3, 6, 2)).astype(np.float32)
    pred = model.rollout(model.encode(obs), torch.as_tensor(actions))  # [3, 6, 2]
    u = env.unwrapped
    start = u.get_state()
    for s in range(3):
        u.set_state(start[:2], start[2:])
        for t in range(6):
            env.step(actions[s, t])
            np.testing.assert_allclose(pred[s, t].numpy(), u.data.qpos, atol=1e-5)
    with pytest.raises(ValueError, match="latest observation"):
        model.encode({"proprio": np.zeros(4, np.float32) + 9.0})


def test_oracle_stops_the_arm_at_a_goal():
    """CEM on the true dynamics reaches a goal 0.5 rad away and is still there at the end: it brakes."""
    env = envs.make_env("reach_torque", max_episode_steps=20)
    obs, info = env.reset(seed=0, options={"qpos": np.array([0.0, 1.0]), "goal_qpos": np.array([0.5, 0.6])})
    torch.manual_seed(0)
    planner = CEMPlanner(action_dim=2, horizon=5, population=64, elites=8, iterations=4)
    agent = MPCAgent(oracle_model(env), planner)
    agent.reset({"state": env.unwrapped.goal_state()})
    reached = False
    for _ in range(20):
        obs, _, _, _, info = env.step(agent.act(obs))
        reached |= info["is_success"]
    assert reached and info["is_success"], info["distance"]
    assert np.abs(obs["proprio"][2:]).max() < 0.5  # at rest at the goal, not swinging through it


# -- a latent state that carries velocity ------------------------------------------------------------
T, D = 14, 32


def _latent(x: torch.Tensor) -> torch.Tensor:
    """The latent of positions ``x [B]`` -> ``[B, D]`` (momentum_latents and the probes below)."""
    W = torch.randn(2, D, generator=torch.Generator().manual_seed(7))
    return F.layer_norm(torch.stack([x.sin(), x.cos()], 1) @ W, (D,))


def momentum_latents(n_eps: int, seed: int) -> LatentEpisodes:
    """A 1-D point with momentum seen only through its position: ``v' = 0.6 v + 0.4 a``, ``x' = x + v'``,
    latent ``z = LN(W [sin, cos](x))``. One frame shows ``x`` but not ``v``."""
    g = torch.Generator().manual_seed(seed)
    zs, acts = [], []
    for _ in range(n_eps):
        a = torch.rand(T - 1, 1, generator=g) * 2 - 1
        x, v = torch.rand(1, generator=g) * 4 - 2, torch.zeros(1)
        xs = [x]
        for t in range(T - 1):
            v = 0.6 * v + 0.4 * a[t]
            x = x + v
            xs.append(x)
        zs.append(_latent(torch.cat(xs))[:, None])  # [T, 1, D]
        acts.append(torch.cat([a, torch.zeros(1, 1)]).expand(-1, 2).contiguous())  # A = 2 (2nd dim a copy)
    return LatentEpisodes(torch.cat(zs), torch.cat(acts), None, [i * T for i in range(n_eps)], [T] * n_eps)


@pytest.mark.slow  # ~50 s on the 2-core VM; CI runs it (.ci/run: -m slow)
def test_a_two_frame_context_tells_opposite_velocities_apart(tmp_path):
    """The same current frame reached moving left or moving right: a world model trained with
    ``train.context=2`` predicts each next frame where that motion goes (the one-frame model cannot: its
    input is identical), and imagines held-out futures far better than the one-frame model."""
    train, val = momentum_latents(150, 0), momentum_latents(20, 1)
    cfg = dict(steps=1200, batch_size=32, rollout_steps=3, lr=3e-3, warmup=10, log_every=50, ckpt_every=0,
               eval_horizon=3, device="cpu")  # fmt: skip
    models, errors = {}, {}
    for context in (1, 2):
        model = tiny_world_model()
        res = train_on_latents(model, train, val, WorldModelTrainConfig(context=context, **cfg),
                               tmp_path / str(context), progress=False)  # fmt: skip
        models[context], errors[context] = model, res.val["val_h_step_l1"]
        assert model.context_frames == context  # recorded as trained ...
        loaded = WorldModel.from_checkpoint(tmp_path / str(context), device="cpu")
        assert loaded.context_frames == context  # ... and in the checkpoint
    assert errors[2] < 0.6 * errors[1], errors
    # 64 poses, each reached moving right (+1) and moving left (-1) at 0.2-0.4 per step, then zero action
    g = torch.Generator().manual_seed(5)
    here = torch.rand(64, generator=g) * 3 - 1.5
    speed = torch.rand(64, generator=g) * 0.2 + 0.2
    now = _latent(here)  # [64, D]
    zero = torch.zeros(64, 1, 2)
    hits = {}
    for context, model in models.items():
        hits[context] = []
        for s in (1, -1):
            frames = [_latent(here - s * speed), now][-context:]  # the previous frame, if the model sees it
            z = torch.stack(frames, 1)[:, :, None]  # [64, C, 1, D]
            ctx = Context(z, zero[:, : context - 1] if context > 1 else None)
            pred = model.rollout(ctx, zero)[:, 0, 0]  # [64, D]
            own = (pred - _latent(here + s * 0.6 * speed)).norm(dim=-1)  # it coasts on: v' = 0.6 v
            other = (pred - _latent(here - s * 0.6 * speed)).norm(dim=-1)
            hits[context].append(own < other)
    right, left = hits[2]
    assert (right & left).float().mean() > 0.8, (right.float().mean(), left.float().mean())
    right, left = hits[1]
    assert not (right & left).any()  # one frame: the same prediction for both, right for one motion at most


# -- the rest term -----------------------------------------------------------------------------------
def test_rest_term_prices_the_motion_left_at_the_end_of_a_plan():
    """``cost.rest_weight``: + the latents' mean squared change over the last imagined step, so a plan
    that arrives still costs less than one that arrives moving; read from latents alone (unfused path here;
    the fused path is checked in test_label_free), and refused where it cannot be read."""
    from jepa_agent.costs import CostConfig, RestCost

    model = tiny_world_model(metric={"dim": 4, "hidden": 8})
    model.meta["metric_steps"] = 1
    goal = torch.randn(model.latent_shape)
    torch.manual_seed(1)
    pred = torch.randn(6, 4, *model.latent_shape)
    pred[:3, -1] = pred[:3, -2]  # the first three plans end at rest
    actions = torch.zeros(6, 4, 2)
    base = model.cost(goal, latent_weight=0.0, action_weight=0.0)
    rest = model.cost(goal, latent_weight=0.0, action_weight=0.0, rest_weight=2.0)
    extra = rest(pred, actions) - base(pred, actions)
    torch.testing.assert_close(extra[:3], torch.zeros(3))
    torch.testing.assert_close(extra[3:], 2.0 * (pred[3:, -1] - pred[3:, -2]).square().mean((-2, -1)))
    assert any(isinstance(getattr(t, "cost", None), RestCost) for t in rest.terms)
    # only in the metric space (as the displacement term): the labelled and latent baselines are unchanged
    latent = model.cost(goal, space="latent", action_weight=0.0, rest_weight=2.0)
    torch.testing.assert_close(
        latent(pred, actions), model.cost(goal, space="latent", action_weight=0.0)(pred, actions)
    )
    with pytest.raises(ValueError, match=r"cost.rest_weight=-1; expected >= 0"):
        CostConfig(rest_weight=-1.0)
    with pytest.raises(ValueError, match=r"needs >= 2 imagined steps \(planner.horizon >= 2\)"):
        rest(pred[:, :1], actions[:, :1])


def test_smooth_term_prices_a_change_of_action_from_the_one_taken_last():
    """``cost.smooth_weight``: + mean_h ||a_h - a_{h-1}||^2 from the action the agent took last (zeros at an
    episode's start), so alternating full torques (the dither seen at a goal) costs; the agent gives the
    cost its last action every replan, the oracle carries the same term, and bad values are refused."""
    from jepa_agent.costs import ActionSmoothnessCost, CostConfig

    smooth = ActionSmoothnessCost(0.5)
    a = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[0.2, 0.1], [0.2, 0.1]]])  # [S=2, H=2, A=2]
    torch.testing.assert_close(smooth(None, a), 0.5 * torch.tensor([(1 + 4) / 2, 0.05 / 2]))
    smooth.set_last_action(torch.tensor([0.2, 0.1]))  # the second plan continues the last action: free
    torch.testing.assert_close(smooth(None, a), 0.5 * torch.tensor([(0.64 + 0.01 + 4) / 2, 0.0]))
    smooth.set_last_action(torch.zeros(3))
    with pytest.raises(ValueError, match="the last action has 3 dims; the plan's actions have 2"):
        smooth(None, a)
    with pytest.raises(ValueError, match=r"cost.smooth_weight=-0.1; expected >= 0"):
        CostConfig(smooth_weight=-0.1)

    model = tiny_model()
    planner = CEMPlanner(action_dim=2, horizon=3, population=8, elites=2, iterations=2)
    agent = MPCAgent(model, planner, cost=CostConfig(smooth_weight=0.5))
    term = next(t for t in agent.model.cost(torch.zeros(model.latent_shape), smooth_weight=0.5).terms
                if isinstance(t, ActionSmoothnessCost))  # fmt: skip
    assert term.weight == 0.5
    rng = np.random.default_rng(0)
    frame = {"pixels": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)}
    agent.reset({"image": frame["pixels"]})
    seen = []
    cost_term = next(t for t in agent._cost_fn.terms if isinstance(t, ActionSmoothnessCost))
    original = cost_term.set_last_action
    cost_term.set_last_action = lambda action: (seen.append(action), original(action))
    taken = [agent.act(frame) for _ in range(3)]
    assert len(seen) == 3 and seen[0] is None
    assert all(np.allclose(s.numpy(), t) for s, t in zip(seen[1:], taken[:2], strict=True))
    agent.reset({"image": frame["pixels"]})  # a new episode starts from rest
    assert agent._last_action is None
    env = envs.make_env("reach_torque", max_episode_steps=5)
    oracle = oracle_model(env).cost(torch.zeros(2), smooth_weight=0.5)
    assert any(isinstance(t, ActionSmoothnessCost) for t in oracle.terms)
    env.close()


# -- memory and context ------------------------------------------------------------------------------
def test_context_pads_an_episode_start_and_the_memory_must_match():
    model = tiny_model()
    model.meta["context_frames"] = 2
    planner = CEMPlanner(action_dim=2, horizon=3, population=8, elites=2, iterations=2)
    assert MPCAgent(model, planner).memory.capacity == 2  # memory=None: the model's
    with pytest.raises(ValueError, match=r"agent.memory=1 but the world model .* from 2 frame\(s\).*null"):
        MPCAgent(model, planner, memory=1)
    z = torch.randn(model.latent_shape)
    ctx = model.context([z])  # the first step of an episode: one frame seen so far
    assert ctx.z.shape[1] == 2
    torch.testing.assert_close(ctx.z[0, 0], ctx.z[0, 1])  # at rest before the reset
    torch.testing.assert_close(ctx.actions, model.normalizer.actions(torch.zeros(1, 1, 2)))


def test_plan_refuses_a_memory_the_checkpoint_was_not_trained_for(tmp_path, python, run_env):
    model = tiny_world_model()
    model.meta.update(env_id=TORQUE, context_frames=2)
    ckpt = tmp_path / "wm" / "checkpoint"
    save_world_model(ckpt, model, encoder_name="vit_tiny")
    assert WorldModel.from_checkpoint(ckpt, device="cpu").context_frames == 2
    base = [python, str(REPO / "scripts" / "plan.py"), "env=reach_torque", f"checkpoint={ckpt}",
            "env.image_size=16", "episodes=1", "env.max_episode_steps=3", "baselines=false", "videos=0",
            "energy_grid=0", "planner.population=8", "planner.iterations=2", "planner.elites=2",
            "device=cpu"]  # fmt: skip
    bad = subprocess.run(base + ["agent.memory=1", f"hydra.run.dir={tmp_path / 'a'}"], capture_output=True,
                         text=True, env=run_env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert bad.returncode != 0
    assert "agent.memory=1 but the world model" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    good = subprocess.run(base + [f"hydra.run.dir={tmp_path / 'b'}"], capture_output=True, text=True,
                          env=run_env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert good.returncode == 0, good.stderr[-2000:]
    assert json.loads(good.stdout.strip().splitlines()[-1])["episodes"] == 1
    trace = [python, str(REPO / "scripts" / "trace_episode.py"), "--checkpoint", str(ckpt),
             "--image-size", "16", "--max-steps", "3"]  # fmt: skip
    proc = subprocess.run(trace, capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["steps"] == 3 and out["memory"] == 2 and " q [" in proc.stdout  # a line per step
