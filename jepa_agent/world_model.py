"""World model: frozen encoder -> pooled latent state -> action-conditioned predictor.

``WorldModel`` is what planning needs (it satisfies ``jepa_agent.agent.PlanningModel``):

* ``encode(obs)``: pixels (+ proprio) -> :class:`LatentState` (``z [.., N, D]`` tokens per frame);
* ``context(states, actions)`` / ``rollout(context, actions [S, H, A]) -> z [S, H, N, D]``: imagination,
  batched over samples with the predictor's key/value cache, under ``torch.inference_mode()`` (or with
  gradients when the actions require them, for the gradient planner);
* ``encode_goal(goal)`` and ``cost(goal)``: a goal image -> goal :class:`LatentState` -> the planning cost.

The latent is compact by default: :class:`~jepa_agent.models.latent.LatentPooler` pools the encoder's
patch tokens; :class:`~jepa_agent.models.latent.Normalizer` standardises latents, actions and proprio;
:class:`~jepa_agent.models.latent.StateReadout` maps a latent to joint angles for the readout cost
(all three live in ``jepa_agent/models/latent.py`` and are re-exported here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from jepa_agent.checkpoint import (
    CheckpointError,
    load_config,
    load_into,
    load_meta,
    resolve_checkpoint,
    save_checkpoint,
)
from jepa_agent.config import signature_schema
from jepa_agent.costs import (
    SPACES,
    AnchorCost,
    Cost,
    CostConfig,
    CriticGoalCost,
    DisplacementCost,
    LatentGoalCost,
    MetricLatentCost,
    ProjectedGoalCost,
    RestCost,
    ScaledCost,
    default_latent_weight,
    goal_latent,
    with_action_terms,
)
from jepa_agent.models.ac_predictor import ACPredictor, ac_predictor_config
from jepa_agent.models.latent import (
    POOLINGS,
    AnchorHead,
    DisplacementHead,
    GoalCritic,
    LatentPooler,
    Normalizer,
    StateReadout,
    TemporalDistanceHead,
    variance_loss,
)
from jepa_agent.models.vit import VideoViT, build_encoder, encoder_config, pixels_to_images
from jepa_agent.utils import check_int, resolve_device

KIND = "world_model"
__all__ = [
    "POOLINGS",
    "Context",
    "LatentPooler",
    "LatentState",
    "Normalizer",
    "StateReadout",
    "TemporalDistanceHead",
    "WorldModel",
    "build_world_model",
    "resolve_checkpoint",
    "save_world_model",
    "variance_loss",
    "world_model_config",
]


# -- config schema (the world_model group: configs/world_model/*.yaml extend it) ----------------------
PredictorConfig = signature_schema(
    ACPredictor.__init__, "PredictorConfig", skip=("latent_dim", "action_dim", "num_tokens", "proprio_dim")
)  # the predictor's own sizes: its constructor's arguments and defaults


@dataclass
class ReadoutConfig:
    """The state readout (a labelled baseline's metric space): ``angles`` leading proprio dims (0: none)."""

    angles: int = 0
    wrap: list[int] = field(default_factory=list)  # the continuous joints, read out as (cos, sin)
    hidden: int = 256


METRIC_KINDS = ("distance", "critic")  # world_model.metric.kind


@dataclass
class MetricConfig:
    """The temporal-distance head (the label-free planning space, ``cost.space=metric``; 0: none).

    ``kind``: ``distance`` (:class:`TemporalDistanceHead`, ``||phi(s) - phi(g)||``, symmetric) or ``critic``
    (:class:`GoalCritic`, the steps read from the pair, asymmetric: push). ``dim`` is the distance head's
    output width (any ``dim > 0`` turns a critic on; it has one output)."""

    dim: int = 32
    hidden: int = 256
    kind: str = "distance"

    def __post_init__(self) -> None:
        if self.kind not in METRIC_KINDS:
            raise ValueError(f"world_model.metric.kind={self.kind!r}; expected one of {list(METRIC_KINDS)}")


@dataclass
class DisplacementConfig:
    """The displacement head (summed actions between a frame and a goal frame; label-free; 0: none)."""

    hidden: int = 192  # 256 puts the flat reach's checkpoint over 10 MB (docs/benchmarks.md)
    inputs: str = "pair"  # "pair" | "diff": how the two frames meet (DisplacementHead)


@dataclass
class AnchorConfig:
    """The anchor head (summed actions from a real frame's patch tokens to the goal's; label-free)."""

    hidden: int = 0  # the env config turns it on where the scene changes every episode (reach_distracting)
    channels: int = 16  # per-token projection width
    inputs: str = "diff"  # "diff" | "pair": what its MLP reads (AnchorHead)
    token_hidden: int = 0  # > 0: the per-token projection is an MLP of this width (0: linear)


@dataclass
class WorldModelConfig:
    """How frozen patch tokens become the latent state, and the predictor over it (see compact.yaml)."""

    pooling: str = "grid"  # one of POOLINGS
    grid_size: int = 4
    flatten: bool = True
    frame_tokens: int = 1  # with flatten: join the pooled tokens into this many per frame (see compact.yaml)
    attentive_queries: int = 4
    attentive_heads: int = 4
    normalize: bool = True
    use_proprio: bool = False
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    displacement: DisplacementConfig = field(default_factory=DisplacementConfig)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)  # type: ignore[valid-type]


