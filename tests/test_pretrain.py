"""V-JEPA pretraining: loss decreases, exact resume, non-finite stop, DDP on 2 CPU processes, the script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jepa_agent.checkpoint import load_meta, load_weights
from jepa_agent.masks import DEFAULT_MASKS
from jepa_agent.models.predictor import MaskedPredictor
from jepa_agent.models.vit import load_encoder, vit_micro
from jepa_agent.training import pretrain as pretrain_mod
from jepa_agent.training.logger import read_metrics
from jepa_agent.training.pretrain import (
    NonFiniteLossError,
    PretrainConfig,
    StepBatchSampler,
    build_pretrain_dataset,
    pretrain,
)

REPO = Path(__file__).resolve().parents[1]


class MovingSquares(torch.utils.data.Dataset):
    """Synthetic clips: a white square moving at constant velocity, uint8 [T, 3, H, W]."""

    def __init__(self, n: int = 32, frames: int = 4, size: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.frames = torch.zeros(n, frames, 3, size, size, dtype=torch.uint8)
        pos = torch.randint(0, size - 4, (n, 2), generator=g)
        vel = torch.randint(-1, 2, (n, 2), generator=g)
        for i in range(n):
            for t in range(frames):
                y, x = (pos[i] + vel[i] * t).clamp(0, size - 4).tolist()
                self.frames[i, t, :, y : y + 4, x : x + 4] = 255
        self.skipped: list = []

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"frames": self.frames[i]}


def _models(seed: int = 0) -> tuple:
    torch.manual_seed(seed)
    enc = vit_micro(img_size=16, num_frames=4, embed_dim=32, depth=1, num_heads=2)
    pred = MaskedPredictor(enc.grid, enc.embed_dim, embed_dim=16, depth=1, num_heads=2)
    return enc, pred


def _cfg(**kw) -> PretrainConfig:
    base = dict(
        steps=6, batch_size=4, lr=1e-3, warmup=2, log_every=1, collapse_every=2, ckpt_every=0, device="cpu"
    )
    return PretrainConfig(**{**base, **kw})


def _run_config(enc) -> dict:
    from jepa_agent.models.vit import encoder_config

    return {"encoder": {"name": "vit_micro", **encoder_config(enc)}}


def test_tiny_run_loss_decreases_and_checkpoints(tmp_path: Path) -> None:
    enc, pred = _models()
    res = pretrain(MovingSquares(), enc, pred, DEFAULT_MASKS, _cfg(steps=25, batch_size=8, lr=3e-3), tmp_path,
                   run_config=_run_config(enc), progress=False)  # fmt: skip
    assert res.steps == 25 and len(res.losses) == 25
    assert np.mean(res.losses[-5:]) < 0.85 * np.mean(res.losses[:3])
    assert load_meta(res.checkpoint)["step"] == 25
    assert set(load_meta(res.checkpoint)["modules"]) == {"encoder", "predictor", "target_encoder"}
    rows = read_metrics(tmp_path)
    assert len(rows) == 25 and {"loss", "lr", "target_std", "target_eff_rank"} <= set(rows[0])
    assert res.summary()["skipped_files"] == 0 and res.clips_per_s > 0
    target = load_encoder(res.checkpoint)  # rebuilt from config + weights
    assert target.embed_dim == 32 and not target.training


def test_zero_steps_saves_the_random_init_encoder(tmp_path: Path) -> None:
    """steps=0 (the random-init baseline): a checkpoint of the untrained encoder, loadable as any other."""
    enc, pred = _models()
    init = {k: v.clone() for k, v in enc.state_dict().items()}
    res = pretrain(MovingSquares(), enc, pred, DEFAULT_MASKS, _cfg(steps=0, warmup=5), tmp_path,
                   run_config=_run_config(enc), progress=False)  # fmt: skip
    assert res.steps == 0 and res.losses == [] and res.final_loss is None
    target = load_encoder(res.checkpoint)
    for k, v in target.state_dict().items():
        torch.testing.assert_close(v, init[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="steps=-1; expected >= 0"):
        _cfg(steps=-1)


def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    data = MovingSquares()
    enc, pred = _models()
    straight = pretrain(
        data, enc, pred, DEFAULT_MASKS, _cfg(), tmp_path / "a", _run_config(enc), progress=False
    )
    enc, pred = _models()
    first = pretrain(data, enc, pred, DEFAULT_MASKS, _cfg(stop_after=3), tmp_path / "b", _run_config(enc),
                     progress=False)  # fmt: skip
    assert first.steps == 3 and load_meta(first.checkpoint)["step"] == 3
    with open(tmp_path / "b" / "metrics.csv", "a") as f:  # a killed run logged past its checkpoint
        f.write("3,9.9\n4,9.9\n5,9.")  # the last row cut short mid-write
    enc, pred = _models(seed=123)  # fresh (different) weights: everything must come from the checkpoint
    second = pretrain(data, enc, pred, DEFAULT_MASKS, _cfg(), tmp_path / "b", _run_config(enc), resume=True,
                      progress=False)  # fmt: skip
    assert second.steps == 6 and len(second.losses) == 3
    np.testing.assert_allclose(first.losses + second.losses, straight.losses, rtol=0, atol=1e-6)
    for name in ("encoder", "predictor", "target_encoder"):
        a, b = load_weights(straight.checkpoint, name), load_weights(second.checkpoint, name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    rows = read_metrics(tmp_path / "b")  # appended on resume; the killed run's rows past step 3 dropped
    assert [r["step"] for r in rows] == list(range(6)) and 9.9 not in {v for r in rows for v in r.values()}
    enc, pred = _models()  # a finished run: nothing left to do, the saved loss is reported (not NaN)
    done = pretrain(data, enc, pred, DEFAULT_MASKS, _cfg(), tmp_path / "b", _run_config(enc), resume=True,
                    progress=False)  # fmt: skip
    assert done.steps == 6 and done.losses == [] and done.final_loss == pytest.approx(second.final_loss)


def test_resume_refuses_a_differently_built_model(tmp_path: Path) -> None:
    from jepa_agent.checkpoint import CheckpointError

    data = MovingSquares()
    enc, pred = _models()
    first = pretrain(data, enc, pred, DEFAULT_MASKS, _cfg(stop_after=2), tmp_path, _run_config(enc),
                     progress=False)  # fmt: skip
    assert load_meta(first.checkpoint)["architecture"]["encoder"]["pos_embed"] == "sincos"
    before = (Path(first.checkpoint) / "model.safetensors").read_bytes()
    # rotary positions add no weights, so only the saved constructor arguments can tell the models apart
    torch.manual_seed(0)
    enc = vit_micro(img_size=16, num_frames=4, embed_dim=32, depth=1, num_heads=2, pos_embed="rope")
    pred = MaskedPredictor(enc.grid, enc.embed_dim, embed_dim=16, depth=1, num_heads=2, pos_embed="rope")
    match = r"built differently \(encoder.pos_embed: checkpoint 'sincos', now 'rope'.*new out=DIR"
    with pytest.raises(CheckpointError, match=match):
        pretrain(data, enc, pred, DEFAULT_MASKS, _cfg(), tmp_path, _run_config(enc), resume=True,
                 progress=False)  # fmt: skip
    assert (Path(first.checkpoint) / "model.safetensors").read_bytes() == before  # nothing overwritten


def test_config_differences_nested_plain_and_tolerant_of_older_checkpoints() -> None:
    from omegaconf import OmegaConf

    from jepa_agent.checkpoint import config_differences

    saved = OmegaConf.create({"encoder": {"depth": 4, "grid": [2, 8, 8], "mlp_ratio": 4}, "seed": 0})
    now = {"encoder": {"depth": 4, "grid": (2, 8, 8), "mlp_ratio": 4.0, "pos_embed": "rope"}, "seed": 0}
    assert config_differences(saved, now) == []  # same values; a key the older checkpoint lacks is skipped
    now["encoder"]["grid"] = (2, 4, 4)
    assert config_differences(saved, now) == ["encoder.grid: checkpoint [2, 8, 8], now [2, 4, 4]"]


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path: Path, monkeypatch) -> None:
    real = pretrain_mod.jepa_step_loss
    calls = {"n": 0}

    def nan_after_two(*args, **kw):
        loss, h = real(*args, **kw)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 2 else loss), h

    monkeypatch.setattr(pretrain_mod, "jepa_step_loss", nan_after_two)
    enc, pred = _models()
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at step 2"):
        pretrain(MovingSquares(), enc, pred, DEFAULT_MASKS, _cfg(ckpt_every=2), tmp_path, _run_config(enc),
                 progress=False)  # fmt: skip
    assert load_meta(tmp_path / "checkpoint")["step"] == 2
    for v in load_weights(tmp_path / "checkpoint", "encoder").values():
        assert torch.isfinite(v).all()


def test_step_sampler_shards_ranks_and_is_deterministic() -> None:
    r0 = StepBatchSampler(10, 3, 0, 4, seed=1, rank=0, world=2)
    r1 = StepBatchSampler(10, 3, 0, 4, seed=1, rank=1, world=2)
    a, b = list(r0), list(r1)
    assert len(a) == 4 and all(len(x) == 3 for x in a)
    assert not set(a[0]) & set(b[0])  # the two ranks see different clips at a step
    assert StepBatchSampler(10, 3, 2, 4, seed=1).indices(2) == StepBatchSampler(10, 3, 0, 4, seed=1).indices(
        2
    )
    seen = [i for s in range(0, 10) for i in StepBatchSampler(10, 1, 0, 10, seed=5).indices(s)]
    assert sorted(seen) == list(range(10))  # one epoch = a permutation


DDP_WORKER = """
import os, sys, json, torch
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_pretrain import MovingSquares, _models, _cfg, _run_config
from jepa_agent.masks import DEFAULT_MASKS
from jepa_agent.training.pretrain import pretrain
enc, pred = _models(seed=int(os.environ["RANK"]))  # different init per rank: DDP must broadcast rank 0's
res = pretrain(MovingSquares(), enc, pred, DEFAULT_MASKS, _cfg(steps=3), {out!r}, _run_config(enc),
               progress=False)
