"""Checkpoint files damaged after writing give a CheckpointError naming the file, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from jepa_agent.checkpoint import (
    CheckpointError,
    load_config,
    load_meta,
    load_train_state,
    load_weights,
    save_checkpoint,
)
from tests.test_pipeline import run


def _ckpt(tmp_path: Path) -> Path:
    return save_checkpoint(
        tmp_path / "ckpt",
        {"net": torch.nn.Linear(3, 2)},
        config={"a": 1},
        train_state={"step": 3},
        meta={"kind": "test"},
    )


def test_intact_checkpoint_loads(tmp_path: Path) -> None:
    path = _ckpt(tmp_path)
    assert load_meta(path)["kind"] == "test" and load_config(path).a == 1
    assert load_weights(path, "net")["weight"].shape == (2, 3) and load_train_state(path)["step"] == 3


@pytest.mark.parametrize(
    ("name", "damage", "load"),
    [
        ("model.safetensors", b"\x00" * 12, lambda p: load_weights(p, "net")),
        ("meta.json", b"{", load_meta),
        ("meta.json", b"[1, 2]", load_meta),
        ("config.yaml", b"a: [1,\n", load_config),
        ("train_state.pt", b"garbage", load_train_state),
    ],
)
def test_damaged_file_is_named(tmp_path: Path, name: str, damage: bytes, load) -> None:
    path = _ckpt(tmp_path)
    (path / name).write_bytes(damage)
    with pytest.raises(CheckpointError, match=rf"checkpoint file '.*{name}' is corrupt or truncated"):
        load(path)


def test_missing_weights_file(tmp_path: Path) -> None:
    path = _ckpt(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        load_weights(path, "net")


def test_plan_with_a_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "reach"
    shutil.copytree(Path(__file__).resolve().parents[1] / "checkpoints" / "reach", ckpt)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])  # a partial copy
    proc = run("plan.py", f"checkpoint={ckpt}", "episodes=1", f"hydra.run.dir={tmp_path / 'run'}", ok=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "model.safetensors' is corrupt or truncated" in proc.stderr
