"""World-model ensembles (jepa_agent.ensemble): the members' mean cost plus their spread, behind the agent's
planning-model interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs
from jepa_agent.agent import MPCAgent
from jepa_agent.ensemble import EnsembleCost, WorldModelEnsemble
from jepa_agent.planning import energy_landscape, load_planning_model
from jepa_agent.world_model import save_world_model
from planners import CEMPlanner
from tests.test_rl import IMG, tiny_model


def member(seed: int, context: int = 1):
    model = tiny_model(readout=False, metric=True)
    torch.manual_seed(seed)
    for p in model.predictor.parameters():  # members trained apart: different dynamics
        p.data.add_(0.1 * torch.randn_like(p))
    model.meta["context_frames"] = context
    return model


def test_cost_is_the_members_mean_plus_their_spread():
    costs = [lambda p, a: p.sum(-1), lambda p, a: 3 * p.sum(-1)]
    preds = (torch.ones(4, 2), torch.ones(4, 2))
    out = EnsembleCost(costs, disagreement=0.5)(preds, torch.zeros(4, 1, 2))
    torch.testing.assert_close(out, torch.full((4,), 4.0 + 0.5 * 2.0))  # members 2 and 6: mean 4, std 2
    assert EnsembleCost(costs, 0.0)(preds, torch.zeros(4, 1, 2)).tolist() == [4.0] * 4
    assert EnsembleCost(costs, 1.0).rollout_projection is None


def test_an_agent_plans_with_an_ensemble_as_with_one_model():
    a, b = member(0), member(1)
    ensemble = WorldModelEnsemble([a, b], disagreement=1.0)
    env = envs.make_env("reach", image_size=IMG, max_episode_steps=3)
    obs, _ = env.reset(seed=0)
    goal = {"image": env.unwrapped.render_goal()}
    with torch.inference_mode():
        state = ensemble.encode(obs)
        ctx = ensemble.context([state], [])
        actions = torch.rand(5, 2, 2) * 2 - 1
        preds = ensemble.rollout(ctx, actions)
        for m, p in zip((a, b), preds, strict=True):  # each member imagines the same sequences itself
            torch.testing.assert_close(p, m.rollout(m.context([m.encode(obs)], []), actions))
        cost_fn = ensemble.cost(ensemble.encode_goal(goal))
        each = torch.stack(
            [m.cost(m.encode_goal(goal))(p, actions) for m, p in zip((a, b), preds, strict=True)]
        )
        torch.testing.assert_close(cost_fn(preds, actions), each.mean(0) + each.std(0, correction=0))
        assert each.std(0).max() > 0  # the members disagree
    agent = MPCAgent(ensemble, CEMPlanner(action_dim=2, horizon=2, population=8, elites=2, iterations=2))
    agent.reset(goal)
    for _ in range(2):
        action = agent.act(obs)
        assert action.shape == (2,) and np.all(np.abs(action) <= 1)
        obs, *_ = env.step(action)
    values, costs = energy_landscape(ensemble, obs, goal, action_dim=2, horizon=2, grid=3)
    assert costs.shape == (3, 3) and np.isfinite(costs).all()
    env.close()


def test_bad_ensembles_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="needs >= 2 world models; got 1"):
        WorldModelEnsemble([member(0)])
    with pytest.raises(ValueError, match="differ in context_frames: 1 .* and 2"):
        WorldModelEnsemble([member(0), member(1, context=2)])
    with pytest.raises(ValueError, match="disagreement=-1"):
        WorldModelEnsemble([member(0), member(1)], disagreement=-1)
    paths = []
    for seed in (0, 1):  # from checkpoints, as plan.py's 'checkpoint=[A,B]' loads them
        paths.append(tmp_path / f"wm{seed}")
        save_world_model(paths[-1], member(seed), encoder_name="vit_micro")
    model = load_planning_model([str(p) for p in paths], "JepaAgent/Reach-v0", IMG, 2, "auto", "cpu", 0.3)
    assert isinstance(model, WorldModelEnsemble) and model.disagreement == 0.3 and len(model.members) == 2
    assert model.resolve_cost_space("auto") == "metric" and model.context_frames == 1
    with pytest.raises(ValueError, match="readout"):  # a space no member has: the member's own error
        load_planning_model([str(p) for p in paths], "JepaAgent/Reach-v0", IMG, 2, "readout", "cpu")


def test_bench_plan_times_an_ensemble_against_its_first_member(tmp_path, capsys):
    import importlib.util

    from tests.conftest import REPO

    for seed in (0, 1):
        save_world_model(tmp_path / f"wm{seed}", member(seed), encoder_name="vit_micro")
    spec = importlib.util.spec_from_file_location("bench_plan", REPO / "scripts" / "bench_plan.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--population", "8", "--iterations", "2", "--replans", "5", "--threads", "1", "--no-baseline"]
    res = bench.main([*args, "--checkpoint", str(tmp_path / "wm0"), "--member", str(tmp_path / "wm1")])
    assert res["ensemble_s"]["median"] > 0 and res["ratio_ensemble_to_one"] > 0
    assert res["ensemble_members"] == [str(tmp_path / "wm0"), str(tmp_path / "wm1")]
    assert "ensemble_serial_s" not in res  # one thread: the members run one after the other anyway
    assert res["kv_concat_s"]["median"] > 0 and res["speedup_kv_buffers"] > 0  # the cache's reference
    before = torch.get_num_threads()
    try:  # two threads: the members side by side, timed against the same two one after the other
        two = [*args[:-3], "--threads", "2", "--no-baseline"]
        res = bench.main([*two, "--checkpoint", str(tmp_path / "wm0"), "--member", str(tmp_path / "wm1")])
    finally:
        torch.set_num_threads(before)
    assert res["ensemble_serial_s"]["median"] > 0 and res["speedup_ensemble_vs_serial"] > 0
    with pytest.raises(ValueError, match="--member needs --checkpoint"):
        bench.main([*args, "--member", str(tmp_path / "wm1")])


def test_members_run_side_by_side_with_the_same_results_and_modes():
    """Two torch threads: each member imagines and scores on its own thread, bit for bit as one after the
    other; the process's thread count is restored, and the caller's grad mode reaches the workers."""
    a, b = member(0), member(1)
    parallel, serial = WorldModelEnsemble([a, b]), WorldModelEnsemble([a, b], parallel=False)
    env = envs.make_env("reach", image_size=IMG, max_episode_steps=3)
    obs, _ = env.reset(seed=0)
    goal = {"image": env.unwrapped.render_goal()}
    env.close()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert parallel.runner.workers(2, torch.device("cpu")) == 2
        assert serial.runner.workers(2, torch.device("cpu")) == 1
        assert parallel.runner.workers(2, torch.device("cuda")) == 1  # CUDA: in order
        with torch.inference_mode():
            ctx = parallel.context([parallel.encode(obs)], [])
            g = parallel.encode_goal(goal)
            actions = torch.rand(16, 3, 2) * 2 - 1
            costs = [m.cost(g, action_weight=0.1) for m in (parallel, serial)]
            out = [
                c(m.rollout(ctx, actions, project=c.rollout_projection), actions)
                for m, c in zip((parallel, serial), costs, strict=True)
            ]
            assert torch.get_num_threads() == 2
        assert torch.equal(out[0], out[1])
        # gradient planning through the workers: the rollout keeps its graph and the grad reaches actions
        acts = (torch.rand(4, 3, 2) * 2 - 1).requires_grad_()
        cost = parallel.cost(g)
        cost(parallel.rollout(ctx, acts), acts).sum().backward()
        assert acts.grad is not None and torch.isfinite(acts.grad).all() and acts.grad.abs().sum() > 0
        with torch.no_grad():  # and no graph where the caller asked for none
            preds = parallel.rollout(ctx, acts)
        assert not any(p.requires_grad for p in preds)
        with pytest.raises(ValueError, match="actions of shape"):  # a member's error reaches the caller
            parallel.rollout(ctx, torch.zeros(4, 3, 5))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        parallel.runner.close()
