"""The planning space as a goal reward: rank statistics, the tasks' hindsight success rule (equal to their
own ``info["is_success"]``), hindsight pairs, and scripts/reward_quality.py end to end on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import envs
from jepa_agent.evaluation import auroc, rankdata, spearman
from jepa_agent.rl import PlanningSpace
from jepa_agent.rl.reward_quality import hindsight_pairs, reward_quality
from jepa_agent.world_model import save_world_model
from tests.test_rl import IMG, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_rank_statistics_match_their_definitions():
    assert rankdata(np.array([3.0, 1.0, 2.0, 1.0])).tolist() == [4.0, 1.5, 3.0, 1.5]  # ties: mean rank
    x = np.array([0.1, 0.5, 0.2, 0.9, 0.3])
    assert spearman(x, x**3) == pytest.approx(1.0)  # monotone: 1, whatever the scale
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.ones(5)))  # constant: undefined, not 0
    labels = np.array([False, False, True, True])
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert auroc(np.ones(4), labels) == 0.5  # all tied: chance
    assert np.isnan(auroc(np.ones(3), np.zeros(3, dtype=bool)))  # one class: undefined
    rng = np.random.default_rng(0)  # against the pairwise definition, ties counted half
    s, y = rng.integers(0, 5, 200).astype(float), rng.random(200) < 0.3
    pairs = (s[y][:, None] > s[~y][None, :]).mean() + 0.5 * (s[y][:, None] == s[~y][None, :]).mean()
    assert auroc(s, y) == pytest.approx(pairs)
    with pytest.raises(ValueError, match="as many"):
        spearman(x, x[:3])


@pytest.mark.parametrize("name", ["reach", "push"])
def test_hindsight_success_is_the_tasks_own_success_rule(name):
    """Relabelling recorded states with the env's rule gives exactly what the env reports at each step."""
    env = envs.make_env(name, image_size=IMG, max_episode_steps=30)
    u = env.unwrapped
    _, info = env.reset(seed=3)
    goal = u.goal_state()
    rng = np.random.default_rng(0)
    states, reported = [], []
    for _ in range(30):
        _, _, _, _, info = env.step(rng.uniform(-1, 1, 2))
        states.append(u.get_state())
        reported.append(info["is_success"])
    states = np.array(states)
    # the goal as a recorded state: reach's goal state is (qpos, ee), push's (pusher, block pose)
    goal_as_state = np.concatenate([goal[: u.model.nq], np.zeros(u.model.nv)]) if name == "reach" else goal
    distance, success = u.hindsight_success(states, np.broadcast_to(goal_as_state, (30, len(goal_as_state))))
    assert distance.shape == success.shape == (30,)
    assert success.tolist() == reported
    # a state is its own goal
    _, same = u.hindsight_success(states, states)
    assert same.all()
    with pytest.raises(ValueError, match="expected"):
        u.hindsight_success(states[:, :1], states)


def test_hindsight_pairs_are_later_frames_of_the_same_episode_or_other_episodes():
    states = [np.arange(n, dtype=float)[:, None].repeat(2, 1) for n in (5, 9, 2)]
    starts = [0, 5, 14]

    def rule(a, b):
        d = np.abs(a[:, 0] - b[:, 0])
        return d, d < 1

    p = hindsight_pairs(states, rule, pairs_per_episode=400, offset_p=0.3, other_episodes=0.0, seed=1)
    ep_a = np.searchsorted(starts, p.achieved, side="right") - 1
    ep_g = np.searchsorted(starts, p.goal, side="right") - 1
    assert (ep_a == ep_g).all()  # no other episodes asked for
    assert (p.goal > p.achieved).all()  # k >= 1: never a frame and itself
    assert not p.success.any()  # so this rule (same step only) never holds
    assert np.array_equal(p.true_distance, p.goal - p.achieved)
    q = hindsight_pairs(states, rule, pairs_per_episode=400, other_episodes=1.0, seed=1)
    episode_of = lambda i: np.searchsorted(starts, i, side="right") - 1  # noqa: E731
    assert (episode_of(q.goal) != episode_of(q.achieved)).any()
    for bad, match in (
        (dict(offset_p=0.0), "offset_p"),
        (dict(other_episodes=1.5), "other_episodes"),
        (dict(pairs_per_episode=0), "pairs_per_episode"),
    ):
        with pytest.raises(ValueError, match=match):
            hindsight_pairs(states, rule, **bad)
    with pytest.raises(ValueError, match="at least 2 frames"):
        hindsight_pairs([np.zeros((1, 2))], rule)


