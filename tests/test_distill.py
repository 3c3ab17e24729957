"""The distilled policy (``jepa_agent.rl.distill``, ``scripts/distill.py``): hindsight pairs stay inside their
episode within ``k_max``, the ``mean`` target is the recorded actions' net displacement capped by the box,
training reduces the loss, ``predict`` is batched and inside the action box, safetensors save / load gives
the same actions, SB3's ``evaluate_policy`` runs it on a ``LatentGoalEnv`` (and the pixel front end acts as
it does on the env's own features), DAgger labels come from the planner, the script runs end to end and
refuses bad input in one line.

A tiny random-init world model (``tests/test_rl.py``'s) and four recorded 12-step reach episodes at 16 x 16
keep the file fast."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from jepa_agent.config import compose_config
from jepa_agent.rl import GoalImageObservation, LatentGoalEnv, LatentStarts, PlannerPolicy, PlanningSpace
from jepa_agent.rl.distill import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    DistillConfig,
    DistilledPolicy,
    GoalImagePolicy,
    HindsightData,
    dagger_labels,
    hindsight_targets,
    run_goal_episodes,
    sample_pairs,
    train_distilled,
)
from jepa_agent.rl.space import FastFeatures
from jepa_agent.rl.student import (
    StudentEncoder,
    StudentFeatures,
    episode_frames,
    student_error,
    train_student,
)
from jepa_agent.world_model import save_world_model
from tests.conftest import REPO, script_env
from tests.test_rl import IMG, TINY_PLAN, reach, tiny_episodes, tiny_model

EPISODE_STEPS = 12  # 13 frames per recorded episode
TINY = DistillConfig(steps=150, batch_size=128, hidden=64, depth=2, k_max=6)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> str:
    return tiny_episodes(tmp_path_factory.mktemp("distill") / "episodes", EPISODE_STEPS)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def space(model) -> PlanningSpace:
    return PlanningSpace(model)


@pytest.fixture(scope="module")
def data(space, episodes) -> HindsightData:
    return HindsightData.from_episodes(space, episodes)


@pytest.fixture(scope="module")
def trained(data) -> tuple[DistilledPolicy, dict]:
    return train_distilled(data, TINY, val=data)


# -- data ---------------------------------------------------------------------------------------------------
def test_features_are_the_planning_space_of_every_frame(model, space, episodes, data, tmp_path):
    assert data.num_frames == 4 * (EPISODE_STEPS + 1) and data.lengths == [EPISODE_STEPS + 1] * 4
    assert data.features.shape == (data.num_frames, space.dim) and data.actions.shape == (data.num_frames, 2)
    from_latents = HindsightData.from_starts(LatentStarts.from_episodes(model, episodes), space)
    torch.testing.assert_close(from_latents.features, data.features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(from_latents.actions, data.actions)
    data.save(tmp_path / "cache.safetensors", {"checkpoint": "a"})
    again = HindsightData.load(tmp_path / "cache.safetensors", {"checkpoint": "a"})
    assert torch.equal(again.features, data.features) and again.starts == data.starts
    assert HindsightData.load(tmp_path / "cache.safetensors", {"checkpoint": "b"}) is None  # stale: re-encode


@pytest.mark.parametrize("sampling", ["geometric", "uniform"])
def test_hindsight_pairs_stay_in_their_episode_within_k_max(data, sampling):
    t, k = sample_pairs(data, 5000, 4, sampling, 0.3, torch.Generator().manual_seed(0))
    episode = np.searchsorted(np.asarray(data.starts), t.numpy(), side="right")
    assert (k >= 1).all() and (k <= 4).all()
    assert (np.searchsorted(np.asarray(data.starts), (t + k).numpy(), side="right") == episode).all()
    counts = np.bincount(k.numpy(), minlength=5)[1:]
    assert (counts[0] > 2 * counts[-1]) == (sampling == "geometric")  # near goals most, or all alike


def test_the_mean_target_is_the_net_displacement_capped_by_the_box(data):
    t, k = torch.tensor([0, 0, 13, 20]), torch.tensor([1, 5, 3, 4])
    torch.testing.assert_close(hindsight_targets(data, t[:1], k[:1], "mean"), data.actions[:1])  # k = 1
    target = hindsight_targets(data, t, k, "mean")
    for i in range(len(t)):
        total = data.actions[t[i] : t[i] + k[i]].sum(0)
        torch.testing.assert_close(
            target[i], total / max(1.0, float(total.abs().max())), rtol=1e-5, atol=1e-6
        )
    assert target.abs().max() <= 1.0 + 1e-6
    assert torch.equal(hindsight_targets(data, t, k, "first"), data.actions[t])


# -- the policy ---------------------------------------------------------------------------------------------
def test_training_reduces_the_loss(trained):
    policy, metrics = trained
    assert metrics["loss_final"] < 0.5 * metrics["loss_initial"]
    assert metrics["val_loss_final"] < metrics["val_loss_initial"] and metrics["steps"] == TINY.steps
    assert not policy.training and policy.meta["target"] == "mean"


def test_stay_pairs_teach_no_motion_at_the_goal(trained, data):
    still, _ = train_distilled(data, dataclasses.replace(TINY, stay_fraction=0.3))
    at_goal = {"observation": data.features.numpy(), "desired_goal": data.features.numpy()}
    assert np.abs(still.predict(at_goal)[0]).mean() < 0.5 * np.abs(trained[0].predict(at_goal)[0]).mean()


def test_predict_is_batched_and_inside_the_action_box(trained, data):
    policy, _ = trained
    rng = np.random.default_rng(0)
    obs = data.features[:7].numpy()
    goal = (1e3 * rng.standard_normal(obs.shape)).astype(np.float32)  # far outside the data: saturates
    actions, state = policy.predict({"observation": obs, "desired_goal": goal, "achieved_goal": obs})
    assert state is None and actions.shape == (7, 2) and actions.dtype == np.float32
    assert (actions >= -1).all() and (actions <= 1).all()
    one, _ = policy.predict({"observation": obs[3], "desired_goal": goal[3]}, episode_start=np.ones(1, bool))
    assert one.shape == (2,)
    np.testing.assert_allclose(one, actions[3], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="desired_goal"):
        policy.predict({"observation": obs})
    with pytest.raises(ValueError, match=f"expected \\[B, {policy.feature_dim}\\]"):
        policy.predict({"observation": obs[:, :1], "desired_goal": goal[:, :1]})


def test_save_and_load_give_identical_actions_without_pickle(trained, data, tmp_path):
    policy, _ = trained
    policy.meta["checkpoint"] = "somewhere"
    policy.save(tmp_path)
    assert set(load_file(str(tmp_path / WEIGHTS_FILE))) == set(policy.state_dict())  # safetensors: no code
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["kind"] == "distilled_policy" and config["meta"]["checkpoint"] == "somewhere"
    loaded = DistilledPolicy.load(tmp_path)
    obs = {"observation": data.features[:9].numpy(), "desired_goal": data.features[9:18].numpy()}
    np.testing.assert_array_equal(loaded.predict(obs)[0], policy.predict(obs)[0])
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "hidden": 32}))
    with pytest.raises(ValueError, match="does not fit its config"):
        DistilledPolicy.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        DistilledPolicy.load(tmp_path / "nowhere")


def test_evaluate_policy_runs_it_on_a_latent_goal_env(trained, model, space):
    policy, _ = trained
    vec = DummyVecEnv([lambda: Monitor(LatentGoalEnv(reach(steps=5), model))])
    rewards, lengths = evaluate_policy(policy, vec, n_eval_episodes=2, return_episode_rewards=True)
    assert lengths == [5, 5] and len(rewards) == 2
    # through the encoder, on the pixels and goal image of the same reset, it acts as on the env's features
    latent, pixels = LatentGoalEnv(reach(), model), GoalImageObservation(reach())
    obs, _ = latent.reset(seed=7)
    pix, _ = pixels.reset(seed=7)
    front = GoalImagePolicy(space, policy, encoder="eager")
    batch = {k: np.stack([v, v]) for k, v in pix.items()}
    np.testing.assert_allclose(front.predict(batch)[0][1], policy.predict(obs)[0], rtol=1e-4, atol=1e-5)
    fast = GoalImagePolicy(space, policy)  # the default: the traced graph, checked against eager
    assert fast.features.path == "traced"
    np.testing.assert_allclose(fast.predict(batch)[0][1], policy.predict(obs)[0], rtol=1e-4, atol=1e-4)
    action, _ = front.predict(pix, episode_start=np.ones(1, bool))
    assert action.shape == (2,)
    result = run_goal_episodes(front, pixels, [1, 2])
    assert len(result["reached"]) == len(result["final_distance"]) == 2
    assert len(result["decision_seconds"]) == 2 * 6
    assert len(run_goal_episodes(front, pixels, [1, 2], max_decisions=4)["decision_seconds"]) == 4


def test_student_encoder_learns_the_features_round_trips_and_runs_behind_the_policy(
    trained, model, space, episodes, tmp_path
):
    """The student fits the planning space's features of frames it trained on (label-free: the teacher's
    features are its targets), reloads to the same features, runs traced behind GoalImagePolicy, and bad
    sizes are refused by name."""
    policy, _ = trained
    frames = episode_frames(episodes)  # every frame of the recorded episodes, in HindsightData's order
    assert frames.shape == (4 * (EPISODE_STEPS + 1), IMG, IMG, 3) and frames.dtype == torch.uint8
    features = torch.from_numpy(space.features(frames.numpy()))
    grid = model.pooler.grid_size
    student = StudentEncoder(space.dim, IMG, width=4, grid=grid, token_head=False)  # 3 readout features
    latent = PlanningSpace(model, "latent")  # a grid of tokens: one per cell of the pooling grid
    assert StudentEncoder(latent.dim, IMG, width=4, grid=grid)(frames[:2]).shape == (2, latent.dim)
    student.set_statistics(features)
    before = student_error(student, frames, features)
    fit = train_student(student, frames, features, frames, features, steps=150, batch_size=16)  # fits them
    assert fit["val_ratio"] < 0.8 * before and np.isfinite(fit["loss_final"]), (fit, before)
    student.save(tmp_path / "s")
    loaded = StudentEncoder.load(tmp_path / "s")
    pixels = frames[:3].numpy()
    with torch.inference_mode():
        eager = student(frames[:3]).numpy()
    np.testing.assert_array_equal(loaded(frames[:3]).detach().numpy(), eager)
    np.testing.assert_allclose(StudentFeatures(loaded)(pixels), eager, rtol=1e-5, atol=1e-5)
    front = GoalImagePolicy(space, policy, encoder=loaded)
    assert front.features.path == "student"
    action, _ = front.predict({"pixels": pixels, "goal_pixels": pixels[::-1].copy()})
    assert action.shape == (3, 2) and np.all(np.abs(action) <= 1)
    linear = StudentEncoder(7, IMG, width=2, grid=grid, token_head=False)  # any feature size: a linear head
    assert linear(frames[:2]).shape == (2, 7)
    with pytest.raises(ValueError, match="student encoder gives 7 features but the planning space has"):
        GoalImagePolicy(space, policy, encoder=linear)
    with pytest.raises(ValueError, match="image_size=24, grid=4"):
        StudentEncoder(space.dim, 24, grid=4)
    with pytest.raises(ValueError, match=rf"takes uint8 \[B, {IMG}, {IMG}, 3\]"):
        StudentFeatures(loaded)(np.zeros((1, IMG + 4, IMG + 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="policy_encoder=student"):
        StudentEncoder.load(tmp_path / "nothing")


def test_fast_encoder_paths_match_the_eager_features(model, space):
    """The traced graph computes the planning space's own features (one graph per batch size), the world
    model itself is left as it was, and a graph that drifts beyond the tolerance is refused by name."""
    rng = np.random.default_rng(0)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    for n in (1, 3):
        pixels = rng.integers(0, 256, (n, IMG, IMG, 3), dtype=np.uint8)
        ref = space.features(pixels)
        traced = FastFeatures(space, "traced")(pixels)
        np.testing.assert_allclose(traced, ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(FastFeatures(space, "eager")(pixels), ref)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="encoder path 'int8'; expected one of"):
        FastFeatures(space, "int8")
    with pytest.raises(RuntimeError, match="traced encoder path's features are .* use encoder path 'eager'"):
        FastFeatures(space, "traced", tolerance=-1.0)(pixels)
    with pytest.raises(ValueError, match=rf"\[{IMG}, {IMG}, 3\]"):
        FastFeatures(space, "traced")(np.zeros((1, IMG + 4, IMG + 4, 3), np.uint8))


def test_dagger_labels_come_from_the_planner_and_train(trained, model, space, data):
    policy = copy.deepcopy(trained[0])
    expert = PlannerPolicy.from_config(model, reach().action_space, compose_config("plan", TINY_PLAN))
    env = GoalImageObservation(reach(steps=4))
    obs, goal, labels = dagger_labels(policy, expert, env, space, [11, 12])
    assert obs.shape == goal.shape == (8, space.dim) and labels.shape == (8, 2)
    assert (labels.abs() <= 1).all() and torch.equal(goal[0], goal[3]) and not torch.equal(goal[3], goal[4])
    cfg = dataclasses.replace(TINY, steps=20)
    more, metrics = train_distilled(data, cfg, policy=policy, dagger=(obs, goal, labels))
    assert metrics["steps"] == 20 and more is policy


@pytest.mark.parametrize(
    "change, message",
    [
        ({"k_max": 0}, "k_max=0; expected an int >= 1"),
        ({"steps": 0}, "steps=0"),
        ({"target": "last"}, "target"),
        ({"goal_sampling": "near"}, "goal_sampling"),
        ({"goal_p": 1.0}, "goal_p"),
        ({"stay_fraction": 0.5, "dagger_fraction": 0.5}, "sum to less than 1"),
    ],
)
def test_bad_training_config_is_one_clear_error(data, change, message):
    with pytest.raises(ValueError, match=message):
        train_distilled(data, dataclasses.replace(TINY, **change))


def test_the_script_and_the_api_have_the_same_defaults():
    script_cfg = OmegaConf.to_container(compose_config("distill"), resolve=False)
    api = dataclasses.asdict(DistillConfig())
    assert {k: script_cfg[k] for k in api} == api


# -- the script ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("distill_ckpt") / "wm"
    save_world_model(path, tiny_model(), encoder_name="vit_micro")
    return str(path)


def script_cmd(*args: str, out: Path) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "distill.py"), *args, f"out={out}", f"hydra.run.dir={out}",
            "threads=1", "progress=false"]  # fmt: skip


def script(*args: str, out: Path) -> subprocess.CompletedProcess:
    cmd = script_cmd(*args, out=out)
    return subprocess.run(cmd, capture_output=True, text=True, env=script_env(), cwd=REPO, timeout=300)


@pytest.mark.slow  # ~10 s on the 2-core VM (a script end to end); CI runs it (.ci/run: -m slow)
def test_the_script_trains_evaluates_and_times_the_planner(checkpoint, episodes, tmp_path):
    proc = script(f"checkpoint={checkpoint}", f"episodes={episodes}", f"env.image_size={IMG}",
                  "env.max_episode_steps=5", "steps=100", "target=mean", "space=latent", "eval_episodes=3",
                  "cem_decisions=2", "dagger_rounds=1", "dagger_episodes=1", "dagger_steps=10",
                  "policy_encoder=student", "student_steps=100", "student_width=4",
                  f"cache={tmp_path / 'cache'}", *TINY_PLAN, out=tmp_path / "run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    res = json.loads(lines[0])
    assert res["episodes"] == 3 and 0 <= res["success_rate"] <= 1 and len(res["success_end_ci95"]) == 2
    assert res["decisions"] == 15 and res["cem_decisions"] == 2 and res["target"] == "mean"
    speedup = res["cem_decision_seconds_median"] / res["paired_decision_seconds_median"]
    assert res["speedup_vs_cem"] == pytest.approx(speedup)  # paired: the policy on CEM's observations
    unpaired = res["cem_decision_seconds_median"] / res["decision_seconds_median"]
    assert res["speedup_vs_cem_unpaired"] == pytest.approx(unpaired) and res["policy_encoder"] == "student"
    assert res["student"]["steps"] == 100 and np.isfinite(res["student"]["val_ratio"]), res["student"]
    assert StudentEncoder.load(tmp_path / "run").meta["checkpoint"] == checkpoint  # saved beside the policy
    assert 0 < res["mlp_seconds_median"] < res["decision_seconds_median"]  # the rest is the encoder
    assert res["loss_final"] < res["loss_initial"] and res["dagger"][0]["labels"] == 5
    assert (
        res["seeds"] == [1_000_000, 1_000_002] and res["space"] == "latent" and res["cost_space"] == "readout"
    )
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["train.safetensors", "val.safetensors"]
    policy = DistilledPolicy.load(tmp_path / "run")
    assert policy.meta["checkpoint"] == checkpoint and policy.meta["target"] == "mean"


BAD_INPUT = [
    (["episodes={tmp}/missing"], "missing"),
    (["steps=0"], "steps=0; expected an int >= 1"),  # k_max and the rest: in-process above
    (["policy_encoder=int8"], "policy_encoder='int8'; expected one of ['traced', 'eager', 'student']"),
    (["env.image_size=32"], "32"),
    (["env=push", "env.image_size=16"], "Push"),
]


def test_the_script_refuses_bad_input_in_one_line(checkpoint, episodes, tmp_path):
    base = [f"checkpoint={checkpoint}", f"episodes={episodes}", f"env.image_size={IMG}"]
    procs = []
    for i, (args, _) in enumerate(BAD_INPUT):  # run together: most of each run is start-up
        cmd = script_cmd(*base, *[a.format(tmp=tmp_path) for a in args], out=tmp_path / f"run{i}")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=script_env(), cwd=REPO))  # fmt: skip
    for proc, (args, message) in zip(procs, BAD_INPUT, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode != 0 and out == "", (args, out)
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("distill.py: error:") and message in lines[-1], (
            args,
            err[-2000:],
        )
        assert "Traceback" not in err, (args, err[-2000:])
