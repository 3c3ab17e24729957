"""Checkpoints: safetensors weights + resolved config (YAML) + training state, written atomically.

A checkpoint is a directory::

    ckpt/
      model.safetensors   # every module's weights, keys prefixed "<module>." (no pickle on load)
      config.yaml         # the resolved run config
      train_state.pt      # optimizer / scheduler / step / RNG (loaded with weights_only=True)
      meta.json           # kind, step, metrics; written last, so its presence marks a complete checkpoint

Each file is written to a temp name and renamed; a new checkpoint replaces the old directory only
once complete, so a crash or kill at any point leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from jepa_agent.utils import atomic_path, atomic_write_json

META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not match what it is loaded into."""


def save_checkpoint(
    path: str | os.PathLike,
    modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
    config: DictConfig | dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Save ``modules`` (name -> module or state dict) atomically as a checkpoint directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        sd = mod.state_dict() if isinstance(mod, torch.nn.Module) else mod
        for k, v in sd.items():
            tensors[f"{name}.{k}"] = v.detach().to("cpu").contiguous()
    save_file(tensors, str(tmp / "model.safetensors"))
    if config is not None:
        cfg = config if isinstance(config, DictConfig) else OmegaConf.create(config)
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if train_state is not None:
        torch.save(train_state, tmp / "train_state.pt")
    atomic_write_json(tmp / META, {"modules": sorted(modules), **(meta or {})})
    # swap in: old -> .old, tmp -> path, drop .old (a kill between renames leaves .old loadable)
    old = path.parent / f".{path.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if (path / META).exists():
        return path
    old = path.parent / f".{path.name}.old"  # interrupted swap: the previous checkpoint survives here
    if (old / META).exists():
        return old
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    raise CheckpointError(f"checkpoint {str(path)!r} is incomplete (no {META}); was its writer killed?")


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """True when a complete checkpoint can be loaded from ``path``."""
    try:
        _resolve(path)
        return True
    except CheckpointError:
        return False


def _unreadable(file: Path, e: BaseException) -> CheckpointError:
    """The error for a checkpoint file that exists but cannot be parsed (truncated, overwritten, ...)."""
    return CheckpointError(
        f"checkpoint file {str(file)!r} is corrupt or truncated ({type(e).__name__}: {str(e)[:200]}); "
        "checkpoints are written atomically, so it was damaged or partly copied afterwards: restore it, or "
        "re-run the script that wrote it with a new out=DIR"
    )


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``meta.json``."""
    p = _resolve(path) / META
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _unreadable(p, e) from e
    if not isinstance(meta, dict):
        raise _unreadable(p, TypeError(f"expected a JSON object, got {type(meta).__name__}"))
    return meta


def saved_loss(path: str | os.PathLike) -> float | None:
    """The training loss recorded in the checkpoint's meta, or ``None`` (no checkpoint, or none recorded)."""
    if not checkpoint_exists(path):
        return None
    loss = load_meta(path).get("loss")
    return float(loss) if isinstance(loss, (int, float)) else None


def load_config(path: str | os.PathLike) -> DictConfig:
    """The resolved config saved with the checkpoint."""
    p = _resolve(path) / "config.yaml"
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} has no config.yaml")
    try:
        return OmegaConf.load(p)  # type: ignore[return-value]
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise _unreadable(p, e) from e


