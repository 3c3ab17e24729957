"""Train the action-conditioned predictor on frozen-encoder latents of recorded episodes.

The encoder is frozen, so every frame is encoded exactly once (batched, with a progress bar) into a
latent cache (``jepa_agent/training/latent_cache.py``); actions/proprio are standardised and the
predictor's residual scale is set to the std of frame-to-frame latent changes (its head then regresses
unit-scale targets, however small the changes). Training samples windows of ``T`` latents (+ the ``T-1``
actions between them) and minimises, as V-JEPA 2-AC, ``teacher_forcing_loss + rollout_weight *
rollout_loss(k)`` (plus a variance guard when the pooling is learned). A model with a temporal-distance
head (the default, label-free planning space) trains that head first, from the encoded frames alone
(``jepa_agent/training/temporal_distance.py``), then freezes it and adds ``train.metric.predictor_weight``
x the error of the predictions in its space to the predictor's loss. Held-out episodes
(``split="val"``) are scored by one-step and H-step latent L1 against the copy-last-frame baseline.

Checkpoints (``out/checkpoint``) are self-contained world models (encoder weights included) and carry
optimizer + RNG state, so ``resume=True`` continues an interrupted run exactly. Under ``torchrun`` the
loss module is wrapped in ``DistributedDataParallel``; each rank samples its own windows, rank 0 writes.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import time
import warnings
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_agent.checkpoint import (
    check_resume_matches,
    checkpoint_exists,
    load_config,
    load_into,
    load_meta,
    load_train_state,
    saved_loss,
)
from jepa_agent.losses import rollout_loss, teacher_forcing_loss
from jepa_agent.models.latent import GoalCritic
from jepa_agent.training.anchor import AnchorTrainConfig, train_anchor_head
from jepa_agent.training.distributed import init_distributed
from jepa_agent.training.encoder_tune import EncoderTuneConfig, FrameEpisodes, tune_encoder
from jepa_agent.training.latent_cache import (
    ActionSums,
    EpisodeSource,
    LatentEpisodes,
    encode_episodes,
    fit_delta_scale,
    fit_normalizer,
    normalize_env_actions,
)
from jepa_agent.training.logger import MetricLogger
from jepa_agent.training.pretrain import NonFiniteLossError
from jepa_agent.training.schedules import warmup_cosine
from jepa_agent.training.temporal_distance import MetricTrainConfig, train_metric_head
from jepa_agent.world_model import WorldModel, save_world_model, variance_loss, world_model_config

CHECKPOINT_DIR = "checkpoint"
__all__ = [
    "EpisodeSource",
    "LatentEpisodes",
    "WorldModelLoss",
    "WorldModelTrainConfig",
    "WorldModelTrainResult",
    "encode_episodes",
    "evaluate_world_model",
    "fit_delta_scale",
    "fit_normalizer",
    "make_optimizer",
    "train_on_latents",
    "train_world_model",
]


@dataclass
class DisplacementTrainConfig:
    """Settings of the displacement head's term (``train.displacement.*``; models with that head).

    Attributes:
        weight: the term's weight: the head's squared error on encoded and predicted latents (gradients
            reach the predictor, so imagination is accurate where the head reads, as with the readout).
        goal_steps: goals are frames up to this many steps after the window's first frame ...
        back_steps: ... or up to this many before it (same episode): the head learns both directions.
        cap: targets (summed env-unit actions) are rescaled to at most ``cap`` in each component.
    """

    weight: float = 2.0
    goal_steps: int = 20
    back_steps: int = 4
    cap: float = 2.0

    def __post_init__(self) -> None:
        if not self.weight >= 0 or not self.cap > 0:
            raise ValueError(
                f"train.displacement.weight={self.weight}, cap={self.cap}; expected weight >= 0 and cap > 0"
            )
        if int(self.goal_steps) < 1 or int(self.back_steps) < 0:
            raise ValueError(
                f"train.displacement.goal_steps={self.goal_steps}, back_steps={self.back_steps}; expected "
                "goal_steps >= 1 and back_steps >= 0"
            )


@dataclass
class WorldModelTrainConfig:
    """Optimisation settings of a world-model run.

    Attributes:
        steps: total optimisation steps (the lr schedule spans them).
        batch_size: windows per step and per process.
        window: frames per training window ``T`` (``T - 1`` teacher-forced predictions); None: just enough
            for the rollout loss, ``context + rollout_steps`` (:attr:`frames`).
        rollout_steps: ``k`` of the autoregressive rollout loss (``context + k <= window``).
        context: observed frames the rollout loss starts from: the context the agent plans with (saved in
            the checkpoint as ``context_frames``; ``MPCAgent`` takes it as its memory). 1 when one frame
            holds the state; 2 or more when velocity matters (torque-driven tasks).
        rollout_weight: weight of the rollout loss.
        loss: ``"l1"`` (V-JEPA 2-AC) or ``"mse"`` for both terms.
        proprio_weight: weight of the proprio prediction terms (models with a proprio token).
        readout_weight: weight of the state-readout terms (models with a readout): the readout of the
            encoded AND of the predicted (teacher-forced and rolled-out) latents regresses the state.
        variance_weight: collapse guard for learned (attentive) pooling.
        lr, final_lr, warmup, weight_decay, betas, clip_grad: AdamW with warm-up + cosine lr.
        log_every, ckpt_every: intervals in steps (``ckpt_every=0``: only at the end).
        stop_after: stop (with a checkpoint) after this many steps of this invocation.
        encode_batch: frames per encoder batch when caching latents.
        eval_horizon: ``H`` of the held-out H-step error.
        eval_windows: at most this many held-out windows are scored.
        seed: window sampling seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        metric: the temporal-distance head, trained before the predictor (models with a metric head).
        displacement: the displacement head's term, trained with the predictor (models with that head).
        anchor: the anchor head, trained on the encoded frames' patch tokens before the predictor (models
            with that head; goals and targets as ``displacement``'s).
        encoder: the action-conditioned encoder fine-tune, run first (``steps=0``: the encoder stays as
            pretrained); see :mod:`jepa_agent.training.encoder_tune`.
    """

    steps: int = 3000
    batch_size: int = 64
    window: int | None = None
    rollout_steps: int = 5
    context: int = 1
    rollout_weight: float = 1.0
    loss: str = "mse"
    proprio_weight: float = 1.0
    readout_weight: float = 20.0
    variance_weight: float = 1.0
    lr: float = 1e-3
    final_lr: float = 1e-5
    warmup: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 1.0
    log_every: int = 25
    ckpt_every: int = 500
    stop_after: int | None = None
    encode_batch: int = 128
    eval_horizon: int = 5
    eval_windows: int = 512
    seed: int = 0
    device: str = "auto"
    metric: MetricTrainConfig = field(default_factory=MetricTrainConfig)
    displacement: DisplacementTrainConfig = field(default_factory=DisplacementTrainConfig)
    anchor: AnchorTrainConfig = field(default_factory=AnchorTrainConfig)
    encoder: EncoderTuneConfig = field(default_factory=EncoderTuneConfig)

    @property
    def frames(self) -> int:
        """Frames per training window: ``window``, or ``context + rollout_steps`` when it is None."""
        return int(self.window) if self.window is not None else self.context + self.rollout_steps

    def __post_init__(self) -> None:
        if isinstance(self.metric, dict):
            self.metric = MetricTrainConfig(**self.metric)
        if isinstance(self.encoder, dict):
            self.encoder = EncoderTuneConfig(**self.encoder)
        if isinstance(self.displacement, dict):
            self.displacement = DisplacementTrainConfig(**self.displacement)
        if isinstance(self.anchor, dict):
            self.anchor = AnchorTrainConfig(**self.anchor)
        for name in ("steps", "batch_size", "log_every", "encode_batch", "eval_horizon", "eval_windows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)}; expected a positive integer")
        if not (isinstance(self.context, int) and self.context >= 1):
            raise ValueError(f"train.context={self.context!r}; expected an int >= 1 (observed frames)")
        if self.window is not None and self.window < 2:
            raise ValueError(f"train.window={self.window}; expected >= 2 frames (one prediction), or null")
        if not 1 <= self.rollout_steps <= self.frames - self.context:
            raise ValueError(
                f"train.rollout_steps={self.rollout_steps} from train.context={self.context} frames"
                f"; expected 1 <= k and context + k <= window={self.frames}"
                " (raise train.window, or leave it null)"
            )
        if self.loss not in ("l1", "mse"):
            raise ValueError(f"train.loss={self.loss!r}; expected 'l1' or 'mse'")
        if not 0 <= self.warmup <= self.steps:
            raise ValueError(f"train.warmup={self.warmup}; expected 0 <= warmup <= steps={self.steps}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"train.stop_after={self.stop_after}; expected None or >= 1")
        if self.lr < 0 or self.final_lr < 0:
            raise ValueError(
                f"train.lr={self.lr}, train.final_lr={self.final_lr}; expected both >= 0 (lr=0: no update)"
            )
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay={self.weight_decay}; expected >= 0")


@dataclass
class WorldModelTrainResult:
    """What a run produced (the script's JSON line is :meth:`summary`)."""

    checkpoint: str | None
    steps: int
    final_loss: float | None  # None: no step has ever run
    windows_per_s: float
    train_seconds: float = 0.0
    encode_seconds: float = 0.0
    frames_encoded: int = 0
    val: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint, "steps": self.steps, "final_loss": self.final_loss,
            "windows_per_s": self.windows_per_s, "train_seconds": self.train_seconds,
            "encode_seconds": self.encode_seconds,
            "frames_encoded": self.frames_encoded, **self.val,
        }  # fmt: skip


