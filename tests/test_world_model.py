"""World model: pooling, encode/rollout shapes, cache equivalence, checkpoints and their errors, and
training (loss decreases, exact resume, the script end to end on tiny real episodes)."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jepa_agent.agent import MPCAgent
from jepa_agent.checkpoint import CheckpointError, save_checkpoint
from jepa_agent.models.ac_predictor import ACPredictor
from jepa_agent.models.vit import VideoViT, encoder_config, vit_micro
from jepa_agent.training.train_world_model import (
    LatentEpisodes,
    WorldModelTrainConfig,
    train_on_latents,
    train_world_model,
)
from jepa_agent.world_model import (
    LatentPooler,
    Normalizer,
    WorldModel,
    build_world_model,
    save_world_model,
    variance_loss,
)
from planners import CEMPlanner, GDPlanner

IMG, D, A, P = 16, 32, 2, 4
PS, T = 2, 12  # synthetic episodes: proprio dim, frames
REPO = Path(__file__).resolve().parents[1]


def tiny_model(
    pooling="grid", grid_size=1, proprio_dim=0, env_id="JepaAgent/Reach-v0", pos_embed="sincos"
) -> WorldModel:
    torch.manual_seed(0)
    enc = VideoViT(
        img_size=IMG, patch_size=4, num_frames=2, tubelet_size=2, embed_dim=D, depth=1, num_heads=2,
        pos_embed=pos_embed,
    )  # fmt: skip
    pooler = LatentPooler(pooling, D, grid_hw=(4, 4), grid_size=grid_size, num_queries=3, num_heads=2)
    pred = ACPredictor(
        D, A, num_tokens=pooler.num_tokens, proprio_dim=proprio_dim, dim=32, depth=2, num_heads=2
    )
    return WorldModel(enc, pooler, pred, Normalizer(A, proprio_dim), {"env_id": env_id})


def obs(batch=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (IMG, IMG, 3) if batch is None else (batch, IMG, IMG, 3)
    pshape = (P,) if batch is None else (batch, P)
    return {"pixels": rng.integers(0, 256, shape, dtype=np.uint8), "proprio": rng.normal(size=pshape)}


@pytest.mark.parametrize(
    "pooling,grid_size,n", [("grid", 1, 1), ("grid", 2, 4), ("patch", 1, 16), ("attentive", 1, 3)]
)
def test_pooling_and_shapes(pooling, grid_size, n):
    model = tiny_model(pooling, grid_size)
    assert model.latent_shape == (n, D)
    s = model.encode(obs())
    assert s.z.shape == (n, D) and s.proprio is None
    assert model.encode(obs(batch=3)).z.shape == (3, n, D)
    assert torch.allclose(s.z.std(-1, unbiased=False), torch.ones(n), atol=1e-3)  # layer-normed tokens
    actions = torch.rand(6, 4, A) * 2 - 1
    assert model.rollout(model.context([s]), actions).shape == (6, 4, n, D)
    assert model.step(s, actions[:, 0]).shape == (6, n, D)


def test_grid_pooling_is_mean_of_patches():
    pooler = LatentPooler("grid", D, grid_hw=(4, 4), grid_size=2, normalize=False)
    tokens = torch.randn(2, 16, D)
    z = pooler(tokens)  # [2, 4, D]
    grid = tokens.view(2, 4, 4, D)
    torch.testing.assert_close(z[:, 0], grid[:, :2, :2].mean((1, 2)))
    torch.testing.assert_close(
        LatentPooler("grid", D, (4, 4), 1, normalize=False)(tokens)[:, 0], tokens.mean(1)
    )


def test_frame_tokens_join_runs_of_the_grid_and_keep_the_flattened_frame():
    """``frame_tokens`` splits the flattened grid into a few wide tokens (rows of a 4 x 4 grid at 4); the
    flattened frame, which every head reads, is the same for every value; bad values are refused by name."""
    tokens = torch.randn(3, 16, D)
    one = LatentPooler("grid", D, (4, 4), 4, flatten=True)
    rows = LatentPooler("grid", D, (4, 4), 4, flatten=True, frame_tokens=4)
    cells = LatentPooler("grid", D, (4, 4), 4, flatten=False)
    assert (one.num_tokens, one.out_dim, rows.num_tokens, rows.out_dim) == (1, 16 * D, 4, 4 * D)
    z1, z4, z16 = one(tokens), rows(tokens), cells(tokens)
    assert z4.shape == (3, 4, 4 * D)
    torch.testing.assert_close(z4.flatten(1), z1.flatten(1), rtol=0, atol=0)
    torch.testing.assert_close(z4[:, 1], z16[:, 4:8].flatten(1), rtol=0, atol=0)  # the grid's second row
    pred = ACPredictor(rows.out_dim, A, num_tokens=rows.num_tokens, dim=32, depth=1, num_heads=2)
    model = WorldModel(tiny_model().encoder, rows, pred, Normalizer(A, 0), {"env_id": "JepaAgent/Reach-v0"})
    ctx = model.context([model.encode(obs())])
    actions = torch.rand(5, 3, A) * 2 - 1
    torch.testing.assert_close(model.rollout(ctx, actions), model.rollout(ctx, actions, use_cache=False),
                               atol=1e-5, rtol=0)  # fmt: skip
    for bad in (3, 0, "4", True):
        with pytest.raises(ValueError, match=f"frame_tokens={bad!r}; expected a divisor of the 16"):
            LatentPooler("grid", D, (4, 4), 4, flatten=True, frame_tokens=bad)
    with pytest.raises(ValueError, match="frame_tokens=4; expected 1 \\(flatten=false keeps all"):
        LatentPooler("grid", D, (4, 4), 4, flatten=False, frame_tokens=4)


def test_context_history_cache_equivalence_and_proprio():
    model = tiny_model("grid", 2, proprio_dim=P)
    states = [model.encode(obs(seed=i)) for i in range(3)]
    assert states[0].proprio.shape == (P,)
    ctx = model.context(states, [torch.tensor([0.1, -0.2]), torch.tensor([0.5, 0.3])])
    actions = torch.rand(5, 3, A) * 2 - 1
    fast = model.rollout(ctx, actions)
    slow = model.rollout(ctx, actions, use_cache=False)
    assert fast.shape == (5, 3, 4, D)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="need 2 actions"):
        model.context(states, [torch.zeros(A)])
    with pytest.raises(ValueError, match="proprio"):
        model.encode({"pixels": obs()["pixels"]})


@pytest.mark.parametrize("pooling,grid_size", [("patch", 1), ("grid", 2)])
def test_cached_step_attention_paths_agree(pooling, grid_size, monkeypatch):
    """The cached step's two attention paths (broadcast products for a few queries, batched GEMMs for a
    frame of many tokens) give the same rollout, with and without proprio and a context of two frames."""
    from jepa_agent.models.ac_predictor import Attention

    model = tiny_model(pooling, grid_size, proprio_dim=P)
    states = [model.encode(obs(seed=i)) for i in range(2)]
    ctx = model.context(states, [torch.tensor([0.1, -0.2])])
    actions = torch.rand(7, 4, A) * 2 - 1
    rollouts = []
    for queries in (10**6, 1):  # every step by broadcast products, then every step by GEMMs
        monkeypatch.setattr(Attention, "bmm_queries", queries)
        with torch.inference_mode():
            rollouts.append(model.rollout(ctx, actions))
    torch.testing.assert_close(rollouts[1], rollouts[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(rollouts[1], model.rollout(ctx, actions, use_cache=False), atol=1e-5, rtol=0)


def test_rollout_is_inference_only_unless_actions_need_grad():
    model = tiny_model()
    s = model.encode(obs())
    z = model.rollout(s, torch.zeros(2, 3, A))
    assert z.is_inference()
    a = torch.zeros(2, 3, A, requires_grad=True)
    model.rollout(s, a).sum().backward()
    assert a.grad is not None and model.encoder.patch_embed.weight.grad is None


@pytest.mark.parametrize(
    "planner",
    [
        CEMPlanner(horizon=3, population=16, elites=4, iterations=2),
        GDPlanner(horizon=3, restarts=2, iterations=3),
    ],
)
def test_planners_through_world_model(planner):
    model = tiny_model()
    goal = model.encode_goal({"image": obs(seed=5)["pixels"]})
    assert goal.z.shape == (1, D) and goal.proprio is None and goal.anchor is None  # a LatentState
    ctx = model.context([model.encode(obs())])
    with torch.no_grad() if planner.requires_grad else torch.inference_mode():
        res = planner.plan(model.rollout, model.cost(goal), ctx, action_dim=A)
    assert res.actions.shape == (3, A) and np.isfinite(res.cost)


def test_mpc_agent_smoke():
    agent_mod = pytest.importorskip("jepa_agent.agent")
    model = tiny_model()
    model.meta["context_frames"] = 2  # as train.context=2 records it
    agent = agent_mod.MPCAgent(
        model, CEMPlanner(action_dim=A, horizon=3, population=8, elites=2, iterations=2), horizon=3
    )
    assert agent.memory.capacity == 2  # memory=None: the model's context
    agent.reset({"image": obs(seed=9)["pixels"]})
    for i in range(3):
        a = agent.act(obs(seed=i))
        assert a.shape == (A,) and np.all(np.abs(a) <= 1)


def test_checkpoint_roundtrip_and_mismatch_errors(tmp_path):
    model = tiny_model("attentive")
    model.normalizer.set_stats(torch.randn(50, A) * 0.3 + 0.1)
    save_world_model(tmp_path / "wm", model, {"note": "test"}, meta={"step": 3}, encoder_name="vit_micro")
    loaded = WorldModel.from_checkpoint(
        tmp_path / "wm", device="cpu", env_id="JepaAgent/Reach-v0", image_size=IMG, action_dim=A
    )
    s = model.encode(obs())
    actions = torch.rand(4, 3, A)
    torch.testing.assert_close(loaded.rollout(loaded.encode(obs()), actions), model.rollout(s, actions))
    torch.testing.assert_close(loaded.normalizer.action_mean, model.normalizer.action_mean)
    with pytest.raises(CheckpointError, match=r"action_dim=2.*action_dim=3"):
        WorldModel.from_checkpoint(tmp_path / "wm", device="cpu", action_dim=3)
    with pytest.raises(CheckpointError, match=r"env_id='JepaAgent/Reach-v0'.*env_id='Other-v0'"):
        WorldModel.from_checkpoint(tmp_path / "wm", device="cpu", env_id="Other-v0")
    with pytest.raises(CheckpointError, match=r"image_size=16.*image_size=64"):
        WorldModel.from_checkpoint(tmp_path / "wm", device="cpu", image_size=64)
    save_checkpoint(tmp_path / "pre", {"encoder": model.encoder}, {"encoder": {}}, meta={"kind": "pretrain"})
    with pytest.raises(CheckpointError, match="not a world-model checkpoint"):
        WorldModel.from_checkpoint(tmp_path / "pre")
    with pytest.raises(ValueError, match=r"pixels are 32x32 .* 16x16"):
        loaded.encode({"pixels": np.zeros((32, 32, 3), np.uint8)})


def test_rope_encoder_survives_the_world_model_checkpoint(tmp_path):
    model = tiny_model("attentive", pos_embed="rope")
    save_world_model(tmp_path / "wm", model, {}, encoder_name="vit_micro")
    loaded = WorldModel.from_checkpoint(tmp_path / "wm", device="cpu")
    assert loaded.encoder.pos_embed_kind == "rope"
    actions = torch.rand(4, 3, A)
    torch.testing.assert_close(
        loaded.rollout(loaded.encode(obs()), actions), model.rollout(model.encode(obs()), actions)
    )


def test_variance_guard():
    collapsed = torch.zeros(64, 8) + 0.5
    spread = torch.randn(64, 8) * 2
    assert variance_loss(collapsed).item() > 0.9
    assert variance_loss(spread).item() == 0.0


# -- training --------------------------------------------------------------------------------------
def synthetic_episode(seed: int) -> dict:
    """A bright 4x4 square on a dark image, moved by the actions (proprio = its position)."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(2, 10, size=2)
    action = rng.uniform(-1, 1, size=(T - 1, A)).astype(np.float32)
    frames, proprio = [], []
    for t in range(T):
        img = np.full((IMG, IMG, 3), 20, np.uint8)
        x, y = np.clip(pos.round().astype(int), 0, IMG - 4)
        img[y : y + 4, x : x + 4] = (230, 200, 40)
        frames.append(img)
        proprio.append(pos.copy())
        if t < T - 1:
            pos = np.clip(pos + 1.5 * action[t], 0, IMG - 4)
    return {"frames": np.stack(frames), "action": action, "proprio": np.asarray(proprio, np.float32)}