# -- test-time views of a frame for the anchor head ---------------------------------------------------
ANCHOR_VIEW_OFFSETS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (dy, dx) in units of the shift


def check_anchor_shift(shift: Any, image_size: int) -> None:
    """``cost.anchor_shift`` must be an int in ``[0, image_size / 8]``, naming the bad value."""
    whole = isinstance(shift, (int, np.integer)) and not isinstance(shift, bool)
    if not whole or not 0 <= shift <= image_size // 8:
        raise ValueError(
            f"cost.anchor_shift={shift!r}; expected an int number of pixels in [0, {image_size // 8}] for "
            f"{image_size}-px frames (0: read the anchor head from the frame alone)"
        )


def anchor_views(images: Tensor, shift: int) -> Tensor:
    """Float images ``[B, 3, H, W]`` -> ``[B, V, 3, H, W]``: each image itself, then translated by ``shift``
    pixels both ways along each axis (:data:`ANCHOR_VIEW_OFFSETS`), edges replicated.

    The anchor head reads a frame and the goal image through the same views and averages its readings
    (:class:`~jepa_agent.costs.AnchorCost`): its error near the goal is partly how the patch grid happens
    to cut the arm, which a few-pixel translation redraws (docs/benchmarks.md, eighth session)."""
    _, _, height, width = images.shape
    padded = nn.functional.pad(images, (shift, shift, shift, shift), mode="replicate")
    tops_lefts = [(shift * (1 + dy), shift * (1 + dx)) for dy, dx in ANCHOR_VIEW_OFFSETS]
    crops = [padded[:, :, top : top + height, left : left + width] for top, left in tops_lefts]
    return torch.stack(crops, dim=1)


# -- state containers ------------------------------------------------------------------------------
class LatentState(NamedTuple):
    """One (or a batch of) encoded observation(s): ``z [.., N, D]``, normalised proprio ``[.., P]``, and
    the :class:`AnchorHead`'s embedding of the frame's patch tokens ``[.., hidden]`` (models with a trained
    one; ``[.., V, hidden]`` of :func:`anchor_views` when encoded with ``anchor_shift``)."""

    z: Tensor
    proprio: Tensor | None = None
    anchor: Tensor | None = None


@dataclass
class Context:
    """What a rollout starts from: ``C`` observed frames (batch 1 or S) and the ``C - 1`` actions between."""

    z: Tensor  # [B, C, N, D]
    actions: Tensor | None = None  # [B, C-1, A], normalised
    proprio: Tensor | None = None  # [B, C, P], normalised

    @property
    def device(self) -> torch.device:
        return self.z.device