# -- loss and evaluation ---------------------------------------------------------------------------
class WorldModelLoss(nn.Module):
    """The training objective as one module (so ``DistributedDataParallel`` can wrap it).

    ``forward(z [B, T, ., D], actions [B, T-1, A], proprio) -> (loss, parts)``; ``z`` are pooled
    latents, or patch tokens pooled here when the pooler is learned.
    """

    def __init__(
        self,
        model: WorldModel,
        cfg: WorldModelTrainConfig,
        metric_weight: float = 0.0,
        metric_target: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.predictor, self.pooler, self.readout = model.predictor, model.pooler, model.readout
        self.cfg = cfg
        # the label-free counterpart of the readout term: predicted latents must land where the (already
        # trained) temporal-distance head puts the true ones. With ``metric_target`` (train.metric.joint) the
        # head trains too, on encoded and predicted latents, towards that frozen copy on the true frames.
        self.metric = model.metric if metric_weight > 0 else None
        self.metric_weight = float(metric_weight)
        self.metric_target = [metric_target] if metric_target is not None else []  # a list: not a submodule
        self.displacement = model.displacement if cfg.displacement.weight > 0 else None
        self.value_weight = float(cfg.metric.value_weight)
        if self.value_weight > 0 and not (isinstance(model.metric, GoalCritic) and model.metric_trained):
            raise ValueError(
                f"train.metric.value_weight={cfg.metric.value_weight} trains the predictor on a goal "
                f"critic's steps, but this world model has no trained goal critic (metric kind "
                f"{model.metric_kind}): set world_model.metric.kind=critic (env.metric_kind=critic) or "
                "train.metric.value_weight=0"
            )
        self.critic = [model.metric] if self.value_weight > 0 else []  # a list: not a second submodule

    def forward(
        self,
        z: Tensor,
        actions: Tensor,
        proprio: Tensor | None,
        targets: Tensor | None = None,
        goals: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``targets [B, T, R]``: state-readout targets (required when the model has a readout).
        ``goals``: ``(goal latents [B, N, D], capped action sums [B, T, A] from each frame to its goal)``
        (required when the model has a displacement head)."""
        c = self.cfg
        parts: dict[str, Tensor] = {}
        if self.pooler.learned:
            B, T = z.shape[:2]
            z = self.pooler(z.flatten(0, 1)).view(B, T, self.pooler.num_tokens, -1)  # [B, T, N, D]
            parts["variance"] = variance_loss(z)
        parts["teacher_forcing"], z_tf = teacher_forcing_loss(
            self.predictor, z, actions, proprio, c.proprio_weight, loss=c.loss, return_predictions=True
        )
        k, C = c.rollout_steps, c.context
        parts["rollout"], z_ro = rollout_loss(self.predictor, z, actions, k, proprio, context=C,
                                              proprio_weight=c.proprio_weight, loss=c.loss,
                                              return_predictions=True)  # fmt: skip
        loss = parts["teacher_forcing"] + c.rollout_weight * parts["rollout"]
        if self.readout is not None:
            if targets is None:
                raise ValueError("this world model has a state readout: the loss needs its targets")
            r = self.readout
            parts["readout"] = (
                F.mse_loss(r(z), targets) + F.mse_loss(r(z_tf), targets[:, 1:])
                + F.mse_loss(r(z_ro), targets[:, C : C + k])
            )  # fmt: skip
            loss = loss + c.readout_weight * parts["readout"]
        target = None  # the head's features of the true frames, read once for both terms below
        if self.metric is not None or self.critic:
            head = self.metric if self.metric is not None else self.critic[0]
            with torch.no_grad():  # by the frozen copy when the head trains on (joint)
                target = (self.metric_target[0] if self.metric_target else head)(z)  # [B, T, F]
        if self.metric is not None:
            phi = self.metric
            parts["metric"] = F.mse_loss(phi(z_tf), target[:, 1:]) + F.mse_loss(
                phi(z_ro), target[:, C : C + k]
            )
            if self.metric_target:
                parts["metric"] = parts["metric"] + F.mse_loss(phi(z), target)
            if isinstance(phi, GoalCritic):  # its frame layer has no scale of its own (a layer norm follows)
                parts["metric"] = parts["metric"] / target.var().clamp_min(1e-6)
            loss = loss + self.metric_weight * parts["metric"]
        if self.critic:
            frozen = self.metric_target[0] if self.metric_target else None  # joint: the critic trains too
            parts["value"] = critic_value_loss(
                self.critic[0], z[:, C : C + k], z_ro, target[:, C : C + k], frozen=frozen
            )
            loss = loss + self.value_weight * parts["value"]
        if self.displacement is not None:
            if goals is None:
                raise ValueError("this world model has a displacement head: the loss needs goals and targets")
            d, (z_goal, sums) = self.displacement, goals
            h_goal = d.embed(z_goal).unsqueeze(1)  # [B, 1, hidden]
            parts["displacement"] = (
                F.mse_loss(d.from_embeddings(d.embed(z), h_goal), sums)
                + F.mse_loss(d.from_embeddings(d.embed(z_tf), h_goal), sums[:, 1:])
                + F.mse_loss(d.from_embeddings(d.embed(z_ro), h_goal), sums[:, C : C + k])
            )
            loss = loss + c.displacement.weight * parts["displacement"]
        if "variance" in parts:
            loss = loss + c.variance_weight * parts["variance"]
        return loss, parts


def critic_value_loss(
    critic: GoalCritic,
    z_true: Tensor,
    z_pred: Tensor,
    true_features: Tensor,
    frozen: GoalCritic | None = None,
) -> Tensor:
    """The steps ``critic`` reads from predicted latents against those from the true ones (``train.metric.
    value_weight``): ``z_true``, ``z_pred`` ``[B, k, N, D]`` (the true frames and the rollout's predictions of
    them), ``true_features`` ``[B, k, hidden]`` (the features of the true frames, no gradient). The goals are
    each window's last true frame and the next window's (in the batch); the squared error is over the
    variance of the true steps, so the term has no scale of its own.

    Without ``frozen``, gradient reaches ``z_pred`` only (the predictor learns to land where the critic
    reads the true steps). With ``frozen`` (``train.metric.joint``: the critic's copy as its own stage left
    it, whose features ``true_features`` are), the true steps are the frozen copy's, and the critic itself
    trains too, all its layers: on the predicted latents AND on the true ones (the second keeps it where
    it was on encoded frames), so it learns to read imagined futures as the true ones, as the displacement
    head does, instead of only its first layer being pulled there."""
    reader = critic if frozen is None else frozen
    with torch.no_grad():
        last = z_true[:, -1]  # [B, N, D]
        goals = torch.stack([last, last.roll(1, dims=0)], 1)  # [B, 2, N, D]: own, another window's
        reader_goal_h = reader.goal_features(goals)[:, None]  # [B, 1, 2, hidden]
        true_steps = reader.steps_from_features(true_features[:, :, None], reader_goal_h)  # [B, k, 2]
    # the critic's own goal features: the reader's when it is the critic, with gradient when it trains (joint)
    goal_h = reader_goal_h if frozen is None else critic.goal_features(goals)[:, None]
    pred_steps = critic.steps_from_features(critic.features(z_pred)[:, :, None], goal_h)
    loss = F.mse_loss(pred_steps, true_steps)
    if frozen is not None:  # ... and keeps its reading of the true frames
        enc_steps = critic.steps_from_features(critic.features(z_true)[:, :, None], goal_h)
        loss = loss + F.mse_loss(enc_steps, true_steps)
    return loss / true_steps.var().clamp_min(1e-6)


@torch.inference_mode()
def evaluate_world_model(
    model: WorldModel,
    data: LatentEpisodes,
    horizon: int = 5,
    max_windows: int = 512,
    seed: int = 0,
    context: int = 1,
) -> dict[str, float]:
    """Held-out latent prediction error vs the copy-last-frame baseline.

    Returns (L1, mean over tokens and dims): ``one_step`` (teacher-forced, each step with the window's
    frames before it), ``first_step`` (the first imagined step, from ``context`` observed frames alone, as a
    planner's), ``h_step`` (mean over ``horizon`` imagined steps) and ``final_step``, each with ``_copy_last``
    (the baseline that predicts the last observed latent), their ratio, and the same ratio for the squared
    error (``_mse_ratio_to_copy_last``). Empty when no episode is long enough.
    """
    C = int(context)
    first = data.window_starts(C + horizon)
    if len(first) == 0:
        return {}
    if len(first) > max_windows:
        g = torch.Generator().manual_seed(seed)
        first = first[torch.randperm(len(first), generator=g)[:max_windows]]
    z, a, p = data.windows(first.to(data.z.device), C + horizon)  # [B, C + H, ...], a [B, C + H - 1, A]
    if model.pooler.learned:
        B, T = z.shape[:2]
        z = model.pooler(z.flatten(0, 1)).view(B, T, model.pooler.num_tokens, -1)
    pin = None if p is None else p[:, C - 1 : -1]
    one, _ = model.predictor(z[:, C - 1 : -1], a[:, C - 1 :], pin)  # [B, H, N, D]
    imag, _ = model.predictor.imagine(
        z[:, :C],
        a[:, C - 1 :],
        actions_ctx=a[:, : C - 1] if C > 1 else None,
        proprio_ctx=None if p is None else p[:, :C],
    )
    target = z[:, C:]
    last = z[:, C - 1]
    pairs = {  # name: (prediction, copy-last prediction, target)
        "one_step": (one, z[:, C - 1 : -1], target),
        "first_step": (imag[:, 0], last, target[:, 0]),  # from the context alone, as a planner's first step
        "h_step": (imag, last[:, None], target),
        "final_step": (imag[:, -1], last, target[:, -1]),
    }
    res: dict[str, float] = {}
    s = data.target_windows(first.to(data.z.device), C + horizon)
    if model.readout is not None and s is not None:  # squared error of the state readout (its feature space)
        r = model.readout
        res["readout_encoded_mse"] = (r(z) - s).square().mean().item()
        res["readout_final_step_mse"] = (r(imag[:, -1]) - s[:, -1]).square().mean().item()
        res["readout_final_step_copy_last_mse"] = (r(last) - s[:, -1]).square().mean().item()
    for k, (pred, copy, tgt) in pairs.items():
        res[f"{k}_l1"] = (pred - tgt).abs().mean().item()
        res[f"{k}_copy_last_l1"] = (copy - tgt).abs().mean().item()
        res[f"{k}_ratio_to_copy_last"] = res[f"{k}_l1"] / max(res[f"{k}_copy_last_l1"], 1e-12)
        mse, copy_mse = (pred - tgt).square().mean().item(), (copy - tgt).square().mean().item()
        res[f"{k}_mse_ratio_to_copy_last"] = mse / max(copy_mse, 1e-12)
    return {**res, "horizon": horizon, "windows": len(first)}


# -- the loop --------------------------------------------------------------------------------------
def dataset_episodes(source: EpisodeSource, datasets: list[int], what: str) -> list[int]:
    """The positions in ``source`` (one dataset, or several read as one: ``ConcatEpisodes``) of the episodes
    of the datasets at ``datasets`` (positions in ``data.path``), in that order.

    Raises:
        ValueError: a position beyond the datasets given, or a picked dataset with no episode in this split.
    """
    parts = getattr(source, "datasets", None)
    counts = [p.num_episodes for p in parts] if parts is not None else [source.num_episodes]
    bad = [i for i in datasets if i >= len(counts)]
    if bad:
        raise ValueError(
            f"{what}={datasets}: data.path holds {len(counts)} dataset(s) (positions 0 to {len(counts) - 1})"
        )
    empty = [i for i in datasets if counts[i] == 0]
    if empty:
        raise ValueError(f"{what}={datasets}: dataset {empty[0]} of data.path has no training episode")
    offsets = [0, *itertools.accumulate(counts)]
    return [e for i in datasets for e in range(offsets[i], offsets[i + 1])]


def _trainable(model: WorldModel, joint_metric: bool = False) -> list[nn.Module]:
    return (
        [model.predictor]
        + ([model.pooler] if model.pooler.learned else [])
        + ([model.readout] if model.readout is not None else [])
        + ([model.metric] if joint_metric else [])
        + ([model.displacement] if model.displacement is not None else [])
    )


def make_optimizer(modules: Sequence[nn.Module], cfg: WorldModelTrainConfig) -> torch.optim.AdamW:
    """AdamW, no weight decay on biases / norm gains / embeddings (1-D or position tables)."""
    decay, no_decay = [], []
    for mod in modules:
        for name, p in mod.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith("_embed") or "queries" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


# what a run's stages record in the model's meta (saved in the checkpoint), restored when a run resumes
RESUMED_RECORDS = ("metric_steps", "metric_joint", "displacement_weight", "anchor_steps", "anchor_val_ratio",
                   "context_frames", "encoder_tune_steps")  # fmt: skip


def train_world_model(
    model: WorldModel,
    train_source: EpisodeSource,
    val_source: EpisodeSource | None,
    cfg: WorldModelTrainConfig,
    out_dir: str | os.PathLike,
    run_config: dict[str, Any] | None = None,
    encoder_name: str = "vit_tiny",
    resume: bool = False,
    tensorboard: bool = False,
    progress: bool = True,
    keep_stats: bool = False,
) -> WorldModelTrainResult:
    """Encode the episodes once, then train on their latents (:func:`train_on_latents`).

    Args:
        model: world model with the frozen (pretrained) encoder and a fresh predictor.
        train_source, val_source: episodes (``EpisodeDataset(split="train"/"val")``); val may be None.
        cfg: optimisation settings.
        out_dir: run directory (``checkpoint/``, ``metrics.csv``).
        run_config: resolved run config saved in the checkpoint.
        encoder_name: the encoder preset name recorded in the checkpoint config.
        resume: continue from ``out_dir/checkpoint`` when it exists (weights, optimizer, sampling RNG).
        tensorboard: also log to TensorBoard.
        progress: tqdm bars (stderr, rank 0).
        keep_stats: keep ``model.normalizer``'s action and latent statistics instead of fitting them to
            these episodes: the model's heads were trained on latents standardised with them
            (``train_world_model.py init=CKPT``, a new predictor for a trained model).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last checkpoint is left untouched).
    """
    rank, _, device = init_distributed(cfg.device)
    ckpt = Path(out_dir) / CHECKPOINT_DIR
    model.to(device)
    state = None
    if resume and checkpoint_exists(ckpt):
        saved_cfg = load_config(ckpt)
        if "action_chunk" not in saved_cfg:  # written before the setting: one env step per imagined step
            saved_cfg["action_chunk"] = 1
        check_resume_matches(ckpt, saved_cfg, world_model_config(model, encoder_name))
        saved = int(load_meta(ckpt).get("context_frames", 1) or 1)
        if saved != cfg.context:
            raise ValueError(
                f"resume=true: the checkpoint in {ckpt} was trained with train.context={saved}, this run "
                f"asks for train.context={cfg.context}; pass train.context={saved} or start a new out dir"
            )
        saved_modules = load_meta(ckpt).get("modules")
        if (
            saved_modules is not None
            and model.displacement is not None
            and "displacement" not in saved_modules
        ):
            raise ValueError(
                f"resume=true: the checkpoint in {ckpt} has no displacement head (trained before it was the "
                "default); pass world_model.displacement.hidden=0 to resume it, or start a new out dir"
            )
        if saved_modules is not None and model.anchor is not None and "anchor" not in saved_modules:
            raise ValueError(
                f"resume=true: the checkpoint in {ckpt} has no anchor head (trained before this env turned "
                "it on); pass world_model.anchor.hidden=0 to resume it, or start a new out dir"
            )
        for name in model.module_names():
            load_into(ckpt, name, getattr(model, name))
        state = load_train_state(ckpt)
        meta = load_meta(ckpt)
        # the stages before the predictor's first step (encoder fine-tune, heads) ran and were saved: their
        # records come back first, so none of them runs again (a head retrained on resume broke exactness)
        model.meta.update({k: meta[k] for k in RESUMED_RECORDS if k in meta})
        if int(state["step"]) >= cfg.steps:  # a finished run (train_all re-runs every stage): no frame is
            return WorldModelTrainResult(  # encoded again; its figures are the ones saved at its last step
                checkpoint=str(ckpt), steps=int(state["step"]), final_loss=saved_loss(ckpt),
                windows_per_s=0.0, val={k: v for k, v in meta.items() if k.startswith("val_")},
            )  # fmt: skip
    else:
        if resume and rank == 0:
            warnings.warn(f"resume=true but no checkpoint in {ckpt}; starting from step 0", stacklevel=2)
        if not keep_stats:
            fit_normalizer(model, train_source)
    show = progress and rank == 0
    t0 = time.perf_counter()
    # the episodes the temporal-distance head learns from (train.metric.datasets): checked before any work
    metric_episodes = None
    if model.metric is not None and cfg.metric.steps > 0 and cfg.metric.datasets is not None:
        metric_episodes = dataset_episodes(train_source, cfg.metric.datasets, "train.metric.datasets")
    tune_stats: dict[str, float] = {}
    if state is None and cfg.encoder.steps > 0:  # resumed: the checkpoint's encoder is the fine-tuned one
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError(
                "the encoder fine-tune (train.encoder.steps > 0) runs in one process; run it without "
                "torchrun, or set train.encoder.steps=0"
            )
        # frames and actions only (no proprio, no state); the frames stay in memory for the latent cache
        train_source = FrameEpisodes(train_source, functools.partial(normalize_env_actions, model))
        tune_stats = tune_encoder(
            model.encoder, model.pooler, train_source, cfg.encoder, device, cfg.seed, show
        )
        model.meta["encoder_tune_steps"] = cfg.encoder.steps
    pooled = not model.pooler.learned
    anchor = model.anchor is not None and cfg.anchor.steps > 0 and not model.anchor_trained
    if anchor and not pooled:
        raise ValueError(
            "the anchor head is trained on fixed patch tokens before the predictor, but this world model's "
            "pooling is learned (world_model.pooling=attentive): set world_model.anchor.hidden=0"
        )
    # with an anchor head to train, the cache keeps the patch tokens (the head reads them) and pools them here
    train = encode_episodes(model, train_source, cfg.encode_batch, pooled and not anchor, show)
    val = None
    if val_source is not None:
        val = encode_episodes(model, val_source, cfg.encode_batch, pooled and not anchor, show)
    # a model of macro-actions (action_chunk > 1) learns from frames that far apart: every stage below but
    # the temporal-distance head, which counts env steps on every frame (train.metric.env_steps)
    head_frames, episode_lengths = None, list(train.lengths)
    train_head = model.metric is not None and cfg.metric.steps > 0 and not model.metric_trained
    if train_head and cfg.metric.env_steps and model.action_chunk > 1:
        head_frames = train
        if anchor:
            _pool_cache(model, head_frames)  # the head reads pooled latents (the tokens are not kept)
    train = train.strided(model.action_chunk)
    val = None if val is None else val.strided(model.action_chunk)
    train_tokens = _pool_cache(model, train) if anchor else None
    val_tokens = _pool_cache(model, val) if anchor and val is not None else None
    if (
        pooled
    ):  # standardise the cached latents as WorldModel.encode does (stats from train, or the checkpoint)
        if state is None and not keep_stats:
            model.normalizer.set_latent_stats(train.z)
        train.z = model.normalizer.latent(train.z)
        if val is not None:
            val.z = model.normalizer.latent(val.z)
        if head_frames is not None:
            head_frames.z = model.normalizer.latent(head_frames.z)
    head_stats: dict[str, float] = {}
    if model.metric is not None and model.pooler.learned:
        raise ValueError(
            "a temporal-distance head is trained on fixed latents before the predictor, but this world "
            "model's pooling is learned (world_model.pooling=attentive): set world_model.metric.dim=0"
        )
    if train_head:
        # first, from encoded frames alone (every rank alike: same data, same seed)
        head_data = train if head_frames is None else head_frames
        if metric_episodes is not None:
            if head_frames is None and model.action_chunk > 1:  # each episode is min(K, length) strided ones
                per = [min(model.action_chunk, n) for n in episode_lengths]
                first = np.cumsum([0, *per[:-1]]).tolist()
                metric_episodes = [first[e] + o for e in metric_episodes for o in range(per[e])]
            head_data = head_data.select(metric_episodes)
        head_stats = train_metric_head(model.metric, head_data, cfg.metric, seed=cfg.seed, progress=show)
        model.meta["metric_steps"] = cfg.metric.steps
        del head_frames, head_data
    if train_tokens is not None:  # frames and actions only, as the displacement head's targets
        mean, std = model.normalizer.action_mean, model.normalizer.action_std
        held = None
        if val_tokens is not None:
            held = (val_tokens, ActionSums.from_latents(val, mean, std), val.window_starts(1))
        head_stats.update(
            train_anchor_head(
                model.anchor, train_tokens, ActionSums.from_latents(train, mean, std),
                train.window_starts(1), cfg.anchor, cfg.displacement, held, seed=cfg.seed, progress=show,
            )
        )  # fmt: skip
        model.meta["anchor_steps"] = cfg.anchor.steps
        if "anchor_val_ratio" in head_stats:  # recorded in the checkpoint (meta.json)
            model.meta["anchor_val_ratio"] = head_stats["anchor_val_ratio"]
        del train_tokens, val_tokens, held  # the patch tokens are not needed by the predictor's stage
    result = train_on_latents(
        model, train, val, cfg, out_dir, state, run_config, encoder_name, tensorboard, progress
    )
    result.val.update(head_stats)
    result.val.update(tune_stats)
    result.encode_seconds = (
        time.perf_counter()
        - t0
        - result.train_seconds
        - head_stats.get("metric_seconds", 0.0)
        - head_stats.get("anchor_seconds", 0.0)
        - tune_stats.get("encoder_tune_seconds", 0.0)
    )
    result.frames_encoded = len(train.z) + (len(val.z) if val is not None else 0)
    return result


def _pool_cache(model: WorldModel, cache: LatentEpisodes, chunk: int = 4096) -> Tensor:
    """Pool a cache of patch tokens in place (``cache.z`` becomes the pooled latents); return the tokens
    (half precision: the anchor head standardises them, and they are read in batches)."""
    tokens = cache.z
    with torch.no_grad():
        cache.z = torch.cat(
            [model.pooler(tokens[i : i + chunk].to(model.device)).cpu() for i in range(0, len(tokens), chunk)]
        )
    return tokens.half()


def train_on_latents(
    model: WorldModel,
    train: LatentEpisodes,
    val: LatentEpisodes | None,
    cfg: WorldModelTrainConfig,
    out_dir: str | os.PathLike,
    train_state: dict[str, Any] | None = None,
    run_config: dict[str, Any] | None = None,
    encoder_name: str = "vit_tiny",
    tensorboard: bool = False,
    progress: bool = True,
) -> WorldModelTrainResult:
    """The optimisation loop on cached latents (steps, logging, evaluation, checkpoints).

    Args:
        model: the world model (its predictor, and pooler when learned, are trained).
        train, val: latent caches from :func:`encode_episodes` (val may be None).
        cfg: optimisation settings.
        out_dir: run directory (``checkpoint/``, ``metrics.csv``).
        train_state: a checkpoint's training state to continue from (its weights already loaded).
        run_config, encoder_name: saved in the checkpoint.
        tensorboard, progress: logging options.
    """
    from tqdm.auto import tqdm

    rank, world, device = init_distributed(cfg.device)
    out_dir = Path(out_dir)
    ckpt = out_dir / CHECKPOINT_DIR
    model.to(device)
    model.encoder.requires_grad_(False).eval()
    model.meta["context_frames"] = cfg.context  # the memory MPCAgent plans with (saved in the checkpoint)
    weight = cfg.metric.predictor_weight if model.metric_trained else 0.0
    joint = bool(cfg.metric.joint) and weight > 0
    target = None
    if joint:  # the head trains on, towards its own frozen copy as the head stage left it
        target = deepcopy(model.metric).requires_grad_(False).eval()
    if train_state is not None and joint != ("metric_target" in train_state):
        raise ValueError(
            f"resume=true: the checkpoint in {ckpt} was trained with train.metric.joint="
            f"{'metric_target' in train_state}, this run asks for train.metric.joint={joint}; pass the same "
            "setting or start a new out dir"
        )
    if target is not None and train_state is not None:
        target.load_state_dict(train_state["metric_target"])
    model.meta["metric_joint"] = joint
    sums = None
    if model.displacement is not None:
        if model.pooler.learned:
            raise ValueError(
                "the displacement head reads pooled latents, but this world model's pooling is learned "
                "(world_model.pooling=attentive): set world_model.displacement.hidden=0"
            )
        model.meta["displacement_weight"] = float(cfg.displacement.weight)
        if cfg.displacement.weight > 0:
            sums = ActionSums.from_latents(train, model.normalizer.action_mean, model.normalizer.action_std)
    optimizer = make_optimizer(_trainable(model, joint), cfg)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    start = 0
    if train_state is not None:
        optimizer.load_state_dict(train_state["optimizer"])
        start = int(train_state["step"])
        rngs = train_state["rng"]
        gen.set_state(rngs[rank] if rank < len(rngs) else rngs[0])
    elif model.predictor.residual:
        fit_delta_scale(model, train)
    show = progress and rank == 0
    first = train.window_starts(cfg.frames)
    if len(first) == 0:
        raise ValueError(
            f"no training episode has {cfg.frames} frames (train.window); longest: {max(train.lengths)}"
        )

    if model.metric is not None:  # trained first, then frozen (the predictor learns its space) unless joint
        model.metric.requires_grad_(joint)
    loss_mod: nn.Module = WorldModelLoss(model, cfg, metric_weight=weight, metric_target=target)
    if world > 1:
        loss_mod = nn.parallel.DistributedDataParallel(
            loss_mod, device_ids=[device.index] if device.type == "cuda" else None
        )
    stop = cfg.steps if cfg.stop_after is None else min(cfg.steps, start + cfg.stop_after)
    logger = MetricLogger(out_dir, tensorboard=tensorboard, start_step=start) if rank == 0 else None
    params = [p for g in optimizer.param_groups for p in g["params"]]
    losses: list[float] = []
    val_metrics: dict[str, float] = {}
    model.predictor.train()
    bar = tqdm(total=stop - start, desc="world model", disable=not show)
    t1 = time.perf_counter()
    try:
        for step in range(start, stop):
            idx = first[torch.randint(len(first), (cfg.batch_size,), generator=gen)]
            z, a, p = train.windows(idx.to(device), cfg.frames)
            s = train.target_windows(idx.to(device), cfg.frames)
            goals = None
            if sums is not None:
                goal, targets = sums.sample(idx.to(device), cfg.frames, cfg.displacement, gen)
                goals = (train.z[goal], targets)
            lr = warmup_cosine(step, cfg.steps, cfg.warmup, cfg.lr, cfg.final_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss, parts = loss_mod(z, a, p, s, goals)
            value = loss.detach()
            if world > 1:
                dist.all_reduce(value)
                value /= world
            value = float(value)
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"non-finite world-model loss {value} at step {step}; the last checkpoint "
                    f"({ckpt if checkpoint_exists(ckpt) else 'none'}) is untouched. Try a lower train.lr."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(
                nn.utils.clip_grad_norm_(params, cfg.clip_grad if cfg.clip_grad > 0 else math.inf)
            )
            optimizer.step()
            losses.append(value)
            done = step + 1
            save = done == stop or (cfg.ckpt_every and done % cfg.ckpt_every == 0)
            metrics: dict[str, float] = {}
            if step % cfg.log_every == 0 or save:
                elapsed = time.perf_counter() - t1
                metrics.update(loss=value, lr=lr, grad_norm=grad_norm,
                               windows_per_s=(done - start) * cfg.batch_size * world / elapsed,
                               **{k: float(v.detach()) for k, v in parts.items()})  # fmt: skip
            if save and rank == 0:
                model.predictor.eval()
                if val is not None:
                    val_metrics = {f"val_{k}": v for k, v in evaluate_world_model(
                        model, val, cfg.eval_horizon, cfg.eval_windows, cfg.seed, cfg.context
                    ).items()}  # fmt: skip
                    metrics.update(val_metrics)
                model.predictor.train()
                rng = [gen.get_state()]
                if world > 1:
                    rng = [torch.empty_like(rng[0]) for _ in range(world)]
                    dist.all_gather(rng, gen.get_state())
                state = {"step": done, "optimizer": optimizer.state_dict(), "rng": rng}
                if target is not None:
                    state["metric_target"] = target.state_dict()
                save_world_model(ckpt, model, run_config, state,
                                 {"step": done, "loss": value, **val_metrics}, encoder_name)  # fmt: skip
            elif save and world > 1:
                dist.all_gather([torch.empty_like(gen.get_state()) for _ in range(world)], gen.get_state())
            if metrics and logger is not None:
                logger.log(step, metrics)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
        model.predictor.eval()
    if world > 1:
        dist.barrier()
    if not val_metrics and val is not None and rank == 0:  # nothing trained in this call (already done)
        val_metrics = {f"val_{k}": v for k, v in evaluate_world_model(
            model, val, cfg.eval_horizon, cfg.eval_windows, cfg.seed, cfg.context).items()}  # fmt: skip
    n = len(losses)
    seconds = time.perf_counter() - t1
    return WorldModelTrainResult(
        checkpoint=str(ckpt) if checkpoint_exists(ckpt) else None,
        steps=start + n,
        final_loss=losses[-1] if losses else saved_loss(ckpt),  # nothing left to run: the saved one
        windows_per_s=n * cfg.batch_size * world / max(seconds, 1e-9) if n else 0.0,
        train_seconds=seconds,
        val=val_metrics,
        losses=losses,
    )
