"""Episode collection: round trip against the env, determinism, resume, refusal, and the script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import envs
from jepa_agent.collect import collect, make_policy, make_recording_env, policy_rng, safe_start_method
from jepa_agent.data import DataError, EpisodeDataset, episode_paths

REPO = Path(__file__).resolve().parents[1]
ENV_KW = {"image_size": 32, "max_episode_steps": 10}  # tiny: 11 frames per episode


def replay(seed: int, actions: np.ndarray, env_kwargs: dict) -> dict[str, np.ndarray]:
    """Frames, proprio, state and goal of the env reset with ``seed`` and driven by ``actions``."""
    env = envs.make_env("reach", **env_kwargs)
    obs, _ = env.reset(seed=seed)
    out = {"frames": [obs["pixels"]], "proprio": [obs["proprio"]], "state": [env.unwrapped.get_state()]}
    goal = env.unwrapped.goal_state()
    for a in actions:
        obs, *_ = env.step(a)
        out["frames"].append(obs["pixels"])
        out["proprio"].append(obs["proprio"])
        out["state"].append(env.unwrapped.get_state())
    env.close()
    return {**{k: np.stack(v) for k, v in out.items()}, "goal_state": goal}


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.glob("episode_*")}


def test_policies():
    env = make_recording_env("reach", ENV_KW)
    info = env.env_info()
    env.close()
    proprio = np.zeros(4, np.float32)
    for name in ("random", "noisy", "torque"):
        runs = []
        for _ in range(2):
            policy = make_policy(name, info, np.random.default_rng(3))
            runs.append(np.stack([policy(proprio) for _ in range(30)]))
        np.testing.assert_array_equal(runs[0], runs[1])  # seeded: reproducible
        assert runs[0].shape == (30, 2) and runs[0].dtype == np.float32
        assert np.all(np.abs(runs[0]) <= 1.0) and runs[0].std() > 0.1
    with pytest.raises(ValueError, match="available: \\['noisy', 'push', 'random', 'torque'\\]"):
        make_policy("greedy", info, np.random.default_rng(0))
    with pytest.raises(ValueError, match="noise=-0.1, target_span=1.5, hold_noise=0.02: expected all >= 0"):
        make_policy("noisy", info, np.random.default_rng(0), noise=-0.1)
    with pytest.raises(ValueError, match=r"hold_prob=1.5: expected a probability in \[0, 1\]"):
        make_policy("noisy", info, np.random.default_rng(0), hold_prob=1.5)


def test_noisy_policy_holds_still_in_hold_segments():
    """hold_prob: some segments keep the arm where it is (near-zero actions), so the data shows what the
    planner's "stay" does; hold_prob=0 never holds."""
    env = make_recording_env("reach", ENV_KW)
    info = env.env_info()
    env.close()
    proprio = np.zeros(4, np.float32)
    holding = make_policy("noisy", info, np.random.default_rng(0), hold_prob=1.0)
    acts = np.stack([holding(proprio) for _ in range(200)])
    assert np.abs(acts).max() < 0.1 and acts.std() > 0  # still noisy, but tiny
    moving = make_policy("noisy", info, np.random.default_rng(0), hold_prob=0.0)
    assert np.abs(np.stack([moving(proprio) for _ in range(200)])).mean() > 0.3
    mixed = make_policy("noisy", info, np.random.default_rng(0), hold_prob=0.2)
    small = np.abs(np.stack([mixed(proprio) for _ in range(2000)])).max(-1) < 0.1
    assert 0.05 < small.mean() < 0.5


def test_collect_roundtrip_matches_env(tmp_path):
    m = collect(tmp_path / "ds", 3, env_kwargs=ENV_KW, policy="noisy", seed=7, num_envs=2, progress=False)
    assert (m["episodes"], m["frames"], m["collected_frames"], m["num_envs"]) == (3, 33, 33, 2)
    assert m["frames_per_s"] > 0 and m["out"] == str(tmp_path / "ds")
    ds = EpisodeDataset(tmp_path / "ds", window=2, expect_env_id="reach", expect_image_size=32)
    env = make_recording_env("reach", ENV_KW)
    info = env.env_info()
    env.close()
    assert ds.meta["total_episodes"] == 3 and ds.meta["collection"]["policy"] == "noisy"
    for i in range(3):  # env slot 0 runs episodes 0 then 2: nothing may leak between them
        ep = ds.episode(i)
        assert ep["seed"] == 7 + i and ep["action"].shape == (10, 2) and ep["frames"].shape == (11, 32, 32, 3)
        ref = replay(7 + i, ep["action"], ENV_KW)
        policy = make_policy("noisy", info, policy_rng(7 + i))  # the recorded actions are the policy's
        np.testing.assert_array_equal(ep["action"], np.stack([policy(p) for p in ref["proprio"][:-1]]))
        np.testing.assert_array_equal(ep["proprio"], ref["proprio"])
        np.testing.assert_array_equal(ep["state"], ref["state"])
        np.testing.assert_array_equal(ep["goal_state"], ref["goal_state"])
        err = np.abs(ep["frames"].astype(int) - ref["frames"].astype(int)).mean(axis=(1, 2, 3))  # [T]
        assert err.max() < 3, err
        assert ref["frames"].mean() > 10  # not black
    assert safe_start_method() == "forkserver"  # this process has rendered now: forking would deadlock


