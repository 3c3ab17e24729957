"""Shared test set-up: one torch thread (the CI machine has 2 shared cores), headless MuJoCo."""

import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO


def script_env() -> dict[str, str]:
    """Environment for running scripts/ in a subprocess (works with or without an editable install)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("HYDRA_FULL_ERROR", "0")
    return env


@pytest.fixture
def run_env() -> dict[str, str]:
    return script_env()


@pytest.fixture
def python() -> str:
    return sys.executable
