"""Small shared helpers: device choice, seeding, atomic file writes, the scripts' JSON line."""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: scripts that only collect data start ~2 s faster.


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into CUDA when available (else CPU); validate anything else.

    Raises:
        ValueError: for a device string torch does not understand, or CUDA asked for without a GPU.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(
            f"device={device!r} is not a torch device; expected 'auto', 'cpu' or 'cuda[:i]'"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} asked for CUDA but no GPU is visible; use device=auto or device=cpu"
        )
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices).

    Raises:
        ValueError: ``seed`` is not an int.
    """
    import torch

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r}; expected an int")

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or kill inside the block leaves ``path`` untouched (and at worst a ``.tmp`` file that
    readers ignore). ``suffix`` keeps the extension (some writers, e.g. ffmpeg, infer the format).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + fsync + rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON atomically (NaN/inf become null)."""
    atomic_write_text(path, json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")


def strict_json(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays and paths made plain and non-finite floats made ``None``.

    Python's ``json`` writes NaN and Infinity, which strict parsers (``jq``, JavaScript) reject.
    """
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic, Path)):
        return strict_json(_json_default(obj))
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):  # numpy scalars: float32, int64, bool_, ...
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def emit_json_line(obj: dict[str, Any]) -> str:
    """Print the one-line JSON summary every script ends with; returns the line."""
    line = json.dumps(strict_json(obj), allow_nan=False)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return line


def check_int(name: str, value: Any, least: int, hint: str = "") -> int:
    """``value`` as an int when it is one (numpy ints too, not bools) and ``>= least``.

    Raises:
        ValueError: naming ``name``, the bad value and the bound (and ``hint``, when given).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name}={value!r}; expected an int >= {least}" + (f" ({hint})" if hint else ""))
    return int(value)


def set_threads(num_threads: int | None) -> None:
    """Set torch's intra-op threads when given (``None`` or 0 keeps the default).

    Raises:
        ValueError: a negative or non-integer count.
    """
    if num_threads is not None:
        check_int("threads", num_threads, 0, "0: torch's default")
    if num_threads:
        import torch

        torch.set_num_threads(int(num_threads))


RESUME_HINT = "the last checkpoint is kept; run again with resume=true and the same out=DIR to continue"


def cli_errors(fn=None, *, on_interrupt: str = ""):
    """Decorate a script's Hydra task: bad input (``ValueError`` and its subclasses such as ``DataError``,
    ``GoalError``, ``CheckpointError``, ``FileNotFoundError``) exits with one clear line, no traceback;
    Ctrl-C exits with status 130 and one line saying what was kept (``on_interrupt``).

    Put it *under* ``@hydra.main`` so it runs inside the task (Hydra would print a traceback otherwise);
    use it bare (``@cli_errors``) or with a hint (``@cli_errors(on_interrupt="...")``).
    """
    import functools

    def decorate(task):
        @functools.wraps(task)
        def wrapper(*args, **kwargs):
            script = Path(sys.argv[0]).name or "jepa-agent"
            try:
                return task(*args, **kwargs)
            except (ValueError, RuntimeError, FileNotFoundError) as e:
                # CheckpointError is a RuntimeError; looked up lazily so that decorating imports no torch
                ckpt = sys.modules.get("jepa_agent.checkpoint")
                if isinstance(e, RuntimeError) and not (ckpt and isinstance(e, ckpt.CheckpointError)):
                    raise
                raise SystemExit(f"{script}: error: {e}") from None
            except KeyboardInterrupt:
                hint = f"; {on_interrupt}" if on_interrupt else ""
                sys.stderr.write(f"\n{script}: interrupted{hint}\n")
                raise SystemExit(130) from None

        return wrapper

    return decorate(fn) if fn is not None else decorate


def rng_state() -> dict[str, Any]:
    """Torch / NumPy / Python global RNG states as tensors (``torch.load(weights_only=True)`` reads them)."""
    import torch

    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_extra": torch.tensor([float(pos), float(has_gauss), float(gauss)], dtype=torch.float64),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`rng_state`."""
    import torch

    torch.set_rng_state(state["torch"])
    pos, has_gauss, gauss = state["numpy_extra"].tolist()
    keys = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), gauss))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))


def int_at_least(least: int):
    """An ``argparse`` type: an int ``>= least``, else a usage error naming the bound (benchmark scripts)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}; expected an int >= {least}")
        return value

    return parse
