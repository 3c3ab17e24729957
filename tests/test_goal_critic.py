"""The goal critic (``world_model.metric.kind=critic``): an asymmetric label-free planning space."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import Tensor

from jepa_agent.losses import goal_critic_loss
from jepa_agent.models.latent import GoalCritic, TemporalDistanceHead
from jepa_agent.training import train_world_model as twm
from jepa_agent.training.latent_cache import LatentEpisodes
from jepa_agent.training.temporal_distance import MetricTrainConfig, train_metric_head
from jepa_agent.world_model import MetricConfig, WorldModel
from tests.test_world_model import A, Episodes, cfg, obs, tiny_world_model


def one_way_chain(n_eps: int = 150, length: int = 12, positions: int = 30) -> tuple[LatentEpisodes, Tensor]:
    """Episodes that only ever move forward along a chain (a block pushed, never pulled), each position
    seen as a fixed random latent."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(positions, 1, 16, generator=torch.Generator().manual_seed(1))
    zs = []
    for _ in range(n_eps):
        p = int(torch.randint(positions - length, (1,), generator=g))
        zs.append(codes[p : p + length])
    z = torch.cat(zs)
    starts = [i * length for i in range(n_eps)]
    return LatentEpisodes(z, torch.zeros(len(z), 1), None, starts, [length] * n_eps), codes


def test_critic_counts_the_steps_forward_and_knows_the_way_back_is_not_there():
    """On a one-way chain the critic's steps grow with the steps ahead (rank correlation > 0.9), and going
    back costs more than going forward the same number of positions; a distance head is the same both
    ways by construction."""
    torch.manual_seed(0)
    data, codes = one_way_chain()
    critic = GoalCritic(16, hidden=64)
    train_cfg = MetricTrainConfig(steps=1500, batch_size=128, lr=1e-3, gamma=0.9, random_goals=0.3)
    out = train_metric_head(critic, data, train_cfg, progress=False)
    assert np.isfinite(out["metric_loss"])
    with torch.no_grad():
        ks = list(range(1, 9))
        ahead = [float(critic.distance(codes[10], codes[10 + k])) for k in ks]
        back = [float(critic.distance(codes[10 + k], codes[10])) for k in ks]
    rho = np.corrcoef(np.argsort(np.argsort(ahead)), ks)[0, 1]
    assert rho > 0.9, ahead
    assert ahead[0] < 2.0 < ahead[-1], ahead  # about one step to the next frame; more to 8 ahead
    assert sum(b > a for a, b in zip(ahead, back, strict=True)) >= 7, (ahead, back)
    head = TemporalDistanceHead(16, dim=4, hidden=16)
    torch.testing.assert_close(head.distance(codes[3], codes[7]), head.distance(codes[7], codes[3]))


def test_critic_loss_ends_at_the_goal_so_a_constant_does_not_solve_it():
    """Without ``V(goal, goal) = 0`` the constant ``1 / (1 - gamma)`` solves expectile TD for every pair;
    the step into the goal ends the episode, so that constant is not a solution."""

    class Constant(torch.nn.Module):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = torch.nn.Parameter(torch.tensor(value))

        def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.value.expand(a.shape[0])

    s, goal = torch.randn(8, 1, 4), torch.randn(8, 1, 4)
    no = torch.zeros(8, dtype=torch.bool)
    flat = Constant(1 / (1 - 0.9))
    with torch.no_grad():
        assert float(goal_critic_loss(flat, flat, s, s, goal, no, no, gamma=0.9)) < 1e-8
        assert float(goal_critic_loss(flat, flat, s, s, goal, no, ~no, gamma=0.9)) > 10


