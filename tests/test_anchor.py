"""The anchor head: summed actions read from a real frame's patch tokens, carried forward by the plan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jepa_agent.costs import AnchorCost, CostConfig
from jepa_agent.models.latent import AnchorHead
from jepa_agent.training.anchor import AnchorTrainConfig, train_anchor_head
from jepa_agent.training.latent_cache import ActionSums, window_starts
from jepa_agent.training.train_world_model import DisplacementTrainConfig
from tests.test_world_model import IMG, A, Episodes, cfg, obs, tiny_world_model

PATCHES = (IMG // 4) ** 2  # the tiny encoder: patch 4


def scene_episodes(n_eps: int, seed: int, length: int = 16, tokens: int = 4, dim: int = 8):
    """Tokens = a large random scene per episode + a code of a 2-D position that the actions move
    (``pos += 0.25 a``): the arm on a new background in every episode, additive as in pixels."""
    g = torch.Generator().manual_seed(seed)
    code = torch.randn(4, tokens * dim, generator=torch.Generator().manual_seed(7))
    zs, acts = [], []
    for _ in range(n_eps):
        a = torch.rand(length - 1, A, generator=g) * 2 - 1
        pos = torch.cat([torch.rand(1, A, generator=g) * 2 - 1, 0.25 * a]).cumsum(0)  # [T, A]
        scene = 3 * torch.randn(1, tokens * dim, generator=g)
        zs.append((torch.cat([pos.sin(), pos.cos()], 1) @ code + scene).view(length, tokens, dim))
        acts.append(torch.cat([a, torch.zeros(1, A)]))
    starts, lengths = [i * length for i in range(n_eps)], [length] * n_eps
    return torch.cat(zs), ActionSums(torch.cat(acts), starts, lengths), window_starts(starts, lengths, 1)


def test_anchor_head_cancels_the_scene_and_reads_a_frame_against_itself_as_one_constant():
    torch.manual_seed(0)
    head = AnchorHead(4, 8, A, hidden=16, channels=3)
    head.set_token_stats(torch.randn(50, 4, 8) * 2 + 1)
    x, goal, scene = torch.randn(5, 4, 8), torch.randn(5, 4, 8), 5 * torch.randn(1, 4, 8)
    torch.testing.assert_close(head(x + scene, goal + scene), head(x, goal), atol=1e-4, rtol=1e-4)
    same = head(x, x)
    torch.testing.assert_close(same, same[:1].expand_as(same))
    with pytest.raises(ValueError, match=r"tokens \(50, 4, 7\); expected \[F, 4, 8\]"):
        head.set_token_stats(torch.zeros(50, 4, 7))
    with pytest.raises(ValueError, match="anchor head .*channels=0; expected positive sizes"):
        AnchorHead(4, 8, A, channels=0)


def test_anchor_head_pair_inputs_see_the_frame_and_round_trip(tmp_path):
    """``world_model.anchor.inputs=pair``: the MLP reads ``[h, g, g - h]``, so the scene no longer cancels
    (the price of knowing where the arm is); a goal broadcasts, and the choice is saved with the model."""
    from jepa_agent.world_model import WorldModel, save_world_model

    torch.manual_seed(0)
    head = AnchorHead(4, 8, A, hidden=16, channels=3, inputs="pair")
    head.set_token_stats(torch.randn(50, 4, 8) * 2 + 1)
    x, goal, scene = torch.randn(5, 4, 8), torch.randn(5, 4, 8), 5 * torch.randn(1, 4, 8)
    assert not torch.allclose(head(x + scene, goal + scene), head(x, goal), atol=1e-3)
    torch.testing.assert_close(head(x, goal[:1]), head(x, goal[:1].expand_as(x)))
    with pytest.raises(
        ValueError, match=r"world_model.anchor.inputs='sum'; expected one of \['diff', 'pair'\]"
    ):
        AnchorHead(4, 8, A, inputs="sum")

    model = tiny_world_model(
        metric={"dim": 4, "hidden": 8},
        anchor={"hidden": 8, "channels": 2, "inputs": "pair", "token_hidden": 3},
    )
    model.meta.update(metric_steps=1, anchor_steps=1)
    save_world_model(tmp_path / "wm", model)
    loaded = WorldModel.from_checkpoint(tmp_path / "wm", device="cpu")
    assert loaded.anchor.inputs == "pair" and loaded.anchor.token_hidden == 3
    goal_state = loaded.encode_goal({"image": obs(seed=5)["pixels"]})
    reading = loaded.anchor.from_embeddings(loaded.encode(obs()).anchor[None], goal_state.anchor[None])
    assert reading.shape == (1, A) and torch.isfinite(reading).all()
    again = model.anchor.from_embeddings(model.encode(obs()).anchor[None], goal_state.anchor[None])
    torch.testing.assert_close(reading, again)  # the saved head reads as the one trained


@pytest.mark.parametrize("token_hidden", [0, 6])
def test_anchor_head_ignores_every_token_both_frames_share(token_hidden):
    """With ``inputs=diff``, linear or not per token (``token_hidden``), a token the same in both frames (the
    scene where the arm is in neither) cancels: only the tokens that differ move the reading."""
    torch.manual_seed(0)
    head = AnchorHead(4, 8, A, hidden=16, channels=3, token_hidden=token_hidden)
    head.set_token_stats(torch.randn(50, 4, 8) * 2 + 1)
    x, goal = torch.randn(5, 4, 8), torch.randn(5, 4, 8)
    goal[:, 1:] = x[:, 1:]  # the frames differ in token 0 only
    other = 5 * torch.randn(5, 3, 8)  # a new scene in the shared tokens
    moved_x, moved_goal = torch.cat([x[:, :1], other], 1), torch.cat([goal[:, :1], other], 1)
    torch.testing.assert_close(head(moved_x, moved_goal), head(x, goal), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(head(x, goal), head(x, x), atol=1e-3)
    assert isinstance(head.project, torch.nn.Linear) == (token_hidden == 0)
    for bad in (-1, 1.5, True):
        with pytest.raises(
            ValueError, match=rf"world_model.anchor.token_hidden={bad!r}; expected an int >= 0"
        ):
            AnchorHead(4, 8, A, token_hidden=bad)


def test_anchor_token_stats_are_the_training_tokens_mean_and_std():
    head = AnchorHead(3, 5, A, hidden=8)
    tokens = torch.randn(1000, 3, 5) * torch.linspace(0.5, 3, 5) + torch.arange(3.0)[:, None]
    head.set_token_stats(tokens.half(), chunk=128)
    torch.testing.assert_close(head.token_mean, tokens.half().float().mean(0), atol=2e-3, rtol=0)
    torch.testing.assert_close(head.token_std, tokens.half().float().std(0) + 1e-3, atol=5e-3, rtol=5e-3)


def test_anchor_head_learns_the_summed_actions_on_a_new_scene_every_episode():
    """Trained from tokens and actions only, on held-out episodes (new scenes) it reads the capped summed
    actions between two frames far better than the targets' variance, and best near the goal."""
    tokens, sums, frames = scene_episodes(150, 0)
    val = scene_episodes(30, 1)
    torch.manual_seed(0)
    head = AnchorHead(4, 8, A, hidden=64, channels=8)
    targets = DisplacementTrainConfig(goal_steps=6, back_steps=2, cap=2.0)
    stats = train_anchor_head(head, tokens.half(), sums, frames, AnchorTrainConfig(steps=800, batch_size=128),
                              targets, val, progress=False)  # fmt: skip
    assert np.isfinite(stats["anchor_loss"]) and stats["anchor_seconds"] > 0
    assert stats["anchor_val_ratio"] < 0.2, stats


