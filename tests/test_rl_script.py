"""scripts/rl.py and its library side (``jepa_agent.rl.train``): tiny runs of every observation kind (SAC,
+HER where it applies; PPO and TD3 once; SAC in imagination), what a run dir holds (curve.csv, run.json, the
policy as safetensors + JSON that reloads to the same actions), the calibrated epsilon, the evaluation's
held-out seeds, the curves plot, the API's and the script's defaults, and bad input (one clear line).

A tiny random-init world model (``tests/test_rl.py``'s) on 16 x 16 reach frames and 10-step episodes keep
the file fast; the pixel arm uses 36 x 36 frames, the smallest SB3's NatureCNN takes."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from stable_baselines3 import SAC
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import envs
from jepa_agent.collect import collect
from jepa_agent.config import compose_config
from jepa_agent.rl import (
    GoalImageObservation,
    RLConfig,
    StateGoalEnv,
    VecTaskReward,
    calibrate_epsilon,
    evaluate_success,
    load_policy,
    train_rl,
)
from jepa_agent.rl.curves import CURVE_FIELDS, plot_curves, read_curve
from jepa_agent.rl.train import check_config, check_replay_memory
from jepa_agent.world_model import save_world_model
from tests.conftest import REPO, script_env
from tests.test_rl import IMG, tiny_model

STEPS = 10  # env steps per episode
ENV = {"image_size": IMG, "max_episode_steps": STEPS}
TINY = {"eval_every": 100, "eval_episodes": 4, "eval_envs": 2, "calibration_episodes": 3,
        "learning_starts": 40, "batch_size": 32, "buffer_size": 1000, "net_arch": [32, 32],
        "device": "cpu"}  # fmt: skip
SCRIPT_TINY = [f"{k}={v}".replace(" ", "") for k, v in TINY.items()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("rl_script") / "wm"
    save_world_model(path, tiny_model(), encoder_name="vit_micro")
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    return {"root": tmp_path_factory.mktemp("runs")}


def run(runs: dict, name: str, cfg: RLConfig, env_kwargs: dict = ENV) -> tuple[str, dict]:
    """Train ``cfg`` once per module (``runs`` caches each run dir and result by name)."""
    if name not in runs:
        out = runs["root"] / name
        runs[name] = (str(out), train_rl(cfg, "reach", env_kwargs, out))
    return runs[name]


def latent_her(runs: dict, checkpoint: str) -> tuple[str, dict]:
    return run(
        runs, "latent_her", RLConfig(her=True, checkpoint=checkpoint, steps=300, save_zip=True, **TINY)
    )


def script(name: str, *args: str, hydra_dir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / name), *args, f"hydra.run.dir={hydra_dir}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=script_env(), cwd=REPO, timeout=300)


# -- the API and the script ---------------------------------------------------------------------------
def test_the_script_and_the_api_have_the_same_defaults():
    script_cfg = OmegaConf.to_container(compose_config("rl"), resolve=False)
    api = dataclasses.asdict(RLConfig())
    assert set(script_cfg) - set(api) == {"env", "out", "progress", "threads"}
    assert {k: script_cfg[k] for k in api if k != "calibration_policy"} == {
        k: v for k, v in api.items() if k != "calibration_policy"
    }
    assert script_cfg["calibration_policy"] == "${env.data_policy}"  # the task's own data policy
    assert compose_config("rl").calibration_policy == api["calibration_policy"]  # reach's: noisy
    assert compose_config("rl", ["env=push"]).calibration_policy == "push"


# -- pieces ---------------------------------------------------------------------------------------------
def test_calibrate_epsilon_separates_successes_from_failures():
    rng = np.random.default_rng(0)
    near, far = rng.uniform(0, 1, 40), rng.uniform(2, 3, 60)
    d, y = np.r_[near, far], np.r_[np.ones(40, bool), np.zeros(60, bool)]
    for criterion in ("youden", "f1"):
        eps = calibrate_epsilon(d, y, criterion)
        assert eps == pytest.approx((near.max() + far.min()) / 2)  # halfway across the gap
    # overlap: 10 successes at 1, 10 failures at 1 + 100 failures at 3. Youden takes d <= 1 (J = 1 - 10/110);
    # F1 takes it too (F1 = 20/30): both put epsilon halfway to 3
    d = np.r_[np.ones(20), np.full(100, 3.0)]
    y = np.r_[np.ones(10, bool), np.zeros(110, bool)]
    assert calibrate_epsilon(d, y) == 2.0 and calibrate_epsilon(d, y, "f1") == 2.0
    # rare successes among many near failures: F1 is stricter than Youden
    d = np.r_[[0.1, 0.2], np.linspace(0.3, 1.0, 50), np.full(3, 0.25)]
    y = np.r_[[True, True], np.zeros(50, bool), np.ones(3, bool)]
    assert calibrate_epsilon(d, y, "f1") <= calibrate_epsilon(d, y, "youden")
    with pytest.raises(ValueError, match=r"0 successful and 3 failed pairs"):
        calibrate_epsilon([1, 2, 3], [False] * 3)
    with pytest.raises(ValueError, match=r"criterion='auc'; expected one of \['youden', 'f1'\]"):
        calibrate_epsilon([1, 2], [True, False], "auc")
    with pytest.raises(ValueError, match="3 distances but 2 success labels"):
        calibrate_epsilon([1, 2, 3], [True, False])


@pytest.mark.parametrize("name", ["reach", "push"])
def test_state_goal_env_is_a_goal_env_on_the_true_state(name):
    env = StateGoalEnv(envs.make_env(name, image_size=IMG, max_episode_steps=4))
    assert env.unwrapped is env and env.layout == ("end_effector" if name == "reach" else "state")
    check_env(env, warn=True)  # compute_reward equals the step reward, vectorised
    obs, info = env.reset(seed=3)
    np.testing.assert_array_equal(obs["observation"], env.env.unwrapped.get_state().astype(np.float32))
    for _ in range(3):
        obs, r, terminated, _, info = env.step(env.action_space.sample())
        assert r == float(info["is_success"]) - 1.0 and not terminated  # the task's own success rule
    dense = StateGoalEnv(envs.make_env(name, image_size=IMG), reward="dense")
    obs, info = dense.reset(seed=3)
    assert float(dense.compute_reward(obs["achieved_goal"], obs["desired_goal"])) == pytest.approx(
        -info["distance"], abs=1e-5
    )  # minus the task's own goal distance
    assert dense.compute_reward(obs["achieved_goal"], obs["achieved_goal"]) == 0.0


def test_task_reward_and_held_out_evaluation_seeds():
    venv = VecTaskReward(DummyVecEnv([lambda: envs.make_env("reach", image_size=IMG, max_episode_steps=3)]),
                         sparse=False)  # fmt: skip
    venv.reset()
    _, rewards, _, infos = venv.step(np.zeros((1, 2), np.float32))
    assert rewards[0] == np.float32(-infos[0]["distance"]) and "env_reward" in infos[0]

    class Zero:
        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            return np.zeros((len(obs["pixels"]), 2), np.float32), None

    def evaluate(n: int) -> dict:
        make = lambda: GoalImageObservation(envs.make_env("reach", image_size=IMG, max_episode_steps=3))  # noqa: E731
        return evaluate_success(Zero(), DummyVecEnv([make] * n), episodes=5, first_seed=1_000_000)

    one, three = evaluate(1), evaluate(3)  # episode i is reset with seed 1_000_000 + i however batched
    assert one == three and one["episodes"] == 5 and one["final_distance_mean"] > 0
    assert one["success_ci95"][0] == 0.0 and 0 < one["success_ci95"][1] < 1


def test_a_replay_buffer_that_cannot_fit_is_refused():
    venv = DummyVecEnv([lambda: GoalImageObservation(envs.make_env("reach", image_size=IMG))])
    check_replay_memory(venv, 1000)
    with pytest.raises(ValueError, match=r"buffer_size=10000000000 would need .* GB \(3.1 kB per transition"):
        check_replay_memory(venv, 10**10)


# -- runs -----------------------------------------------------------------------------------------------
def test_sac_her_on_latent_goals_writes_its_run_dir(runs, checkpoint):
    out, result = latent_her(runs, checkpoint)
    assert result["algo"] == "sac" and result["her"] and result["observation"] == result["reward"] == "latent"
    assert result["train_steps"] == result["env_steps"] == 300 and not result["cut_short"]
    assert (
        result["epsilon"] > 0 and result["epsilon_source"] == "calibrated"
    )  # sparse reward, no epsilon given
    assert result["state_labels"] is True and result["cost_space"] == "readout"  # the tiny model's readout
    lo, hi = result["success_ci95"]
    assert lo <= result["success_rate"] <= hi and result["eval_episodes"] == 4
    assert result["steps_to_target"] is None or result["target_reached"]
    rows = read_curve(out)
    assert [r["steps"] for r in rows] == [0, 100, 200, 300]
    with open(f"{out}/curve.csv") as f:
        assert next(csv.reader(f)) == list(CURVE_FIELDS)
    info = json.load(open(f"{out}/run.json"))
    assert info["result"] == json.loads(json.dumps(result))
    assert info["settings"]["calibration"]["success_pairs"] > 0
    assert info["settings"]["hyper_parameters"]["replay_buffer_class"] == "HerReplayBuffer"
    for name in ("progress.csv", "policy.safetensors", "policy.json", "model.zip", "calibration/meta.json"):
        assert (runs["root"] / "latent_her" / name).exists(), name


def test_the_saved_policy_reloads_without_pickle_and_acts_the_same(runs, checkpoint):
    out, result = latent_her(runs, checkpoint)
    policy, config = load_policy(out)
    assert config["algo"] == "sac" and config["policy"] == "MultiInputPolicy"
    assert (
        config["settings"]["checkpoint"] == checkpoint and config["settings"]["epsilon"] == result["epsilon"]
    )
    assert not policy.training
    no_her = {"replay_buffer_class": None, "replay_buffer_kwargs": {}}  # HER would need the env to load
    trained = SAC.load(f"{out}/model.zip", device="cpu", custom_objects=no_her)  # SB3's pickle, our own
    rng = np.random.default_rng(0)
    obs = {
        k: rng.normal(size=(5, *s.shape)).astype(np.float32)
        for k, s in policy.observation_space.spaces.items()
    }
    np.testing.assert_array_equal(
        policy.predict(obs, deterministic=True)[0], trained.predict(obs, deterministic=True)[0]
    )


def test_sac_on_pixels_uses_the_cnn_and_the_env_reward(runs):
    cfg = RLConfig(observation="pixels", sparse=False, steps=120, **TINY)
    out, result = run(runs, "pixels", cfg, {"image_size": 36, "max_episode_steps": STEPS})
    assert result["reward"] == "env" and result["state_labels"] is False and result["epsilon"] is None
    assert result["checkpoint"] is None and result["train_steps"] == 120
    policy, config = load_policy(out)
    assert config["observation_space"]["spaces"]["pixels"]["shape"] == [3, 36, 36]  # SB3's channel-first
    env = GoalImageObservation(envs.make_env("reach", image_size=36))
    obs, _ = env.reset(seed=0)
    action, _ = policy.predict(obs, deterministic=True)  # the env's own channel-last frames
    assert env.action_space.contains(action)


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_her_on_the_true_state_is_the_labelled_baseline(runs, algo):
    out, result = run(
        runs, f"state_{algo}", RLConfig(algo=algo, observation="state", her=True, steps=200, **TINY)
    )
    assert result["state_labels"] is True and result["reward"] == "env" and result["algo"] == algo
    assert json.load(open(f"{out}/policy.json"))["observation_space"]["spaces"]["desired_goal"]["shape"] == [
        2
    ]


def test_ppo_on_latent_goals(runs, checkpoint):
    cfg = RLConfig(algo="ppo", checkpoint=checkpoint, sparse=False, steps=128, n_steps=32, n_epochs=1,
                   **{**TINY, "learning_starts": 1000})  # fmt: skip
    out, result = run(runs, "ppo", cfg)
    assert result["train_steps"] == 128 and result["epsilon"] is None  # dense: no radius needed
    policy, config = load_policy(out)  # PPO shares its feature extractor: safetensors dedups it
    assert config["algo"] == "ppo" and config["policy_kwargs"]["use_sde"] is False


def test_sac_trained_in_imagination_is_evaluated_in_the_real_env(runs, checkpoint, tmp_path_factory):
    episodes = tmp_path_factory.mktemp("imagination") / "episodes"
    collect(episodes, 4, env="reach", env_kwargs={"image_size": IMG, "max_episode_steps": 12}, policy="noisy",
            seed=3, num_envs=1, progress=False)  # fmt: skip
    cfg = RLConfig(her=True, imagination=True, episodes=str(episodes), checkpoint=checkpoint, steps=200,
                   imagination_envs=4, imagination_horizon=5, **TINY)  # fmt: skip
    out, result = run(runs, "imagination", cfg)
    assert result["train_steps"] == 200 and result["env_steps"] == 4 * 12  # no env step beyond the dataset
    assert result["epsilon_source"] == "calibrated" and result["imagined_success"] is not None
    assert result["imagination_gap"] == pytest.approx(result["imagined_success"] - result["success_rate_end"])
    assert {r["env_steps"] for r in read_curve(out)} == {48}


def test_a_time_budget_cuts_the_run_short(runs):
    cfg = RLConfig(observation="state", steps=10_000, max_seconds=1e-3, **TINY)
    out, result = run(runs, "cut", cfg)
    assert result["cut_short"] and result["train_steps"] < 10_000
    assert read_curve(out)[-1]["steps"] == result["train_steps"]  # a last evaluation where it stopped


@pytest.mark.slow  # ~12 s on the 2-core VM (a script end to end); CI runs it (.ci/run: -m slow)
def test_the_script_runs_and_the_plot_draws_every_arm(runs, checkpoint, tmp_path):
    out = tmp_path / "script_run"
    proc = script("rl.py", "her=true", f"checkpoint={checkpoint}", f"env.image_size={IMG}",
                  f"env.max_episode_steps={STEPS}", "steps=200", *SCRIPT_TINY, f"out={out}",
                  hydra_dir=tmp_path / "h1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # stdout: one JSON line; progress and logs on stderr
    result = json.loads(lines[0])
    assert result["out"] == str(out) and result["train_steps"] == 200 and result["her"]
    assert "step/s" in proc.stderr  # the progress bar
    assert ("TensorBoard is not installed" in proc.stderr) == (not result["tensorboard"])
    arms = [
        str(out),
        *(runs[name][0] for name in ("pixels", "state_sac", "imagination", "cut") if name in runs),
    ]
    fig = tmp_path / "curves.png"
    proc = script("plot_curves.py", f"runs=[{','.join(arms)}]", f"out={fig}", hydra_dir=tmp_path / "h2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["runs"] == len(arms) and fig.stat().st_size > 10_000
    labels = [a["label"] for a in summary["arms"]]
    assert labels[0].startswith("SAC + HER, latent obs, latent reward (sparse)")
    assert all("target not reached" in label or "% at " in label for label in labels)
    if "cut" in runs:
        assert "cut short" in labels[-1]


def test_plot_curves_in_python(runs, tmp_path):
    out, _ = run(runs, "state_sac", RLConfig(algo="sac", observation="state", her=True, steps=200, **TINY))
    arms = plot_curves([out, out], tmp_path / "fig.png", key="success_rate_end", target=None, title="t")
    assert len(arms) == 2 and (tmp_path / "fig.png").exists() and "[state labels]" in arms[0]["label"]
    killed = tmp_path / "killed"  # a run with no result yet: its curve so far, marked unfinished
    killed.mkdir()
    (killed / "curve.csv").write_text(Path(out, "curve.csv").read_text())
    (killed / "run.json").write_text(json.dumps({**json.load(open(f"{out}/run.json")), "result": None}))
    assert plot_curves([killed], tmp_path / "fig.png")[0]["label"].endswith("(unfinished)")
    with pytest.raises(ValueError, match="key='reward'"):
        plot_curves([out], tmp_path / "fig.png", key="reward")
    with pytest.raises(FileNotFoundError, match="curve.csv does not exist"):
        plot_curves([tmp_path], tmp_path / "fig.png")


# -- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"algo": "dqn"}, r"algo='dqn'; expected one of \['sac', 'ppo', 'td3'\]"),
        ({"observation": "rgb"}, r"observation='rgb'; expected one of \['latent', 'pixels', 'state'\]"),
        ({"reward": "dense"}, r"reward='dense'; expected one of \['auto', 'latent', 'env'\]"),
        ({"algo": "ppo", "her": True}, r"her=true with algo='ppo'.*off-policy algo \(sac or td3\)"),
        ({"observation": "pixels", "her": True}, r"her=true with observation='pixels'.*latent or state"),
        (
            {"reward": "env", "her": True},
            r"observation=latent and reward=env.*use reward=latent, or her=false",
        ),
        ({"observation": "state", "reward": "latent"}, r"reward=latent with observation='state'.*reward=env"),
        ({"imagination": True, "observation": "pixels"}, r"imagination=true with observation='pixels'"),
        ({"imagination": True}, r"imagination=true needs episodes=DIR"),
        ({"checkpoint": None}, r"observation=latent needs checkpoint=PATH"),
        ({"steps": 0}, r"steps=0; expected an int >= 1"),
        ({"eval_episodes": 2.5}, r"eval_episodes=2.5; expected an int >= 1"),
        ({"her": "yes"}, r"her='yes'; expected true or false"),
        ({"target_success": 1.5}, r"target_success=1.5; expected a success rate in \(0, 1\]"),
        ({"epsilon": 0.0}, r"epsilon=0.0; expected a radius > 0, or null"),
        ({"net_arch": []}, r"net_arch=\[\]; expected a list of layer widths"),
        ({"calibration": "auc"}, r"calibration='auc'; expected one of \['youden', 'f1'\]"),
    ],
)
def test_bad_config_is_one_clear_error(cfg, message):
    with pytest.raises(ValueError, match=message):
        check_config(RLConfig(**cfg))


def test_bad_env_or_arguments_are_one_clear_error(runs, checkpoint):
    with pytest.raises(
        ValueError, match=r"NatureCNN, which needs images of at least 36 x 36; env.image_size=16"
    ):
        train_rl(RLConfig(observation="pixels", **TINY), "reach", ENV, runs["root"] / "bad")
    with pytest.raises(
        ValueError, match=r"learning_starts must be at least 20 \(episodes of 10 steps x 2 envs\)"
    ):
        train_rl(RLConfig(observation="state", her=True, n_envs=2, **{**TINY, "learning_starts": 5}), "reach",
                 ENV, runs["root"] / "bad")  # fmt: skip
    with pytest.raises(
        ValueError, match=r"algo_kwargs \['taus'\]: not arguments of sac; expected some of .*'tau'"
    ):
        train_rl(
            RLConfig(observation="state", algo_kwargs={"taus": 1}, **TINY), "reach", ENV, runs["root"] / "bad"
        )
    with pytest.raises(ValueError, match=r"algo_kwargs \['gamma'\]: set by their own keys"):
        train_rl(
            RLConfig(observation="state", algo_kwargs={"gamma": 1}, **TINY),
            "reach",
            ENV,
            runs["root"] / "bad",
        )


@pytest.mark.parametrize(
    "args, message",
    [
        (["algo=ppo", "her=true"], "her=true with algo='ppo'"),
        (["imagination=true", "observation=pixels"], "imagination=true with observation='pixels'"),
        (["checkpoint=/nowhere/wm"], "checkpoint '/nowhere/wm' does not exist"),
    ],
)
def test_the_script_refuses_bad_input_in_one_line(args, message, tmp_path):
    proc = script("rl.py", *args, f"out={tmp_path}", hydra_dir=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("rl.py: error: ") and message in errors[0], proc.stderr
