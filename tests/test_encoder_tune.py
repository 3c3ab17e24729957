"""The action-conditioned encoder fine-tune (``train.encoder``): its parts, its effect, its guards."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from jepa_agent.training.encoder_tune import (
    ActionTuneHeads,
    EncoderTuneConfig,
    FrameEpisodes,
    random_shift,
    tune_encoder,
    variance_covariance,
)
from jepa_agent.world_model import WorldModel
from tests.test_world_model import A, Episodes, cfg, synthetic_episode, tiny_world_model


def test_random_shift_moves_a_whole_clip_alike():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 3, 16, 16)
    assert torch.equal(random_shift(x, 0, g), x)
    y = random_shift(x, 2, g)
    assert y.shape == x.shape
    for b in range(6):  # one offset per clip: find it from frame 0 and check it on every frame
        found = [
            (dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
            if torch.equal(y[b, 0, :, 4:12, 4:12], x[b, 0, :, 4 + dy : 12 + dy, 4 + dx : 12 + dx])
        ]  # fmt: skip
        assert len(found) == 1
        dy, dx = found[0]
        for t in range(3):
            assert torch.equal(y[b, t, :, 4:12, 4:12], x[b, t, :, 4 + dy : 12 + dy, 4 + dx : 12 + dx])


def test_variance_covariance_terms():
    v, c = variance_covariance(torch.zeros(64, 8) + 0.3)
    assert v.item() > 0.95 and c.item() == 0.0
    v, c = variance_covariance(torch.randn(4096, 8, generator=torch.Generator().manual_seed(0)) * 1.5)
    assert v.item() == 0.0 and c.item() < 0.02
    z = torch.randn(4096, 1, generator=torch.Generator().manual_seed(0))
    assert variance_covariance(torch.cat([z, z], 1))[1].item() > 0.9  # two copies of one feature


def test_fine_tune_learns_what_the_actions_move():
    """On episodes of an action-driven square over a per-episode random background, the fine-tune lowers
    the inverse-dynamics error of its heads a lot and leaves the encoder frozen again."""
    torch.manual_seed(0)
    model = tiny_world_model(grid_size=2)
    rng = np.random.default_rng(0)
    eps = Episodes(range(24))
    for ep in eps.eps:  # per-episode static distractor: a random colour in the top rows
        ep["frames"][:, :4] = rng.integers(0, 255, size=3, dtype=np.uint8)
    data = FrameEpisodes(eps, lambda a: a)
    tune = EncoderTuneConfig(
        steps=400,
        batch_size=16,
        window=3,
        lr=1e-3,
        head_lr=3e-3,
        warmup=10,
        proj_dim=16,
        hidden=64,
        shift=1,
        variance_weight=1.0,
        covariance_weight=0.5,
    )
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    torch.manual_seed(1)
    out = tune_encoder(model.encoder, model.pooler, data, tune, torch.device("cpu"), progress=False)
    assert np.isfinite(out["encoder_tune_loss"]) and out["encoder_tune_seconds"] > 0
    assert not any(p.requires_grad for p in model.encoder.parameters()) and not model.encoder.training
    assert any(not torch.equal(v, model.encoder.state_dict()[k]) for k, v in before.items())
    # predicting the mean action would score the actions' variance (1/3)
    assert out["encoder_tune_inverse"] < 0.6 * float(data.actions[:, 0].var()), out


def test_world_model_run_with_fine_tune_records_it_and_resumes(tmp_path):
    from jepa_agent.training.train_world_model import train_world_model

    model = tiny_world_model()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    c = cfg(steps=6, encoder={"steps": 4, "batch_size": 4, "window": 3, "proj_dim": 8, "hidden": 16})
    res = train_world_model(model, Episodes(range(4)), None, c, tmp_path, progress=False)
    assert np.isfinite(res.val["encoder_tune_loss"]) and res.steps == 6
    loaded = WorldModel.from_checkpoint(tmp_path, device="cpu")
    assert loaded.meta["encoder_tune_steps"] == 4
    tuned = loaded.encoder.state_dict()
    assert any(not torch.equal(v, tuned[k]) for k, v in before.items())
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, tuned[k])
    # resuming keeps the saved (tuned) encoder and does not tune again
    again = tiny_world_model()
    res2 = train_world_model(again, Episodes(range(4)), None, c, tmp_path, resume=True, progress=False)
    assert "encoder_tune_loss" not in res2.val and again.meta["encoder_tune_steps"] == 4
    for k, v in again.encoder.state_dict().items():
        torch.testing.assert_close(v, tuned[k])


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"window": 1}, "train.encoder.window=1"),
        ({"steps": -1}, "train.encoder.steps=-1"),
        ({"lr": float("nan")}, "train.encoder.lr=nan"),
        ({"batch_size": 0}, "train.encoder.batch_size=0"),
        ({"pixel_weight": -1.0}, "train.encoder.pixel_weight=-1.0"),
        ({"decoder_width": 0}, "train.encoder.decoder_width=0"),
        ({"critic_weight": -1.0}, "train.encoder.critic_weight=-1.0"),
        ({"critic_gamma": 1.0}, "train.encoder.critic_gamma=1.0"),
        ({"critic_expectile": 0}, "train.encoder.critic_expectile=0"),
    ],
)
def test_fine_tune_config_refuses_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg.replace(".", r"\.")):
        EncoderTuneConfig(**kw)


def test_fine_tune_needs_clips_that_fit_and_a_fixed_pooling():
    data = FrameEpisodes(Episodes(range(2)), lambda a: a)
    model, cpu = tiny_world_model(), torch.device("cpu")
    with pytest.raises(ValueError, match="train.encoder.window"):
        tune_encoder(model.encoder, model.pooler, data, EncoderTuneConfig(steps=1, window=99), cpu)
    attentive = tiny_world_model(pooling="attentive")
    with pytest.raises(ValueError, match="train.encoder.steps=0"):
        tune_encoder(attentive.encoder, attentive.pooler, data, EncoderTuneConfig(steps=1), cpu)
    assert synthetic_episode(0)["action"].shape[-1] == A


def test_goal_sums_are_the_actions_between_the_frames():
    """The multi-step inverse targets: summed env-unit actions from each clip frame to a goal frame of the
    same episode (negative when the goal comes first), capped per component, never across episodes."""
    eps = Episodes(range(3))
    data = FrameEpisodes(eps, lambda a: a * 0)  # the targets must use raw actions, not the normalised ones
    tune = EncoderTuneConfig(goal_steps=6, back_steps=3, cap=1e9)
    gen = torch.Generator().manual_seed(0)
    starts = data.clip_starts(3)
    goal, sums = data.sums.sample(starts, 3, tune, gen)
    assert sums.shape == (len(starts), 3, A)
    for s, g, row in zip(starts.tolist(), goal.tolist(), sums, strict=True):
        e = int(np.searchsorted(data.starts, s, side="right") - 1)
        first, n = data.starts[e], data.lengths[e]
        assert first <= g < first + n and -3 <= g - s <= 6  # same episode, inside the window
        acts = np.asarray(eps.eps[e]["action"], dtype=np.float64)
        for t in range(3):
            i, j = s + t - first, g - first
            want = acts[i:j].sum(0) if j >= i else -acts[j:i].sum(0)
            np.testing.assert_allclose(row[t].numpy(), want, atol=1e-5)
    _, capped = data.sums.sample(starts, 3, EncoderTuneConfig(goal_steps=6, back_steps=3, cap=0.5), gen)
    assert capped.abs().max() <= 0.5 + 1e-6
    with pytest.raises(ValueError, match=r"train\.encoder\.cap=0"):
        EncoderTuneConfig(cap=0)


def test_fine_tune_with_the_multi_step_inverse_term_learns_it():
    """With ``displacement_weight`` the stage encodes a goal frame per clip and fits the summed actions to
    it: its error ends well below the targets' variance."""
    torch.manual_seed(0)
    model = tiny_world_model(grid_size=2)
    data = FrameEpisodes(Episodes(range(24)), lambda a: a)
    tune = EncoderTuneConfig(steps=300, batch_size=16, window=2, lr=1e-3, head_lr=3e-3, warmup=10,
                             proj_dim=16, hidden=64, shift=0, variance_weight=1.0, covariance_weight=0.5,
                             displacement_weight=1.0, goal_steps=6, back_steps=2, cap=2.0)  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    _, sums = data.sums.sample(data.clip_starts(2), 2, tune, gen)
    out = tune_encoder(model.encoder, model.pooler, data, tune, torch.device("cpu"), progress=False)
    assert np.isfinite(out["encoder_tune_displacement"])
    assert out["encoder_tune_displacement"] < 0.5 * float(sums.var(dim=(0, 1)).mean()), out