class WorldModel(nn.Module):
    """Frozen encoder + pooler + action-conditioned predictor (+ normalisation statistics).

    Args:
        encoder: the frozen video encoder (its ``encode_images`` gives per-frame patch tokens).
        pooler: patch tokens -> latent tokens.
        predictor: the :class:`ACPredictor` over pooled latents.
        normalizer: action/proprio statistics (identity when None).
        meta: ``env_id``, ``image_size`` ... describing what the model was trained on (checked on use).
        readout: optional :class:`StateReadout` (the labelled baseline's space, ``cost(space="readout")``).
        metric: optional :class:`TemporalDistanceHead` or :class:`GoalCritic` (the label-free space,
            ``cost(space="metric")``).
        displacement: optional :class:`DisplacementHead` (summed actions to the goal; a term of the metric
            cost, ``cost.displacement_weight``).
        anchor: optional :class:`AnchorHead` (the same, read from a real frame's patch tokens once per
            replan and carried forward by the planned actions; ``cost.anchor_weight``).
    """

    def __init__(
        self,
        encoder: VideoViT,
        pooler: LatentPooler,
        predictor: ACPredictor,
        normalizer: Normalizer | None = None,
        meta: dict[str, Any] | None = None,
        readout: StateReadout | None = None,
        metric: TemporalDistanceHead | GoalCritic | None = None,
        displacement: DisplacementHead | None = None,
        anchor: AnchorHead | None = None,
    ) -> None:
        super().__init__()
        if pooler.embed_dim != encoder.embed_dim or predictor.latent_dim != pooler.out_dim:
            raise ValueError(
                f"encoder dim {encoder.embed_dim}, pooler dim {pooler.embed_dim} (out {pooler.out_dim}) and "
                f"predictor latent_dim {predictor.latent_dim} do not agree"
            )
        if pooler.num_tokens != predictor.num_tokens:
            raise ValueError(
                f"pooler gives {pooler.num_tokens} tokens; predictor takes {predictor.num_tokens}"
            )
        self.encoder, self.pooler, self.predictor = encoder, pooler, predictor
        if readout is not None and readout.in_dim != pooler.num_tokens * pooler.out_dim:
            raise ValueError(
                f"readout takes {readout.in_dim} inputs; one latent frame has "
                f"{pooler.num_tokens} x {pooler.out_dim}"
            )
        self.readout = readout
        if metric is not None and metric.in_dim != pooler.num_tokens * pooler.out_dim:
            raise ValueError(
                f"metric head takes {metric.in_dim} inputs; one latent frame has "
                f"{pooler.num_tokens} x {pooler.out_dim}"
            )
        self.metric = metric
        if displacement is not None and (
            displacement.in_dim != pooler.num_tokens * pooler.out_dim
            or displacement.action_dim != predictor.action_dim
        ):
            raise ValueError(
                f"displacement head takes {displacement.in_dim} inputs and gives {displacement.action_dim} "
                f"actions; one latent frame has {pooler.num_tokens} x {pooler.out_dim}, the predictor "
                f"{predictor.action_dim} actions"
            )
        self.displacement = displacement
        patches = (encoder.img_size // encoder.patch_size) ** 2
        if anchor is not None and (
            (anchor.num_tokens, anchor.token_dim) != (patches, encoder.embed_dim)
            or anchor.action_dim != predictor.action_dim
        ):
            raise ValueError(
                f"anchor head takes {anchor.num_tokens} x {anchor.token_dim} tokens and gives "
                f"{anchor.action_dim} actions; the encoder gives {patches} x {encoder.embed_dim} per frame, "
                f"the predictor {predictor.action_dim} actions"
            )
        self.anchor = anchor
        self.normalizer = normalizer or Normalizer(predictor.action_dim, predictor.proprio_dim)
        self.meta = dict(meta or {})
        self.encoder.requires_grad_(False)
        self.eval()

    @property
    def action_dim(self) -> int:
        """Width of one imagined step's action: ``action_chunk`` env actions, concatenated."""
        return self.predictor.action_dim

    @property
    def action_chunk(self) -> int:
        """Env steps per imagined step (``action_chunk``; 1 for checkpoints older than the setting): the
        model steps between frames ``action_chunk`` apart, under their env actions concatenated (a
        *macro-action*, DINO-WM's frameskip); an agent executes each planned one as that many env steps."""
        return int(self.meta.get("action_chunk", 1) or 1)

    @property
    def env_action_dim(self) -> int:
        """Width of one env action (``action_dim / action_chunk``)."""
        return self.action_dim // self.action_chunk

    @property
    def image_size(self) -> int:
        return int(self.encoder.img_size)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """``(N, D)``: latent tokens per frame and their width."""
        return self.pooler.num_tokens, self.pooler.out_dim

    def module_names(self) -> tuple[str, ...]:
        """The submodules a checkpoint stores (the pooler and readout only when they exist / learn)."""
        names = ("encoder", "predictor", "normalizer")
        names += ("pooler",) if self.pooler.learned else ()
        names += ("readout",) if self.readout else ()
        names += ("metric",) if self.metric else ()
        names += ("displacement",) if self.displacement else ()
        return names + (("anchor",) if self.anchor else ())

    @property
    def state_labels(self) -> bool:
        """Whether training read recorded states: a state readout or a proprio input (labelled baselines)."""
        return self.readout is not None or self.predictor.proprio_dim > 0

    @property
    def context_frames(self) -> int:
        """Observed frames the predictor was trained to imagine from (``train.context``; 1 for checkpoints
        older than the setting): the short-term memory an agent plans with."""
        return int(self.meta.get("context_frames", 1) or 1)

    @property
    def metric_trained(self) -> bool:
        """Whether the temporal-distance head exists and its training stage has run."""
        return self.metric is not None and int(self.meta.get("metric_steps", 0) or 0) > 0

    @property
    def metric_kind(self) -> str | None:
        """``"distance"`` or ``"critic"`` (``world_model.metric.kind``); None without a trained head."""
        if not self.metric_trained:
            return None
        return "critic" if isinstance(self.metric, GoalCritic) else "distance"

    @property
    def displacement_trained(self) -> bool:
        """Whether the displacement head exists and was trained (checkpoints record its weight)."""
        return self.displacement is not None and float(self.meta.get("displacement_weight", 0) or 0) > 0

    def resolve_latent_weight(
        self,
        latent_weight: float | None = CostConfig.latent_weight,
        displacement_weight: float = CostConfig.displacement_weight,
        space: str = CostConfig.space,
    ) -> float | None:
        """``cost.latent_weight`` for this model in ``space``: None outside the metric space (the term
        exists only there); else the value given, or for None the model's default
        (:func:`~jepa_agent.costs.default_latent_weight`: 0 when its trained displacement head is in the
        cost, ``displacement_weight > 0``, and it plans from one frame (``context_frames == 1``: an
        action's effect is a displacement, so the summed actions the head reads locate the goal), else
        0.5). ``plan.py`` and ``score.py`` record it."""
        if self.resolve_cost_space(space) != "metric":
            return None
        if latent_weight is not None:
            return float(latent_weight)
        exact = self.displacement_trained and bool(displacement_weight) and self.context_frames == 1
        return default_latent_weight(exact)

    @property
    def anchor_trained(self) -> bool:
        """Whether the anchor head exists and its training stage has run (``train.anchor.steps``)."""
        return self.anchor is not None and int(self.meta.get("anchor_steps", 0) or 0) > 0

    @property
    def device(self) -> torch.device:
        return next(self.predictor.parameters()).device

    # -- perception ------------------------------------------------------------------------------
    def encode_pixels(
        self,
        pixels: Tensor | np.ndarray,
        batch_size: int = 256,
        with_anchor: bool = False,
        anchor_shift: int = 0,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """uint8 pixels ``[B, H, W, 3]`` (or ``[H, W, 3]``) -> latent tokens ``[B, N, D]`` (or ``[N, D]``);
        with ``with_anchor``, also the anchor head's embeddings ``[B, hidden]`` (models with one).

        ``anchor_shift > 0``: the anchor embeddings are of :func:`anchor_views` of each frame (itself and
        four copies translated by that many pixels), ``[B, V, hidden]``; the latents stay the frame's own.
        """
        if with_anchor and self.anchor is None:
            raise ValueError("encode_pixels(with_anchor=True): this world model has no anchor head")
        check_anchor_shift(anchor_shift, self.image_size)
        if not isinstance(pixels, Tensor):
            pixels = np.asarray(pixels)
            if not pixels.flags.writeable:  # e.g. np.asarray(PIL image): torch would warn on a shared view
                pixels = pixels.copy()
        x = torch.as_tensor(pixels)
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
            raise ValueError(f"pixels {tuple(x.shape)} {x.dtype}; expected uint8 [B, H, W, 3] or [H, W, 3]")
        if x.shape[1] != self.image_size or x.shape[2] != self.image_size:
            raise ValueError(
                f"pixels are {x.shape[1]}x{x.shape[2]} but the world model was trained on "
                f"{self.image_size}x{self.image_size} images; make the env with image_size={self.image_size}"
            )
        out, anchors = [], []
        views = len(ANCHOR_VIEW_OFFSETS) if with_anchor and anchor_shift else 1
        step = max(1, batch_size // views)
        for i in range(0, x.shape[0], step):
            chunk = pixels_to_images(x[i : i + step], self.device)  # [b, 3, H, W]
            if views > 1:
                chunk = anchor_views(chunk, anchor_shift).flatten(0, 1)  # [b * V, 3, H, W], own frame first
            tokens = self.encoder.encode_images(chunk)  # [b * V, P, D]
            own = tokens[::views]  # [b, P, D]: the frames as they are
            out.append(self.normalizer.latent(self.pooler(own)))  # [b, N, D]
            if with_anchor:
                h = self.anchor.embed(tokens)  # [b * V, hidden]
                anchors.append(h.unflatten(0, (-1, views)) if views > 1 else h)  # [b, V, hid] | [b, hid]
        z = torch.cat(out)
        if not with_anchor:
            return z[0] if single else z
        h = torch.cat(anchors)
        return (z[0], h[0]) if single else (z, h)

    @torch.inference_mode()
    def encode(self, obs: dict[str, Any], anchor_shift: int = 0) -> LatentState:
        """Observation (``pixels`` uint8 ``[B, H, W, 3]`` or ``[H, W, 3]``, ``proprio``) -> latent state.

        ``anchor_shift``: read the anchor head from :func:`anchor_views` of the frame (``cost.anchor_shift``;
        the goal must be encoded with the same)."""
        if "pixels" not in obs:
            raise ValueError(f"observation has keys {sorted(obs)}; the world model needs 'pixels'")
        z, h = self._encode_frames(obs["pixels"], anchor_shift)
        p = None
        if self.predictor.proprio_dim:
            if obs.get("proprio") is None:
                raise ValueError("this world model uses proprio: the observation needs a 'proprio' entry")
            p = self.normalizer.proprio(
                torch.as_tensor(np.asarray(obs["proprio"]), dtype=torch.float32, device=self.device)
            )
        return LatentState(z, p, h)

    def _encode_frames(self, pixels: Any, anchor_shift: int = 0) -> tuple[Tensor, Tensor | None]:
        """Latents, and the anchor head's embeddings when it is trained (else None)."""
        if self.anchor_trained:
            return self.encode_pixels(pixels, with_anchor=True, anchor_shift=anchor_shift)
        check_anchor_shift(anchor_shift, self.image_size)
        return self.encode_pixels(pixels), None

    @torch.inference_mode()
    def encode_goal(self, goal: dict[str, Any], anchor_shift: int = 0) -> LatentState:
        """Goal dict with ``image`` (uint8 ``[H, W, 3]``) -> the goal's :class:`LatentState` (latent
        ``[N, D]``, no proprio, and the anchor head's embedding when the model has a trained one:
        ``[hidden]``, or ``[V, hidden]`` of :func:`anchor_views` with ``anchor_shift``)."""
        if goal.get("image") is None:
            raise ValueError(
                f"goal has keys {sorted(goal)}; the world model needs a goal 'image' (use goal=image or an "
                "image file; goal=state is the true-state oracle's)"
            )
        z, h = self._encode_frames(goal["image"], anchor_shift)
        return LatentState(z, None, h)

    def cost(
        self,
        goal: Tensor | LatentState,
        space: str = CostConfig.space,
        metric: str = CostConfig.metric,
        reduction: str = CostConfig.reduction,
        discount: float = CostConfig.discount,
        action_weight: float = CostConfig.action_weight,
        latent_weight: float | None = CostConfig.latent_weight,
        displacement_weight: float = CostConfig.displacement_weight,
        anchor_weight: float = CostConfig.anchor_weight,
        anchor_shift: int = CostConfig.anchor_shift,
        anchor_tolerance: float = CostConfig.anchor_tolerance,
        rest_weight: float = CostConfig.rest_weight,
        smooth_weight: float = CostConfig.smooth_weight,
    ) -> Cost:
        """The planning cost towards the goal latent (defaults: :class:`~jepa_agent.costs.CostConfig`'s,
        the same as ``scripts/plan.py``'s).

        Measured in the label-free :class:`TemporalDistanceHead` space (``space="metric"``), on the latents
        themselves (``"latent"``) or on the labelled :class:`StateReadout` (``"readout"``); ``"auto"``
        picks the first the model has of metric, readout, latent. Plus ``latent_weight x`` the latent
        MSE in the metric space, ``displacement_weight x`` the squared summed actions to the goal that the
        model's :class:`DisplacementHead` reads (metric space, trained head), ``anchor_weight x`` those its
        :class:`AnchorHead` reads at the current frame less the planned actions (:class:`AnchorCost`; trained
        head, metric space; the agent gives it each replan's frame; only what lies beyond
        ``anchor_tolerance`` of its reading), and ``action_weight * mean ||a||^2``
        (each when > 0). ``latent_weight=None`` is the model's default (:meth:`resolve_latent_weight`:
        0 with a trained displacement head in the cost of a one-frame model, else 0.5).

        ``goal`` is :meth:`encode_goal`'s :class:`LatentState` or a bare goal latent ``[N, D]`` (which has no
        anchor reading: the anchor term is then left out). ``anchor_shift`` is how the states were encoded
        (:meth:`encode`'s; the agent encodes with ``cost.anchor_shift``): checked here, read by the states.
        """
        check_anchor_shift(anchor_shift, self.image_size)
        goal_anchor = goal.anchor if isinstance(goal, LatentState) else None
        goal = goal_latent(goal)
        space = self.resolve_cost_space(space)
        latent_weight = self.resolve_latent_weight(latent_weight, displacement_weight, space)
        if space == "latent":
            goal_cost = LatentGoalCost(goal, metric=metric, reduction=reduction, discount=discount)
        else:
            head = self.metric if space == "metric" else self.readout
            disp = self.displacement if space == "metric" and self.displacement_trained else None
            if not displacement_weight:
                disp = None
            critic = space == "metric" and isinstance(head, GoalCritic)
            if critic:  # the steps a goal-conditioned critic reads (not a distance: cost.metric is unused)
                goal_cost = CriticGoalCost(head, goal, reduction, discount)
                if latent_weight:
                    near = LatentGoalCost(goal, metric="mse", reduction=reduction, discount=discount)
                    goal_cost = goal_cost + ScaledCost(near, latent_weight)
                if disp is not None:
                    goal_cost = goal_cost + ScaledCost(
                        DisplacementCost(disp, goal, reduction, discount), displacement_weight
                    )
                if rest_weight:
                    goal_cost = goal_cost + ScaledCost(RestCost(), rest_weight)
            elif (latent_weight or disp is not None) and space == "metric" and metric == "mse":
                # + the latent term, sharp where the step count is flat (near the goal); single-token latents
                # move in a (dim + 1)-wide subspace, so both terms fuse into the rollout's head (and the
                # displacement head's first layer with them; with no latent term, its weight is 0 and the
                # two heads' first layers still fuse into one projection)
                basis = self.predictor.motion_basis() if self.latent_shape[0] == 1 else None
                goal_cost = MetricLatentCost(
                    head,
                    goal,
                    reduction,
                    discount,
                    latent_weight,
                    basis,
                    disp,
                    displacement_weight,
                    rest_weight,
                )
            else:
                goal_cost = ProjectedGoalCost(
                    head, goal, metric=metric, reduction=reduction, discount=discount
                )
                if latent_weight and space == "metric":
                    near = LatentGoalCost(goal, metric="mse", reduction=reduction, discount=discount)
                    goal_cost = goal_cost + ScaledCost(near, latent_weight)
                if disp is not None:
                    goal_cost = goal_cost + ScaledCost(
                        DisplacementCost(disp, goal, reduction, discount), displacement_weight
                    )
                if rest_weight and space == "metric":
                    goal_cost = goal_cost + ScaledCost(RestCost(), rest_weight)
        if anchor_weight and space == "metric" and self.anchor_trained and goal_anchor is not None:
            anchored = AnchorCost(self.anchor, goal_anchor, reduction, discount, anchor_tolerance)
            goal_cost = goal_cost + ScaledCost(anchored, anchor_weight)
        return with_action_terms(goal_cost, action_weight, smooth_weight)

    def resolve_cost_space(self, space: str) -> str:
        """``space`` checked against this model (``auto`` -> the first it has of ``metric`` (trained),
        ``readout``, ``latent``).

        Raises:
            ValueError: an unknown space, or ``metric`` / ``readout`` on a model without that head (the
                message names the checkpoint and the option that trains it).
        """
        if space not in SPACES:
            raise ValueError(f"cost.space={space!r}; expected one of {list(SPACES)}")
        if space == "auto":
            if self.metric_trained:
                return "metric"
            return "readout" if self.readout is not None else "latent"
        where = (
            f"the world model {self.meta['checkpoint']!r}"
            if self.meta.get("checkpoint")
            else "this world model"
        )
        if space == "metric" and not self.metric_trained:
            why = (
                "has no temporal-distance head: train it with world_model.metric.dim=32 (the default) "
                "and train.metric.steps > 0"
                if self.metric is None
                else "has a temporal-distance head that was never trained (its run had "
                "train.metric.steps=0): train it with scripts/train_world_model.py resume=true out=RUN_DIR "
                "train.metric.steps=6000"
            )
            others = "cost.space=readout" if self.readout is not None else "cost.space=latent"
            raise ValueError(f"cost.space=metric: {where} {why}; or use {others}")
        if space == "readout" and self.readout is None:
            raise ValueError(
                f"cost.space=readout: {where} has no state readout (a labelled baseline: train one with "
                "world_model=readout, which reads the recorded joint angles); use cost.space=metric "
                "or cost.space=latent"
            )
        return space

    # -- imagination -----------------------------------------------------------------------------
    def context(
        self, states: list[LatentState | Tensor], actions: list[Tensor] | Tensor | None = None
    ) -> Context:
        """Memory -> :class:`Context`: ``states`` (oldest first, each ``[N, D]``) and the actions between.

        Fewer states than :attr:`context_frames` (the first steps of an episode) are padded in front with
        copies of the oldest one and zero actions: an arm that was at rest, as at a reset."""
        if not states:
            raise ValueError("context needs at least one encoded observation")
        missing = self.context_frames - len(states)
        if missing > 0:
            if isinstance(actions, Tensor):
                actions = list(actions.reshape(-1, self.action_dim))
            actions = list(actions or [])
            where = actions[0].device if actions and isinstance(actions[0], Tensor) else None  # stack on one
            actions = [torch.zeros(self.action_dim, device=where)] * missing + actions
            states = [states[0]] * missing + list(states)
        zs = [s.z if isinstance(s, LatentState) else s for s in states]
        z = torch.stack(zs).unsqueeze(0)  # [1, C, N, D]
        C = z.shape[1]
        acts = None
        if C > 1:
            a = actions
            if isinstance(a, (list, tuple)):
                a = torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in a]) if a else None
            if a is None or a.shape[-1] != self.action_dim or a.numel() != (C - 1) * self.action_dim:
                got = None if a is None else tuple(a.shape)
                raise ValueError(
                    f"{C} context states need {C - 1} actions of dim {self.action_dim}; got {got}"
                )
            acts = self.normalizer.actions(a.to(z.device, torch.float32)).reshape(1, C - 1, self.action_dim)
        p = None
        if self.predictor.proprio_dim:
            ps = [s.proprio for s in states if isinstance(s, LatentState)]
            if len(ps) != C or any(x is None for x in ps):
                raise ValueError(
                    "this world model uses proprio: context states must be LatentState with proprio"
                )
            p = torch.stack(ps).unsqueeze(0)  # [1, C, P]
        return Context(z, acts, p)

    def _as_context(self, ctx: Context | LatentState | Tensor) -> Context:
        if isinstance(ctx, Context):
            return ctx
        if isinstance(ctx, LatentState):
            z = ctx.z if ctx.z.dim() == 3 else ctx.z.unsqueeze(0)  # [B, N, D]
            p = None if ctx.proprio is None else ctx.proprio.reshape(z.shape[0], 1, -1)
            return Context(z.unsqueeze(1), None, p)
        if isinstance(ctx, Tensor):
            if ctx.dim() == 2:  # [N, D]
                return Context(ctx[None, None])
            if ctx.dim() == 3:  # [B, N, D]
                return Context(ctx.unsqueeze(1))
            if ctx.dim() == 4:  # [B, C, N, D] with C == 1 (longer histories need actions: use context())
                if ctx.shape[1] != 1:
                    raise ValueError(
                        "a latent history of several frames needs its actions: use WorldModel.context()"
                    )
                return Context(ctx)
        raise ValueError(
            f"cannot start a rollout from {type(ctx).__name__}; expected Context, LatentState or z"
        )

    def rollout(
        self,
        context: Context | LatentState | Tensor,
        actions: Tensor,
        use_cache: bool = True,
        grad: bool | None = None,
        project: nn.Linear | None = None,
    ) -> Tensor:
        """Imagine ``actions [S, H, A]`` (env units) from ``context`` -> predicted latents ``[S, H, N, D]``,
        or ``project`` of each flattened frame ``[S, H, F]`` (fused into the predictor's head: a cost's
        ``rollout_projection``, e.g. the readout's first layer, without the wide latents).

        Runs under ``torch.inference_mode()`` unless ``grad`` (default: when the actions require grad and
        grad mode is on, as in the gradient planner).
        """
        if actions.dim() != 3 or actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions of shape {tuple(actions.shape)}; expected [S, H, {self.action_dim}]")
        if grad is None:
            grad = actions.requires_grad and torch.is_grad_enabled()
        ctx = self._as_context(context)
        if grad:  # inference-mode tensors (e.g. from encode) cannot be saved for backward
            fix = [
                t.clone() if t is not None and t.is_inference() else t
                for t in (ctx.z, ctx.actions, ctx.proprio)
            ]
            ctx = Context(*fix)
        with torch.inference_mode(not grad):
            a = self.normalizer.actions(actions.to(ctx.z.device, ctx.z.dtype))
            z, _ = self.predictor.imagine(
                ctx.z, a, ctx.actions, ctx.proprio, use_cache=use_cache, project=project
            )
        return z

    def step(self, context: Context | LatentState | Tensor, action: Tensor) -> Tensor:
        """One imagined step: ``action [B, A]`` -> next latent ``[B, N, D]``."""
        return self.rollout(context, action.unsqueeze(1))[:, 0]

    # -- checkpoints -----------------------------------------------------------------------------
    def check_compatible(
        self, env_id: str | None = None, image_size: int | None = None, action_dim: int | None = None
    ) -> None:
        """Raise a ValueError naming both values when the model does not fit an env / data."""
        have = {
            "env_id": self.meta.get("env_id"),
            "image_size": self.image_size,
            "action_dim": self.env_action_dim,  # the env's action, whatever the model's chunk
        }
        for key, w in {"env_id": env_id, "image_size": image_size, "action_dim": action_dim}.items():
            h = have[key]
            if w is not None and h is not None and w != h:
                raise ValueError(f"world model was trained with {key}={h!r} but is used with {key}={w!r}")

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        env_id: str | None = None,
        image_size: int | None = None,
        action_dim: int | None = None,
    ) -> WorldModel:
        """Load a self-contained world-model checkpoint (from ``scripts/train_world_model.py``).

        ``path`` may also be the training run directory (its ``checkpoint/`` is used).

        Raises:
            CheckpointError: not a world-model checkpoint, or it does not match ``env_id`` /
                ``image_size`` / ``action_dim`` when given (the message names both values).
        """
        path = resolve_checkpoint(path)
        meta = load_meta(path)
        if meta.get("kind") != KIND:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not a world-model checkpoint (kind={meta.get('kind')!r}, "
                f"modules {meta.get('modules')}); expected one written by scripts/train_world_model.py"
            )
        cfg = load_config(path)
        try:
            model = build_world_model(cfg)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {str(path)!r} has an invalid world-model config: {e}") from e
        for name in model.module_names():
            load_into(path, name, getattr(model, name))
        model.meta.update(
            checkpoint=str(path),
            context_frames=int(meta.get("context_frames", 1) or 1),
            metric_steps=int(meta.get("metric_steps", 0) or 0),
            displacement_weight=float(meta.get("displacement_weight", 0) or 0),
            anchor_steps=int(meta.get("anchor_steps", 0) or 0),
            encoder_tune_steps=int(meta.get("encoder_tune_steps", 0) or 0),
        )
        try:
            model.check_compatible(env_id=env_id, image_size=image_size, action_dim=action_dim)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {str(path)!r}: {e}") from e
        return model.to(resolve_device(device)).eval()