flat = torch.cat([p.detach().flatten() for m in (enc, pred) for p in m.parameters()])
torch.save(flat, os.path.join({out!r}, f"rank{{os.environ['RANK']}}.pt"))
torch.distributed.destroy_process_group()
"""


def test_ddp_two_cpu_processes_agree(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER.format(repo=str(REPO), tests=str(REPO / "tests"), out=str(tmp_path / "run")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker)]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = (
        torch.load(tmp_path / "run" / "rank0.pt", weights_only=True),
        torch.load(tmp_path / "run" / "rank1.pt", weights_only=True),
    )
    torch.testing.assert_close(w0, w1, rtol=0, atol=0)
    assert load_meta(tmp_path / "run" / "checkpoint")["step"] == 3
    assert len(read_metrics(tmp_path / "run")) == 3  # rank 0 only writes


def _write_mp4(path: Path, frames: int = 12, size: int = 32, seed: int = 0) -> None:
    import imageio.v2 as imageio

    rng = np.random.default_rng(seed)
    with imageio.get_writer(path, fps=10, codec="libx264", macro_block_size=1) as w:
        for _ in range(frames):
            w.append_data(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _has_data_readers() -> bool:
    try:
        from jepa_agent.data import VideoFolderDataset  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_data_readers(), reason="jepa_agent.data readers not available yet")
def test_corrupt_video_is_skipped_and_counted(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        _write_mp4(videos / f"ok_{i}.mp4", seed=i)
    (videos / "broken.mp4").write_bytes(b"\x00not an mp4 at all" * 50)
    with pytest.warns(UserWarning):
        data = build_pretrain_dataset("videos", videos, clip_len=4, image_size=16)
    enc, pred = _models()
    res = pretrain(
        data, enc, pred, DEFAULT_MASKS, _cfg(steps=2), tmp_path / "run", _run_config(enc), progress=False
    )
    assert res.summary()["skipped_files"] == 1 and res.steps == 2


def test_config_errors_name_the_bad_value() -> None:
    cases = (
        ({"lr": -1e-3}, "lr=-0.001, final_lr=1e-06; expected both >= 0"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1"),
        ({"ema": (1.0, 0.9)}, "ema=[1.0, 0.9]; expected [start, end] with 0 <= start <= end <= 1"),
        ({"ema": (0.99,)}, "ema=[0.99]"),
        ({"precision": "fp16"}, "precision='fp16'"),
    )
    for kw, msg in cases:
        with pytest.raises(ValueError, match=re.escape(msg)):
            _cfg(**kw)
    assert _cfg(lr=0.0, final_lr=0.0).lr == 0.0  # lr 0 writes a never-trained checkpoint (docs use it)


def test_missing_data_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        build_pretrain_dataset("videos", tmp_path / "nope", clip_len=4)


@pytest.mark.skipif(not _has_data_readers(), reason="jepa_agent.data readers not available yet")
def test_script_videos_json_line_and_error(tmp_path: Path, run_env: dict) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_mp4(videos / "a.mp4", frames=8)
    (videos / "bad.mp4").write_bytes(b"garbage")
    common = ["encoder.img_size=16", "encoder.depth=1", "encoder.embed_dim=32", "encoder.num_heads=2",
              "predictor.embed_dim=16", "predictor.depth=1", "predictor.num_heads=2", "train.batch_size=2",
              "train.warmup=0", "progress=false", "device=cpu",
              f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    cmd = [sys.executable, str(REPO / "scripts" / "pretrain.py"), "data=videos", f"data.path={videos}",
           "train.steps=2", f"out={tmp_path / 'run'}", *common]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["steps"] == 2 and summary["skipped_files"] == 1
    assert load_encoder(summary["checkpoint"]).embed_dim == 32
    bad = subprocess.run(cmd[:2] + [f"data.path={tmp_path / 'missing'}", "train.steps=1", *common],
                         capture_output=True, text=True, timeout=120, env=run_env, cwd=tmp_path)  # fmt: skip
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("pretrain: error: data.path=")
    assert "Traceback" not in bad.stderr


def test_bench_pretrain_smoke(capsys) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_pretrain", REPO / "scripts" / "bench_pretrain.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--encoder", "vit_micro", "--img-size", "32", "--frames", "4", "--batch", "2", "--steps", "3",
            "--warmup", "0", "--threads", "1", "--device", "cpu"]  # fmt: skip
    res = bench.main(argv + ["--variants", "fp32,fp32_all_tokens,fp32_rope"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == json.loads(json.dumps(res))
    assert res["device"] == "cpu" and set(res["variants"]) == {"fp32", "fp32_all_tokens", "fp32_rope"}
    assert all(v["step_s"] > 0 and v["clips_per_s"] > 0 for v in res["variants"].values())
    assert res["all_tokens_over_drop_masked_step_ratio"] > 0
    with pytest.raises(SystemExit):  # a usage error naming the bad value
        bench.main(argv + ["--variants", "fp16"])
    assert "--variants 'fp16': unknown ['fp16']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(argv[:-2] + ["--steps", "2"])
    assert "argument --steps: 2; expected an int >= 3" in capsys.readouterr().err