def test_anchor_relative_loss_weighs_the_pairs_near_the_goal_as_the_far_ones():
    """``train.anchor.relative=c``: each pair's squared error over ``|target|^2 + c`` (times ``c``): at the
    goal it is the plain loss; a pair 2 units away with the same error weighs 17x less (c = 0.25)."""
    from jepa_agent.training.anchor import anchor_loss

    want = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    pred = want + torch.tensor([0.3, -0.1])
    plain = anchor_loss(pred, want)
    torch.testing.assert_close(plain, torch.nn.functional.mse_loss(pred, want))
    per_pair = (
        torch.tensor([0.1, 0.1 * 0.25 / 4.25]) / 2
    )  # (0.3^2 + 0.1^2) x c / (|want|^2 + c), per component
    torch.testing.assert_close(anchor_loss(pred, want, 0.25), per_pair.mean())
    for bad in (-0.1, True, float("nan"), "much", None):
        with pytest.raises(ValueError, match=r"train.anchor.relative=.*expected a number >= 0"):
            AnchorTrainConfig(relative=bad)


def test_anchor_cost_is_the_reading_less_the_planned_actions():
    torch.manual_seed(0)
    head = AnchorHead(4, 8, A, hidden=8)
    goal_h, start_h = torch.randn(8), torch.randn(8)
    cost = AnchorCost(head, goal_h, reduction="final")
    with pytest.raises(ValueError, match="no current frame: call set_start"):
        cost(None, torch.zeros(3, 2, A))
    cost.set_start(start_h)
    d0 = head.from_embeddings(start_h[None], goal_h[None])[0].detach()
    exact = torch.stack([d0 / 2, d0 / 2])[None]  # [1, H=2, A]: two steps that sum to the reading
    assert float(cost(None, exact)[0]) < 1e-10
    off = exact + torch.tensor([0.3, -0.1])
    torch.testing.assert_close(cost(None, off), torch.tensor([0.6**2 + 0.2**2]), atol=1e-5, rtol=1e-5)
    every = AnchorCost(head, goal_h, reduction="all")
    every.set_start(start_h)
    torch.testing.assert_close(every(None, exact), (d0 / 2).square().sum()[None] / 2, atol=1e-5, rtol=1e-5)
    assert not AnchorCost.reads_predictions
    with pytest.raises(TypeError, match="the goal needs the anchor head's embedding"):
        AnchorCost(head, None).set_goal(object())
    with pytest.raises(ValueError, match="no goal: call set_goal"):
        AnchorCost(head).set_start(start_h)


