"""The CUDA path: the same code on a GPU gives what it gives on the CPU (skipped without a GPU).

CI has no GPU, so these tests skip there; run them on a CUDA machine with ``pytest -m cuda``. They
check that nothing in the hot paths assumes the CPU (tensors created on the wrong device, numpy
round-trips), that bf16 autocast trains, and that checkpoints written on a GPU load on a CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import envs
from jepa_agent.checkpoint import load_weights
from jepa_agent.masks import DEFAULT_MASKS
from jepa_agent.models.vit import load_encoder, vit_tiny
from jepa_agent.training.pretrain import pretrain
from jepa_agent.training.train_world_model import train_world_model
from jepa_agent.world_model import WorldModel
from tests.conftest import REPO, script_env
from tests.test_pretrain import MovingSquares, _cfg, _models, _run_config
from tests.test_world_model import A, Episodes, tiny_world_model
from tests.test_world_model import cfg as wm_cfg

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SHIPPED = REPO / "checkpoints" / "reach"


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 matmuls/convolutions would make CPU-vs-GPU comparisons loose; compare true fp32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_encoder_on_cuda_matches_cpu():
    torch.manual_seed(0)
    enc = vit_tiny(img_size=64, num_frames=8).eval()
    x = torch.rand(3, 3, 8, 64, 64)
    with torch.inference_mode():
        cpu = enc(x)
        gpu = enc.cuda()(x.cuda()).cpu()
    assert cpu.shape == gpu.shape == (3, 4 * 8 * 8, 192)
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pretrain_on_cuda_learns_and_loads_on_cpu(tmp_path, precision):
    enc, pred = _models()
    cfg = _cfg(steps=25, batch_size=8, lr=3e-3, device="cuda", precision=precision)
    res = pretrain(MovingSquares(), enc, pred, DEFAULT_MASKS, cfg, tmp_path, _run_config(enc), progress=False)
    assert all(np.isfinite(res.losses))
    assert np.mean(res.losses[-5:]) < 0.85 * np.mean(res.losses[:3])
    target = load_encoder(res.checkpoint)  # written from the GPU, read on the CPU
    assert next(target.parameters()).device.type == "cpu"
    saved = load_weights(res.checkpoint, "target_encoder")
    assert all(v.device.type == "cpu" and torch.isfinite(v).all() for v in saved.values())


def test_world_model_trains_on_cuda_and_loads_on_cpu(tmp_path):
    model = tiny_world_model()
    res = train_world_model(model, Episodes(range(6)), Episodes([100, 101]), wm_cfg(steps=20, device="cuda"),
                            tmp_path, progress=False)  # fmt: skip
    assert res.steps == 20 and all(np.isfinite(res.losses))
    assert np.isfinite(res.val["val_h_step_l1"])
    loaded = WorldModel.from_checkpoint(tmp_path, device="cpu", env_id="Synthetic-v0", action_dim=A)
    torch.testing.assert_close(loaded.predictor.delta_scale, model.predictor.delta_scale.cpu())


@pytest.fixture(scope="module")
def shipped() -> tuple[WorldModel, WorldModel]:
    kw = dict(env_id="JepaAgent/Reach-v0", image_size=64, action_dim=2)
    return (WorldModel.from_checkpoint(SHIPPED, device="cpu", **kw),
            WorldModel.from_checkpoint(SHIPPED, device="cuda", **kw))  # fmt: skip


def test_shipped_world_model_rolls_out_the_same_on_cuda(shipped):
    cpu, gpu = shipped
    assert gpu.device.type == "cuda"
    env = envs.make_env("reach")
    obs, _ = env.reset(seed=10_200)
    goal = {"image": env.unwrapped.render_goal()}
    env.close()
    actions = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (64, 5, 2)), dtype=torch.float32)
    with torch.inference_mode():
        out = {}
        for name, m in (("cpu", cpu), ("gpu", gpu)):
            state = m.encode(obs)
            pred = m.rollout(state, actions.to(m.device))  # 64 candidate plans, batched
            costs = m.cost(m.encode_goal(goal))(pred, actions.to(m.device))  # the default: label-free
            out[name] = (state.z.cpu(), pred.cpu(), costs.cpu())
    for a, b in zip(out["gpu"], out["cpu"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    # the planner's choice depends on the ranking of candidates: the best few agree
    assert set(out["gpu"][2].argsort()[:3].tolist()) & set(out["cpu"][2].argsort()[:3].tolist())


def test_plan_script_reaches_goals_on_cuda(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plan.py"), "env=reach", "goal=image", "episodes=3",
         "baselines=false", "videos=0", "energy_grid=0", "device=cuda", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, env=script_env(), cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device"].startswith("cuda"), out
    assert out["success_rate"] >= 2 / 3, out


@pytest.mark.parametrize("name", ["cem", "mppi", "gd"])
def test_every_planner_plans_on_cuda(shipped, name):
    from jepa_agent.config import compose_config
    from jepa_agent.planning import build_agent

    _, gpu = shipped
    cfg = compose_config("plan", [f"planner={name}"])  # as plan.py configures it
    env = envs.make_env("reach")
    agent = build_agent(gpu, cfg.planner, cfg.agent, cfg.cost, env.action_space)
    obs, _ = env.reset(seed=10_300)
    agent.reset({"image": env.unwrapped.render_goal()})
    actions = [agent.act(obs) for _ in range(2)]
    env.close()
    assert agent.last_plan.actions.device.type == "cuda"
    assert all(a.shape == (2,) and np.isfinite(a).all() and np.abs(a).max() <= 1 for a in actions)
