"""MPC agent: short-term memory, action queue / replanning cadence, warm start, and the oracle on the env."""

import numpy as np
import pytest
import torch

import envs
from envs.reach import forward_kinematics
from jepa_agent.agent import MPCAgent, ShortTermMemory
from jepa_agent.evaluation import EVAL_SEED_OFFSET, RandomPolicy, evaluate, wilson_interval
from jepa_agent.oracle import ReachKinematics, forward_kinematics_torch
from planners.base import PlanResult
from planners.cem import CEMPlanner


class RecordingPlanner:
    """Returns a fixed, recognisable plan and records what it was given."""

    horizon = 4

    def __init__(self):
        self.calls = []

    def plan(self, rollout_fn, cost_fn, z0, init_mean=None):
        self.calls.append({"z0": z0, "init_mean": None if init_mean is None else init_mean.clone()})
        k = len(self.calls)
        actions = torch.full((self.horizon, 2), 0.1 * k) + torch.arange(self.horizon)[:, None] * 0.01
        return PlanResult(actions, 0.0, torch.zeros(1), actions.clone(), torch.zeros_like(actions))


class CountingModel:
    action_dim = 2

    def encode(self, obs):
        return torch.as_tensor(obs["proprio"][:2])

    def encode_goal(self, goal):
        return goal["state"]

    def context(self, states, actions):
        return (list(states), list(actions))

    def rollout(self, context, actions):
        return actions.cumsum(1)

    def cost(self, goal):
        return lambda pred, actions: pred[:, -1].pow(2).sum(-1)


def _obs(i):
    return {"pixels": np.zeros((8, 8, 3), np.uint8), "proprio": np.array([i, i, 0, 0], np.float32)}


def test_memory_keeps_last_states_and_linking_actions():
    m = ShortTermMemory(3)
    for i in range(5):
        m.observe(i)
        m.acted(torch.tensor([float(i)]))
    states, actions = m.snapshot()
    assert states == [2, 3, 4]
    assert [float(a) for a in actions] == [2.0, 3.0]  # the actions between the kept observations
    with pytest.raises(ValueError, match="capacity"):
        ShortTermMemory(0)


