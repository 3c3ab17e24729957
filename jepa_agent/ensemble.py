"""An ensemble of world models planned with as one (PETS-style disagreement as a cost).

Every member imagines the same candidate action sequences from its own encoding of the same frames; the
cost of a sequence is the members' mean cost plus ``disagreement`` times their standard deviation, so the
planner prefers futures the members agree on. Members are world models of one task trained apart (e.g.
``train_world_model.py ... seed=1``) with the same context; their costs are in the same units when they
use the same cost space (the temporal-distance head counts steps).

On a CPU with several torch threads the members imagine and score side by side, each on its own share of
the threads (:class:`MemberRunner`): a member's rollout is a chain of small matrix products that one core
runs at about 0.8x the speed of two, so K members, one per core, beat the K one after the other on all
cores (docs/benchmarks.md, momentum section, twelfth session). The results are the same bit for bit as one
after the other (tested).

    ensemble = WorldModelEnsemble([WorldModel.from_checkpoint(a), WorldModel.from_checkpoint(b)])
    agent = MPCAgent(ensemble, CEMPlanner(action_dim=2))        # plan.py: 'checkpoint=[A,B]'
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from jepa_agent.world_model import WorldModel


class MemberRunner:
    """Runs one call per member, side by side on a CPU with torch threads to share, else one by one.

    With ``T = torch.get_num_threads()`` (read at each call) and K members, ``min(K, T)`` worker threads
    each run with ``T // workers`` torch threads while the caller waits: the cores are shared, not
    oversubscribed (torch's thread count is process-wide, so it is lowered for the call and restored
    after it). A worker runs under the caller's grad and inference modes (both are per thread in torch).
    On CUDA, with one thread, or with ``parallel=False``, the calls run in order in the caller's thread.
    """

    def __init__(self, parallel: bool = True) -> None:
        self.parallel = bool(parallel)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_workers = 0
        self._finalizer: Any = None

    def workers(self, members: int, device: torch.device) -> int:
        """How many members run at once (1: in order, in the caller's thread)."""
        threads = torch.get_num_threads()
        if not self.parallel or device.type != "cpu" or members < 2 or threads < 2:
            return 1
        return min(members, threads)

    def _get_pool(self, workers: int) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_workers != workers:
            self.close()
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ensemble-member")
            self._pool_workers = workers
            self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    def map(self, fn: Callable[..., Any], *iterables: Sequence[Any], device: torch.device) -> list[Any]:
        """``[fn(*args) for args in zip(*iterables)]``, the calls side by side where that pays."""
        calls = list(zip(*iterables, strict=True))
        workers = self.workers(len(calls), device)
        if workers == 1:
            return [fn(*args) for args in calls]
        threads = torch.get_num_threads()
        share = threads // workers
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(args: tuple[Any, ...]) -> Any:
            torch.set_num_threads(share)  # (also the worker's own BLAS setting, which is per thread)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(*args)

        pool = self._get_pool(workers)
        torch.set_num_threads(share)
        try:
            return list(pool.map(run, calls))
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        """Stop the worker threads (a later call starts new ones)."""
        if self._finalizer is not None:
            self._finalizer()
        self._pool, self._pool_workers, self._finalizer = None, 0, None


class EnsembleCost:
    """The members' costs of the same action sequences -> mean + ``disagreement`` x std, ``[S]``.

    Forwards what the agent tells a cost (the current frame, the action taken last) to the members that
    read it, and asks the ensemble's rollout for each member's ``rollout_projection``.
    """

    def __init__(self, costs: Sequence[Any], disagreement: float, runner: MemberRunner | None = None) -> None:
        self.costs = list(costs)
        self.disagreement = float(disagreement)
        self.runner = runner if runner is not None else MemberRunner(parallel=False)
        projections = tuple(getattr(c, "rollout_projection", None) for c in self.costs)
        self.rollout_projection = None if all(p is None for p in projections) else projections

    def set_start(self, state: Sequence[Any]) -> None:
        for cost, s in zip(self.costs, state, strict=True):
            if hasattr(cost, "set_start"):
                cost.set_start(s)

    def set_last_action(self, action: Tensor | None) -> None:
        for cost in self.costs:
            if hasattr(cost, "set_last_action"):
                cost.set_last_action(action)

    def members(self, preds: Sequence[Any], actions: Tensor) -> Tensor:
        """Each member's cost of each sequence, ``[K, S]``."""
        device = actions.device if isinstance(actions, Tensor) else torch.device("cpu")
        return torch.stack(
            self.runner.map(lambda cost, p: cost(p, actions), self.costs, preds, device=device)
        )

    def __call__(self, preds: Sequence[Any], actions: Tensor) -> Tensor:
        c = self.members(preds, actions)  # [K, S]
        return c.mean(0) + self.disagreement * c.std(0, correction=0)


class WorldModelEnsemble:
    """K world models behind the agent's planning-model interface (:class:`~jepa_agent.agent.PlanningModel`).

    Args:
        members: two or more world models of one env, image size, action size and context.
        disagreement: weight of the members' cost spread (0: their mean cost alone).
        parallel: let the members imagine and score side by side on a CPU with several torch threads
            (:class:`MemberRunner`); False: one after the other.

    Raises:
        ValueError: fewer than two members, members that do not fit together (naming the setting), or a
            negative ``disagreement``.
    """

    def __init__(
        self, members: Sequence[WorldModel], disagreement: float = 1.0, parallel: bool = True
    ) -> None:
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs >= 2 world models; got {len(members)}")
        if not float(disagreement) >= 0:
            raise ValueError(f"disagreement={disagreement!r}; expected a number >= 0")
        first = members[0]
        for m in members[1:]:
            for key, get in (
                ("env_id", lambda w: w.meta.get("env_id")),
                ("image_size", lambda w: w.encoder.img_size),
                ("action_dim", lambda w: w.action_dim),
                ("action_chunk", lambda w: w.action_chunk),
                ("context_frames", lambda w: w.context_frames),
            ):
                if get(m) != get(first):
                    raise ValueError(
                        f"ensemble members differ in {key}: {get(first)!r} ({first.meta.get('checkpoint')}) "
                        f"and {get(m)!r} ({m.meta.get('checkpoint')}); use world models of one task and "
                        "context"
                    )
        self.members = members
        self.disagreement = float(disagreement)
        self.runner = MemberRunner(parallel)
        self.meta = {"checkpoint": [m.meta.get("checkpoint") for m in members]}

    @property
    def context_frames(self) -> int:
        return self.members[0].context_frames

    @property
    def action_dim(self) -> int:
        return self.members[0].action_dim

    @property
    def action_chunk(self) -> int:
        return self.members[0].action_chunk

    @property
    def anchor_trained(self) -> bool:  # the agent then encodes frames for the members' anchor heads
        return all(getattr(m, "anchor_trained", False) for m in self.members)

    @property
    def state_labels(self) -> bool:
        return any(m.state_labels for m in self.members)

    @property
    def metric_kind(self) -> str | None:
        """The members' metric head kind (``distance`` / ``critic``), ``"mixed"`` where they differ."""
        kinds = {getattr(m, "metric_kind", None) for m in self.members}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def resolve_cost_space(self, space: str) -> str:
        """The one cost space every member resolves ``space`` to (members in different spaces: refused)."""
        spaces = [m.resolve_cost_space(space) for m in self.members]
        if len(set(spaces)) > 1:
            raise ValueError(
                f"cost.space={space} resolves to {spaces} across the ensemble's members; their costs would "
                "not be in the same units: pass one space they all have"
            )
        return spaces[0]

    def resolve_latent_weight(self, *args: Any, **kwargs: Any) -> float | None | list[float | None]:
        """The members' :meth:`WorldModel.resolve_latent_weight` (one value when they agree)."""
        weights = [m.resolve_latent_weight(*args, **kwargs) for m in self.members]
        return weights[0] if len(set(weights)) == 1 else weights

    def encode(self, obs: dict[str, Any], **options: Any) -> tuple[Any, ...]:
        return tuple(m.encode(obs, **options) for m in self.members)

    def encode_goal(self, goal: dict[str, Any], **options: Any) -> tuple[Any, ...]:
        return tuple(m.encode_goal(goal, **options) for m in self.members)

    def context(self, states: list[Sequence[Any]], actions: Any = None) -> tuple[Any, ...]:
        return tuple(m.context([s[k] for s in states], actions) for k, m in enumerate(self.members))

    def rollout(self, context: Sequence[Any], actions: Tensor, project: Sequence[Any] | None = None,
                **kwargs: Any) -> tuple[Tensor, ...]:  # fmt: skip
        projects = project if project is not None else [None] * len(self.members)
        return tuple(
            self.runner.map(
                lambda m, c, p: m.rollout(c, actions, project=p, **kwargs),
                self.members, context, projects, device=self.members[0].device,
            )
        )  # fmt: skip

    def cost(self, goal: Sequence[Any], **options: Any) -> EnsembleCost:
        """Each member's :meth:`WorldModel.cost` towards its own goal encoding (``options``: CostConfig's
        fields), combined by :class:`EnsembleCost`."""
        return EnsembleCost([m.cost(g, **options) for m, g in zip(self.members, goal, strict=True)],
                            self.disagreement, self.runner)  # fmt: skip