def build_world_model(cfg: Any) -> WorldModel:
    """An untrained world model from a config with ``encoder``, ``world_model`` and ``action_dim``
    (+ ``proprio_dim``, ``env_id``, ``action_chunk``) keys: a checkpoint's config or a training run's.
    ``action_dim`` is the env's; the model's actions are ``action_chunk`` (1 when absent) of them."""
    chunk = cfg.get("action_chunk", 1)
    chunk = check_int("action_chunk", 1 if chunk is None else chunk, 1, "env steps per imagined step")
    action_dim = int(cfg["action_dim"]) * chunk
    enc_cfg = dict(cfg["encoder"])
    encoder = build_encoder(str(enc_cfg.pop("name", "vit_tiny")), **enc_cfg)
    wm = cfg["world_model"]
    hp = encoder.img_size // encoder.patch_size
    pooler = LatentPooler(
        mode=str(wm["pooling"]),
        embed_dim=encoder.embed_dim,
        grid_hw=(hp, hp),
        grid_size=int(wm["grid_size"]),
        num_queries=int(wm["attentive_queries"]),
        num_heads=int(wm.get("attentive_heads", 4)),
        normalize=bool(wm["normalize"]),
        flatten=bool(wm.get("flatten", False)),
        frame_tokens=wm.get("frame_tokens", 1),
    )
    proprio_dim = int(cfg["proprio_dim"]) if wm["use_proprio"] else 0
    predictor = ACPredictor(
        latent_dim=pooler.out_dim,
        action_dim=action_dim,
        num_tokens=pooler.num_tokens,
        proprio_dim=proprio_dim,
        **dict(wm["predictor"]),
    )
    meta = {"env_id": cfg.get("env_id"), "image_size": encoder.img_size, "action_chunk": chunk}
    latent_shape = None if pooler.learned else (pooler.num_tokens, pooler.out_dim)
    normalizer = Normalizer(action_dim, proprio_dim, latent_shape)
    ro = wm.get("readout") or {}
    readout = None
    if int(ro.get("angles", 0) or 0) > 0:
        readout = StateReadout(
            pooler.num_tokens * pooler.out_dim,
            int(ro["angles"]),
            wrap=[int(i) for i in ro.get("wrap") or ()],
            hidden=int(ro.get("hidden", 256)),
        )
    mc = wm.get("metric") or {}
    metric = None
    kind = str(mc.get("kind", "distance"))  # checkpoints before the option hold distance heads
    if kind not in METRIC_KINDS:
        raise ValueError(f"world_model.metric.kind={kind!r}; expected one of {list(METRIC_KINDS)}")
    if int(mc.get("dim", 0) or 0) > 0 and kind == "critic":
        metric = GoalCritic(pooler.num_tokens * pooler.out_dim, hidden=int(mc.get("hidden", 256)))
    elif int(mc.get("dim", 0) or 0) > 0:
        metric = TemporalDistanceHead(
            pooler.num_tokens * pooler.out_dim, int(mc["dim"]), hidden=int(mc.get("hidden", 256))
        )
    dc = wm.get("displacement") or {}
    displacement = None
    if int(dc.get("hidden", 0) or 0) > 0:
        displacement = DisplacementHead(
            pooler.num_tokens * pooler.out_dim, action_dim, hidden=int(dc["hidden"]),
            inputs=str(dc.get("inputs", "pair")),
        )  # fmt: skip
    ac = wm.get("anchor") or {}
    anchor = None
    if int(ac.get("hidden", 0) or 0) > 0:
        anchor = AnchorHead(
            hp * hp, encoder.embed_dim, action_dim, hidden=int(ac["hidden"]),
            channels=int(ac.get("channels", 16)), inputs=str(ac.get("inputs", "diff")),
            token_hidden=ac.get("token_hidden", 0) or 0,
        )  # fmt: skip
    return WorldModel(encoder, pooler, predictor, normalizer, meta, readout, metric, displacement, anchor)