def test_queue_replans_every_execute_steps_and_warm_starts_shifted():
    planner = RecordingPlanner()
    agent = MPCAgent(CountingModel(), planner, horizon=4, execute_steps=2, memory=2)
    agent.reset({"state": np.zeros(2)})
    actions = [agent.act(_obs(i)) for i in range(6)]
    assert len(planner.calls) == 3  # one plan per 2 executed actions
    np.testing.assert_allclose(actions[0], [0.1, 0.1], atol=1e-6)
    np.testing.assert_allclose(actions[1], [0.11, 0.11], atol=1e-6)
    np.testing.assert_allclose(actions[2], [0.2, 0.2], atol=1e-6)
    # the second plan was warm-started from the first, shifted by the 2 executed actions, zero-padded
    first = planner.calls[0]
    assert first["init_mean"] is None
    expected = torch.tensor([[0.12, 0.12], [0.13, 0.13], [0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(planner.calls[1]["init_mean"], expected)
    # the context holds the 2 latest observations and the action between them
    states, acts = planner.calls[1]["z0"]
    assert [float(s[0]) for s in states] == [1.0, 2.0] and len(acts) == 1
    agent.reset({"state": np.zeros(2)})
    agent.act(_obs(0))
    assert planner.calls[-1]["init_mean"] is None  # reset clears the warm start


def test_agent_needs_a_goal_and_valid_execute_steps():
    with pytest.raises(ValueError, match="execute_steps"):
        MPCAgent(CountingModel(), RecordingPlanner(), horizon=4, execute_steps=5)
    agent = MPCAgent(CountingModel(), RecordingPlanner(), horizon=4)
    with pytest.raises(RuntimeError, match="reset"):
        agent.act(_obs(0))


def test_kinematics_match_the_simulator():
    env = envs.make_env("reach")
    env.reset(seed=0)
    model = ReachKinematics.from_env(env)
    rng = np.random.default_rng(0)
    q = torch.as_tensor(env.unwrapped.data.qpos, dtype=torch.float32)
    actions = torch.as_tensor(rng.uniform(-1, 1, (1, 5, 2)), dtype=torch.float32)
    pred = model.rollout(q, actions)[0]
    for t in range(5):
        env.step(actions[0, t].numpy())
        np.testing.assert_allclose(env.unwrapped.data.qpos, pred[t].numpy(), atol=0.03)
    np.testing.assert_allclose(
        forward_kinematics_torch(pred).numpy(), forward_kinematics(pred.numpy()), atol=1e-6
    )
    env.close()


def test_oracle_mpc_reaches_goals_and_beats_random():
    torch.manual_seed(0)
    env = envs.make_env("reach")
    planner = CEMPlanner(action_dim=2, horizon=5, population=100, elites=10, iterations=6)
    oracle = MPCAgent(ReachKinematics.from_env(env), planner, horizon=5)
    seeds = [EVAL_SEED_OFFSET + i for i in range(4)]
    res = evaluate(env, {"oracle": oracle, "random": RandomPolicy(env.action_space)}, seeds)
    assert res["oracle"]["success_rate"] >= 0.75
    assert res["oracle"]["final_distance_mean"] < 0.5 * res["random"]["final_distance_mean"]
    assert len(oracle.plans) == 4 * 50 and res["oracle"]["plan_seconds_median"] > 0
    env.close()


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson_interval(95, 100)
    assert lo == pytest.approx(0.8882, abs=1e-3) and hi == pytest.approx(0.9785, abs=1e-3)
    assert all(np.isnan(wilson_interval(0, 0)))


class ChunkedModel(CountingModel):
    """Macro-actions of 3 env steps of 2-d actions (6 wide)."""

    action_dim = 6
    action_chunk = 3


def test_macro_actions_run_as_env_steps_and_memory_keeps_their_boundaries():
    planner = RecordingPlanner()

    def plan(rollout_fn, cost_fn, z0, init_mean=None):  # a recognisable 6-wide plan per call
        planner.calls.append({"z0": z0, "init_mean": init_mean})
        k = len(planner.calls)
        actions = (torch.arange(24, dtype=torch.float32).reshape(4, 6) + 100 * k) / 1000
        return PlanResult(actions, 0.0, torch.zeros(1), actions.clone(), torch.zeros_like(actions))

    planner.plan = plan
    agent = MPCAgent(ChunkedModel(), planner, horizon=4, memory=2)
    assert agent.chunk == 3
    agent.reset({"state": np.zeros(2)})
    taken = np.stack([agent.act(_obs(i)) for i in range(7)])  # [7, 2]
    assert len(planner.calls) == 3  # one plan per macro-action: at env steps 0, 3 and 6
    np.testing.assert_allclose(taken[:3].reshape(-1), (np.arange(6) + 100) / 1000, atol=1e-6)
    np.testing.assert_allclose(taken[3:6].reshape(-1), (np.arange(6) + 200) / 1000, atol=1e-6)
    # the memory holds the frames at the boundaries (env steps 3 and 6) and the macro-action between them
    states, acts = planner.calls[2]["z0"]
    assert [float(s[0]) for s in states] == [3.0, 6.0]
    assert len(acts) == 1 and acts[0].shape == (6,)
    np.testing.assert_allclose(acts[0].numpy(), (np.arange(6) + 200) / 1000, atol=1e-6)
    agent.reset({"state": np.zeros(2)})
    agent.act(_obs(0))
    assert len(planner.calls) == 4  # reset starts a new macro-action


def test_bad_action_chunk_is_one_clear_error():
    class Odd(CountingModel):
        action_dim, action_chunk = 5, 2

    class Zero(CountingModel):
        action_chunk = 0

    with pytest.raises(ValueError, match="not a multiple of its action_chunk=2"):
        MPCAgent(Odd(), RecordingPlanner(), horizon=4)
    with pytest.raises(ValueError, match="action_chunk=0"):
        MPCAgent(Zero(), RecordingPlanner(), horizon=4)