class ClockEpisodes:
    """Episodes whose frames show the time: a square moved one pixel right per frame from a random start
    (the actions are random and do not move it), so the frames between two frames can be read."""

    def __init__(self, n: int, length: int = 10) -> None:
        rng = np.random.default_rng(0)
        self.eps = []
        for _ in range(n):
            x0, y = rng.integers(0, 3), rng.integers(0, 12)
            frames = np.full((length, 16, 16, 3), 20, np.uint8)
            for t in range(length):
                frames[t, y : y + 4, x0 + t : x0 + t + 4] = (230, 200, 40)
            action = rng.uniform(-1, 1, (length - 1, 2)).astype(np.float32)
            self.eps.append(
                {"frames": frames, "action": action, "proprio": np.zeros((length, 4), np.float32)}
            )

    @property
    def num_episodes(self) -> int:
        return len(self.eps)

    def episode(self, i: int) -> dict:
        return self.eps[i]


def test_fine_tune_with_the_time_term_learns_the_frames_between():
    """With ``time_weight`` the stage regresses the signed frames from each clip frame to the goal frame
    (over ``goal_steps``): where the frames show the time, its error ends well below the offsets'
    variance; off by default (no term)."""
    torch.manual_seed(0)
    model = tiny_world_model(grid_size=2)
    data = FrameEpisodes(ClockEpisodes(24), lambda a: a)
    tune = EncoderTuneConfig(steps=300, batch_size=16, window=2, lr=1e-3, head_lr=3e-3, warmup=10,
                             proj_dim=16, hidden=64, shift=0, variance_weight=1.0, covariance_weight=0.5,
                             time_weight=1.0, goal_steps=6, back_steps=2)  # fmt: skip
    first = data.clip_starts(2)
    goal, _ = data.sums.sample(first, 2, tune, torch.Generator().manual_seed(5))
    offsets = (goal[:, None] - (first[:, None] + torch.arange(2))).float() / 6
    out = tune_encoder(model.encoder, model.pooler, data, tune, torch.device("cpu"), progress=False)
    assert np.isfinite(out["encoder_tune_time"]) and "encoder_tune_displacement" not in out
    assert out["encoder_tune_time"] < 0.3 * float(offsets.var()), out
    off = EncoderTuneConfig(steps=2, window=2, warmup=0)
    untimed = tune_encoder(model.encoder, model.pooler, data, off, torch.device("cpu"), progress=False)
    assert "encoder_tune_time" not in untimed
    with pytest.raises(ValueError, match=r"train\.encoder\.time_weight=-1"):
        EncoderTuneConfig(time_weight=-1)


