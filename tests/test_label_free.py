"""The label-free planning space: the temporal-distance head, its training stage and its guards."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from jepa_agent.models.latent import TemporalDistanceHead
from jepa_agent.training.latent_cache import LatentEpisodes
from jepa_agent.training.temporal_distance import MetricTrainConfig, sample_goals, train_metric_head
from jepa_agent.world_model import WorldModel
from tests.conftest import REPO
from tests.test_world_model import A, tiny_world_model


def chain_episodes(n_eps: int = 120, length: int = 30, positions: int = 40, seed: int = 0) -> LatentEpisodes:
    """Random walks on a chain of ``positions`` states, each seen as a fixed RANDOM latent (no geometry in
    the latents themselves: any distance the head learns comes from the episodes' time structure)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(positions, 1, 16, generator=torch.Generator().manual_seed(1))
    zs = []
    for _ in range(n_eps):
        p = int(torch.randint(positions, (1,), generator=g))
        walk = [p]
        for _ in range(length - 1):
            step = 1 if torch.rand(1, generator=g) < 0.5 else -1
            p = min(max(p + step, 0), positions - 1)
            walk.append(p)
        zs.append(codes[walk])
    z = torch.cat(zs)
    return LatentEpisodes(
        z, torch.zeros(len(z), 1), None, [i * length for i in range(n_eps)], [length] * n_eps
    ), codes


def test_temporal_distance_grows_with_steps_on_a_chain():
    """Frames k steps apart along the chain: the learned distance grows with k (Spearman ~ 1)."""
    torch.manual_seed(0)
    data, codes = chain_episodes()
    head = TemporalDistanceHead(16, dim=8, hidden=64)
    cfg = MetricTrainConfig(steps=1500, batch_size=128, lr=1e-3, gamma=0.95, random_goals=0.3)
    out = train_metric_head(head, data, cfg, progress=False)
    assert np.isfinite(out["metric_loss"])
    with torch.no_grad():
        phi = head(codes)  # [positions, 8]
    ks = list(range(1, 11))
    d = [float((phi[10 + k] - phi[10]).norm()) for k in ks]  # from the middle of the chain, forwards
    d_back = [float((phi[30 - k] - phi[30]).norm()) for k in ks]
    for dist in (d, d_back):
        rho = np.corrcoef(np.argsort(np.argsort(dist)), ks)[0, 1]
        assert rho > 0.9, dist
        assert dist[-1] > 3 * dist[0], dist


def test_sample_goals_stay_in_the_episode_unless_random():
    last = torch.tensor([9] * 10 + [19] * 10)
    t = torch.arange(19).repeat(50)
    t = t[t != 9]
    g = sample_goals(t, last, 20, gamma=0.9, random_goals=0.0, gen=torch.Generator().manual_seed(0))
    assert bool(((g > t) & (g <= last[t])).all())
    g = sample_goals(t, last, 20, gamma=0.9, random_goals=1.0, gen=torch.Generator().manual_seed(0))
    assert bool(((g >= 0) & (g < 20)).all()) and bool((g < t).any())


@pytest.mark.parametrize(
    "kw, msg",
    [({"gamma": 1.0}, "train.metric.gamma=1.0"), ({"random_goals": 1.5}, "train.metric.random_goals=1.5"),
     ({"steps": -1}, "train.metric.steps=-1"), ({"lr": 0.0}, "train.metric.lr=0.0"),
     ({"env_steps": "yes"}, "train.metric.env_steps='yes'")],
)  # fmt: skip
def test_metric_config_refuses_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg.replace(".", r"\.")):
        MetricTrainConfig(**kw)


def test_metric_cost_space_is_the_default_and_its_absence_is_named():
    model = tiny_world_model(metric={"dim": 4, "hidden": 8})
    assert model.metric is not None and not model.metric_trained and not model.state_labels
    with pytest.raises(ValueError, match="cost.space=metric: .*never trained.*resume=true"):
        model.resolve_cost_space("metric")
    assert model.resolve_cost_space("auto") == "latent"
    model.meta.update(metric_steps=10, checkpoint="some/ckpt")
    assert model.resolve_cost_space("auto") == "metric"
    goal = torch.zeros(model.latent_shape)
    cost = model.cost(goal)  # the default: CostConfig's space=auto -> metric
    assert cost.terms[0].head is model.metric  # plus the action penalty
    bare = tiny_world_model()
    bare.meta.update(checkpoint="runs/wm/checkpoint")
    with pytest.raises(
        ValueError, match=r"'runs/wm/checkpoint' has no temporal-distance head.*world_model.metric.dim"
    ):
        bare.resolve_cost_space("metric")
    with pytest.raises(
        ValueError,
        match=r"cost.space=readout: .*'runs/wm/checkpoint' has no state readout.*world_model=readout",
    ):
        bare.resolve_cost_space("readout")


