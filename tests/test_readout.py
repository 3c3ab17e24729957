"""State readout (the planning cost's metric space): targets, projected cost, checkpoint, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jepa_agent.costs import LatentGoalCost, ProjectedGoalCost
from jepa_agent.planning import load_planning_model
from jepa_agent.training.train_world_model import train_world_model
from jepa_agent.world_model import Normalizer, StateReadout, WorldModel, save_world_model
from tests.test_world_model import A, Episodes, T, cfg, obs, tiny_model, tiny_world_model  # noqa: F401


def test_readout_targets_wrap_continuous_joints_only():
    r = StateReadout(in_dim=8, angles=2, wrap=[0])  # joint 0 continuous, joint 1 limited
    p = torch.tensor([[0.0, math.pi / 2, 9.0, 9.0], [2 * math.pi, -1.0, 0.0, 0.0]])
    t = r.targets(p)  # [cos q0, sin q0, q1]; velocities ignored
    want = torch.tensor([[1.0, 0.0, math.pi / 2], [1.0, 0.0, -1.0]])
    torch.testing.assert_close(t, want, atol=1e-6, rtol=0)
    assert r(torch.randn(5, 3, 2, 4)).shape == (5, 3, 3)  # [..., N, D] -> [..., out_dim]
    # a limited joint's distance follows the joint: +2.5 and -2.5 rad are 5 rad apart, not 1.28 via the limit
    far = r.targets(torch.tensor([[0.0, 2.5], [0.0, -2.5]]))
    assert (far[0] - far[1]).square().sum() > 20
    assert StateReadout(in_dim=8, angles=2, wrap=[0, 1]).out_dim == 4
    assert StateReadout(in_dim=8, angles=3).out_dim == 3
    with pytest.raises(ValueError, match="proprio has 1 dims; the readout needs the first 2"):
        r.targets(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="angles=0"):
        StateReadout(in_dim=8, angles=0)
    with pytest.raises(ValueError, match=r"wrap=\[2\]"):
        StateReadout(in_dim=8, angles=2, wrap=[2])


def test_projected_cost_equals_latent_cost_on_projections():
    proj = torch.nn.Linear(6, 3)
    goal = torch.randn(2, 3)  # [N, D] latent of one frame
    pred = torch.randn(7, 4, 2, 3)  # [S, H, N, D]
    acts = torch.zeros(7, 4, A)

    def project(z):
        return proj(z.flatten(-2))

    with torch.no_grad():
        for reduction in ("final", "all"):
            got = ProjectedGoalCost(project, goal, metric="mse", reduction=reduction)(pred, acts)
            want = LatentGoalCost(project(goal)[None], metric="mse", reduction=reduction)(
                project(pred).unsqueeze(-2), acts
            )
            torch.testing.assert_close(got, want)
            assert got.shape == (7,)
    with pytest.raises(ValueError, match=r"must be \[S, H, N, D\]"):
        ProjectedGoalCost(project, goal)(torch.randn(7, 4, 6), acts)


def with_readout(model: WorldModel) -> WorldModel:
    n, d = model.latent_shape
    model.readout = StateReadout(n * d, angles=2, wrap=[0], hidden=16)
    return model


def plain_model() -> WorldModel:
    """``tiny_model`` with the latent statistics buffers a checkpoint's config rebuilds."""
    model = tiny_model()
    model.normalizer = Normalizer(A, 0, model.latent_shape)
    return model