def test_anchor_tolerance_costs_only_what_lies_beyond_it():
    """``cost.anchor_tolerance``: within ``t`` of the reading the term is 0; beyond, ``(||left|| - t)^2``."""
    from jepa_agent.costs import anchor_excess

    torch.manual_seed(0)
    head = AnchorHead(4, 8, A, hidden=8)
    goal_h, start_h = torch.randn(8), torch.randn(8)
    plain, loose = AnchorCost(head, goal_h), AnchorCost(head, goal_h, tolerance=0.5)
    plain.set_start(start_h)
    loose.set_start(start_h)
    d0 = head.from_embeddings(start_h[None], goal_h[None])[0].detach()
    near = (d0 + torch.tensor([0.3, -0.1]))[None, None]  # [1, H=1, A]: 0.316 from the reading
    far = (d0 + torch.tensor([0.6, 0.8]))[None, None]  # 1.0 from it
    assert float(loose(None, near)[0]) == 0.0 and float(plain(None, near)[0]) > 0.09
    torch.testing.assert_close(loose(None, far), torch.tensor([0.5**2]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain(None, far), torch.tensor([1.0]), atol=1e-5, rtol=1e-5)
    left = torch.randn(7, 3, A)
    torch.testing.assert_close(anchor_excess(left), left.square().sum(-1))  # 0: the plain square, exactly
    model = _anchored_model()
    goal = model.encode_goal({"image": obs(seed=5)["pixels"]})
    terms = [t.cost for t in model.cost(goal, anchor_tolerance=0.25).terms
             if isinstance(getattr(t, "cost", None), AnchorCost)]  # fmt: skip
    assert len(terms) == 1 and terms[0].tolerance == 0.25
    for bad in (-0.1, True, "much"):
        with pytest.raises(ValueError, match=rf"cost.anchor_tolerance={bad!r}; expected a number >= 0"):
            CostConfig(anchor_tolerance=bad)
    with pytest.raises(ValueError, match="cost.anchor_tolerance=-1"):
        model.cost(goal, anchor_tolerance=-1)


def _anchored_model():
    model = tiny_world_model(metric={"dim": 4, "hidden": 8}, anchor={"hidden": 8, "channels": 2})
    model.meta.update(metric_steps=1, anchor_steps=1)  # as after both heads' stages
    return model


def test_world_model_with_an_anchor_encodes_it_plans_with_it_and_round_trips(tmp_path):
    from jepa_agent.agent import MPCAgent
    from jepa_agent.world_model import LatentState, WorldModel, save_world_model
    from planners.cem import CEMPlanner

    model = _anchored_model()
    assert model.anchor.num_tokens == PATCHES and "anchor" in model.module_names()
    state = model.encode(obs())
    goal = model.encode_goal({"image": obs(seed=5)["pixels"]})
    assert isinstance(goal, LatentState) and state.anchor.shape == goal.anchor.shape == (8,)
    cost = model.cost(goal)
    anchored = [t.cost for t in cost.terms if isinstance(getattr(t, "cost", None), AnchorCost)]
    assert len(anchored) == 1 and cost.reads_predictions
    assert cost.rollout_projection is not None  # the other terms still fuse into the rollout
    assert not any(isinstance(getattr(t, "cost", None), AnchorCost) for t in model.cost(goal.z).terms)
    assert not any(isinstance(getattr(t, "cost", None), AnchorCost)
                   for t in model.cost(goal, anchor_weight=0).terms)  # fmt: skip

    def agent_reading(**cost):
        agent = MPCAgent(model, CEMPlanner(horizon=3, population=16, elites=4, iterations=2, action_dim=A),
                         cost=cost or None)  # fmt: skip
        agent.reset({"image": obs(seed=5)["pixels"]})
        action = agent.act(obs())
        assert action.shape == (A,) and np.isfinite(action).all()
        terms = [t.cost for t in agent._cost_fn.terms if isinstance(getattr(t, "cost", None), AnchorCost)]
        return terms[0].start

    shift = CostConfig.anchor_shift  # the agent reads five views of each frame by default (cost.anchor_shift)
    views, goal_views = (
        model.encode(obs(), anchor_shift=shift),
        model.encode_goal({"image": obs(seed=5)["pixels"]}, anchor_shift=shift),
    )
    assert views.anchor.shape == goal_views.anchor.shape == (5, 8)
    torch.testing.assert_close(views.anchor[0], state.anchor)  # the first view is the frame itself
    torch.testing.assert_close(views.z, state.z)  # the latent is the frame's own
    expected = model.anchor.from_embeddings(views.anchor, goal_views.anchor).mean(0)
    torch.testing.assert_close(agent_reading(), expected)
    torch.testing.assert_close(
        agent_reading(anchor_shift=0), model.anchor.from_embeddings(state.anchor[None], goal.anchor[None])[0]
    )
    with pytest.raises(ValueError, match="same anchor_shift"):  # views of the frame, one of the goal
        AnchorCost(model.anchor, goal).set_start(views)

    save_world_model(tmp_path / "wm", model)
    loaded = WorldModel.from_checkpoint(tmp_path / "wm", device="cpu")
    assert loaded.anchor_trained and loaded.anchor.channels == 2
    torch.testing.assert_close(loaded.encode(obs()).anchor, state.anchor)

    untrained = tiny_world_model(metric={"dim": 4, "hidden": 8}, anchor={"hidden": 8})
    untrained.meta["metric_steps"] = 1
    assert untrained.encode(obs()).anchor is None  # never trained: not read, not planned with


def test_world_model_training_trains_the_anchor_head_on_patch_tokens(tmp_path):
    from jepa_agent.training.train_world_model import train_world_model
    from jepa_agent.world_model import WorldModel

    model = tiny_world_model(anchor={"hidden": 8, "channels": 2})
    res = train_world_model(model, Episodes(range(6)), Episodes(range(6, 8)), cfg(anchor={"steps": 20}),
                            tmp_path, progress=False)  # fmt: skip
    assert model.anchor_trained and model.meta["anchor_steps"] == 20
    assert model.meta["anchor_val_ratio"] == res.val["anchor_val_ratio"]
    assert np.isfinite(res.val["anchor_loss"]) and np.isfinite(res.val["anchor_val_ratio"])
    assert float(model.anchor.token_std.min()) > 0 and not torch.equal(model.anchor.token_std, torch.ones(1))
    loaded = WorldModel.from_checkpoint(tmp_path, device="cpu")
    assert loaded.anchor_trained
    torch.testing.assert_close(loaded.anchor.token_mean, model.anchor.token_mean)
    assert json.loads((tmp_path / "checkpoint" / "meta.json").read_text())["anchor_val_ratio"] > 0

    learned = tiny_world_model(pooling="attentive", metric={"dim": 0}, anchor={"hidden": 8})
    with pytest.raises(ValueError, match="pooling is learned.*world_model.anchor.hidden=0"):
        train_world_model(learned, Episodes(range(2)), None, cfg(), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match=r"train\.anchor\.steps=-1"):
        AnchorTrainConfig(steps=-1)


def test_env_configs_turn_the_anchor_head_on_where_the_scene_changes():
    from jepa_agent.config import compose_config

    for env, hidden, pooled in (("reach", 0, 192), ("reach_distracting", 192, 0), ("push", 0, 192)):
        c = compose_config("train_world_model", [f"env={env}", "encoder_checkpoint=x", "data.path=y"])
        assert c.world_model.anchor.hidden == hidden and c.env.anchor_hidden == hidden
        assert c.world_model.displacement.hidden == pooled  # the anchor head replaces the pooled one


def test_resuming_a_run_without_the_anchor_head_names_the_fix(tmp_path):
    import yaml

    from jepa_agent.training.train_world_model import train_world_model

    train_world_model(tiny_world_model(), Episodes(range(2)), None, cfg(steps=2), tmp_path, progress=False)
    saved = tmp_path / "checkpoint" / "config.yaml"  # as written before the anchor head existed
    config = yaml.safe_load(saved.read_text())
    del config["world_model"]["anchor"]
    saved.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="has no anchor head.*world_model.anchor.hidden=0"):
        train_world_model(tiny_world_model(anchor={"hidden": 8}), Episodes(range(2)), None, cfg(steps=2),
                          tmp_path, resume=True, progress=False)  # fmt: skip