def test_critic_world_model_saves_loads_and_plans_fused_as_unfused(tmp_path):
    model = tiny_world_model(metric={"dim": 4, "hidden": 16, "kind": "critic"})
    assert isinstance(model.metric, GoalCritic)
    res = twm.train_world_model(model, Episodes(range(4)), None, cfg(steps=4, metric=MetricTrainConfig(
        steps=20, batch_size=32)), tmp_path, progress=False)  # fmt: skip
    assert np.isfinite(res.val["metric_loss"])
    loaded = WorldModel.from_checkpoint(tmp_path, device="cpu", env_id="Synthetic-v0", action_dim=A)
    assert isinstance(loaded.metric, GoalCritic) and loaded.resolve_cost_space("auto") == "metric"
    assert loaded.metric_kind == "critic" and tiny_world_model(metric={"dim": 4}).metric_kind is None
    state, goal = loaded.encode(obs(seed=1)), loaded.encode_goal({"image": obs(seed=2)["pixels"]})
    actions = torch.rand(5, 3, A) * 2 - 1
    with torch.inference_mode():
        z = loaded.rollout(state, actions)  # [5, 3, N, D]
        for reduction in ("all", "final"):
            cost = loaded.cost(goal, space="metric", reduction=reduction, action_weight=0.0,
                               displacement_weight=0.0, latent_weight=0.0)  # fmt: skip
            fused = loaded.rollout(state, actions, project=cost.rollout_projection)  # [5, 3, hidden]
            steps = loaded.metric.distance(z, goal.z)  # [5, 3]
            want = steps.mean(1) if reduction == "all" else steps[:, -1]
            torch.testing.assert_close(cost(z, actions), want)
            torch.testing.assert_close(cost(fused, actions), want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"metric\.kind='twin'.*distance.*critic"):
        MetricConfig(kind="twin")
    with pytest.raises(ValueError, match=r"metric\.kind='twin'"):
        tiny_world_model(metric={"dim": 4, "hidden": 16, "kind": "twin"})


def test_value_term_compares_the_critics_steps_and_trains_the_critic_only_when_joint(tmp_path):
    """``train.metric.value_weight``: the steps the critic reads from predicted latents against those from
    the true frames (goals: each window's last frame and another window's). Zero for perfect predictions,
    positive otherwise, with gradient into the predictions; with ``joint`` (a frozen copy), the critic's own
    layers train too, towards the copy's steps; logged in a run; a negative weight refused."""
    torch.manual_seed(0)
    critic = GoalCritic(in_dim=8, hidden=16)
    z = torch.randn(4, 3, 2, 4)  # [B, k, N, D]
    with torch.no_grad():
        feats = critic.features(z)
    zero = twm.critic_value_loss(critic, z, z.clone().requires_grad_(True), feats)
    assert float(zero.detach()) < 1e-10
    pred = (z + 0.5 * torch.randn_like(z)).requires_grad_(True)
    loss = twm.critic_value_loss(critic, z, pred, feats)
    loss.backward()
    assert float(loss.detach()) > 0 and pred.grad is not None and float(pred.grad.abs().sum()) > 0
    assert critic.goal_in.weight.grad is None  # the goals are read without gradient here
    critic.zero_grad(set_to_none=True)
    # joint (a frozen copy given): the true steps are the copy's, and the critic trains too, every layer,
    # on the predicted and the encoded latents; zero while it equals its copy and the predictions are exact
    frozen = copy.deepcopy(critic).requires_grad_(False)
    with torch.no_grad():
        frozen_feats = frozen.features(z)
    exact = twm.critic_value_loss(critic, z, z.clone(), frozen_feats, frozen=frozen)
    assert float(exact.detach()) < 1e-10
    with torch.no_grad():  # the critic drifts from its copy: the encoded frames alone now cost
        critic.net[-1].bias.add_(0.5)
    drift = twm.critic_value_loss(critic, z, z.clone(), frozen_feats, frozen=frozen)
    assert float(drift.detach()) > 0
    pred = (z + 0.5 * torch.randn_like(z)).requires_grad_(True)
    twm.critic_value_loss(critic, z, pred, frozen_feats, frozen=frozen).backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
    for name, layer in (("state_in", critic.state_in), ("goal_in", critic.goal_in), ("out", critic.net[-1])):
        assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0, name
    assert all(p.grad is None for p in frozen.parameters())
    # in a training run the term is logged
    model = tiny_world_model(metric={"dim": 4, "hidden": 16, "kind": "critic"})
    train_cfg = cfg(steps=4, log_every=1, metric=MetricTrainConfig(steps=10, batch_size=32, value_weight=1.0))
    res = twm.train_world_model(model, Episodes(range(4)), None, train_cfg, tmp_path, progress=False)
    assert np.isfinite(res.final_loss)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "value" in header
    # with joint, the critic's weights change with the predictor's (they stay fixed without it)
    joint_model = tiny_world_model(metric={"dim": 4, "hidden": 16, "kind": "critic"})
    joint_cfg = cfg(
        steps=4, log_every=1, metric=MetricTrainConfig(steps=10, batch_size=32, value_weight=1.0, joint=True)
    )
    twm.train_world_model(joint_model, Episodes(range(4)), None, joint_cfg, tmp_path / "j", progress=False)
    assert joint_model.meta["metric_joint"] is True
    with pytest.raises(ValueError, match=r"train\.metric\.value_weight=-1"):
        MetricTrainConfig(value_weight=-1.0)
    # a model with no goal critic (a distance head) refuses the term instead of ignoring it
    distance = tiny_world_model(metric={"dim": 4, "hidden": 16})
    with pytest.raises(ValueError, match=r"value_weight=1\.0 .* no trained goal critic .*kind distance"):
        twm.train_world_model(distance, Episodes(range(4)), None, train_cfg, tmp_path / "d", progress=False)