def test_resume_keeps_finished_and_matches(tmp_path):
    root = tmp_path / "ds"
    collect(root, 3, env_kwargs=ENV_KW, seed=0, num_envs=2, progress=False)
    before = snapshot(root)
    mp4_2, npz_2 = episode_paths(root, 2)
    with np.load(npz_2) as f:
        arrays_2 = dict(f)
    npz_2.unlink()  # as if killed between the two renames
    (root / ".episode_000002.k1ll3d.tmp.npz").write_bytes(b"half written")
    m = collect(root, 4, env_kwargs=ENV_KW, seed=0, num_envs=1, progress=False)  # in-process path
    assert (m["skipped_existing"], m["collected_episodes"], m["removed_temp_files"]) == (2, 2, 1)
    assert (m["episodes"], m["frames"], m["dataset_episodes"]) == (4, 44, 4)
    after = snapshot(root)
    for i in (0, 1):  # finished episodes untouched
        for p in episode_paths(root, i):
            assert after[p.name] == before[p.name]
    assert after[mp4_2.name][1] == before[mp4_2.name][1]  # recomputed with 1 env: same bytes
    with np.load(npz_2) as f:
        for k, v in arrays_2.items():
            np.testing.assert_array_equal(f[k], v)
    assert not list(root.glob(".*.tmp*"))
    # a damaged finished episode is recomputed; a complete dataset computes nothing
    mp4_1 = episode_paths(root, 1)[0]
    mp4_1.write_bytes(mp4_1.read_bytes()[:100])
    m = collect(root, 4, env_kwargs=ENV_KW, seed=0, num_envs=2, mp_context="forkserver", progress=False)
    assert (m["collected_episodes"], m["rewritten_invalid"]) == (1, 1)
    assert mp4_1.read_bytes() == before[mp4_1.name][1]
    m = collect(root, 4, env_kwargs=ENV_KW, seed=0, num_envs=2, progress=False)
    assert (m["collected_episodes"], m["skipped_existing"], m["episodes"]) == (0, 4, 4)


def test_refuses_other_dataset(tmp_path):
    root = tmp_path / "ds"
    collect(root, 1, env_kwargs=ENV_KW, num_envs=1, progress=False)
    with pytest.raises(DataError, match="image_size"):
        collect(root, 1, env_kwargs={**ENV_KW, "image_size": 64}, num_envs=1, progress=False)
    with pytest.raises(DataError, match="collected with"):
        collect(root, 2, env_kwargs=ENV_KW, seed=5, num_envs=1, progress=False)
    with pytest.raises(ValueError, match="unknown env 'pong'"):
        collect(root, 1, env="pong", progress=False)
    with pytest.raises(ValueError, match="unknown policy"):
        collect(root, 1, env_kwargs=ENV_KW, policy="greedy", progress=False)
    with pytest.raises(ValueError, match="mp_context='threads': expected one of"):
        collect(root, 1, env_kwargs=ENV_KW, mp_context="threads", progress=False)