# env settings that change how frames look (beyond the image size, which the model's meta records), with the
# value a checkpoint trained before the setting existed was rendered with
RENDER_SETTINGS = {"antialias": 0}


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a training run directory holding one in ``checkpoint/``."""
    path = Path(path)
    if not checkpoint_exists(path) and checkpoint_exists(path / "checkpoint"):
        return path / "checkpoint"
    return path


def render_settings(path: str | os.PathLike) -> dict[str, Any]:
    """How the frames a checkpoint (or a training run directory holding one in ``checkpoint/``) was trained
    on were rendered: :data:`RENDER_SETTINGS` as its config's ``env`` sets them (the defaults when it has no
    config or no such setting, e.g. an older checkpoint)."""
    try:
        env = load_config(resolve_checkpoint(path)).get("env") or {}
    except CheckpointError:
        env = {}
    return {k: env.get(k, default) for k, default in RENDER_SETTINGS.items()}


def load_weights(path: str | os.PathLike, name: str) -> dict[str, torch.Tensor]:
    """The state dict of module ``name`` from the checkpoint (safetensors, no pickle)."""
    p = _resolve(path) / "model.safetensors"
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} has no model.safetensors")
    try:
        tensors = load_file(str(p))
    except (OSError, SafetensorError) as e:
        raise _unreadable(p, e) from e
    prefix = f"{name}."
    sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not sd:
        have = sorted({k.split(".", 1)[0] for k in tensors})
        raise CheckpointError(f"checkpoint {str(path)!r} has no module {name!r}; available: {have}")
    return sd


def load_into(path: str | os.PathLike, name: str, module: torch.nn.Module) -> torch.nn.Module:
    """Load module ``name`` from the checkpoint into ``module`` (strict), with a clear mismatch error."""
    sd = load_weights(path, name)
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r} module {name!r} does not fit the model built from the config: {e}"
        ) from e
    return module


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Optimizer / scheduler / step state (``torch.load(weights_only=True)``: no arbitrary pickle)."""
    p = _resolve(path) / "train_state.pt"
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} has no train_state.pt; cannot resume from it")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        raise _unreadable(p, e) from e


def _plain(value: Any) -> Any:
    """OmegaConf containers and tuples as plain Python values (for comparing and printing)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return list(value) if isinstance(value, tuple) else value


def config_differences(saved: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"key: checkpoint X, now Y"`` for each key of ``now`` that ``saved`` holds with another value.

    Nested mappings are compared key by key (names joined with dots); keys that ``saved`` lacks (a
    checkpoint written before the key existed) are skipped.
    """
    out = []
    for key, value in now.items():
        if key not in saved:
            continue
        old, name = saved[key], f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out += config_differences(old, value, f"{name}.")
        elif _plain(old) != _plain(value):
            out.append(f"{name}: checkpoint {_plain(old)!r}, now {_plain(value)!r}")
    return out


def check_resume_matches(path: str | os.PathLike, saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse to resume from ``path`` into a model built differently (``saved`` vs ``now`` settings).

    Raises:
        CheckpointError: naming every setting that differs, and what to do instead.
    """
    diff = config_differences(saved, now)
    if diff:
        raise CheckpointError(
            f"cannot resume from {str(path)!r}: the model is built differently ({'; '.join(diff)}); "
            "resume with the run's original settings, or pass a new out=DIR"
        )


# -- small self-describing modules (a policy, a student encoder): safetensors + a JSON config -------------
def save_module_files(
    module: torch.nn.Module, out_dir: str | os.PathLike, weights_file: str, config_file: str, config: dict
) -> Path:
    """Write ``module``'s tensors to ``weights_file`` (safetensors) and ``config`` to ``config_file`` (JSON)
    in ``out_dir``, each atomically; returns the dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / weights_file) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    atomic_write_json(out / config_file, config)
    return out


def read_module_config(
    run_dir: str | os.PathLike, weights_file: str, config_file: str, kind: str, written_by: str
) -> dict[str, Any]:
    """The JSON config :func:`save_module_files` wrote, checked to be of ``kind``.

    Raises:
        FileNotFoundError: a missing config or weights file (naming ``written_by``, what writes them).
        ValueError: a config of another kind.
    """
    root = Path(run_dir)
    for name in (config_file, weights_file):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} does not exist; expected a dir written by {written_by}")
    cfg = json.loads((root / config_file).read_text())
    if cfg.get("kind") != kind:
        raise ValueError(f"{root / config_file}: kind={cfg.get('kind')!r}; expected {kind!r}")
    return cfg


def load_module_weights(module: torch.nn.Module, weights: str | os.PathLike) -> torch.nn.Module:
    """Load a :func:`save_module_files` weights file into ``module`` (strict; no pickle).

    Raises:
        ValueError: weights that do not fit the module its config built.
    """
    try:
        module.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights} does not fit its config: {e}") from e
    return module