def test_rl_bridge_refuses_a_critic_space_by_name():
    from jepa_agent.rl.space import planning_projection

    model = tiny_world_model(metric={"dim": 4, "hidden": 16, "kind": "critic"})
    model.meta["metric_steps"] = 1
    with pytest.raises(ValueError, match="goal critic.*space=latent"):
        planning_projection(model, "metric")
    assert planning_projection(model, "latent") == ("latent", None)
    narrow = tiny_world_model(metric={"dim": 1, "hidden": 16})  # a 1-wide distance head is not a critic
    narrow.meta["metric_steps"] = 1
    assert planning_projection(narrow, "metric")[0] == "metric"


@pytest.mark.parametrize("env_steps", [True, False])
def test_macro_action_models_count_env_steps_in_the_head(tmp_path, monkeypatch, env_steps):
    """``train.metric.env_steps`` (default): a model of 2-step macro-actions trains its head on every frame
    of each episode (4 episodes), not on the strided ones the predictor sees (8 episodes of every 2nd
    frame); either way the head's data is standardised as the predictor's."""
    seen = {}

    def record(head, data, cfg_, seed=0, progress=True):
        seen["episodes"], seen["frames"], seen["std"] = len(data.lengths), len(data.z), float(data.z.std())
        return {"metric_loss": 0.0, "metric_seconds": 0.0}

    monkeypatch.setattr(twm, "train_metric_head", record)
    model = tiny_world_model(action_chunk=2, metric={"dim": 4, "hidden": 16})
    train_cfg = cfg(steps=2, metric=MetricTrainConfig(steps=5, env_steps=env_steps))
    twm.train_world_model(model, Episodes(range(4)), None, train_cfg, tmp_path, progress=False)
    assert seen["episodes"] == (4 if env_steps else 8)
    assert 0.5 < seen["std"] < 2.0


class TwoDatasets:
    """Two datasets read as one (as ``ConcatEpisodes``): 3 episodes, then 2."""

    def __init__(self) -> None:
        self.datasets = [Episodes(range(3)), Episodes(range(3, 5))]
        self.eps = [ep for d in self.datasets for ep in d.eps]

    @property
    def num_episodes(self) -> int:
        return len(self.eps)

    def episode(self, i: int) -> dict:
        return self.eps[i]


@pytest.mark.parametrize("env_steps", [True, False])
def test_metric_datasets_pick_the_same_episodes_whether_strided_or_not(tmp_path, monkeypatch, env_steps):
    """``train.metric.datasets=[1]`` with 2-step macro-actions: the head learns from the second dataset's
    2 episodes, whole (env steps) or as the 4 strided ones they split into, never from the first's."""
    seen = {}

    def record(head, data, cfg_, seed=0, progress=True):
        seen["episodes"], seen["frames"] = len(data.lengths), len(data.z)
        return {"metric_loss": 0.0, "metric_seconds": 0.0}

    monkeypatch.setattr(twm, "train_metric_head", record)
    model = tiny_world_model(action_chunk=2, metric={"dim": 4, "hidden": 16})
    train_cfg = cfg(steps=2, metric=MetricTrainConfig(steps=5, env_steps=env_steps, datasets=[1]))
    twm.train_world_model(model, TwoDatasets(), None, train_cfg, tmp_path, progress=False)
    frames = sum(len(ep["frames"]) for ep in TwoDatasets().datasets[1].eps)
    assert (seen["episodes"], seen["frames"]) == ((2 if env_steps else 4), frames)