def test_anchor_views_translate_each_frame_and_bad_shifts_are_refused():
    from jepa_agent.agent import MPCAgent
    from jepa_agent.world_model import ANCHOR_VIEW_OFFSETS, anchor_views
    from planners.cem import CEMPlanner

    x = torch.rand(2, 3, 16, 16)
    v = anchor_views(x, 2)
    assert v.shape == (2, len(ANCHOR_VIEW_OFFSETS), 3, 16, 16) and torch.equal(v[:, 0], x)
    for i, (dy, dx) in enumerate(ANCHOR_VIEW_OFFSETS):  # view i is the frame read 2 px further along (dy, dx)
        inner = v[:, i, :, 2:-2, 2:-2]
        torch.testing.assert_close(inner, x[:, :, 2 + 2 * dy : 14 + 2 * dy, 2 + 2 * dx : 14 + 2 * dx])
    assert torch.equal(v[:, 1, :, -2:], x[:, :, -1:].expand(-1, -1, 2, -1))  # edges replicated, not wrapped

    model = _anchored_model()
    for bad in (-1, 1.5, True, IMG):  # IMG px would shift the frame out of itself
        with pytest.raises(ValueError, match="anchor_shift"):
            model.encode(obs(), anchor_shift=bad)
    with pytest.raises(ValueError, match=r"cost.anchor_shift=-1; expected an int"):
        MPCAgent(model, CEMPlanner(horizon=3, action_dim=A), cost={"anchor_shift": -1})
    with pytest.raises(ValueError, match=r"cost.anchor_shift=9"):
        model.cost(model.encode_goal({"image": obs()["pixels"]}), anchor_shift=9)
