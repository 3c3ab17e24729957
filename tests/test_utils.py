"""Small shared helpers: strict JSON lines, thread settings, RNG state round trips."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from jepa_agent.utils import (
    atomic_write_json,
    emit_json_line,
    rng_state,
    seed_everything,
    set_rng_state,
    set_threads,
    strict_json,
)


def test_json_is_strict_nan_becomes_null(tmp_path: Path, capsys) -> None:
    obj = {"loss": float("nan"), "x": [np.float32(1.5), float("inf")], "p": Path("a/b"), "n": np.arange(2),
           "ok": np.bool_(True), "m": np.float64("nan")}  # fmt: skip
    plain = {"loss": None, "x": [1.5, None], "p": "a/b", "n": [0, 1], "ok": True, "m": None}
    assert strict_json(obj) == plain
    line = emit_json_line(obj)
    assert capsys.readouterr().out == line + "\n" and "NaN" not in line and "Infinity" not in line
    atomic_write_json(tmp_path / "r.json", obj)
    assert json.loads((tmp_path / "r.json").read_text())["loss"] is None
    with pytest.raises(TypeError, match="not JSON serializable"):
        emit_json_line({"t": object()})


def test_set_threads_rejects_bad_counts() -> None:
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="expected an int >= 0"):
            set_threads(bad)
    before = torch.get_num_threads()
    set_threads(0)  # 0 / None keep torch's default
    set_threads(None)
    assert torch.get_num_threads() == before


def test_rng_state_round_trip_through_a_weights_only_load(tmp_path: Path) -> None:
    state = rng_state()
    torch.save(state, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_seed_must_be_an_int() -> None:
    for bad in ("abc", 1.5, None):
        with pytest.raises(ValueError, match="expected an int"):
            seed_everything(bad)
    seed_everything(7)
    a = torch.rand(2)
    seed_everything(7)
    assert torch.equal(a, torch.rand(2))


def test_cli_errors_one_line_for_bad_input_and_ctrl_c(capsys) -> None:
    from jepa_agent.checkpoint import CheckpointError
    from jepa_agent.utils import cli_errors

    def raises(exc):
        def task():
            raise exc

        return task

    for exc in (ValueError("bad value"), CheckpointError("bad ckpt"), FileNotFoundError("no file")):
        with pytest.raises(SystemExit, match=r"error: (bad value|bad ckpt|no file)"):
            cli_errors(raises(exc))()
    with pytest.raises(RuntimeError, match="a bug"):  # other errors keep their traceback
        cli_errors(raises(RuntimeError("a bug")))()
    with pytest.raises(SystemExit) as stop:
        cli_errors(on_interrupt="the last checkpoint is kept")(raises(KeyboardInterrupt()))()
    assert stop.value.code == 130 and "interrupted; the last checkpoint is kept" in capsys.readouterr().err