def test_fine_tune_with_the_pixel_term_redraws_the_frames():
    """With ``pixel_weight`` a throwaway decoder redraws each frame from its pooled latent: the share of
    the pixels' variance it leaves unexplained ends well below 1 (predicting the batch mean scores 1)."""
    torch.manual_seed(0)
    model = tiny_world_model(grid_size=2)
    data = FrameEpisodes(Episodes(range(24)), lambda a: a)
    tune = EncoderTuneConfig(steps=300, batch_size=16, window=2, lr=1e-3, head_lr=3e-3, warmup=10,
                             proj_dim=16, hidden=64, shift=1, variance_weight=1.0, covariance_weight=0.5,
                             pixel_weight=1.0)  # fmt: skip
    out = tune_encoder(model.encoder, model.pooler, data, tune, torch.device("cpu"), progress=False)
    assert np.isfinite(out["encoder_tune_pixel"]) and out["encoder_tune_pixel"] < 0.5, out
    off = EncoderTuneConfig(steps=2, window=2, warmup=0)  # off by default: no decoder, no term
    out = tune_encoder(model.encoder, model.pooler, data, off, torch.device("cpu"), progress=False)
    assert "encoder_tune_pixel" not in out


def test_pixel_decoder_sizes():
    from jepa_agent.training.encoder_tune import PixelDecoder

    assert PixelDecoder(32, 64)(torch.zeros(3, 32)).shape == (3, 3, 64, 64)
    assert PixelDecoder(32, 16)(torch.zeros(1, 32)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="48 px: set train.encoder.pixel_weight=0"):
        PixelDecoder(32, 48)
    # train.encoder.decoder_width: the channels at the first grid, halved per upsampling down to 16
    wide = ActionTuneHeads(32, 2, image_size=16, decoder_width=256).decoder
    assert [m.out_channels for m in wide.body if isinstance(m, nn.ConvTranspose2d)] == [128, 3]
    assert wide(torch.zeros(2, 32)).shape == (2, 3, 16, 16)


