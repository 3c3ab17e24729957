"""Frozen attentive probe: targets, R^2, probe training, and scripts/probe.py end to end on tiny episodes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jepa_agent.probe import (
    AttentiveProbe,
    ProbeConfig,
    ee_rmse,
    extract_features,
    joint_sincos,
    load_episode_frames,
    pooled_ridge_r2,
    predict,
    probe_targets,
    r2_scores,
    summarise_r2,
    train_probe,
    train_supervised_reference,
)

REPO = Path(__file__).resolve().parents[1]


def test_r2_scores() -> None:
    y = np.random.default_rng(0).normal(size=(100, 3))
    np.testing.assert_allclose(r2_scores(y, y), 1.0)
    np.testing.assert_allclose(r2_scores(np.broadcast_to(y.mean(0), y.shape), y), 0.0, atol=1e-12)
    assert (r2_scores(-y, y) < 0).all()


def test_reach_targets_are_sincos_and_forward_kinematics() -> None:
    from envs.reach import forward_kinematics

    qpos = np.array([[0.0, 0.0], [np.pi / 2, -np.pi / 2], [0.3, 1.2]])
    states = np.concatenate([qpos, np.zeros_like(qpos)], axis=1)  # [M, 4] (qpos, qvel)
    y, names = probe_targets(states, "reach")
    assert names == ["q0_sin", "q0_cos", "q1_sin", "q1_cos", "ee_x", "ee_y"]
    np.testing.assert_allclose(y[:, :4], joint_sincos(qpos))
    np.testing.assert_allclose(y[:, 4:], forward_kinematics(qpos))
    np.testing.assert_allclose(y[0, 4:], [0.2, 0.0], atol=1e-12)  # straight arm along x
    with pytest.raises(ValueError, match="qpos, qvel"):
        probe_targets(np.zeros((3, 3)), "reach")
    # the distracting variant is registered from the same module: same kinematics, by id or short name
    for name in ("reach_distracting", "JepaAgent/ReachDistracting-v0"):
        np.testing.assert_array_equal(probe_targets(states, name)[0], y)


def test_push_targets_are_positions_and_yaw() -> None:
    qpos = np.array([[0.1, -0.05, 0.0, 0.02, np.pi / 2], [0.0, 0.0, -0.1, 0.1, 0.0]])
    states = np.concatenate([qpos, np.zeros_like(qpos)], axis=1)  # [M, 10] (qpos, qvel)
    for name in ("push", "JepaAgent/Push-v0"):
        y, names = probe_targets(states, name)
        assert names == ["pusher_x", "pusher_y", "block_x", "block_y", "yaw_sin", "yaw_cos"]
        np.testing.assert_allclose(
            y, [[0.1, -0.05, 0.0, 0.02, 1.0, 0.0], [0.0, 0.0, -0.1, 0.1, 0.0, 1.0]], atol=1e-12
        )
    out = summarise_r2(np.array([1.0, 0.5, 0.9, 0.7, 0.2, 0.4]), names)
    assert out["pusher_pos"] == 0.75 and out["block_pos"] == 0.8 and out["yaw"] == pytest.approx(0.3)
    assert "ee_pos" not in out and "joints" not in out
    with pytest.raises(ValueError, match=r"expected \[M, 10\]"):
        probe_targets(np.zeros((3, 4)), "push")


def test_summary_groups() -> None:
    out = summarise_r2(
        np.array([1.0, 0.8, 0.6, 0.4, 0.9, 0.7]), ["q0_sin", "q0_cos", "q1_sin", "q1_cos", "ee_x", "ee_y"]
    )
    assert (
        out["ee_pos"] == pytest.approx(0.8)
        and out["q0"] == pytest.approx(0.9)
        and out["joints"] == pytest.approx(0.7)
    )


def test_probe_learns_where_the_hot_token_is() -> None:
    # 16 tokens carry their (row, col) on a 4x4 grid; one is "hot"; the target is the hot token's
    # (row, col): mean pooling cannot get it (R^2 ~ 0), attention to the hot token can
    rng = np.random.default_rng(0)
    m, n = 800, 16
    hot = torch.as_tensor(rng.integers(0, n, m))
    grid = torch.stack([torch.arange(n) // 4, torch.arange(n) % 4], 1)  # [N, 2] (row, col)
    code = torch.cat([F.one_hot(grid[:, 0], 4), F.one_hot(grid[:, 1], 4)], 1).float()  # [N, 8]
    feats = torch.cat([code.expand(m, -1, -1), torch.zeros(m, n, 4)], 2)  # [M, N, 12]: code + flag dims
    feats[torch.arange(m), hot, 8:] = 3.0  # the hot flag
    feats += 0.05 * torch.randn_like(feats)
    y = grid[hot].double().numpy()  # [M, 2]
    probe, info = train_probe(
        feats[:600], y[:600], ProbeConfig(epochs=40, batch_size=64, lr=5e-3, num_heads=2)
    )
    assert isinstance(probe, AttentiveProbe) and info["seconds"] > 0
    r2 = r2_scores(predict(probe, feats[600:]), y[600:])
    assert (r2 > 0.8).all(), r2  # mean pooling scores ~0 here (every clip has the same mean token)


def test_probe_config_errors_name_the_key() -> None:
    cases = (
        ({"epochs": 0}, "probe.epochs=0"),
        ({"batch_size": 1.5}, "probe.batch_size=1.5"),
        ({"lr": 0.0}, "probe.lr=0.0"),
        ({"weight_decay": -1.0}, "probe.weight_decay=-1.0"),
    )
    for kw, msg in cases:
        with pytest.raises(ValueError, match=re.escape(msg)):
            ProbeConfig(**kw)
    with pytest.raises(ValueError, match="max_frames=0"):
        load_episode_frames(None, max_frames=0)


def test_mlp_probe_is_the_vjepa_pooler_block() -> None:
    plain, block = AttentiveProbe(12, 3, 2, 2), AttentiveProbe(12, 3, 2, 2, mlp_ratio=4.0)
    assert plain.mlp is None and block.mlp[1].out_features == 48
    x = torch.randn(5, 7, 12)
    assert plain(x).shape == block(x).shape == (5, 3)
    with pytest.raises(ValueError, match="mlp_ratio=-1"):
        AttentiveProbe(12, 3, 2, 2, mlp_ratio=-1)


def test_paired_bootstrap_gain_resamples_episodes() -> None:
    from jepa_agent.probe import paired_bootstrap_r2_gain

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 25)  # 40 episodes of 25 frames
    y = rng.normal(size=(1000, 3))
    good = y + 0.1 * rng.normal(size=y.shape)  # R^2 ~ 0.99
    bad = y + 0.5 * rng.normal(size=y.shape)  # R^2 ~ 0.8
    res = paired_bootstrap_r2_gain(good, bad, y, groups, cols=[0, 2], num_samples=500)
    full = r2_scores(good, y)[[0, 2]].mean() - r2_scores(bad, y)[[0, 2]].mean()
    assert res["gain"] == pytest.approx(full)  # the point estimate uses every frame once
    assert 0 < res["ci95"][0] < res["gain"] < res["ci95"][1] and res["p_not_above"] == 0.0
    same = paired_bootstrap_r2_gain(good, good, y, groups, cols=[0, 2], num_samples=200)
    assert same["gain"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_not_above"] == 1.0
    # a tie within noise: two equally good probes give a CI around 0
    other = y + 0.1 * rng.normal(size=y.shape)
    tie = paired_bootstrap_r2_gain(good, other, y, groups, cols=[0, 2], num_samples=500)
    assert tie["ci95"][0] < 0 < tie["ci95"][1]
    with pytest.raises(ValueError, match="one row per frame"):
        paired_bootstrap_r2_gain(good, bad[:10], y, groups, cols=[0])


def test_ee_rmse_in_target_units() -> None:
    names = ["q0_sin", "ee_x", "ee_y"]
    target = np.zeros((4, 3))
    pred = np.array([[9.0, 0.03, 0.04]] * 4)  # 5 cm off everywhere; the joint column is ignored
    assert ee_rmse(pred, target, names) == pytest.approx(0.05)
    assert ee_rmse(pred, target, ["a", "b", "c"]) is None


def test_supervised_reference_trains_the_encoder_and_returns_it_frozen() -> None:
    from jepa_agent.models.vit import vit_micro

    torch.manual_seed(0)
    enc = vit_micro(img_size=16, num_frames=2, depth=1, embed_dim=32, num_heads=2)
    before = [p.detach().clone() for p in enc.parameters()]
    frames = np.random.default_rng(0).integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)
    y = frames.reshape(40, -1, 3).mean(1)  # mean colour: decodable from any patch
    out, info = train_supervised_reference(enc, frames, y, steps=60, batch_size=8, lr=3e-3)
    assert out is enc and not out.training and not any(p.requires_grad for p in out.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, out.parameters(), strict=True))
    assert info["final_loss"] < 0.5 * info["first_loss"], info  # it fits the targets
    with pytest.raises(ValueError, match="steps=0"):
        train_supervised_reference(enc, frames, y, steps=0)


def test_pooled_ridge_recovers_a_linear_target() -> None:
    rng = np.random.default_rng(0)
    f = torch.as_tensor(rng.normal(size=(300, 4, 6)), dtype=torch.float16)
    y = f.float().mean(1).numpy() @ rng.normal(size=(6, 2))  # linear in the pooled tokens
    r2 = pooled_ridge_r2(f[:200], y[:200], f[200:], y[200:])
    assert r2.shape == (2,) and (r2 > 0.99).all()


def test_ridge_probe_reads_new_features_and_refuses_mismatched_shapes() -> None:
    """``RidgeProbe``: fitted once, it reads features it was not fitted on (the standardisation kept), in
    float64; features and targets of different lengths are refused by their shapes."""
    from jepa_agent.probe import RidgeProbe

    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.normal(size=(500, 8)) * rng.uniform(0.1, 10, size=8) + 3.0, dtype=torch.float32)
    w = rng.normal(size=(8, 3))
    y = x.double().numpy() @ w + 1.5
    probe = RidgeProbe.fit(x[:400], y[:400])
    pred = probe(x[400:])
    assert pred.dtype == torch.float64 and pred.shape == (100, 3)
    assert (r2_scores(pred.numpy(), y[400:]) > 0.999).all()
    with pytest.raises(ValueError, match=r"features \(500, 8\) and targets \(400, 3\)"):
        RidgeProbe.fit(x, y[:400])


def test_grid_ridge_reads_one_cell_and_knn_reads_a_nonlinear_target() -> None:
    """A target in one corner's tokens: the mean token loses it, a 2 x 2 grid keeps it linearly. A target
    that is a non-linear function of the latent: the ridge misses it, the nearest neighbours find it."""
    from jepa_agent.probe import knn_r2

    rng = np.random.default_rng(0)
    f = torch.as_tensor(rng.normal(size=(1200, 16, 3)), dtype=torch.float16)  # a 4 x 4 token grid
    corner = f.float()[:, [0, 1, 4, 5]].mean(1).numpy()  # the top-left 2 x 2 cell's mean token
    y = corner[:, :1] - f.float()[:, [10, 11, 14, 15]].mean(1).numpy()[:, :1]  # cell 0 minus cell 3
    assert pooled_ridge_r2(f[:900], y[:900], f[900:], y[900:], grid=2)[0] > 0.99
    assert pooled_ridge_r2(f[:900], y[:900], f[900:], y[900:], grid=1)[0] < 0.5
    g = torch.as_tensor(rng.uniform(-1, 1, size=(3000, 1, 2)), dtype=torch.float16)
    ring = np.cos(3 * np.pi * np.linalg.norm(g.float().numpy()[:, 0], axis=1, keepdims=True))
    assert knn_r2(g[:2500], ring[:2500], g[2500:], ring[2500:])[0] > 0.9
    assert pooled_ridge_r2(g[:2500], ring[:2500], g[2500:], ring[2500:])[0] < 0.2
    with pytest.raises(ValueError, match="probe.ridge_grid=5"):
        knn_r2(f[:10], y[:10], f[10:20], y[10:20], grid=5)


def test_extract_features_shapes_and_dtype() -> None:
    from jepa_agent.models.vit import vit_micro

    enc = vit_micro(img_size=16, num_frames=2, depth=1, embed_dim=32, num_heads=2)
    frames = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    f = extract_features(enc, frames, batch_size=2)
    assert f.shape == (5, 4, 32) and f.dtype == torch.float16
    with pytest.raises(ValueError, match="expected uint8"):
        extract_features(enc, frames.transpose(0, 3, 1, 2))


def _tiny_episodes(root: Path, n: int = 5, steps: int = 6, size: int = 16) -> None:
    import envs
    from jepa_agent.data import EpisodeWriter, build_meta

    env = envs.make_env("reach", image_size=size)
    u = env.unwrapped
    video = {"codec": "libx264", "crf": 18, "preset": "veryfast", "pix_fmt": "yuv420p"}
    meta = build_meta("JepaAgent/Reach-v0", {"image_size": size}, size, 20, env.action_space.low,
                      env.action_space.high, 4, 4, 4, video)  # fmt: skip
    rng = np.random.default_rng(0)
    with EpisodeWriter(root, meta) as w:
        for i in range(n):
            obs, _ = env.reset(seed=i)
            frames, acts, prop, st = [obs["pixels"]], [], [obs["proprio"]], [u.get_state()]
            for _ in range(steps):
                a = rng.uniform(-1, 1, 2).astype(np.float32)
                obs, *_ = env.step(a)
                frames.append(obs["pixels"])
                acts.append(a)
                prop.append(obs["proprio"])
                st.append(u.get_state())
            w.write(i, np.stack(frames), np.stack(acts), np.stack(prop), np.stack(st), u.goal_state(), i)
        w.finalize()
    env.close()


@pytest.mark.slow  # ~20 s on the 2-core VM (a script end to end); CI runs it (.ci/run: -m slow)
def test_probe_script_end_to_end(tmp_path: Path, run_env: dict) -> None:
    from jepa_agent.masks import DEFAULT_MASKS
    from jepa_agent.models.predictor import MaskedPredictor
    from jepa_agent.models.vit import encoder_config, vit_micro
    from jepa_agent.training.pretrain import PretrainConfig, pretrain

    eps = tmp_path / "eps"
    _tiny_episodes(eps)
    torch.manual_seed(0)
    enc = vit_micro(img_size=16, num_frames=2, depth=1, embed_dim=32, num_heads=2)
    pred = MaskedPredictor(enc.grid, 32, embed_dim=16, depth=1, num_heads=2)

    class Frames(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict:
            return {"frames": torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)}

    cfg = PretrainConfig(steps=2, batch_size=2, warmup=0, device="cpu")
    res = pretrain(Frames(), enc, pred, DEFAULT_MASKS, cfg, tmp_path / "pt",
                   {"encoder": {"name": "vit_micro", **encoder_config(enc)}}, progress=False)  # fmt: skip
    cmd = [sys.executable, str(REPO / "scripts" / "probe.py"), f"checkpoint={res.checkpoint}",
           f"data.path={eps}", "data.val_fraction=0.4", "probe.epochs=2", "probe.num_heads=2", "device=cpu",
           "probe.mlp_ratio=2", "supervised_reference_steps=2", "env=reach",
           f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"ee_pos", "ee_x", "ee_y", "joints"} <= set(out["r2"]) and set(out["r2"]) == set(
        out["r2_random_init"]
    )
    assert set(out["r2_supervised_reference"]) == set(out["r2"])
    assert set(out["r2_knn"]) == set(out["r2_knn_random_init"]) == set(out["r2_pooled"]) == set(out["r2"])
    assert set(out["ee_rmse"]) == {"pretrained", "random_init", "supervised_reference"}
    assert all(0 <= v < 1 for v in out["ee_rmse"].values())  # metres
    gain = out["ee_gain_over_random_init"]
    assert gain["gain"] == pytest.approx(out["r2"]["ee_pos"] - out["r2_random_init"]["ee_pos"])
    assert gain["ci95"][0] <= gain["ci95"][1] and 0 <= gain["p_not_above"] <= 1
    assert out["train_episodes"] == 3 and out["val_episodes"] == 2 and out["val_frames"] == 14
    bad = subprocess.run(cmd[:2] + [f"checkpoint={tmp_path / 'nope'}", f"data.path={eps}"],
                         capture_output=True, text=True, timeout=120, env=run_env, cwd=tmp_path)  # fmt: skip
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("probe: error: checkpoint")
    assert "Traceback" not in bad.stderr
    for arg, msg in (("max_train_frames=0", "max_train_frames=0; expected an int >= 1"),
                     ("probe.epochs=0", "probe.epochs=0; expected an int >= 1"),
                     ("probe.ridge_grid=3", "probe.ridge_grid=3; expected 1 .. 2")):  # fmt: skip
        bad = subprocess.run(cmd[:4] + [arg], capture_output=True, text=True, timeout=120, env=run_env,
                             cwd=tmp_path)  # fmt: skip
        assert bad.returncode != 0 and msg in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