def test_reward_quality_scores_each_space_and_pixels_on_the_same_pairs():
    env = envs.make_env("reach", image_size=IMG, max_episode_steps=12)
    u = env.unwrapped
    frames, states = [], []
    rng = np.random.default_rng(0)
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        ep_f, ep_s = [obs["pixels"]], [u.get_state()]
        for _ in range(12):
            obs, *_ = env.step(rng.uniform(-1, 1, 2))
            ep_f.append(obs["pixels"])
            ep_s.append(u.get_state())
        frames.append(np.array(ep_f))
        states.append(np.array(ep_s))
    pairs = hindsight_pairs(states, u.hindsight_success, pairs_per_episode=30, offset_p=0.5, seed=0)
    model = tiny_model(readout=True)
    out = reward_quality({"latent": PlanningSpace(model, space="latent")}, np.concatenate(frames), pairs)
    assert set(out) == {"pixels", "latent"}
    for scores in out.values():
        assert set(scores) == {"auroc", "spearman"}
        assert -1 <= scores["spearman"] <= 1
    # pixel L2 on an arm alone in the frame tracks the end-effector distance
    assert out["pixels"]["spearman"] > 0.5


@pytest.mark.slow  # ~16 s on the 2-core VM (a script end to end); CI runs it (.ci/run: -m slow)
def test_reward_quality_script_end_to_end(tmp_path):
    ckpt = tmp_path / "wm"
    save_world_model(ckpt, tiny_model(readout=True), encoder_name="vit_micro")
    cmd = [sys.executable, str(ROOT / "scripts" / "reward_quality.py"), f"checkpoint={ckpt}", "env=reach",
           f"env.image_size={IMG}", "env.max_episode_steps=10", "num_episodes=3", "pairs_per_episode=20",
           "spaces=[auto,latent]", f"out={tmp_path / 'out'}", "threads=1", "device=cpu"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(line["scores"]) == {"pixels", "readout", "latent"}
    assert line["pairs"] == 60 and line["episodes"] == 3 and line["state_labels"] is True
    # bad input: one clear line, no traceback
    bad = subprocess.run(cmd + ["spaces=[]"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode != 0 and "spaces=[]" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run(cmd + ["latent_weight=-1"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode != 0 and "latent_weight=-1" in bad.stderr and "Traceback" not in bad.stderr
    # a metric-space model: + the planning cost's latent term, scored beside the head alone on the same pairs
    save_world_model(tmp_path / "wm_metric", tiny_model(readout=False, metric=True), encoder_name="vit_micro")
    cmd = [c for c in cmd if not c.startswith(("checkpoint=", "spaces="))]
    cmd += [f"checkpoint={tmp_path / 'wm_metric'}", f"episodes={tmp_path / 'out' / 'heldout'}"]
    done = subprocess.run([*cmd, "spaces=[metric]", "latent_weight=0.1"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    scores = json.loads(done.stdout.strip().splitlines()[-1])["scores"]
    assert set(scores) == {"pixels", "metric", "metric+latent_0.1"}
    assert scores["metric+latent_0.1"] != scores["metric"]


def test_bench_near_goal_prices_poses_seen_and_imagined(tmp_path):
    """scripts/bench_near_goal.py on a tiny random-init model: one JSON line, the goal frame costs 0, every
    action size is priced in imagination."""
    ckpt = tmp_path / "wm"
    save_world_model(ckpt, tiny_model(readout=True), encoder_name="vit_micro")
    script = str(ROOT / "scripts" / "bench_near_goal.py")
    cmd = [sys.executable, script, "--checkpoint", str(ckpt), "--goals", "2", "--poses", "6"]
    cmd += ["--directions", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["space"] == "readout" and line["goals"] == 2
    assert line["seen"]["median_cost_by_distance"]["0 cm (the goal frame)"] == 0.0
    assert set(line["imagined_5_steps"]["median_cost_by_action_size"]) == {"0.0", "0.05", "0.1", "0.2", "0.4"}
    assert 0 <= line["imagined_5_steps"]["p_moving_beats_standing_still"] <= 1
    bad = subprocess.run([*cmd[:4], "--goals", "0"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode != 0 and "--goals >= 1" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_imagination_compares_imagined_and_true_futures(tmp_path):
    """scripts/bench_imagination.py on a tiny model and recorded episodes: one JSON line with every space the
    model plans in, per action-size band; a horizon longer than every episode is one clear line."""
    from tests.test_rl import tiny_episodes

    ckpt = tmp_path / "wm"
    save_world_model(ckpt, tiny_model(readout=True), encoder_name="vit_micro")
    eps = tiny_episodes(tmp_path / "eps", steps=8, episodes=10)
    script = str(ROOT / "scripts" / "bench_imagination.py")
    cmd = [sys.executable, script, "--checkpoint", str(ckpt), "--episodes", eps, "--threads", "1",
           "--val-fraction", "0.3", "--horizon", "3"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(line["spaces"]) == {"latent", "readout"} and line["horizon"] == 3 and line["windows"] == 3 * 6
    for space in line["spaces"].values():
        bands = space["by_action_size"].values()
        assert sum(b["windows"] for b in bands) <= line["windows"]
        assert all(b["true"] >= 0 and b["error"] >= 0 for b in bands)
    bad = subprocess.run(
        [*cmd[:-2], "--horizon", "40"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert bad.returncode != 0 and "has 41 frames" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow  # ~15 s on the 2-core VM (a script end to end); CI runs it (.ci/run: -m slow)
def test_bench_displacement_fits_a_head_per_input_variant(tmp_path):
    """scripts/bench_displacement.py on a tiny model and recorded episodes: one JSON line with each variant's
    held-out error ratio; an unknown variant is one clear line."""
    from tests.test_rl import tiny_episodes

    ckpt = tmp_path / "wm"
    save_world_model(ckpt, tiny_model(readout=False), encoder_name="vit_micro")
    eps = tiny_episodes(tmp_path / "eps", steps=8, episodes=10)
    script = str(ROOT / "scripts" / "bench_displacement.py")
    cmd = [sys.executable, script, "--checkpoint", str(ckpt), "--episodes", eps, "--threads", "1",
           "--val-fraction", "0.3", "--steps", "20", "--hidden", "16"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(line["inputs"]) == {"pair", "diff"} and line["state_labels"] is False
    assert line["train_episodes"] == 7 and line["val_episodes"] == 3 and line["val_pairs"] == 3 * 9
    assert all(v["val_ratio"] > 0 and v["train_loss"] >= 0 for v in line["inputs"].values())
    bad = subprocess.run(
        [*cmd, "--inputs", "pair,sum"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert bad.returncode != 0 and "--inputs='pair,sum'" in bad.stderr and "Traceback" not in bad.stderr
    no_anchor = subprocess.run(
        [*cmd, "--inputs", "anchor"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert no_anchor.returncode != 0 and "has no trained anchor head" in no_anchor.stderr
    assert "Traceback" not in no_anchor.stderr
    from jepa_agent.models.latent import AnchorHead

    model = tiny_model(readout=False)
    model.anchor = AnchorHead(16, 32, 2, hidden=8, channels=2)  # the tiny encoder: 4 x 4 patches of width 32
    model.meta["anchor_steps"] = 1
    save_world_model(ckpt, model, encoder_name="vit_micro")
    scored = subprocess.run(
        [*cmd, "--inputs", "anchor"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    line = json.loads(scored.stdout.strip().splitlines()[-1])
    assert set(line["inputs"]) == {"anchor"} and line["inputs"]["anchor"]["trained_steps"] == 1
    assert line["inputs"]["anchor"]["val_ratio"] > 0 and line["val_pairs"] == 3 * 9