def test_critic_term_counts_the_steps_and_trains_the_encoder():
    """``train.encoder.critic_weight``: the goal critic's TD term alone (VICReg's variance hinge aside) gets
    gradient into the encoder, and after a short fine-tune (``tune_encoder``, its heads passed in to be read
    afterwards) the critic's steps between two frames of one episode grow with the fewest steps between
    them: the square's distance over its largest step."""
    import copy

    from jepa_agent.models.vit import pixels_to_images
    from jepa_agent.training.encoder_tune import ActionTuneHeads, action_tune_loss

    torch.manual_seed(0)
    model = tiny_world_model(grid_size=2)
    data = FrameEpisodes(Episodes(range(24)), lambda a: a)
    tune = EncoderTuneConfig(
        steps=300, window=3, batch_size=16, lr=1e-3, head_lr=1e-3, warmup=0, clip_grad=0.0,
        inverse_weight=0.0, prediction_weight=0.0, variance_weight=1.0, covariance_weight=0.0,
        critic_weight=1.0, critic_ema=0.05, goal_steps=8, back_steps=0, shift=0, proj_dim=16, hidden=64,
    )  # fmt: skip
    latent = model.pooler.num_tokens * model.pooler.out_dim
    heads = ActionTuneHeads(latent, A, tune.proj_dim, tune.hidden, critic=True)
    cpu = torch.device("cpu")
    # the TD term reaches the encoder
    gen = torch.Generator().manual_seed(0)
    idx = data.clip_starts(3)[:16, None] + torch.arange(3)
    clips = pixels_to_images(data.frames[idx.flatten()], cpu).view(16, 3, 3, 16, 16)
    goal, sums = data.sums.sample(idx[:, 0], 3, tune, gen)
    model.encoder.requires_grad_(True)
    loss, parts = action_tune_loss(
        model.encoder, model.pooler, heads, clips, data.actions[idx[:, :-1]], tune, gen,
        pixels_to_images(data.frames[goal], cpu), sums, None, copy.deepcopy(heads.critic), idx, goal,
    )  # fmt: skip
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert set(parts) >= {"critic"} and grads and sum(float(g.abs().sum()) for g in grads) > 0
    model.encoder.zero_grad(set_to_none=True)
    heads.zero_grad(set_to_none=True)
    # heads that do not match the settings are refused
    with pytest.raises(ValueError, match="critic_weight=0.0"):
        tune_encoder(model.encoder, model.pooler, data, replace(tune, critic_weight=0.0), cpu, heads=heads)
    out = tune_encoder(model.encoder, model.pooler, data, tune, cpu, progress=False, heads=heads)
    assert out["encoder_tune_critic"] >= 0
    heads.eval()
    with torch.no_grad():  # every frame of 8 episodes against every later frame of the same episode
        steps, gaps = [], []
        for e in range(8):
            s, n = data.starts[e], data.lengths[e]
            frames = pixels_to_images(data.frames[s : s + n], torch.device("cpu"))
            emb = heads.projector(model.pooler(model.encoder.encode_images(frames)).flatten(1))
            d = heads.critic.distance(
                emb[:, None, None], emb[None, :, None]
            )  # [n, n]: row frame -> column goal
            i, j = torch.triu_indices(n, n, 1)
            steps.append(d[i, j])
            pos = torch.as_tensor(data.episode(e)["proprio"])
            gaps.append((pos[j] - pos[i]).abs().amax(-1) / 1.5)
    steps, gaps = torch.cat(steps), torch.cat(gaps)
    rank = lambda x: x.argsort().argsort().float()  # noqa: E731
    rho = float(torch.corrcoef(torch.stack([rank(steps), rank(gaps)]))[0, 1])
    assert rho > 0.45, rho  # 0.54 here; 0.11 for the untrained critic