class Episodes:
    def __init__(self, seeds):
        self.eps = [synthetic_episode(s) for s in seeds]

    @property
    def num_episodes(self) -> int:
        return len(self.eps)

    def episode(self, i: int) -> dict:
        return self.eps[i]


def tiny_world_model(action_chunk: int | None = None, **wm) -> WorldModel:
    torch.manual_seed(0)
    enc = vit_micro(img_size=IMG, patch_size=4, num_frames=2, embed_dim=32, depth=1, num_heads=2)
    cfg = {
        "encoder": {"name": "vit_micro", **encoder_config(enc)},
        "world_model": {"pooling": "grid", "grid_size": 1, "attentive_queries": 2, "attentive_heads": 2,
                        "normalize": True, "use_proprio": False,
                        "predictor": {"dim": 32, "depth": 2, "num_heads": 2, "max_steps": 8}} | wm,
        "action_dim": A, "proprio_dim": PS, "env_id": "Synthetic-v0",
    }  # fmt: skip
    if action_chunk is not None:
        cfg["action_chunk"] = action_chunk
    model = build_world_model(cfg)
    model.encoder.load_state_dict(enc.state_dict())
    return model


def cfg(**kw) -> WorldModelTrainConfig:
    base = dict(steps=12, batch_size=16, window=4, rollout_steps=2, lr=3e-3, warmup=2, log_every=1,
                ckpt_every=0, eval_horizon=3, device="cpu")  # fmt: skip
    return WorldModelTrainConfig(**(base | kw))


