"""The CI guard (scripts/check_plan.py, run by .ci/run on the README's planning run) fails when planning
breaks: on made-up JSON lines, and end to end on a deliberately broken world model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from jepa_agent.checkpoint import load_config
from jepa_agent.world_model import WorldModel, save_world_model
from tests.conftest import REPO

SHIPPED = REPO / "checkpoints" / "reach"
GUARD = REPO / "scripts" / "check_plan.py"


def line(rate: float, ci: list[float], random_rate: float | None, random_ci: list[float] | None) -> str:
    out = {"success_rate": rate, "success_ci95": ci, "episodes": 20}
    if random_rate is not None:
        out |= {"random_success_rate": random_rate, "random_success_ci95": random_ci}
    return json.dumps(out)


def guard(text: str, run_env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GUARD), "-"], input=text, capture_output=True, text=True,
                          env=run_env, cwd=REPO, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    "text, ok, why",
    [
        (line(1.0, [0.84, 1.0], 0.1, [0.03, 0.30]), True, ""),
        (line(0.85, [0.64, 0.95], 0.1, [0.03, 0.30]), False, "success_rate=0.850 is below 0.9"),
        (line(0.9, [0.70, 0.97], 0.6, [0.39, 0.78]), False, "random baseline is not clearly below"),
        (line(1.0, [0.84, 1.0], None, None), False, "no random baseline"),
        ("tqdm noise\n" + line(0.95, [0.76, 0.99], 0.0, [0.0, 0.16]), True, ""),
    ],
)
def test_guard_verdicts(text, ok, why, run_env):
    proc = guard(text, run_env)
    assert proc.returncode == (0 if ok else 1), proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["passed"] is ok
    assert why in proc.stderr and "Traceback" not in proc.stderr


def test_guard_refuses_output_without_a_json_line(run_env):
    proc = guard("plan.py: error: something went wrong\n", run_env)
    assert proc.returncode == 2 and "not plan.py's JSON line" in proc.stderr


@pytest.mark.slow  # ~55 s: three planned episodes and baselines; CI runs it (.ci/run: -m slow)
def test_guard_fails_on_a_broken_world_model(tmp_path, run_env):
    """The shipped model with its action embedding zeroed (actions change nothing it imagines): the
    README's planning command on it must not pass the guard, while the random baseline runs as usual."""
    model = WorldModel.from_checkpoint(SHIPPED, device="cpu")
    with torch.no_grad():
        model.predictor.action_embed.weight.zero_()
    cfg = load_config(SHIPPED)
    save_world_model(tmp_path / "broken", model, run_config=cfg, encoder_name=cfg["encoder"]["name"])
    plan = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plan.py"), "env=reach", "goal=image", "episodes=3",
         f"checkpoint={tmp_path / 'broken'}", "videos=0", "energy_grid=0", "threads=1",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=run_env, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-2000:]
    proc = guard(plan.stdout, run_env)
    assert proc.returncode == 1, (plan.stdout, proc.stdout)
    assert "is below 0.9" in proc.stderr, proc.stderr  # the broken model does not reach its goals