def test_cost_space_readout_and_its_errors(tmp_path):
    model = plain_model()
    goal = model.encode_goal({"image": obs()["pixels"]})
    with pytest.raises(ValueError, match="has no state readout.*world_model=readout.*cost.space=latent"):
        model.cost(goal, space="readout")
    with pytest.raises(ValueError, match="cost.space='pixels'"):
        model.cost(goal, space="pixels")
    with_readout(model)
    with torch.inference_mode():  # as the MPC agent plans
        pred = model.rollout(model.encode(obs()), torch.rand(5, 3, A))
        c = model.cost(goal, metric="mse", space="readout")(pred, torch.zeros(5, 3, A))
    assert c.shape == (5,) and torch.isfinite(c).all()
    # checkpoint round trip keeps the readout; the planning loader checks the space against the model
    save_world_model(tmp_path / "ro", model, encoder_name="vit_micro")
    loaded = WorldModel.from_checkpoint(tmp_path / "ro", device="cpu")
    with torch.inference_mode():
        torch.testing.assert_close(loaded.readout(pred), model.readout(pred))
    load_planning_model(str(tmp_path / "ro"), None, None, A, "readout", "cpu")
    save_world_model(tmp_path / "plain", plain_model(), encoder_name="vit_micro")
    msg = r"cost.space=readout: the world model '.*plain' has no state readout.*cost.space=latent"
    with pytest.raises(ValueError, match=msg):
        load_planning_model(str(tmp_path / "plain"), None, None, A, "readout", "cpu")
    assert (
        load_planning_model(str(tmp_path / "plain"), None, None, A, "auto", "cpu").resolve_cost_space("auto")
        == "latent"
    )  # auto: the readout when there is one, else the latents
    with pytest.raises(ValueError, match="cost.space='pixels'"):
        load_planning_model(str(tmp_path / "ro"), None, None, A, "pixels", "cpu")


@pytest.mark.parametrize("reduction", ["final", "all"])
@pytest.mark.parametrize("residual", [True, False])
def test_fused_readout_rollout_equals_the_readout_of_the_latents(reduction, residual):
    """The planning path fuses the readout's first layer into the predictor's head (the wide latents are
    never built); its costs equal the readout of the full imagined latents, with and without grad."""
    from jepa_agent.agent import planning_rollout
    from jepa_agent.costs import ActionMagnitudeCost

    torch.manual_seed(0)
    model = with_readout(plain_model())
    model.predictor.residual = residual
    model.predictor.set_delta_scale(torch.rand(model.latent_shape[1]) + 0.5)
    goal = model.encode_goal({"image": obs()["pixels"]})
    state = model.encode(obs())
    actions = torch.rand(6, 4, A) * 2 - 1
    cost = model.cost(goal, reduction=reduction, action_weight=0.1)
    assert cost.rollout_projection is model.readout.input_layer  # through the sum with the action term
    fused = planning_rollout(model, cost)
    with torch.inference_mode():
        assert fused(state, actions).shape == (6, 4, model.readout.hidden)
        torch.testing.assert_close(
            cost(fused(state, actions), actions), cost(model.rollout(state, actions), actions)
        )
    a = actions.clone().requires_grad_(True)  # the gradient planner's path
    cost(fused(state, a), a).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    latent = model.cost(goal, space="latent") + ActionMagnitudeCost(0.1)
    assert planning_rollout(model, latent) == model.rollout  # latents are read whole: nothing to fuse


def test_training_fits_the_readout_of_encoded_and_predicted_latents(tmp_path):
    model = tiny_world_model(readout={"angles": 2, "wrap": [1], "hidden": 32})
    assert model.readout is not None and "readout" in model.module_names() and model.readout.wrap == [1]
    train_cfg = cfg(steps=60, readout_weight=5.0)
    res = train_world_model(
        model, Episodes(range(8)), Episodes([100, 101]), train_cfg, tmp_path, progress=False
    )
    for key in (
        "val_readout_encoded_mse",
        "val_readout_final_step_mse",
        "val_readout_final_step_copy_last_mse",
    ):
        assert np.isfinite(res.val[key]), res.val
    first = np.mean(res.losses[:10])
    assert np.mean(res.losses[-10:]) < first, res.losses
    loaded = WorldModel.from_checkpoint(tmp_path, device="cpu", env_id="Synthetic-v0", action_dim=A)
    z = torch.randn(3, *model.latent_shape)
    torch.testing.assert_close(loaded.readout(z), model.readout(z))
    assert loaded.readout.wrap == [1]
    assert res.frames_encoded == 10 * T