def latent_dynamics(n_eps: int, seed: int, noise: float = 0.05) -> LatentEpisodes:
    """Latents that encode a 2-D position moved by the actions: ``z = LN(W [sin, cos](pos)) + noise``."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(4, D, generator=torch.Generator().manual_seed(123))
    zs, acts = [], []
    for _ in range(n_eps):
        a = torch.rand(T - 1, A, generator=g) * 2 - 1
        pos = torch.cat([torch.rand(1, A, generator=g) * 2 - 1, 0.25 * a]).cumsum(0)  # [T, A]
        z = F.layer_norm(torch.cat([pos.sin(), pos.cos()], 1) @ W, (D,))
        zs.append((z + noise * torch.randn(z.shape, generator=g))[:, None])  # [T, 1, D]
        acts.append(torch.cat([a, torch.zeros(1, A)]))
    starts = [i * T for i in range(n_eps)]
    return LatentEpisodes(torch.cat(zs), torch.cat(acts), None, starts, [T] * n_eps)


def test_training_learns_latent_dynamics(tmp_path):
    model = tiny_model()  # latent 1 x 32 (= D)
    train, val = latent_dynamics(60, 0), latent_dynamics(10, 1)
    res = train_on_latents(model, train, val, cfg(steps=300, batch_size=32), tmp_path, progress=False)
    assert np.mean(res.losses[-20:]) < 0.9 * np.mean(res.losses[:20])
    assert res.val["val_one_step_ratio_to_copy_last"] < 0.9, res.val
    assert res.val["val_h_step_ratio_to_copy_last"] < 0.8, res.val
    assert float(model.predictor.delta_scale[0]) != 1.0  # fitted to the data's frame-to-frame changes


@pytest.mark.parametrize("wm", [{}, {"pooling": "attentive", "use_proprio": True}], ids=["grid", "attentive"])
def test_train_world_model_from_pixels(tmp_path, wm):
    model = tiny_world_model(**wm)
    res = train_world_model(model, Episodes(range(6)), Episodes([100, 101]), cfg(steps=20), tmp_path,
                            progress=False)  # fmt: skip
    assert res.steps == 20 and res.checkpoint is not None and res.frames_encoded == 8 * T
    assert all(np.isfinite(res.losses))
    for key in ("val_one_step_l1", "val_one_step_copy_last_l1", "val_h_step_l1", "val_h_step_copy_last_l1"):
        assert np.isfinite(res.val[key])
    assert np.isfinite(res.val["val_first_step_mse_ratio_to_copy_last"])  # from the context alone
    loaded = WorldModel.from_checkpoint(tmp_path, device="cpu", env_id="Synthetic-v0", action_dim=A)
    assert loaded.latent_shape == model.latent_shape
    torch.testing.assert_close(loaded.predictor.delta_scale, model.predictor.delta_scale)


def test_strided_cache_is_every_kth_frame_under_its_actions_concatenated():
    z = torch.arange(11, dtype=torch.float32)[:, None, None]  # two episodes: 7 and 4 frames
    acts = torch.stack([torch.arange(11.0), -torch.arange(11.0)], 1)  # [11, 2]; row t: the action after t
    acts[[6, 10]] = 0.0  # each episode's padding row
    data = LatentEpisodes(z, acts, None, [0, 7], [7, 4])
    assert data.strided(1) is data
    s = data.strided(3)
    frames = [[0, 3, 6], [1, 4], [2, 5], [7, 10], [8], [9]]
    assert s.lengths == [len(f) for f in frames] and s.starts == [0, 3, 5, 7, 9, 10]
    assert s.z[:, 0, 0].tolist() == [float(f) for ep in frames for f in ep]
    assert s.actions.shape == (11, 6)
    torch.testing.assert_close(s.actions[0], torch.tensor([0.0, 0, 1, -1, 2, -2]))  # actions 0, 1, 2
    torch.testing.assert_close(s.actions[1], torch.tensor([3.0, -3, 4, -4, 5, -5]))  # frame 3 -> 6
    last = [st + n - 1 for st, n in zip(s.starts, s.lengths, strict=True)]
    assert s.actions[last].abs().sum() == 0  # no macro-action after an episode's last frame
    assert s.window_starts(2).tolist() == [0, 1, 3, 5, 7]  # windows stay inside one episode


def test_world_model_of_macro_actions_trains_saves_and_plans(tmp_path):
    model = tiny_world_model(action_chunk=2)
    assert (model.action_chunk, model.action_dim, model.env_action_dim) == (2, 2 * A, A)
    res = train_world_model(model, Episodes(range(6)), Episodes([100, 101]), cfg(steps=20), tmp_path,
                            progress=False)  # fmt: skip
    assert all(np.isfinite(res.losses)) and np.isfinite(res.val["val_one_step_l1"])
    mean = model.normalizer.action_mean
    torch.testing.assert_close(mean[:A], mean[A:])  # the env action's statistics, once per env step
    loaded = WorldModel.from_checkpoint(tmp_path, device="cpu", env_id="Synthetic-v0", action_dim=A)
    assert (loaded.action_chunk, loaded.action_dim) == (2, 2 * A)
    with pytest.raises(CheckpointError, match=r"action_dim=2.*action_dim=4"):
        WorldModel.from_checkpoint(tmp_path, device="cpu", action_dim=2 * A)  # the env's, not the macro's
    planner = CEMPlanner(action_dim=loaded.action_dim, horizon=2, population=8, elites=2, iterations=1)
    agent = MPCAgent(loaded, planner)
    agent.reset({"image": obs(seed=9)["pixels"]})
    taken = [agent.act(obs(seed=i)) for i in range(4)]
    assert all(a.shape == (A,) for a in taken) and len(agent.plans) == 2  # a plan per 2 env steps
    with pytest.raises(CheckpointError, match="action_chunk: checkpoint 2, now 1"):
        train_world_model(tiny_world_model(), Episodes(range(2)), None, cfg(steps=2), tmp_path, resume=True,
                          progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="planner plans 2-wide actions but the model takes 4"):
        MPCAgent(loaded, CEMPlanner(action_dim=A))
    with pytest.raises(ValueError, match="action_chunk=0"):
        tiny_world_model(action_chunk=0)


def test_resume_continues_exactly(tmp_path):
    full = train_world_model(
        tiny_world_model(), Episodes(range(4)), None, cfg(), tmp_path / "a", progress=False
    )
    part = train_world_model(tiny_world_model(), Episodes(range(4)), None, cfg(stop_after=5), tmp_path / "b",
                             progress=False)  # fmt: skip
    assert part.steps == 5
    model = tiny_world_model()
    rest = train_world_model(
        model, Episodes(range(4)), None, cfg(), tmp_path / "b", resume=True, progress=False
    )
    assert rest.steps == 12 and len(rest.losses) == 7
    assert rest.losses == pytest.approx(full.losses[5:], abs=1e-6)
    done = train_world_model(  # a finished run: nothing left to do, the saved loss is reported (not NaN)
        tiny_world_model(), Episodes(range(4)), None, cfg(), tmp_path / "b", resume=True, progress=False
    )
    assert done.steps == 12 and done.losses == [] and done.final_loss == pytest.approx(rest.final_loss)
    assert done.frames_encoded == 0  # returned at once: no frame was encoded again
    with_val = train_world_model(tiny_world_model(), Episodes(range(4)), Episodes([100, 101]), cfg(),
                                 tmp_path / "c", progress=False)  # fmt: skip
    again = train_world_model(tiny_world_model(), Episodes(range(4)), Episodes([100, 101]), cfg(),
                              tmp_path / "c", resume=True, progress=False)  # fmt: skip
    assert again.frames_encoded == 0 and again.losses == [] and again.steps == 12
    assert again.val == pytest.approx(with_val.val)  # the figures saved with the last step
    a = WorldModel.from_checkpoint(tmp_path / "a", device="cpu").predictor.state_dict()
    for k, v in model.predictor.state_dict().items():
        torch.testing.assert_close(v, a[k], atol=1e-6, rtol=0)
    rows = list(csv.DictReader(open(tmp_path / "b" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(12))
    # a model built differently (here: no latent standardisation, which changes no weight) is refused
    with pytest.raises(
        CheckpointError, match=r"built differently \(world_model.normalize: checkpoint True, now False"
    ):
        train_world_model(tiny_world_model(normalize=False), Episodes(range(4)), None, cfg(), tmp_path / "b",
                          resume=True, progress=False)  # fmt: skip


def test_resume_with_a_temporal_distance_head_does_not_train_the_head_again(tmp_path):
    """The head trains before the predictor's first step and is saved with it: a run resumed mid-predictor
    keeps that head as saved and continues exactly (it was trained again on resume before)."""
    from jepa_agent.training.temporal_distance import MetricTrainConfig

    def model():
        return tiny_world_model(metric={"dim": 4, "hidden": 8})

    def run(out, resume=False, **kw):
        c = cfg(metric=MetricTrainConfig(steps=20, batch_size=16), **kw)
        return train_world_model(model(), Episodes(range(4)), None, c, tmp_path / out, resume=resume,
                                 progress=False)  # fmt: skip

    full = run("a")
    assert "metric_loss" in full.val
    run("b", stop_after=5)
    head = WorldModel.from_checkpoint(tmp_path / "b", device="cpu").metric.state_dict()
    rest = run("b", resume=True)
    assert "metric_loss" not in rest.val and rest.steps == 12  # the head's stage did not run again
    assert rest.losses == pytest.approx(full.losses[5:], abs=1e-6)
    for k, v in WorldModel.from_checkpoint(tmp_path / "b", device="cpu").metric.state_dict().items():
        torch.testing.assert_close(v, head[k], atol=0, rtol=0)  # the saved head, as the stage left it


def test_config_errors():
    with pytest.raises(ValueError, match="rollout_steps"):
        WorldModelTrainConfig(window=3, rollout_steps=3)
    with pytest.raises(ValueError, match="window"):
        WorldModelTrainConfig(window=1)
    with pytest.raises(ValueError, match=r"train.rollout_steps=5 from train.context=2 .*window=6"):
        WorldModelTrainConfig(window=6, context=2)  # 2 observed + 5 imagined frames do not fit in 6
    with pytest.raises(ValueError, match="train.context=0"):
        WorldModelTrainConfig(context=0)
    assert WorldModelTrainConfig(context=2).frames == 7  # window=None: just enough for the rollout loss
    with pytest.raises(ValueError, match="train.loss"):
        WorldModelTrainConfig(loss="huber")
    with pytest.raises(ValueError, match=r"train.lr=-0.1, .*expected both >= 0"):
        WorldModelTrainConfig(lr=-0.1)
    with pytest.raises(ValueError, match="train.weight_decay=-1"):
        WorldModelTrainConfig(weight_decay=-1)


def _write_dataset(root: Path, n: int = 3) -> None:
    from jepa_agent.data import EpisodeWriter, build_meta

    meta = build_meta("JepaAgent/Reach-v0", {}, IMG, 20.0, -np.ones(A), np.ones(A), PS, 4, 4,
                      {"crf": 18, "preset": "ultrafast", "pix_fmt": "yuv444p"})  # fmt: skip
    with EpisodeWriter(root, meta) as w:
        for i in range(n):
            ep = synthetic_episode(i)
            w.write(i, ep["frames"], ep["action"], ep["proprio"], np.zeros((T, 4)), np.zeros(4), seed=i)
        w.finalize()


def test_script_end_to_end(tmp_path, run_env, python):
    data = tmp_path / "eps"
    _write_dataset(data)
    enc = vit_micro(img_size=IMG, patch_size=4, num_frames=2, embed_dim=32, depth=1, num_heads=2)
    save_checkpoint(
        tmp_path / "pt" / "checkpoint",
        {"encoder": enc, "target_encoder": copy.deepcopy(enc)},
        {"encoder": {"name": "vit_micro", **encoder_config(enc)}},
        meta={"kind": "pretrain"},
    )
    args = [python, str(REPO / "scripts" / "train_world_model.py"), f"data.path={data}",
            f"encoder_checkpoint={tmp_path / 'pt'}", f"out={tmp_path / 'wm'}", "env.image_size=16",
            "train.steps=4", "train.warmup=1", "train.batch_size=8", "train.eval_horizon=3",
            "train.metric.steps=10", "progress=false",
            "world_model.predictor.dim=32", "world_model.predictor.num_heads=2", "device=cpu"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["steps"] == 4 and out["train_episodes"] == 2 and out["val_episodes"] == 1
    assert out["val_h_step_copy_last_l1"] > 0
    model = WorldModel.from_checkpoint(
        out["checkpoint"], device="cpu", env_id="JepaAgent/Reach-v0", image_size=16
    )
    assert model.action_dim == A
    bad = subprocess.run(args[:-1] + ["env.image_size=64", "device=cpu"], capture_output=True, text=True,
                         env=run_env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert bad.returncode != 0
    assert "16" in bad.stderr and "64" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_plan_smoke(capsys, monkeypatch):
    import importlib.util

    from jepa_agent.models.ac_predictor import Attention

    spec = importlib.util.spec_from_file_location("bench_plan", REPO / "scripts" / "bench_plan.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--population", "16", "--iterations", "2", "--replans", "5", "--threads", "1"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == json.loads(json.dumps(res))
    assert "speedup_gemm_attention" not in res  # one token per frame: its attention is broadcast products
    monkeypatch.setattr(Attention, "bmm_queries", 1)  # as for a frame of many tokens: timed both ways
    many = bench.main(["--population", "8", "--iterations", "1", "--replans", "5", "--threads", "1",
                       "--no-baseline"])  # fmt: skip
    assert many["broadcast_attention_s"]["median"] > 0 and many["speedup_gemm_attention"] > 0
    assert Attention.bmm_queries == 1  # the variant put the threshold back
    capsys.readouterr()
    assert res["kv_cache_s"]["median"] > 0 and res["no_cache_s"]["median"] > 0 and res["control_hz"] > 0
    assert res["unfused_s"]["median"] > 0 and res["speedup_vs_unfused"] > 0
    assert res["threads"] == 1 and res["latent_tokens"] == 1 and res["cost_space"] == "metric"
    assert res["readout_cost_s"]["median"] > 0 and res["ratio_to_readout_cost"] > 0
    with pytest.raises(SystemExit):  # a usage error naming the bound, not a planner traceback
        bench.main(["--population", "0"])
    assert "argument --population: 0; expected an int >= 1" in capsys.readouterr().err


def test_the_metric_heads_datasets_select_their_episodes_from_the_cache():
    """``train.metric.datasets``: the episodes of the picked datasets (positions in data.path), in that
    order, cut from the latent cache with their frames, actions and bookkeeping; bad picks are refused."""
    from jepa_agent.training.latent_cache import LatentEpisodes
    from jepa_agent.training.temporal_distance import MetricTrainConfig
    from jepa_agent.training.train_world_model import dataset_episodes

    class Part:
        def __init__(self, n):
            self.num_episodes = n

    class Concat:
        datasets = [Part(2), Part(3)]
        num_episodes = 5

    assert dataset_episodes(Concat(), [1], "x") == [2, 3, 4]
    assert dataset_episodes(Concat(), [1, 0], "x") == [2, 3, 4, 0, 1]
    assert dataset_episodes(Part(4), [0], "x") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"x=\[2\]: data.path holds 2 dataset\(s\) \(positions 0 to 1\)"):
        dataset_episodes(Concat(), [2], "x")
    with pytest.raises(ValueError, match="dataset 1 of data.path has no training episode"):
        dataset_episodes(type("C", (), {"datasets": [Part(2), Part(0)]})(), [1], "x")
    for bad in ([], [0, 0], [-1], [True], ["0"]):
        with pytest.raises(ValueError, match="train.metric.datasets="):
            MetricTrainConfig(datasets=bad)
    lengths = [3, 2, 4]
    frames = sum(lengths)
    cache = LatentEpisodes(
        torch.arange(frames, dtype=torch.float32).view(frames, 1, 1), torch.arange(frames).float()[:, None],
        None, [0, 3, 5], lengths,
    )  # fmt: skip
    part = cache.select([2, 0])
    assert part.starts == [0, 4] and part.lengths == [4, 3]
    assert part.z.flatten().tolist() == [5, 6, 7, 8, 0, 1, 2]
    assert part.actions.flatten().tolist() == [5, 6, 7, 8, 0, 1, 2]
    assert part.window_starts(3).tolist() == [0, 1, 4]  # windows never cross the new episode boundaries


def test_simulator_imagination_is_the_world_models_cost_on_true_futures():
    import envs
    from jepa_agent.oracle import SimulatorImagination

    model = tiny_world_model(action_chunk=2)  # 16 px, 2-d env actions: push at image_size=16
    env = envs.make_env("push", image_size=16)
    obs, _ = env.reset(seed=4)
    sim = SimulatorImagination(model, env)
    assert (sim.action_dim, sim.action_chunk) == (4, 2)
    state = sim.encode(obs)
    torch.testing.assert_close(state.z, model.encode(obs).z)  # the cost reads the world model's encoding
    actions = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (3, 2, 4)), dtype=torch.float32)
    z = sim.rollout(sim.context([state], []), actions)  # [3, 2, N, D]
    assert z.shape == (3, 2, *model.latent_shape)
    for t in range(2):  # candidate 1, stepped in the env itself: the same frames, the same latents
        for a in actions[1, t].reshape(2, 2):
            obs, *_ = env.step(a.numpy())
        torch.testing.assert_close(z[1, t], model.encode(obs).z, atol=1e-4, rtol=1e-4)
    project = torch.nn.Linear(z[0, 0].numel(), 3)
    fused = sim.rollout(sim._state, actions, project=project)  # [3, 2, 3]: a cost's rollout_projection
    torch.testing.assert_close(fused[1, 0], project(z[1, 0].flatten()))
    with pytest.raises(ValueError, match="Pendulum|simulator"):
        import gymnasium as gym

        SimulatorImagination(model, gym.make("Pendulum-v1"))
    env.close()
