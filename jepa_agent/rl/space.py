"""The planning space as numpy features and rewards: what the RL bridge observes and rewards in.

The planning cost (``WorldModel.cost``) compares an imagined latent frame with the goal's in one space
(``cost.space``): the temporal-distance head's (``metric``), the state readout's (``readout``) or the
latents' own (``latent``); ``auto`` picks the first the model has. :class:`PlanningSpace` exposes that
space to SB3:

* ``features(pixels)``: frames -> flat float32 features ``[B, F]``, computed by the world model's own
  encoder, pooler and normaliser and then by the map the cost itself applies to a latent frame (its
  ``ProjectedGoalCost.project``: the head); for ``latent`` the flattened latent;
* ``distance(achieved, desired)``: the cost's own per-step distance (``jepa_agent.costs.latent_distance``
  with the cost's ``metric``) between rows of features, vectorised over a batch of goals;
* ``reward(achieved, desired)``: ``-distance`` (``dense``), or ``-(distance > epsilon)`` (``sparse``).

The cost's extra terms are not part of the reward by default: the action penalty (``action_weight``) is
not a function of the goal, and the metric space's displacement term (``displacement_weight``) reads a
pair of frames. The metric space's latent term can be: ``latent_weight > 0`` appends the flattened latent
to the head's features, both scaled so that their mean squared distance is the head's plus
``latent_weight`` times the latents' (the planning cost's two terms; :class:`HeadWithLatent`). Features
and distances are float32 and the distance of a row never depends on the other rows of its batch, so a
reward recomputed from stored features (HER's ``compute_reward``) equals the step reward bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from jepa_agent.costs import METRICS, CostConfig, latent_distance
from jepa_agent.models.vit import pixels_to_images
from jepa_agent.world_model import WorldModel

REWARDS = ("dense", "sparse")
GOAL_METHOD = "render_goal"  # the env method that returns the goal image (our tasks' ReachEnv / PushEnv)


def planning_projection(model: WorldModel, space: str = "auto") -> tuple[str, nn.Module | None]:
    """The resolved cost space and the map the planning cost applies to one latent frame in it.

    The map is read from the cost itself (``model.cost(...)``: its ``project``, the model's metric head
    or state readout), so the features are the ones the planner compares; None for ``latent`` (the cost
    compares the latents themselves).

    Raises:
        ValueError: an unknown space, or one the model lacks (the model's own message, naming it).
    """
    resolved = model.resolve_cost_space(space)
    if resolved == "metric" and model.metric_kind == "critic":
        raise ValueError(
            f"cost.space={space}: this world model's metric head is a goal critic "
            "(world_model.metric.kind=critic), which reads a frame and a goal together and gives no features "
            "of a frame alone to observe; use space=latent (or a model with a distance head)"
        )
    probe_goal = torch.zeros(model.latent_shape, device=model.device)  # [N, D]: any latent frame will do
    cost = model.cost(probe_goal, space=resolved, reduction="final", action_weight=0.0, latent_weight=0.0,
                      displacement_weight=0.0)  # fmt: skip
    return resolved, getattr(cost, "project", None)


class HeadWithLatent(nn.Module):
    """A cost head's features beside the flattened latent ``[B, N, D] -> [B, F + N * D]``, scaled so that
    their mean squared distance is the head's plus ``weight`` times the latents' (the planning cost's
    ``latent_weight`` term): with ``F`` and ``L = N * D`` features, the head's are scaled by
    ``sqrt((F + L) / F)`` and the latent's by ``sqrt(weight * (F + L) / L)``."""

    def __init__(self, head: nn.Module, head_dim: int, latent_dim: int, weight: float) -> None:
        super().__init__()
        total = head_dim + latent_dim
        self.head = head
        self.head_scale = (total / head_dim) ** 0.5
        self.latent_scale = (weight * total / latent_dim) ** 0.5

    def forward(self, z: Tensor) -> Tensor:
        feats = self.head(z).reshape(z.shape[0], -1)  # [B, F]
        return torch.cat([self.head_scale * feats, self.latent_scale * z.reshape(z.shape[0], -1)], dim=-1)


def check_image_size(model: WorldModel, pixel_shape: tuple[int, ...], what: str) -> None:
    """Refuse pixels ``[S, S, 3]`` the world model was not trained on, naming both sizes."""
    s = model.image_size
    if len(pixel_shape) == 3 and pixel_shape[0] == 3 and pixel_shape[-1] != 3:
        raise ValueError(
            f"{what} has channel-first pixels {list(pixel_shape)}; expected the env's own channel-last "
            f"[{s}, {s}, 3] frames (wrap the VecEnv before any VecTransposeImage)"
        )
    if len(pixel_shape) != 3 or pixel_shape[-1] != 3 or pixel_shape[0] != s or pixel_shape[1] != s:
        where = f" {model.meta['checkpoint']!r}" if model.meta.get("checkpoint") else ""
        raise ValueError(
            f"{what} has pixels of shape {list(pixel_shape)} but the world model{where} takes "
            f"[{s}, {s}, 3] images; make the env with image_size={s}"
        )


class PlanningSpace:
    """A world model's planning space as numpy features, distance and reward (see the module docstring).

    Args:
        model: the world model (its encoder, pooler, normaliser and cost head are used as they are).
        space: ``auto`` | ``metric`` | ``readout`` | ``latent`` (as ``cost.space``).
        metric: the cost's distance in that space (``mse`` | ``l1`` | ``l2`` | ``cosine``; default the
            planning cost's).
        reward: ``dense`` (``-distance``) or ``sparse`` (``-1`` beyond ``epsilon``, else ``0``).
        epsilon: the sparse reward's success radius in ``metric`` units (required for ``sparse``;
            calibrate it on data: e.g. the distance's quantile at ``info["is_success"]``).
        batch_size: frames per encoder call.
        latent_weight: with the ``metric`` space and the ``mse`` distance, add ``latent_weight`` times the
            latents' own mean squared distance, as the planning cost's ``latent_weight`` does (0: the head
            alone; the features then include the flattened latent: :class:`HeadWithLatent`).

    Raises:
        ValueError: a bad ``metric``, ``reward``, ``epsilon`` or ``latent_weight``, or one the space
            cannot take, each named.
    """

    def __init__(
        self,
        model: WorldModel,
        space: str = "auto",
        metric: str = CostConfig.metric,
        reward: str = "dense",
        epsilon: float | None = None,
        batch_size: int = 256,
        latent_weight: float = 0.0,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r}; expected one of {list(METRICS)}")
        if reward not in REWARDS:
            raise ValueError(f"reward={reward!r}; expected one of {list(REWARDS)}")
        if reward == "sparse" and (epsilon is None or not epsilon > 0):
            raise ValueError(
                f"reward='sparse' needs epsilon > 0 (the success radius in {metric} units); got {epsilon!r}"
            )
        self.model = model
        self.name, self.project = planning_projection(model, space)
        self.metric, self.reward_kind = metric, reward
        self.epsilon = None if epsilon is None else float(epsilon)
        self.batch_size = int(batch_size)
        self.latent_weight = float(latent_weight)
        if not self.latent_weight >= 0:
            raise ValueError(f"latent_weight={latent_weight!r}; expected a number >= 0")
        if self.latent_weight > 0 and (self.name != "metric" or metric != "mse"):
            raise ValueError(
                f"latent_weight={latent_weight} adds the latents' mean squared distance to the metric "
                f"head's; it needs space=metric and metric=mse, got space={self.name} and metric={metric}"
            )
        n, d = model.latent_shape
        if self.latent_weight > 0:
            with torch.inference_mode():
                head_dim = int(self.project(torch.zeros(1, n, d, device=model.device)).shape[-1])
            self.project = HeadWithLatent(self.project, head_dim, n * d, self.latent_weight)
        if self.project is None:
            self.step_shape: tuple[int, int] = (n, d)  # one imagined step as the cost sees it
        else:
            with torch.inference_mode():
                out = self.project(torch.zeros(1, n, d, device=model.device))  # [1, F]
            self.step_shape = (1, int(out.shape[-1]))
        self.dim = self.step_shape[0] * self.step_shape[1]

    def box(self) -> spaces.Box:
        """The unbounded float32 ``Box((F,))`` of the features."""
        return spaces.Box(-np.inf, np.inf, shape=(self.dim,), dtype=np.float32)

    def project_latents(self, z: Tensor) -> Tensor:
        """Latent frames ``[B, N, D]`` -> features ``[B, F]`` (differentiable; no mode is set here)."""
        feats = z if self.project is None else self.project(z)  # [B, N, D] or [B, F]
        return feats.reshape(z.shape[0], self.dim)

    @torch.inference_mode()
    def features(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 frames ``[B, H, W, 3]`` -> float32 features ``[B, F]`` (one encoder call per batch)."""
        z = self.model.encode_pixels(np.asarray(pixels), batch_size=self.batch_size)  # [B, N, D]
        return self.project_latents(z).float().cpu().numpy()

    def distance(self, achieved: np.ndarray, desired: np.ndarray) -> np.ndarray:
        """The cost's distance between feature rows ``[..., F]`` (broadcast) -> float32 ``[...]``."""
        a = np.asarray(achieved, dtype=np.float32)
        d = np.asarray(desired, dtype=np.float32)
        a, d = np.broadcast_arrays(a, d)
        if a.shape[-1:] != (self.dim,):
            raise ValueError(f"goals of shape {a.shape}; expected [..., {self.dim}] ({self.name} features)")
        lead = a.shape[:-1]
        flat = (-1, 1, *self.step_shape)  # [B, 1, N, D]: B samples of a one-step "rollout"
        ta = torch.from_numpy(np.ascontiguousarray(a)).reshape(flat)
        td = torch.from_numpy(np.ascontiguousarray(d)).reshape(flat)
        with torch.inference_mode():
            dist = latent_distance(ta, td, self.metric)[:, 0]  # [B]
        return dist.numpy().astype(np.float32, copy=False).reshape(lead)

    def reward(self, achieved: np.ndarray, desired: np.ndarray) -> np.ndarray:
        """float32 reward ``[...]`` for feature rows ``[..., F]`` (see :class:`PlanningSpace`)."""
        dist = self.distance(achieved, desired)
        if self.reward_kind == "sparse":
            return -(dist > self.epsilon).astype(np.float32)
        return -dist


ENCODER_PATHS = ("traced", "eager")


class _PixelsToFeatures(nn.Module):
    """uint8 frames ``[B, H, W, 3]`` -> features ``[B, F]``: the world model's encoder, pooler and
    normaliser, then the cost's projection (what :meth:`PlanningSpace.features` computes), as one module."""

    def __init__(self, space: PlanningSpace) -> None:
        super().__init__()
        m = space.model
        self.encoder, self.pooler, self.normalizer = m.encoder, m.pooler, m.normalizer
        self.project, self.dim = space.project, space.dim

    def forward(self, pixels: Tensor) -> Tensor:
        images = pixels_to_images(pixels, pixels.device)
        z = self.normalizer.latent(self.pooler(self.encoder.encode_images(images)))  # [B, N, D]
        feats = z if self.project is None else self.project(z)
        return feats.reshape(z.shape[0], self.dim)


def checked_trace(
    module: nn.Module, x: Tensor, reference: Callable[[], Tensor], tolerance: float, what: str, hint: str = ""
) -> Any:
    """``module`` traced on ``x`` as one frozen TorchScript graph, checked against ``reference()`` (the eager
    output on ``x``): more than ``tolerance`` away (relative, in norm) raises, naming ``what``, rather than
    feed a policy garbage."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and deprecation notes: the graph is checked below
        graph = torch.jit.freeze(torch.jit.trace(module, x, check_trace=False))
        fast = graph(x)
    ref = reference()
    err = float((fast.float().cpu() - ref.float().cpu()).norm() / ref.norm().clamp_min(1e-12))
    if not err <= tolerance:
        raise RuntimeError(
            f"{what} are {err:.3g} away from the eager ones (relative; tolerance {tolerance}){hint}"
        )
    return graph


class FastFeatures:
    """:meth:`PlanningSpace.features` for a policy's per-decision frames, at inference-graph speed.

    ``path="traced"``: the whole pixels-to-features computation as one frozen TorchScript graph (no Python
    between the encoder's ops; a copy, so the world model is untouched); ``"eager"``:
    :meth:`PlanningSpace.features` itself. A graph is traced per batch size at its first use and checked
    there against the eager path: features more than ``tolerance`` (relative, in norm) away raise, rather
    than feed a policy garbage.

    On the 2-core dev VM, one 64 px frame: eager 2.7-3.2 ms, traced 2.2 ms (docs/benchmarks.md, which also
    says why int8 quantisation and ``torch.compile`` were dropped).
    """

    def __init__(self, space: PlanningSpace, path: str = "traced", tolerance: float = 1e-3) -> None:
        if path not in ENCODER_PATHS:
            raise ValueError(f"encoder path {path!r}; expected one of {list(ENCODER_PATHS)}")
        self.space, self.path, self.tolerance = space, path, float(tolerance)
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._module: nn.Module | None = None
        if path != "eager":  # a copy in eval mode: the world model's modules and modes stay as they are
            import copy

            self._module = copy.deepcopy(_PixelsToFeatures(space)).eval()

    def _graph(self, x: Tensor) -> Any:
        key = tuple(x.shape)
        if key not in self._graphs:
            self._graphs[key] = checked_trace(
                self._module, x, lambda: torch.from_numpy(self.space.features(x.cpu().numpy())),
                self.tolerance, f"the {self.path} encoder path's features",
                "; use encoder path 'eager' for this model",
            )  # fmt: skip
        return self._graphs[key]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 frames ``[B, H, W, 3]`` -> float32 features ``[B, F]``."""
        if self._module is None:
            return self.space.features(pixels)
        x = torch.as_tensor(np.ascontiguousarray(pixels)).to(self.space.model.device)
        if x.dim() != 4 or x.dtype != torch.uint8:
            raise ValueError(f"pixels {tuple(x.shape)} {x.dtype}; expected uint8 [B, H, W, 3]")
        check_image_size(self.space.model, tuple(x.shape[1:]), "the frame")
        with torch.inference_mode():
            return self._graph(x)(x).float().cpu().numpy()


def goal_image_fn(env: Any, goal_method: str = GOAL_METHOD) -> Callable[[], np.ndarray]:
    """The env's goal-image method (found through its wrappers), or one clear error."""
    try:
        fn = env.get_wrapper_attr(goal_method)
    except AttributeError:
        fn = None
    if not callable(fn):
        spec = getattr(env, "spec", None)
        name = spec.id if spec is not None else type(getattr(env, "unwrapped", env)).__name__
        raise ValueError(
            f"env {name!r} has no {goal_method}() method; expected an env whose {goal_method}() returns the "
            "goal image (uint8 [H, W, 3]), or pass goal_method=<the name of the env's goal-image method>"
        )
    return fn