def world_model_config(model: WorldModel, encoder_name: str = "vit_tiny") -> dict[str, Any]:
    """The config keys :func:`build_world_model` needs to rebuild ``model`` (saved in its checkpoint)."""
    pred = ac_predictor_config(model.predictor)
    for key in ("latent_dim", "action_dim", "num_tokens", "proprio_dim"):
        pred.pop(key)
    pooler = model.pooler
    return {
        "encoder": {"name": encoder_name, **encoder_config(model.encoder)},
        "world_model": {
            "pooling": pooler.mode,
            "grid_size": pooler.grid_size,
            "attentive_queries": pooler.num_queries,
            "attentive_heads": pooler.num_heads,
            "normalize": pooler.normalize,
            "flatten": pooler.flatten,
            "frame_tokens": pooler.frame_tokens,
            "use_proprio": model.predictor.proprio_dim > 0,
            "predictor": pred,
            "readout": {
                "angles": model.readout.angles if model.readout else 0,
                "wrap": list(model.readout.wrap) if model.readout else [],
                "hidden": model.readout.hidden if model.readout else 256,
            },
            "metric": {
                "dim": model.metric.dim if model.metric else 0,
                "hidden": model.metric.hidden if model.metric else 256,
                "kind": "critic" if isinstance(model.metric, GoalCritic) else "distance",
            },
            "displacement": {
                "hidden": model.displacement.hidden if model.displacement else 0,
                "inputs": model.displacement.inputs if model.displacement else "pair",
            },
            "anchor": {
                "hidden": model.anchor.hidden if model.anchor else 0,
                "channels": model.anchor.channels if model.anchor else 16,
                "inputs": model.anchor.inputs if model.anchor else "diff",
                "token_hidden": model.anchor.token_hidden if model.anchor else 0,
            },
        },
        "action_dim": model.env_action_dim,
        "action_chunk": model.action_chunk,
        "proprio_dim": model.predictor.proprio_dim,
        "env_id": model.meta.get("env_id"),
        "image_size": model.image_size,
    }


def save_world_model(
    path: str | os.PathLike,
    model: WorldModel,
    run_config: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    encoder_name: str = "vit_tiny",
) -> None:
    """Save a self-contained world-model checkpoint (encoder weights included; kind ``world_model``).

    The model-derived keys of :func:`world_model_config` override the same keys of ``run_config``.
    """
    config = {**(run_config or {}), **world_model_config(model, encoder_name)}
    modules: dict[str, nn.Module] = {name: getattr(model, name) for name in model.module_names()}
    info = {"kind": KIND, "env_id": model.meta.get("env_id"), "image_size": model.image_size,
            "action_dim": model.action_dim, "state_labels": model.state_labels,
            "metric_steps": int(model.meta.get("metric_steps", 0) or 0),
            "displacement_weight": float(model.meta.get("displacement_weight", 0) or 0),
            "anchor_steps": int(model.meta.get("anchor_steps", 0) or 0),
            **{k: model.meta[k] for k in ("anchor_val_ratio",) if k in model.meta},
            "context_frames": model.context_frames,
            "encoder_tune_steps": int(model.meta.get("encoder_tune_steps", 0) or 0),
            **(meta or {})}  # fmt: skip
    save_checkpoint(path, modules, config, train_state, info)
