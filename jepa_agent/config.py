"""Configurator: typed Hydra configs (structured-config schemas in Hydra's ConfigStore).

Each swappable part's schema lives beside the code it configures and is registered here, so that a
composed config is typed: a misspelt key or a value of the wrong type fails when Hydra composes the
config, naming the key, before anything is built.

* ``planner/cem``, ``planner/mppi``, ``planner/gd`` and the ``agent`` block are derived from the
  constructors' signatures (:func:`signature_schema`): the constructor's defaults *are* the config's,
  so a script and ten lines of Python plan with the same budget, and no YAML file mirrors them.
* ``cost/default`` is :class:`jepa_agent.costs.CostConfig` (``WorldModel.cost`` takes the same defaults).
* ``env/schema`` (:class:`envs.EnvConfig`; ``env/push_schema`` extends it, see ``envs.ENV_SCHEMAS``) and
  ``world_model/schema`` (:class:`jepa_agent.world_model.WorldModelConfig`) type the YAML files of those
  groups, which extend them.

Call :func:`register_configs` before composing (every script does, via :func:`hydra_main`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PLAIN = (int, float, bool, str)


def _field_type(annotation: Any) -> Any:
    """An OmegaConf-supported type for a signature annotation: ``int``, ``float | None`` ... else ``Any``."""
    if annotation in PLAIN:
        return annotation
    args = typing.get_args(annotation)
    if (
        typing.get_origin(annotation) in (typing.Union, types.UnionType)
        and len(args) == 2
        and type(None) in args
    ):
        inner = next(a for a in args if a is not type(None))
        if inner in PLAIN:
            return Optional[inner]  # noqa: UP045 - OmegaConf wants typing.Optional, not X | None
    return Any  # tensors, sequences, unions of several types: left untyped


def signature_schema(
    fn: Callable[..., Any], name: str, skip: tuple[str, ...] = (), target: str | None = None
) -> type:
    """A dataclass with one typed field per keyword argument of ``fn`` (its defaults as the fields'),
    less ``skip``; with a ``_target_`` field when ``target`` is given (for ``hydra.utils.instantiate``)."""
    hints = typing.get_type_hints(fn)
    fields: list[tuple[str, Any, Any]] = []
    if target is not None:
        fields.append(("_target_", str, dataclasses.field(default=target)))
    for p in inspect.signature(fn).parameters.values():
        if p.name in ("self", *skip) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{fn.__qualname__}: argument {p.name!r} has no default; skip it or give one")
        fields.append((p.name, _field_type(hints.get(p.name, Any)), dataclasses.field(default=p.default)))
    return dataclasses.make_dataclass(name, fields)


def planner_schemas() -> dict[str, type]:
    """``planner=`` choices -> schema (the planner class's constructor; ``action_dim`` comes from the env)."""
    from planners import CEMPlanner, GDPlanner, MPPIPlanner

    return {
        name: signature_schema(cls.__init__, f"{cls.__name__}Config", skip=("action_dim",),
                               target=f"{cls.__module__}.{cls.__name__}")
        for name, cls in (("cem", CEMPlanner), ("mppi", MPPIPlanner), ("gd", GDPlanner))
    }  # fmt: skip


def agent_schema() -> type:
    """The ``agent`` block: :class:`MPCAgent`'s own settings (the model, planner, bounds and cost come
    from elsewhere)."""
    from jepa_agent.agent import MPCAgent

    skip = ("model", "planner", "action_low", "action_high", "cost")
    return signature_schema(MPCAgent.__init__, "AgentConfig", skip=skip)


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    from envs import ENV_SCHEMAS
    from jepa_agent.costs import CostConfig
    from jepa_agent.world_model import WorldModelConfig

    cs = ConfigStore.instance()
    for name, schema in planner_schemas().items():
        cs.store(group="planner", name=name, node=schema)
    cs.store(group="cost", name="default", node=CostConfig)
    cs.store(group="agent", name="default", node=agent_schema())
    for name, schema in ENV_SCHEMAS.items():
        cs.store(group="env", name=name, node=schema)
    cs.store(group="world_model", name="schema", node=WorldModelConfig)


def compose_config(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """``configs/<config_name>.yaml`` composed with ``overrides`` as a script would (schemas registered),
    for tests, benchmarks, notebooks and the Python API (e.g. :func:`jepa_agent.collect.task_policy_kwargs`).

    It also works inside a running Hydra app (a script, ours or a user's, that calls the API): that app's
    Hydra is set aside while this one composes, then put back as it was."""
    register_configs()
    gh = GlobalHydra.instance()
    running, gh.hydra = gh.hydra, None
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            return compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().hydra = running  # the singleton initialize_config_dir restored on exit


def config_error_line(error: BaseException) -> str:
    """One line for a composition error: the key, what is wrong, and what was expected.

    Hydra reports a bad override over several lines (and an OmegaConf error chained under its own);
    this names the full key, the problem, and for an unknown key the schema's keys.
    """
    inner: BaseException | None = error
    while inner is not None and not isinstance(inner, OmegaConfBaseException):
        inner = inner.__cause__ or inner.__context__
    if inner is None:  # e.g. a config group option that does not exist: Hydra lists the options
        text = str(error).split("Config search path")[0]  # Hydra's search path is noise here
        lines = [x.strip() for x in text.splitlines() if x.strip()]
        first = lines[0].split(": ", 1)[-1]  # without Hydra's "In 'plan': "
        if len(lines) > 1 and lines[1].endswith(":"):  # "Available options in 'planner':" + one per line
            return f"{first}; {lines[1].lower()} {', '.join(lines[2:])}"
        return "; ".join([first, *lines[1:]])
    msg = str(getattr(inner, "msg", None) or inner).splitlines()[0].strip()
    key = getattr(inner, "full_key", None)
    line = f"{key}: {msg}" if key else msg
    schema = getattr(inner, "object_type", None)
    if isinstance(inner, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(schema):
        keys = [f.name for f in dataclasses.fields(schema) if f.name != "_target_"]
        line += f"; expected one of {keys}"
    return line


def check_overrides(config_name: str, argv: list[str], script: str) -> None:
    """Compose ``config_name`` with the command line's overrides and exit with one line naming the key
    when that fails (a misspelt key, a value of the wrong type, an unknown group option). Hydra's own
    flags (``--help``, ``--cfg``, ``-m`` ...) are left to Hydra."""
    if any(a.startswith("-") for a in argv):
        return
    try:
        compose_config(config_name, argv)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise SystemExit(f"{script}: error: {config_error_line(e)}") from None


def hydra_main(config_name: str) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """``@hydra.main`` over ``configs/`` with the schemas registered first and the command line's
    overrides checked up front (:func:`check_overrides`): every script's entry point."""
    register_configs()

    def decorate(task: Callable[..., Any]) -> Callable[..., None]:
        main = hydra.main(version_base=None, config_path=str(CONFIGS), config_name=config_name)(task)

        @functools.wraps(task)
        def entry() -> None:
            check_overrides(config_name, sys.argv[1:], Path(sys.argv[0]).name or "jepa-agent")
            main()

        return entry

    return decorate