def _collect(tmp_path, python, run_env, out):
    args = [python, str(REPO / "scripts" / "collect.py"), "env=reach", "env.image_size=16", "episodes=6",
            "policy=noisy", "num_envs=1", "env.max_episode_steps=12", f"out={out}"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_default_pipeline_never_reads_states(tmp_path, python, run_env):
    """Every proprio and simulator-state value of the dataset is NaN: the default world model (metric head,
    no readout, no proprio input) still trains to finite losses, and plans in the metric space."""
    import copy

    from jepa_agent.checkpoint import save_checkpoint
    from jepa_agent.models.vit import encoder_config, vit_micro

    eps = tmp_path / "eps"
    _collect(tmp_path, python, run_env, eps)
    for f in sorted(eps.glob("episode_*.npz")):
        d = dict(np.load(f))
        for key in ("observation.state", "state", "goal.state"):
            d[key] = np.full_like(d[key], np.nan)
        np.savez(f, **d)
    enc = vit_micro(img_size=16, patch_size=4, num_frames=2, embed_dim=32, depth=1, num_heads=2)
    save_checkpoint(tmp_path / "pt" / "checkpoint", {"encoder": enc, "target_encoder": copy.deepcopy(enc)},
                    {"encoder": {"name": "vit_micro", **encoder_config(enc)}},
                    meta={"kind": "pretrain"})  # fmt: skip
    wm = tmp_path / "wm"
    args = [python, str(REPO / "scripts" / "train_world_model.py"), f"data.path={eps}", "env.image_size=16",
            f"encoder_checkpoint={tmp_path / 'pt'}", f"out={wm}", "train.steps=6", "train.warmup=1",
            "train.batch_size=8", "train.eval_horizon=3", "train.metric.steps=40",
            "progress=false",
            "world_model.predictor.dim=32", "world_model.predictor.num_heads=2", "device=cpu"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.isfinite(out["final_loss"]) and np.isfinite(out["metric_loss"]), out
    plan = [python, str(REPO / "scripts" / "plan.py"), f"checkpoint={wm}", "env.image_size=16", "episodes=1",
            "env.max_episode_steps=3", "baselines=false", "videos=0", "energy_grid=0",
            "planner.population=16", "planner.iterations=2", "planner.elites=4",
            f"hydra.run.dir={tmp_path / 'plan'}", "device=cpu"]  # fmt: skip
    proc = subprocess.run(plan, capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["state_labels"] is False and res["cost_space"] == "metric" and res["episodes"] == 1
    assert res["metric_kind"] == "distance"
    # the latent term's weight as planned: cost.latent_weight=null is the model's default
    trained = WorldModel.from_checkpoint(wm)
    assert res["latent_weight"] == (0.0 if trained.displacement_trained else 0.5)
    saved = json.loads((tmp_path / "plan" / "results.json").read_text())
    assert saved["state_labels"] is False and saved["latent_weight"] == res["latent_weight"]
    # in the latents' own space there is no latent term to weigh: null
    plan[-2] = f"hydra.run.dir={tmp_path / 'plan_latent'}"
    proc = subprocess.run([*plan, "cost.space=latent"], capture_output=True, text=True, env=run_env,
                          cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["cost_space"] == "latent" and res["latent_weight"] is None


@pytest.mark.slow  # ~25 s on the 2-core VM; CI runs it (.ci/run: -m slow)
def test_init_trains_a_new_predictor_and_keeps_the_trained_rest(tmp_path, python, run_env):
    """``train_world_model.py init=WM``: a new predictor (another size) for a trained model. Its encoder,
    statistics and temporal-distance head are the checkpoint's, bit for bit (that stage is not re-run);
    the settings that would change them are refused, naming them."""
    import copy

    from jepa_agent.checkpoint import save_checkpoint
    from jepa_agent.models.vit import encoder_config, vit_micro

    eps = tmp_path / "eps"
    _collect(tmp_path, python, run_env, eps)
    enc = vit_micro(img_size=16, patch_size=4, num_frames=2, embed_dim=32, depth=1, num_heads=2)
    save_checkpoint(tmp_path / "pt" / "checkpoint", {"encoder": enc, "target_encoder": copy.deepcopy(enc)},
                    {"encoder": {"name": "vit_micro", **encoder_config(enc)}},
                    meta={"kind": "pretrain"})  # fmt: skip
    common = [python, str(REPO / "scripts" / "train_world_model.py"), f"data.path={eps}", "env.image_size=16",
              "train.steps=4", "train.warmup=1", "train.batch_size=8", "train.eval_horizon=3",
              "train.metric.steps=30", "progress=false", "world_model.predictor.num_heads=2",
              "device=cpu"]  # fmt: skip

    def train(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*common, *args], capture_output=True, text=True, env=run_env, cwd=tmp_path,
                              timeout=300)  # fmt: skip

    wm, new = tmp_path / "wm", tmp_path / "wm_new"
    proc = train(f"encoder_checkpoint={tmp_path / 'pt'}", f"out={wm}", "world_model.predictor.dim=32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = train(f"init={wm}", f"out={new}", "world_model.predictor.dim=48")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "metric_loss" not in out and np.isfinite(out["final_loss"])  # the head's stage did not run
    a, b = WorldModel.from_checkpoint(wm, device="cpu"), WorldModel.from_checkpoint(new, device="cpu")
    assert b.predictor.dim == 48 != a.predictor.dim and b.metric_trained
    for name in ("encoder", "normalizer", "metric"):
        kept = getattr(b, name).state_dict()
        for key, x in getattr(a, name).state_dict().items():
            torch.testing.assert_close(x, kept[key], rtol=0, atol=0, msg=f"{name}.{key}")
    # the same pooled latent split into its grid's tokens (world_model.flatten=false): the statistics are
    # the checkpoint's, reshaped, so every frame's latent and the head's reading of it are unchanged
    tok = tmp_path / "wm_tokens"
    proc = train(f"init={wm}", f"out={tok}", "world_model.flatten=false", "world_model.predictor.dim=32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = WorldModel.from_checkpoint(tok, device="cpu")
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    za, zc = a.encode_pixels(frames), c.encode_pixels(frames)
    assert za.shape[1] == 1 and zc.shape[1] > 1  # one token of N * D against N tokens of D
    torch.testing.assert_close(zc.flatten(1), za.flatten(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(c.metric(zc), a.metric(za), rtol=0, atol=1e-5)
    # or joined into a few wider tokens (world_model.frame_tokens), saved and reloaded as such
    rows = tmp_path / "wm_rows"
    proc = train(f"init={wm}", f"out={rows}", "world_model.frame_tokens=2", "world_model.predictor.dim=32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = WorldModel.from_checkpoint(rows, device="cpu")
    zd = d.encode_pixels(frames)
    assert zd.shape[1] == 2 and d.predictor.num_tokens == 2
    torch.testing.assert_close(zd.flatten(1), za.flatten(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(d.metric(zd), a.metric(za), rtol=0, atol=1e-5)
    # init_retrain=[metric]: that head is trained again on this run's settings (its stage runs), the rest kept
    again_head = tmp_path / "wm_metric_again"
    proc = train(f"init={wm}", f"out={again_head}", "init_retrain=[metric]", "train.metric.steps=10",
                 "world_model.predictor.dim=32")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "metric_loss" in out  # the head's stage ran
    g = WorldModel.from_checkpoint(again_head, device="cpu")
    assert g.metric_trained and g.meta["metric_steps"] == 10
    assert not all(torch.equal(x, g.metric.state_dict()[k]) for k, x in a.metric.state_dict().items())
    for key, x in a.normalizer.state_dict().items():
        torch.testing.assert_close(x, g.normalizer.state_dict()[key], rtol=0, atol=0, msg=key)
    # an env's recipe that tunes the encoder (push's) asks init= for the tuning its encoder already had: kept
    tuned, again = tmp_path / "wm_tuned", tmp_path / "wm_tuned_again"
    tune = ["train.encoder.steps=2", "train.encoder.batch_size=2", "train.encoder.warmup=1"]
    proc = train(f"encoder_checkpoint={tmp_path / 'pt'}", f"out={tuned}", *tune,
                 "world_model.predictor.dim=32")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = train(f"init={tuned}", f"out={again}", *tune, "world_model.predictor.dim=32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    e, f = WorldModel.from_checkpoint(tuned, device="cpu"), WorldModel.from_checkpoint(again, device="cpu")
    assert f.meta["encoder_tune_steps"] == e.meta["encoder_tune_steps"] == 2
    for key, x in e.encoder.state_dict().items():
        torch.testing.assert_close(x, f.encoder.state_dict()[key], rtol=0, atol=0, msg=key)
    for args, match in (
        ((f"init={tuned}", "train.encoder.steps=3"), "(2 fine-tuning steps); train.encoder.steps=3 would"),
        ((f"init={wm}", f"encoder_checkpoint={tmp_path / 'pt'}"), "pass one of the two"),
        ((f"init={wm}", "train.encoder.steps=2"), "train.encoder.steps=2 would tune it again"),
        ((f"init={wm}", "world_model.metric.hidden=8"), "its metric does not fit"),
        ((f"init={wm}", "world_model.frame_tokens=3"), "world_model.frame_tokens=3; expected a divisor"),
        ((f"init={wm}", "init_retrain=[predictor]"), "init_retrain=['predictor']; expected a list of"),
        ((f"init={wm}", "init_retrain=metric"), "init_retrain='metric'; expected a list"),
        ((f"encoder_checkpoint={tmp_path / 'pt'}", "init_retrain=[metric]"), "pass init=WORLD_MODEL with it"),
    ):
        proc = train(*args, f"out={tmp_path / 'refused'}")
        assert proc.returncode != 0 and match in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_world_model_training_refuses_data_without_actions(tmp_path, python, run_env):
    """A plain folder of videos has no actions: world-model training says so (not a deep traceback)."""
    from jepa_agent.data.video_io import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "clip.mp4", np.zeros((8, 16, 16, 3), np.uint8), fps=10)
    args = [python, str(REPO / "scripts" / "train_world_model.py"), f"data.path={videos}",
            "encoder_checkpoint=checkpoints/reach", f"out={tmp_path / 'wm'}", "progress=false"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=run_env, cwd=REPO, timeout=300)
    assert proc.returncode != 0
    assert "actions" in proc.stderr and str(videos) in proc.stderr and "Traceback" not in proc.stderr


def test_metric_head_with_a_learned_pooling_is_refused(tmp_path):
    from jepa_agent.training.train_world_model import train_world_model
    from tests.test_world_model import Episodes, cfg

    model = tiny_world_model(pooling="attentive", metric={"dim": 4, "hidden": 8})
    with pytest.raises(ValueError, match="pooling is learned.*world_model.metric.dim=0"):
        train_world_model(model, Episodes(range(2)), None, cfg(), tmp_path, progress=False)


@pytest.mark.parametrize("rest", [0.0, 1.5])
@pytest.mark.parametrize("displacement", [False, "pair", "diff"])
@pytest.mark.parametrize("reduction", ["final", "all"])
@pytest.mark.parametrize("residual", [True, False])
def test_fused_metric_cost_ranks_as_the_latents_do(reduction, residual, displacement, rest):
    """The metric cost with its latent term is fused into the rollout (head's first layer + the latents'
    coordinates in the predictor's motion basis, + the displacement head's first layer when it has one):
    it equals the cost of the full imagined latents up to one constant per plan, so candidates rank the
    same; with and without grad. The rest term (``rest_weight``) is read from the same coordinates."""
    from jepa_agent.agent import planning_rollout
    from jepa_agent.costs import MetricLatentCost
    from tests.test_world_model import obs

    torch.manual_seed(0)
    predictor = {"dim": 8, "depth": 2, "num_heads": 2, "max_steps": 8}  # latents move in 9 of 32 dimensions
    disp = {"hidden": 6 if displacement else 0, "inputs": displacement or "pair"}
    heads = {"metric": {"dim": 4, "hidden": 8}, "displacement": disp}
    model = tiny_world_model(predictor=predictor, **heads)
    model.meta.update(metric_steps=1, displacement_weight=1.0)
    model.predictor.residual = residual
    model.predictor.set_delta_scale(torch.rand(model.latent_shape[1]) + 0.5)
    goal = model.encode_goal({"image": obs()["pixels"]})
    state = model.encode(obs())
    actions = torch.rand(64, 4, A) * 2 - 1
    cost = model.cost(
        goal, reduction=reduction, latent_weight=0.7, action_weight=0.1, displacement_weight=2.0,
        rest_weight=rest,
    )  # fmt: skip
    assert isinstance(cost.terms[0], MetricLatentCost) and cost.rollout_projection is not None
    assert (cost.terms[0].displacement is not None) is bool(displacement)
    fused = planning_rollout(model, cost)
    with torch.inference_mode():
        out = fused(state, actions)
        # the head's first layer (+ the displacement head's) + the motion-basis coordinates
        assert out.shape == (64, 4, 8 + (6 if displacement else 0) + 9)
        gap = cost(out, actions) - cost(model.rollout(state, actions), actions)
        assert float(gap.std()) < 1e-4 * float(cost(out, actions).std())
        # the folded head is kept between rollouts; a weight changed in place (a training step) drops it
        assert torch.equal(fused(state, actions), out)
        with torch.no_grad():
            model.predictor.latent_head.weight.mul_(1.5)
        again = fused(state, actions)
        gap = cost(again, actions) - cost(model.rollout(state, actions), actions)
        assert not torch.equal(again, out) and float(gap.std()) < 1e-4 * float(cost(again, actions).std())
    a = actions.clone().requires_grad_(True)  # the gradient planner's path
    cost(fused(state, a), a).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    # without the latent term: the head alone, fused through its first layer as the readout is
    plain = model.cost(goal, latent_weight=0.0, displacement_weight=0.0)
    assert plain.rollout_projection is model.metric.input_layer
    if displacement:  # the head and the displacement term, no latent term: still fused, and the same cost
        both = model.cost(goal, latent_weight=0.0, displacement_weight=2.0, action_weight=0.0)
        assert isinstance(both, MetricLatentCost) and both.rollout_projection is not None
        with torch.inference_mode():
            imagined = model.rollout(state, actions)
            expect = model.cost(goal, latent_weight=0.0, displacement_weight=0.0)(imagined, actions)
            extra = both(imagined, actions) - expect
            assert float(extra.min()) >= 0 and float(extra.std()) > 0
            fused_both = both(planning_rollout(model, both)(state, actions), actions)
            assert torch.allclose(fused_both, both(imagined, actions), rtol=1e-5, atol=1e-6)
    # latent_weight=None (the default): 0 with the displacement term in a one-frame model's cost, else 0.5
    assert model.context_frames == 1 and model.resolve_latent_weight() == (0.0 if displacement else 0.5)
    assert model.resolve_latent_weight(None, displacement_weight=0.0) == 0.5
    assert model.resolve_latent_weight(0.25) == 0.25
    default = model.cost(goal, action_weight=0.0)
    assert default.latent_weight == (0.0 if displacement else 0.5)
    model.meta["context_frames"] = 2  # velocity matters (torques): summed actions are not the displacement
    assert model.resolve_latent_weight() == 0.5


def test_joint_metric_head_trains_on_predictions_towards_its_frozen_copy(tmp_path):
    """``train.metric.joint``: the head keeps training with the predictor (its weights move), towards a
    frozen copy of itself that the training state keeps for a resume; resuming with the other setting is
    refused by name. Without it the head stays exactly as its own stage left it."""
    import copy

    from jepa_agent.training.train_world_model import WorldModelTrainConfig, train_on_latents
    from tests.test_world_model import D, latent_dynamics, tiny_model

    train = latent_dynamics(40, 0)
    base = dict(steps=30, batch_size=16, window=4, rollout_steps=2, lr=3e-3, warmup=2, log_every=10,
                ckpt_every=0, eval_horizon=3, device="cpu")  # fmt: skip
    heads = {}
    for joint in (False, True):
        model = tiny_model()
        model.metric = TemporalDistanceHead(D, dim=4, hidden=16)
        train_metric_head(model.metric, train, MetricTrainConfig(steps=20, batch_size=32), progress=False)
        model.meta["metric_steps"] = 20
        stage = copy.deepcopy(model.metric.state_dict())
        cfg = WorldModelTrainConfig(**base, metric=MetricTrainConfig(joint=joint))
        res = train_on_latents(model, train, None, cfg, tmp_path / str(joint), progress=False)
        assert np.isfinite(res.losses).all() and model.meta["metric_joint"] is joint
        moved = [not torch.equal(v, stage[k]) for k, v in model.metric.state_dict().items()]
        assert any(moved) if joint else not any(moved)
        state = torch.load(tmp_path / str(joint) / "checkpoint" / "train_state.pt", weights_only=True)
        assert ("metric_target" in state) is joint
        if joint:
            for k, v in state["metric_target"].items():
                assert torch.equal(v, stage[k]), k
        heads[joint] = model
    cfg = WorldModelTrainConfig(**{**base, "steps": 40}, metric=MetricTrainConfig(joint=False))
    state = torch.load(tmp_path / "True" / "checkpoint" / "train_state.pt", weights_only=True)
    with pytest.raises(ValueError, match=r"metric\.joint=True, this run asks for train\.metric\.joint=False"):
        train_on_latents(heads[True], train, None, cfg, tmp_path / "True", state, progress=False)


def test_action_sums_give_the_actions_between_two_frames_of_an_episode():
    """``ActionSums``: cum[j] - cum[i] is the env-unit actions taken from frame i to frame j of one episode
    (never across episodes, never the padding row); sampled goals stay in the window's episode and the
    targets are capped per component with their direction kept."""
    from jepa_agent.models.latent import capped_action_sums
    from jepa_agent.training.latent_cache import ActionSums
    from jepa_agent.training.train_world_model import DisplacementTrainConfig

    g = torch.Generator().manual_seed(0)
    lengths = [5, 7, 6]
    raw = [torch.rand(n - 1, 2, generator=g) * 2 - 1 for n in lengths]
    mean, std = torch.tensor([0.1, -0.2]), torch.tensor([0.5, 2.0])
    acts = torch.cat([torch.cat([(r - mean) / std, torch.zeros(1, 2)]) for r in raw])  # normalised + padding
    starts = [0, 5, 12]
    data = LatentEpisodes(torch.zeros(18, 1, 4), acts, None, starts, lengths)
    sums = ActionSums.from_latents(data, mean, std)
    for e, (s0, n) in enumerate(zip(starts, lengths, strict=True)):
        for i in range(n):
            for j in range(n):
                want = raw[e][i:j].sum(0) if j >= i else -raw[e][j:i].sum(0)
                torch.testing.assert_close(sums.cum[s0 + j] - sums.cum[s0 + i], want, atol=1e-5, rtol=0)
    cfg = DisplacementTrainConfig(goal_steps=30, back_steps=30, cap=0.5)
    first = torch.tensor([0, 5, 12, 13])
    for _ in range(20):
        goal, targets = sums.sample(first, 2, cfg, g)
        assert bool(((goal >= sums.first[first]) & (goal <= sums.last[first])).all())
        assert targets.shape == (4, 2, 2) and float(targets.abs().max()) <= 0.5 + 1e-6
    capped = capped_action_sums(torch.tensor([[3.0, -1.5], [0.2, 0.1]]), 1.0)
    torch.testing.assert_close(capped, torch.tensor([[1.0, -0.5], [0.2, 0.1]]))


def test_displacement_head_learns_the_summed_actions_and_plans_in_the_metric_cost(tmp_path):
    """On latents of a point that the actions move (pos += 0.25 a), a world model with a displacement head
    learns, from frames and actions only, the summed actions between two held-out frames far better than
    guessing none; the checkpoint keeps the head, and the metric cost then includes its term."""
    from jepa_agent.training.latent_cache import ActionSums
    from jepa_agent.training.train_world_model import WorldModelTrainConfig, train_on_latents
    from jepa_agent.world_model import WorldModel
    from tests.test_world_model import latent_dynamics

    train, val = latent_dynamics(80, 0), latent_dynamics(20, 1)
    model = tiny_world_model(displacement={"hidden": 64}, metric={"dim": 4, "hidden": 8})
    cfg = WorldModelTrainConfig(steps=600, batch_size=32, window=4, rollout_steps=2, lr=3e-3, warmup=10,
                                log_every=100, ckpt_every=0, eval_horizon=3, device="cpu",
                                displacement={"goal_steps": 6, "back_steps": 2, "cap": 3.0})  # fmt: skip
    res = train_on_latents(model, train, val, cfg, tmp_path, progress=False)
    assert np.isfinite(res.losses).all() and model.meta["displacement_weight"] == 2.0
    sums = ActionSums.from_latents(val, model.normalizer.action_mean, model.normalizer.action_std)
    first = val.window_starts(4)
    goal, targets = sums.sample(first, 4, cfg.displacement, torch.Generator().manual_seed(3))
    with torch.no_grad():
        pred = model.displacement(val.z[first], val.z[goal])  # [W, A]
    err = (pred - targets[:, 0]).square().mean()
    assert float(err) < 0.25 * float(targets[:, 0].square().mean()), (
        float(err),
        float(targets.square().mean()),
    )
    loaded = WorldModel.from_checkpoint(tmp_path, device="cpu")
    assert loaded.displacement is not None and loaded.displacement_trained
    goal = val.z[0]
    plain = loaded.cost(goal)  # the metric head was never trained: the latent space, no displacement term
    assert loaded.resolve_cost_space("auto") == "latent" and "Displacement" not in repr(plain)
    loaded.meta["metric_steps"] = 1  # as after the head's stage: the metric cost carries the term, fused
    cost = loaded.cost(goal)
    assert cost.terms[0].displacement is not None and cost.terms[0].displacement_weight == 0.3


def test_displacement_towards_a_goal_equals_the_pair_network():
    """``DisplacementHead.towards`` (the goal's share of the first pair layer computed once, as planning
    uses it) gives what the pair network gives on [h, g, g - h]."""
    from jepa_agent.models.latent import DisplacementHead

    torch.manual_seed(0)
    for inputs in DisplacementHead.INPUTS:
        head = DisplacementHead(12, 3, hidden=8, inputs=inputs)
        h, h_goal = torch.randn(5, 4, 8), torch.randn(1, 8)
        want = head.from_embeddings(h, h_goal)
        torch.testing.assert_close(head.towards(h_goal)(h), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="displacement action_dim=0"):
        DisplacementHead(12, 0)
    with pytest.raises(ValueError, match=r"world_model\.displacement\.inputs='sum'; expected one of"):
        DisplacementHead(12, 2, inputs="sum")


def test_displacement_on_differences_cancels_what_two_frames_share(tmp_path):
    """``inputs=diff``: the head reads only ``z_goal - z`` (through one linear layer), so adding the same
    scene to both latents changes nothing, and a frame read against itself is the same constant whatever
    it shows (the pair head guarantees neither). The config round-trips through a checkpoint."""
    from jepa_agent.models.latent import DisplacementHead
    from jepa_agent.world_model import WorldModel, save_world_model

    torch.manual_seed(0)
    diff, pair = DisplacementHead(12, 2, hidden=8, inputs="diff"), DisplacementHead(12, 2, hidden=8)
    z, goal, scene = torch.randn(6, 3, 4), torch.randn(6, 3, 4), 3 * torch.randn(1, 3, 4)
    torch.testing.assert_close(diff(z + scene, goal + scene), diff(z, goal), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pair(z + scene, goal + scene), pair(z, goal), atol=1e-3)
    same = diff(z, z)
    torch.testing.assert_close(same, same[:1].expand_as(same))
    model = tiny_world_model(displacement={"hidden": 6, "inputs": "diff"})
    save_world_model(tmp_path / "wm", model)
    loaded = WorldModel.from_checkpoint(tmp_path / "wm", device="cpu")
    assert loaded.displacement.inputs == "diff"
    a, b = torch.randn(2, 5, *model.latent_shape)
    torch.testing.assert_close(loaded.displacement(a, b), model.displacement(a, b))


def test_resuming_a_run_without_the_displacement_head_names_the_fix(tmp_path):
    """A run saved before the displacement head was the default, resumed with it on: one line naming the
    option that resumes it, not a missing-module traceback."""
    import yaml

    from jepa_agent.training.train_world_model import train_world_model
    from tests.test_world_model import Episodes, cfg

    train_world_model(
        tiny_world_model(), Episodes(range(2)), None, cfg(stop_after=2), tmp_path, progress=False
    )
    saved = tmp_path / "checkpoint" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    del config["world_model"]["displacement"]  # as written before the key existed
    saved.write_text(yaml.safe_dump(config))
    model = tiny_world_model(displacement={"hidden": 8})
    with pytest.raises(ValueError, match=r"no displacement head .*world_model\.displacement\.hidden=0"):
        train_world_model(model, Episodes(range(2)), None, cfg(), tmp_path, resume=True, progress=False)


def test_score_scores_the_metric_space_with_the_cost_plan_py_plans_with():
    """``scoring.cost_space_features``: the label-free space is the planning cost itself (head + latent term +
    displacement head, plan.py's defaults, no action term), not the head's features alone; greedy search
    gives the same verdicts from features or from the equivalent cost function."""
    from jepa_agent.scoring import cost_space_features, greedy_success

    torch.manual_seed(0)
    model = tiny_world_model(metric={"dim": 4, "hidden": 8}, displacement={"hidden": 6})
    model.meta.update(metric_steps=1, displacement_weight=1.0)
    images = np.random.default_rng(0).integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    spaces = cost_space_features(model, images)
    assert set(spaces) == {"pixels", "latent", "metric_head", "metric"} and callable(spaces["metric"])
    z = model.encode_pixels(images)
    with torch.inference_mode():
        want = model.cost(z[3], space="metric", action_weight=0.0)(z[:, None], torch.zeros(12, 1, A))
        head_only = model.cost(z[3], space="metric", action_weight=0.0, latent_weight=0.0,
                               displacement_weight=0.0)(z[:, None], torch.zeros(12, 1, A))  # fmt: skip
    torch.testing.assert_close(spaces["metric"](3), want)
    assert float((want - head_only).abs().max()) > 1e-4  # the latent and displacement terms are in it
    q = np.stack(np.meshgrid(np.linspace(0, 1, 4), np.linspace(0, 1, 3)), -1).reshape(-1, 2)
    feats = spaces["latent"]
    as_cost = lambda g: (feats - feats[g]).square().mean(1)  # noqa: E731
    goals, starts = np.arange(12), np.arange(12)[::-1].copy()
    assert greedy_success(feats, q, goals, starts, 0.4, False) == greedy_success(
        as_cost, q, goals, starts, 0.4, False
    )


def test_greedy_score_moves_one_action_per_replan_and_counts_the_tasks_success():
    """``greedy_success``: ``step`` moves at most one action's joint angle per replan towards the window's
    cheapest pose (so far goals need many replans), and with the end effector's positions a pair succeeds
    by the task's threshold, not only on the goal's grid pose."""
    from jepa_agent.scoring import greedy_success

    q = np.stack([np.linspace(0.0, 2.0, 21), np.zeros(21)], -1)  # a line of poses 0.1 rad apart
    feats = torch.as_tensor(q, dtype=torch.float32)  # a convex cost: the distance along the line
    goals, starts = np.array([20]), np.array([0])
    assert greedy_success(feats, q, goals, starts, 1.0, False, replans=3) == 1.0  # jumps 1 rad per replan
    assert greedy_success(feats, q, goals, starts, 1.0, False, step=0.3, replans=3) == 0.0  # 0.9 rad short
    assert greedy_success(feats, q, goals, starts, 1.0, False, step=0.3, replans=7) == 1.0
    # a step finer than the grid still moves one pose per replan: 20 poses, 20 replans
    assert greedy_success(feats, q, goals, starts, 1.0, False, step=0.01, replans=19) == 0.0
    assert greedy_success(feats, q, goals, starts, 1.0, False, step=0.01, replans=20) == 1.0

    off_by_one = lambda g: torch.as_tensor(np.abs(q[:, 0] - q[g, 0] + 0.1))  # noqa: E731  (stops a pose short)
    assert greedy_success(off_by_one, q, goals, starts, 1.0, False, step=0.3) == 0.0  # not ON the goal pose
    assert greedy_success(off_by_one, q, goals, starts, 1.0, False, step=0.3, ee=q, threshold=0.15) == 1.0
    assert greedy_success(off_by_one, q, goals, starts, 1.0, False, step=0.3, ee=q, threshold=0.05) == 0.0
    with pytest.raises(ValueError, match="both ee and threshold"):
        greedy_success(feats, q, goals, starts, 1.0, False, ee=q)
    # record: where each pair ended, in how many moves, how far from the goal
    record: list = []
    hit = greedy_success(off_by_one, q, np.array([20, 5]), np.array([0, 10]), 1.0, False, step=0.3, ee=q,
                         threshold=0.05, record=record)  # fmt: skip
    assert hit == 0.0 and [(r["start"], r["goal"], r["end"]) for r in record] == [(0, 20, 19), (10, 5, 4)]
    assert [r["moves"] for r in record] == [7, 2] and not any(r["success"] for r in record)
    assert [r["distance"] for r in record] == pytest.approx([0.1, 0.1])
    record = []
    greedy_success(feats, q, goals, starts, 1.0, False, replans=3, record=record)  # pose rule: no distance
    assert record == [{"start": 0, "goal": 20, "end": 20, "moves": 2, "success": True}]


def test_score_takes_plan_pys_cost_settings():
    """``cost_space_features(..., cost=...)``: the metric space is the planning cost with plan.py's ``cost.*``
    settings (here the latent and displacement terms off), the keys that score moves rather than poses left
    out."""
    from jepa_agent.scoring import cost_space_features

    torch.manual_seed(0)
    model = tiny_world_model(metric={"dim": 4, "hidden": 8}, displacement={"hidden": 6})
    model.meta.update(metric_steps=1, displacement_weight=1.0)
    images = np.random.default_rng(0).integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    settings = {"latent_weight": 0.0, "displacement_weight": 0.0, "action_weight": 5.0, "smooth_weight": 1.0}
    spaces = cost_space_features(model, images, cost=settings)
    z = model.encode_pixels(images)
    with torch.inference_mode():
        head_only = model.cost(z[3], space="metric", action_weight=0.0, latent_weight=0.0,
                               displacement_weight=0.0)(z[:, None], torch.zeros(12, 1, A))  # fmt: skip
    torch.testing.assert_close(spaces["metric"](3), head_only)
    assert float((cost_space_features(model, images)["metric"](3) - head_only).abs().max()) > 1e-4
