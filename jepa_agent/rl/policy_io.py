"""Save an SB3 policy as safetensors + a JSON config, and rebuild it for evaluation without pickle.

SB3's own ``model.save()`` zip stores the policy class, its keyword arguments and the spaces as
cloudpickle: ``SAC.load`` on a zip from someone else can run any code. :func:`save_policy` writes only

* ``policy.safetensors``: the policy's weights (actor, critics, feature extractors; no optimiser state),
* ``policy.json``: the algorithm, the policy class's SB3 alias (``MultiInputPolicy``), its keyword arguments
  (JSON values only), the observation and action spaces, and whatever the caller adds (hyper-parameters,
  the world-model checkpoint the observations came from, the env),

and :func:`load_policy` rebuilds the policy from the algorithm's own alias table (no import of a class
named in the file), loads the weights (safetensors: no code), and returns it in eval mode: its
``predict(obs, deterministic=True)`` is the trained model's. Resuming training needs SB3's zip (and the
replay buffer, a pickle too): ``scripts/rl.py save_zip=true`` writes it; load only your own.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors.torch import load_model, save_model
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy

from jepa_agent.utils import atomic_path, atomic_write_json

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"sac": SAC, "ppo": PPO, "td3": TD3}
POLICY_WEIGHTS = "policy.safetensors"
POLICY_CONFIG = "policy.json"
FORMAT = 1


def _bound(values: np.ndarray) -> Any:
    """A Box bound as JSON: one number when uniform, else a nested list; infinities as strings."""
    flat = np.asarray(values, dtype=np.float64)
    plain = lambda x: x if math.isfinite(x) else str(x)  # noqa: E731 - "inf" / "-inf" / "nan"
    if flat.size and np.all(flat == flat.flat[0]):
        return plain(float(flat.flat[0]))
    return np.vectorize(plain, otypes=[object])(flat).tolist()


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """A ``Box`` or ``Dict`` of Boxes as JSON (shape, dtype, bounds)."""
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(v) for k, v in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _bound(space.low), "high": _bound(space.high)}  # fmt: skip
    raise ValueError(f"cannot save a policy for a {type(space).__name__} space; expected Box or Dict")


def space_from_json(data: dict[str, Any]) -> spaces.Space:
    """The inverse of :func:`space_to_json`."""
    kind = data.get("type")
    if kind == "Dict":
        return spaces.Dict({k: space_from_json(v) for k, v in data["spaces"].items()})
    if kind == "Box":
        shape, dtype = tuple(data["shape"]), np.dtype(data["dtype"])
        bound = lambda b: np.broadcast_to(np.asarray(b, dtype=np.float64), shape)  # noqa: E731
        return spaces.Box(bound(data["low"]).astype(dtype), bound(data["high"]).astype(dtype), shape, dtype)
    raise ValueError(f"space of type {kind!r} in the policy config; expected 'Box' or 'Dict'")


def policy_alias(algo: str, policy: BasePolicy) -> str:
    """The SB3 alias (``MultiInputPolicy`` ...) under which ``algo`` knows the policy's class."""
    for alias, cls in ALGORITHMS[algo].policy_aliases.items():
        if type(policy) is cls:
            return alias
    raise ValueError(f"{type(policy).__name__} is none of {algo}'s policy aliases; cannot save it as JSON")


def save_policy(
    model: BaseAlgorithm, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``policy.safetensors`` and ``policy.json`` into ``out_dir`` (atomically); returns the weights.

    Args:
        model: a trained SAC / PPO / TD3 model.
        out_dir: the run directory.
        extra: more JSON to store (hyper-parameters, checkpoint, env ...); its keys may not shadow the
            ones this writes.

    Raises:
        ValueError: another algorithm, or policy keyword arguments that are not plain JSON (e.g. an
            activation class): such a policy can only be saved with SB3's pickle zip.
    """
    algo = next((name for name, cls in ALGORITHMS.items() if type(model) is cls), None)
    if algo is None:
        raise ValueError(f"cannot save a {type(model).__name__}; expected one of {list(ALGORITHMS)}")
    kwargs = dict(model.policy_kwargs)
    if algo == "ppo":
        kwargs["use_sde"] = model.use_sde  # PPO passes it beside policy_kwargs
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"policy_kwargs {kwargs!r} are not plain JSON ({e}); save with SB3's pickle zip instead"
        ) from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "algo": algo,
        "policy": policy_alias(algo, model.policy),
        "policy_kwargs": kwargs,
        "observation_space": space_to_json(model.observation_space),
        "action_space": space_to_json(model.action_space),
    }
    clash = sorted(set(config) & set(extra or {}))
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite the policy config's own")
    weights = out / POLICY_WEIGHTS
    with atomic_path(weights) as tmp:
        save_model(model.policy, str(tmp))  # handles PPO's shared feature-extractor tensors
    atomic_write_json(out / POLICY_CONFIG, {**config, **(extra or {})})
    return weights


def load_policy(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[BasePolicy, dict]:
    """Rebuild a policy saved by :func:`save_policy` (no pickle); returns it in eval mode and its config.

    Raises:
        FileNotFoundError: ``policy.json`` or ``policy.safetensors`` is missing from ``run_dir``.
        ValueError: an unknown algorithm or policy alias, or weights that do not fit the config.
    """
    root = Path(run_dir)
    for name in (POLICY_CONFIG, POLICY_WEIGHTS):
        if not (root / name).is_file():
            raise FileNotFoundError(
                f"{root / name} does not exist; expected a run dir written by scripts/rl.py"
            )
    config = json.loads((root / POLICY_CONFIG).read_text())
    algo, alias = config.get("algo"), config.get("policy")
    if algo not in ALGORITHMS:
        raise ValueError(f"{root / POLICY_CONFIG}: algo={algo!r}; expected one of {list(ALGORITHMS)}")
    aliases = ALGORITHMS[algo].policy_aliases
    if alias not in aliases:
        raise ValueError(f"{root / POLICY_CONFIG}: policy={alias!r}; expected one of {sorted(aliases)}")
    obs_space = space_from_json(config["observation_space"])
    act_space = space_from_json(config["action_space"])
    policy = aliases[alias](obs_space, act_space, lambda _: 0.0, **config["policy_kwargs"])
    try:
        load_model(policy, str(root / POLICY_WEIGHTS), strict=True, device="cpu")
    except RuntimeError as e:
        raise ValueError(f"{root / POLICY_WEIGHTS} does not fit the policy its config describes: {e}") from e
    policy = policy.to(device)
    policy.set_training_mode(False)
    return policy, config