def test_the_api_records_the_scripts_data_for_a_task(tmp_path):
    """``collect(env="reach_distracting", policy="noisy")`` draws the task's joint targets (within 3 rad,
    ``env.data_target_span``) as ``collect.py env=reach_distracting policy=noisy`` does, episode for
    episode; the caller's ``policy_kwargs`` still win; and it works inside a running Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from jepa_agent.collect import task_policy_kwargs
    from jepa_agent.config import compose_config

    assert task_policy_kwargs("reach_distracting", "noisy")["target_span"] == 3.0
    assert task_policy_kwargs("JepaAgent/ReachDistracting-v0", "noisy")["target_span"] == 3.0  # an id
    assert task_policy_kwargs("reach", "noisy")["target_span"] == 1.5
    assert task_policy_kwargs("reach", "random") == {} == task_policy_kwargs("reach", "seed")
    assert task_policy_kwargs("my_env", "noisy") == {}  # no config: the policy's own defaults
    kw = {"image_size": 32, "max_episode_steps": 10}
    api = collect(tmp_path / "api", 2, env="reach_distracting", env_kwargs=kw, policy="noisy", num_envs=1,
                  progress=False)  # fmt: skip
    block = OmegaConf.to_container(compose_config("collect", ["env=reach_distracting"]).noisy, resolve=True)
    script = collect(tmp_path / "script", 2, env="reach_distracting", env_kwargs=kw, policy="noisy",
                     policy_kwargs=block, num_envs=1, progress=False)  # fmt: skip
    assert api["frames"] == script["frames"] == 22
    for name in ("api", "script"):
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        assert meta["collection"]["policy_kwargs"]["target_span"] == 3.0, name
    for i in range(2):
        a, b = (np.load(episode_paths(tmp_path / n, i)[1]) for n in ("api", "script"))
        np.testing.assert_array_equal(a["action"], b["action"])
    narrow = collect(tmp_path / "narrow", 1, env="reach_distracting", env_kwargs=kw, policy="noisy",
                     policy_kwargs={"target_span": 1.5}, num_envs=1, progress=False)  # fmt: skip
    assert narrow["episodes"] == 1
    meta = json.loads((tmp_path / "narrow" / "meta.json").read_text())
    assert meta["collection"]["policy_kwargs"]["target_span"] == 1.5  # the caller's setting won
    wide, plain = (np.load(episode_paths(tmp_path / n, 0)[1])["action"] for n in ("api", "narrow"))
    assert not np.array_equal(wide, plain)  # the span is what made the API's data the script's
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "mine.yaml").write_text("steps: 7\n")
    with initialize_config_dir(config_dir=str(tmp_path / "app"), version_base=None):  # a user's Hydra app
        running = GlobalHydra.instance().hydra
        assert task_policy_kwargs("reach_distracting", "noisy")["target_span"] == 3.0
        assert GlobalHydra.instance().hydra is running  # put back as it was: the app composes on
        assert compose(config_name="mine").steps == 7


def test_a_dataset_recorded_before_a_policy_gained_a_setting_still_resumes(tmp_path):
    """A setting added to a policy later, at the default that draws as before, does not make an older
    dataset "another dataset"; the same setting at another value still does."""
    root = tmp_path / "ds"
    torque = {**ENV_KW, "control": "torque"}
    old = {"kd": 0.3, "coast_prob": 0.2}
    collect(root, 1, env="reach_torque", env_kwargs=torque, policy="torque", policy_kwargs=old, num_envs=1,
            progress=False)  # fmt: skip
    meta = json.loads((root / "meta.json").read_text())  # as a library without the later settings wrote it
    meta["collection"]["policy_kwargs"] = old
    (root / "meta.json").write_text(json.dumps(meta))
    before = snapshot(root)
    newer = {**old, "settle_prob": 0.0, "jitter_prob": 0.0}  # added later, at defaults that draw as before
    m = collect(root, 2, env="reach_torque", env_kwargs=torque, policy="torque", policy_kwargs=newer,
                num_envs=1, progress=False)  # fmt: skip
    assert m["skipped_existing"] == 1 and m["collected_episodes"] == 1
    assert {k: v for k, v in snapshot(root).items() if k in before} == before  # episode 0 untouched
    assert json.loads((root / "meta.json").read_text())["collection"]["policy_kwargs"] == old
    with pytest.raises(DataError, match="collected with"):
        collect(root, 2, env="reach_torque", env_kwargs=torque, policy="torque",
                policy_kwargs={**old, "settle_prob": 0.25}, num_envs=1, progress=False)  # fmt: skip


def _script(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / "collect.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_script_smoke(tmp_path, run_env):
    out = tmp_path / "ds"
    args = [f"out={out}", "episodes=2", "num_envs=2", "env.max_episode_steps=5", "env.image_size=32"]
    proc = _script(args + ["policy=noisy"], tmp_path, run_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # stdout carries only the JSON line
    summary = json.loads(lines[0])
    assert (summary["episodes"], summary["frames"], summary["out"]) == (2, 12, str(out))
    assert "frames_per_s" in summary and "collect" in proc.stderr  # tqdm bar on stderr
    proc = _script([f"out={out}", "episodes=2", "env.image_size=64"], tmp_path, run_env)
    assert proc.returncode != 0 and "image_size" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_kill9_then_resume(tmp_path, run_env):
    """kill -9 mid-collection leaves only loadable episodes; the same command then completes it."""
    out = tmp_path / "ds"
    args = [f"out={out}", "episodes=40", "num_envs=2", "env.image_size=32", "progress=false"]
    cmd = [sys.executable, str(REPO / "scripts" / "collect.py"), *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=run_env, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("episode_*.npz"))) < 5:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the script, its forkserver and workers
    proc.wait()
    done = sorted(out.glob("episode_*.npz"))
    assert 5 <= len(done) < 40
    ds = EpisodeDataset(out, window=2)  # every listed episode loads
    assert ds.skipped == [] and ds.num_episodes == len(done)
    kept = snapshot(out)
    result = _script(args, tmp_path, run_env)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 40 and summary["skipped_existing"] >= len(done)
    after = snapshot(out)
    for npz in done:
        for p in (npz, npz.with_suffix(".mp4")):
            assert after[p.name] == kept[p.name]


def test_dev_npyvideo_harness_collects_without_ffmpeg(tmp_path, run_env):
    """scripts/dev/npyvideo.py (used on a GPU machine with no ffmpeg) still patches the live writer."""
    harness, out = REPO / "scripts" / "dev" / "npyvideo.py", tmp_path / "eps"
    run_env = dict(run_env, IMAGEIO_FFMPEG_EXE="/nonexistent/ffmpeg")  # any ffmpeg call would fail
    args = [sys.executable, str(harness), str(REPO / "scripts" / "collect.py"), "env=reach", "episodes=2",
            "num_envs=1", "env.max_episode_steps=5", f"out={out}", "progress=false"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=run_env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames = np.load(out / "episode_000000.mp4")  # .npy content under the episode's usual name
    assert frames.shape == (6, 64, 64, 3) and frames.dtype == np.uint8


def test_recorder_writes_what_the_env_did(tmp_path):
    """EpisodeRecorder (plan.py record=DIR): whatever acts, the dataset holds exactly the episodes run, each
    written when it ends; an episode cut short is not; training reads it beside a scripted dataset."""
    from jepa_agent.collect import EpisodeRecorder
    from jepa_agent.data import ConcatEpisodes, open_episodes

    collection = {"policy": "test", "seed": 0}
    env = EpisodeRecorder(envs.make_env("reach", **ENV_KW), tmp_path / "rec", ENV_KW, collection)
    rng = np.random.default_rng(0)
    taken = {}
    for seed in (5, 6):
        env.reset(seed=seed)
        taken[seed] = rng.uniform(-1, 1, (10, 2)).astype(np.float32)
        for a in taken[seed]:
            *_, terminated, truncated, _ = env.step(a)
        assert truncated
    env.reset(seed=9)
    env.step(np.zeros(2, np.float32))  # cut short: never written
    with pytest.raises(ValueError, match=r"reset\(seed=...\) is needed"):
        env.reset()
    env.close()
    assert (env.episodes_written, env.frames_written) == (2, 22)
    ds = EpisodeDataset(tmp_path / "rec", window=2, expect_env_id="reach", expect_image_size=32)
    assert ds.num_episodes == 2 and ds.meta["collection"] == collection and ds.meta["total_episodes"] == 2
    for i, seed in enumerate((5, 6)):
        ep, ref = ds.episode(i), replay(seed, taken[seed], ENV_KW)
        assert ep["seed"] == seed
        np.testing.assert_array_equal(ep["action"], taken[seed])
        for key in ("proprio", "state", "goal_state"):
            np.testing.assert_array_equal(ep[key], ref[key])
        np.testing.assert_array_equal(ep["frames"], ref["frames"])  # lossless by default

    # other settings into the same directory: refused, nothing touched
    before = snapshot(tmp_path / "rec")
    with pytest.raises(DataError, match="was collected with"):
        EpisodeRecorder(envs.make_env("reach", **ENV_KW), tmp_path / "rec", ENV_KW, {"policy": "other"})
    assert snapshot(tmp_path / "rec") == before

    # beside a scripted dataset of the same task (another episode length is fine)
    short = {**ENV_KW, "max_episode_steps": 8}
    collect(tmp_path / "scripted", 3, env_kwargs=short, num_envs=1, progress=False)
    both = open_episodes([tmp_path / "scripted", tmp_path / "rec"], window=2)
    assert isinstance(both, ConcatEpisodes) and both.num_episodes == 5
    assert both.episode(1)["seed"] == 1 and len(both.episode(1)["frames"]) == 9
    assert both.episode(3)["seed"] == 5 and len(both.episode(4)["frames"]) == 11
    with pytest.raises(IndexError, match="5 episodes"):
        both.episode(5)
    with pytest.raises(DataError, match="listed twice"):
        open_episodes([tmp_path / "rec", tmp_path / "rec"], window=2)
    collect(tmp_path / "other", 1, env_kwargs={**ENV_KW, "frame_skip": 5}, num_envs=1, progress=False)
    with pytest.raises(DataError, match="different tasks \\(env_kwargs"):
        open_episodes([tmp_path / "rec", tmp_path / "other"], window=2)


def test_branches_continue_one_recorded_state_several_ways(tmp_path):
    """``branches=K``: groups of K + 1 episodes from one reset; each branch starts from the trunk's state
    at its branch step (replayed exactly), then takes other actions; resuming keeps the files; bad settings
    are refused by name."""
    root = tmp_path / "ds"
    push = {"image_size": 32, "max_episode_steps": 12}
    m = collect(root, 6, env="push", env_kwargs=push, policy="push", branches=2, branch_at=(3, 6),
                num_envs=2, progress=False)  # fmt: skip
    assert (m["episodes"], m["branches"]) == (6, 2)
    ds = EpisodeDataset(root, window=2)
    assert ds.meta["collection"]["branches"] == 2 and ds.meta["collection"]["branch_at"] == [3, 6]
    eps = [ds.episode(i) for i in range(6)]
    steps = set()
    for group in (0, 3):
        trunk = eps[group]
        assert trunk["seed"] == group // 3 and "branch_of" not in trunk and len(trunk["frames"]) == 13
        for b in (1, 2):
            ep = eps[group + b]
            t0 = int(ep["branch_step"])
            steps.add(t0)
            assert int(ep["branch_of"]) == group and ep["seed"] == trunk["seed"] and 3 <= t0 <= 6
            assert len(ep["frames"]) == 13 - t0 and len(ep["action"]) == 12 - t0
            np.testing.assert_array_equal(ep["frames"][0], trunk["frames"][t0])  # the same state, replayed
            np.testing.assert_array_equal(ep["state"][0], trunk["state"][t0])
            np.testing.assert_array_equal(ep["goal_state"], trunk["goal_state"])
            assert not np.allclose(ep["action"], trunk["action"][t0:])  # continued another way
            # and the files are what the env does from there under the recorded actions
            again = replay_push(trunk["seed"], np.concatenate([trunk["action"][:t0], ep["action"]]), push)
            np.testing.assert_allclose(again["state"][t0:], ep["state"], atol=1e-9)
    assert len(steps) > 1  # branch steps are drawn, not fixed
    before = snapshot(root)
    m = collect(root, 6, env="push", env_kwargs=push, policy="push", branches=2, branch_at=(3, 6),
                num_envs=1, progress=False)  # fmt: skip
    assert (m["collected_episodes"], m["skipped_existing"]) == (0, 6) and snapshot(root) == before
    with pytest.raises(DataError, match="collected with"):  # other branch settings: another dataset
        collect(root, 6, env="push", env_kwargs=push, policy="push", branches=3, num_envs=1, progress=False)
    for bad, match in (({"branches": -1}, "branches=-1: expected an int >= 0"),
                       ({"branches": 1.5}, "branches=1.5: expected an int"),
                       ({"branch_at": (5, 2)}, r"branch_at=\(5, 2\): expected \[first, last\]"),
                       ({"branch_at": [1]}, r"branch_at=\[1\]: expected"),
                       ({"branch_at": [-1, 3]}, r"branch_at=\[-1, 3\]: expected")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            collect(tmp_path / "other", 2, env="push", env_kwargs=push, policy="push", progress=False,
                    **{"branches": 1, **bad})  # fmt: skip


def replay_push(seed: int, actions: np.ndarray, env_kwargs: dict) -> dict[str, np.ndarray]:
    env = envs.make_env("push", **env_kwargs)
    env.reset(seed=seed)
    states = [env.unwrapped.get_state()]
    for a in actions:
        env.step(a)
        states.append(env.unwrapped.get_state())
    env.close()
    return {"state": np.stack(states)}


def test_bench_collect_times_antialiased_rendering_against_plain_in_the_same_run(capsys):
    """``bench_collect.py --antialias N``: a third setting (2 envs rendering with N samples) and its ratio
    to 2 envs without, from the same rounds."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_collect
    finally:
        sys.path.remove(str(REPO / "scripts"))
    bench_collect.main(["--env", "push", "--policy", "push", "--episodes", "2", "--rounds", "1",
                        "--image-size", "16", "--antialias", "4"])  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) >= {"num_envs_2", "num_envs_1", "num_envs_2_antialias_4"}
    ratio = out["num_envs_2_antialias_4"]["median"] / out["num_envs_2"]["median"]
    assert out["antialias_ratio"] == pytest.approx(ratio) and out["antialias_ratio"] > 0
