"""Train the :class:`~jepa_agent.models.latent.AnchorHead`: the summed actions between two real frames, read
from the encoder's unpooled patch tokens.

Runs in a world-model run before the predictor, on the encoded frames of the latent cache (tokens, the
recorded actions and the episode boundaries; no proprio, no state, no reward). Each step samples a frame
and a goal frame of the same episode, up to ``train.displacement.goal_steps`` later or ``back_steps``
earlier, and regresses the summed env-unit actions between them, capped at ``train.displacement.cap``
(the displacement head's targets, :meth:`~jepa_agent.training.latent_cache.ActionSums.sample`).

Measured on the distracting reach (docs/benchmarks.md, ``scripts/bench_displacement.py --inputs anchor``):
the held-out error of the shipped model's head, against a difference head fitted on its pooled latents.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_agent.models.latent import AnchorHead
from jepa_agent.training.latent_cache import ActionSums

__all__ = ["AnchorTrainConfig", "anchor_loss", "train_anchor_head"]


@dataclass
class AnchorTrainConfig:
    """Settings of the anchor-head stage (``train.anchor.*``; models with that head).

    Attributes:
        steps: optimisation steps (0: skip the stage; the head then stays untrained and unused).
        batch_size: (frame, goal frame) pairs per step.
        lr, final_lr: AdamW learning rate, cosine-annealed to ``final_lr``.
        weight_decay: AdamW weight decay.
        relative: 0: the squared error; > 0: each pair's squared error over ``|target|^2 + relative``, so
            the few units near the goal, where the planner stops, weigh as much as the far ones.
    """

    steps: int = 12000
    batch_size: int = 256
    lr: float = 1e-3
    final_lr: float = 1e-5
    weight_decay: float = 0.01
    relative: float = 0.25

    def __post_init__(self) -> None:
        if int(self.steps) < 0 or int(self.batch_size) < 1:
            raise ValueError(
                f"train.anchor.steps={self.steps}, batch_size={self.batch_size}; expected steps >= 0 and "
                "batch_size >= 1"
            )
        relative = self.relative
        if isinstance(relative, bool) or not isinstance(relative, numbers.Real) or not relative >= 0:
            raise ValueError(
                f"train.anchor.relative={self.relative!r}; expected a number >= 0 (0: the plain squared "
                "error; e.g. 0.25: each pair's error over its target's squared size + 0.25)"
            )
        if not 0 < float(self.final_lr) <= float(self.lr):
            raise ValueError(
                f"train.anchor.lr={self.lr}, final_lr={self.final_lr}; expected 0 < final_lr <= lr"
            )


def _pairs(sums: ActionSums, frames: Tensor, targets: Any, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    goal, capped = sums.sample(frames, 1, targets, gen)
    return goal, capped[:, 0]


def anchor_loss(pred: Tensor, want: Tensor, relative: float = 0.0) -> Tensor:
    """The stage's loss: the mean squared error, or with ``relative > 0`` each pair's squared error over
    ``|want|^2 + relative`` (times ``relative``, so a pair at the goal weighs as in the plain loss)."""
    if relative <= 0:
        return F.mse_loss(pred, want)
    err = (pred - want).square().sum(-1)
    return (relative * err / (want.square().sum(-1) + relative)).mean() / want.shape[-1]


def train_anchor_head(
    head: AnchorHead,
    tokens: Tensor,
    sums: ActionSums,
    frames: Tensor,
    cfg: AnchorTrainConfig,
    targets: Any,
    val: tuple[Tensor, ActionSums, Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``head`` (in place; its token statistics first); returns ``anchor_loss``, ``anchor_seconds``
    and, with ``val``, ``anchor_val_ratio`` (held-out mean squared error over the targets' variance).

    Args:
        head: the anchor head.
        tokens: every training frame's patch tokens ``[F, P, D]`` (any float dtype; read in batches).
        sums: the training frames' :class:`ActionSums`.
        frames: the frames a pair may start from (every frame of an episode of >= 1 frame).
        cfg: the stage's settings.
        targets: how goals and targets are drawn (``goal_steps``, ``back_steps``, ``cap``:
            :class:`~jepa_agent.training.train_world_model.DisplacementTrainConfig`).
        val: held-out ``(tokens, sums, frames)``.
    """
    from tqdm.auto import tqdm

    if len(frames) == 0:
        raise ValueError("the anchor head needs at least one episode of recorded frames")
    t0 = time.perf_counter()
    dev = next(head.parameters()).device
    head.set_token_stats(tokens)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, cfg.steps), cfg.final_lr)
    head.train()
    loss = torch.zeros(())
    for _ in tqdm(range(cfg.steps), desc="anchor head", disable=not progress, leave=False):
        first = frames[torch.randint(len(frames), (cfg.batch_size,), generator=gen)]
        goal, want = _pairs(sums, first, targets, gen)
        x = tokens[first].to(dev, torch.float32)
        g = tokens[goal].to(dev, torch.float32)
        loss = anchor_loss(head(x, g), want.to(dev), float(cfg.relative))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    head.eval()
    stats = {"anchor_loss": float(loss.detach())}
    if val is not None and len(val[2]):
        v_tokens, v_sums, v_frames = val
        goal, want = _pairs(v_sums, v_frames, targets, torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            pred = torch.cat([
                head(v_tokens[f].to(dev, torch.float32), v_tokens[g].to(dev, torch.float32))
                for f, g in zip(v_frames.split(1024), goal.split(1024), strict=True)
            ])  # fmt: skip
        var = want.var(0).mean().clamp_min(1e-12)
        stats["anchor_val_ratio"] = float(F.mse_loss(pred, want.to(pred)) / var.to(pred))
    stats["anchor_seconds"] = time.perf_counter() - t0
    return stats
