"""V-JEPA pretraining loop: context encoder + masked predictor vs an EMA target encoder.

One step (as V-JEPA's ``app/vjepa/train.py``): targets = layer-normed EMA-encoder features of all
tokens (``no_grad``); for each mask kind, the context encoder encodes only the context tokens and
the predictor predicts the target tokens; loss = L1 on target tokens, averaged over mask kinds;
AdamW (warm-up + cosine lr), gradient clipping, then an EMA update with a scheduled momentum.

Determinism: the clips of a step are chosen by :class:`StepBatchSampler` and the masks by
:class:`~jepa_agent.masks.TubeMaskCollator`, both pure functions of ``(seed, step, rank)``, so
``resume`` reproduces an uninterrupted run. Distributed: under ``torchrun`` (``WORLD_SIZE > 1``)
the encoder + predictor are wrapped in one ``DistributedDataParallel`` (gloo on CPU, nccl on
GPU), each rank takes its own slice of every global batch, and only rank 0 writes.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from jepa_agent.checkpoint import (
    check_resume_matches,
    checkpoint_exists,
    load_into,
    load_meta,
    load_train_state,
    save_checkpoint,
    saved_loss,
)
from jepa_agent.losses import (
    content_std,
    effective_rank,
    ema_update,
    feature_std,
    jepa_l1_loss,
    mean_over_masks,
    target_features,
)
from jepa_agent.masks import MaskSet, MaskSpec, TubeMaskCollator
from jepa_agent.models.predictor import MaskedPredictor, predictor_config
from jepa_agent.models.vit import VideoViT, encoder_config, gather_tokens
from jepa_agent.training.distributed import broadcast_path, init_distributed
from jepa_agent.training.logger import MetricLogger
from jepa_agent.training.schedules import linear_momentum, warmup_cosine
from jepa_agent.utils import rng_state, set_rng_state

CHECKPOINT_DIR = "checkpoint"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training stopped and the last saved checkpoint was left untouched."""


class CollapseWarning(UserWarning):
    """Target features are losing variance / rank: the representation may be collapsing."""


@dataclass
class PretrainConfig:
    """Optimisation settings of a pretraining run (explicit, no run config inside the library).

    Attributes:
        steps: total optimisation steps (the schedules span them).
        batch_size: clips per step and per process.
        lr, final_lr, warmup: AdamW learning rate: linear warm-up to ``lr``, cosine to ``final_lr``.
        weight_decay: AdamW weight decay (not applied to biases and norm gains).
        betas: AdamW betas.
        clip_grad: max global gradient norm (0 disables clipping).
        ema: (start, end) EMA momentum, increased linearly over the run.
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        seed: run seed (weights, data order, masks).
        log_every, ckpt_every, collapse_every: intervals in steps (``ckpt_every=0``: only at the end).
        collapse_min_std, collapse_min_rank: warn when the target features' mean per-dim std or
            effective rank falls below these.
        stop_after: stop (with a checkpoint) after this many steps in this invocation; ``None`` = run to
            ``steps``. Lets a job be split into chunks and resumed.
        num_workers: DataLoader workers.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:i]"``.
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 5e-4
    final_lr: float = 1e-6
    warmup: int = 50
    weight_decay: float = 0.04
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 1.0
    ema: tuple[float, float] = (0.996, 1.0)
    precision: str = "fp32"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    collapse_every: int = 50
    collapse_min_std: float = 0.05
    collapse_min_rank: float = 2.0
    stop_after: int | None = None
    num_workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={self.precision!r}; expected 'fp32' or 'bf16'")
        for name in ("batch_size", "log_every", "collapse_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected a positive integer")
        if int(self.steps) < 0:
            raise ValueError(
                f"steps={self.steps}; expected >= 0 (0: save the random-init encoder, a baseline)"
            )
        if self.steps > 0 and not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup={self.warmup}; expected 0 <= warmup <= steps={self.steps}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after={self.stop_after}; expected None or >= 1")
        if self.lr < 0 or self.final_lr < 0:
            raise ValueError(f"lr={self.lr}, final_lr={self.final_lr}; expected both >= 0 (lr=0: no update)")
        if self.weight_decay < 0 or self.clip_grad < 0:
            raise ValueError(
                f"weight_decay={self.weight_decay}, clip_grad={self.clip_grad}; expected both >= 0 "
                "(clip_grad=0 disables clipping)"
            )
        if len(self.ema) != 2 or not 0 <= self.ema[0] <= self.ema[1] <= 1:
            raise ValueError(f"ema={list(self.ema)}; expected [start, end] with 0 <= start <= end <= 1")


@dataclass
class PretrainResult:
    """What a run produced: checkpoint path, per-step losses of this invocation, throughput."""

    checkpoint: str | None
    steps: int
    final_loss: float | None  # None: no step has ever run
    clips_per_s: float
    skipped_files: int
    losses: list[float] = field(default_factory=list)
    collapse: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON-line summary (no per-step history)."""
        return {
            "checkpoint": self.checkpoint,
            "steps": self.steps,
            "final_loss": self.final_loss,
            "clips_per_s": self.clips_per_s,
            "skipped_files": self.skipped_files,
            **self.collapse,
        }


# ------------------------------------------------------------------------------- data and ranks


class StepBatchSampler:
    """Index lists for steps ``start..stop-1``: global batch ``b`` of step ``s`` covers positions
    ``s*B*W .. (s+1)*B*W - 1`` of an endless sequence of epochs, each a permutation seeded by (seed, epoch);
    rank ``r`` takes its ``B`` consecutive positions (DistributedSampler-like sharding, keyed on the step).
    """

    def __init__(
        self, n: int, batch_size: int, start: int, stop: int, seed: int = 0, rank: int = 0, world: int = 1
    ):
        if n < 1:
            raise ValueError("the pretraining dataset is empty: no clip of the requested length")
        self.n, self.batch_size, self.start, self.stop = n, batch_size, start, stop
        self.seed, self.rank, self.world = seed, rank, world
        self._perm: tuple[int, torch.Tensor] | None = None

    def _epoch_perm(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(int(self.seed) * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def indices(self, step: int) -> list[int]:
        """This rank's dataset indices at ``step``."""
        first = (step * self.world + self.rank) * self.batch_size
        out = []
        for pos in range(first, first + self.batch_size):
            out.append(int(self._epoch_perm(pos // self.n)[pos % self.n]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start, self.stop):
            yield self.indices(s)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def collate_frames(batch: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Stack dataset items' ``frames`` uint8 ``[T, 3, H, W]`` -> uint8 ``[B, T, 3, H, W]``."""
    return torch.stack([torch.as_tensor(item["frames"]) for item in batch])


def frames_to_clips(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, T, 3, H, W]`` -> float ``[B, 3, T, H, W]`` in [0, 1] on ``device``."""
    return frames.to(device, non_blocking=True).permute(0, 2, 1, 3, 4).float().div_(255.0)


def count_skipped(dataset: Dataset) -> int:
    """Number of corrupt/unreadable files a dataset reader skipped (0 when it does not count)."""
    return len(getattr(dataset, "skipped", None) or [])


def build_pretrain_dataset(
    kind: str,
    path: str | os.PathLike,
    clip_len: int,
    frame_stride: int = 1,
    image_size: int = 64,
    split: str | None = "train",
    val_fraction: float = 0.1,
) -> Dataset:
    """Clips for ``data=episodes`` (EpisodeDataset, train split) or ``data=videos`` (any mp4 folder).

    Raises:
        ValueError: unknown ``kind``; DataError (a ValueError) for a missing/unreadable source.
    """
    if not Path(path).expanduser().is_dir():
        raise ValueError(f"data.path={str(path)!r} is not a directory; expected a folder of {kind}")
    path = Path(path).expanduser()
    from jepa_agent.data import EpisodeDataset, VideoFolderDataset

    if kind == "episodes":
        return EpisodeDataset(path, window=clip_len, frame_stride=frame_stride, split=split,
                              val_fraction=val_fraction, expect_image_size=image_size)  # fmt: skip
    if kind == "videos":
        return VideoFolderDataset(path, clip_len=clip_len, frame_stride=frame_stride, image_size=image_size)
    raise ValueError(f"data.kind={kind!r}; expected 'episodes' or 'videos'")


# ------------------------------------------------------------------------------------ model pieces


class ContextPredictor(nn.Module):
    """Encoder on context tokens + predictor on target positions, one pass per mask kind (one DDP unit).

    Args:
        encoder: the context encoder.
        predictor: the masked predictor.
        drop_masked: encode only the context tokens (V-JEPA; default). ``False`` encodes all tokens and
            then keeps the context outputs: for timing comparisons only (the context then sees the targets).
    """

    def __init__(self, encoder: VideoViT, predictor: MaskedPredictor, drop_masked: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.drop_masked = drop_masked

    def forward(self, clips: torch.Tensor, masks: Sequence[MaskSet]) -> list[torch.Tensor]:
        """``clips`` [B, 3, T, H, W] -> one ``[B, Kt, D]`` prediction per mask kind."""
        out = []
        for m in masks:
            if self.drop_masked:
                z = self.encoder(clips, keep=m.ctx_idx)  # [B, Kc, D]
            else:
                z = gather_tokens(self.encoder(clips), m.ctx_idx)  # [B, N, D] -> [B, Kc, D]
            out.append(self.predictor(z, m.ctx_idx, m.tgt_idx, mask_index=m.kind))  # [B, Kt, D]
        return out


def make_optimizer(modules: Sequence[nn.Module], cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases, norm gains and mask tokens are not decayed)."""
    decay, no_decay = [], []
    for mod in modules:
        for name, p in mod.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or "mask_tokens" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def jepa_step_loss(
    model: nn.Module, target_encoder: nn.Module, clips: torch.Tensor, masks: Sequence[MaskSet]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The V-JEPA loss of one batch and the (layer-normed) target features ``[B, N, D]``."""
    h = target_features(target_encoder, clips)  # [B, N, D], no grad
    preds = model(clips, masks)
    loss = mean_over_masks(jepa_l1_loss(p, h, m.tgt_idx) for p, m in zip(preds, masks, strict=True))
    return loss, h


# ------------------------------------------------------------------------------------------ the loop


def pretrain(
    dataset: Dataset,
    encoder: VideoViT,
    predictor: MaskedPredictor,
    mask_specs: Sequence[MaskSpec],
    cfg: PretrainConfig,
    out_dir: str | os.PathLike,
    run_config: dict[str, Any] | None = None,
    resume: bool = False,
    tensorboard: bool = False,
    progress: bool = True,
) -> PretrainResult:
    """Pretrain ``encoder`` (and ``predictor``) on ``dataset`` clips with V-JEPA; checkpoint to ``out_dir``.

    Args:
        dataset: items with ``frames`` uint8 ``[T, 3, H, W]`` (T = ``encoder.num_frames``).
        encoder: the context encoder (built with the seed set; the target is its EMA copy).
        predictor: the masked predictor, with ``num_mask_tokens >= len(mask_specs)``.
        mask_specs: the mask kinds (each its own encoder + predictor pass per step).
        cfg: optimisation settings.
        out_dir: run directory: ``checkpoint/``, ``metrics.csv`` (+ ``tb/``).
        run_config: the resolved run config to save in the checkpoint (``encoder:`` must rebuild it).
        resume: continue from ``out_dir/checkpoint`` when it exists.
        tensorboard: also log to TensorBoard.
        progress: show a tqdm bar (stderr, rank 0).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last checkpoint is left untouched).
    """
    from tqdm.auto import tqdm

    rank, world, device = init_distributed(cfg.device)
    out_dir = broadcast_path(Path(out_dir), world)
    ckpt_path = out_dir / CHECKPOINT_DIR
    if predictor.num_mask_tokens < len(mask_specs):
        raise ValueError(
            f"predictor has {predictor.num_mask_tokens} mask tokens for {len(mask_specs)} mask kinds"
        )
    encoder.to(device)
    predictor.to(device)
    target = copy.deepcopy(encoder).requires_grad_(False).eval()
    optimizer = make_optimizer([encoder, predictor], cfg)
    start = 0
    if resume and checkpoint_exists(ckpt_path):
        _check_architecture(ckpt_path, encoder, predictor)
        for name, mod in (("encoder", encoder), ("predictor", predictor), ("target_encoder", target)):
            load_into(ckpt_path, name, mod)
        state = load_train_state(ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        set_rng_state(state["rng"])
    elif resume and rank == 0:
        warnings.warn(f"resume=true but no checkpoint in {ckpt_path}; starting from step 0", stacklevel=2)
    model: nn.Module = ContextPredictor(encoder, predictor)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        if start == 0:
            target.load_state_dict(encoder.state_dict())  # DDP broadcast rank 0's weights: copy them
    stop = cfg.steps if cfg.stop_after is None else min(cfg.steps, start + cfg.stop_after)
    masker = TubeMaskCollator(encoder.grid, mask_specs, seed=cfg.seed)
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, start, stop, cfg.seed, rank, world)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_frames, num_workers=cfg.num_workers
    )
    logger = MetricLogger(out_dir, tensorboard=tensorboard, start_step=start) if rank == 0 else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    params = [p for g in optimizer.param_groups for p in g["params"]]

    losses: list[float] = []
    collapse: dict[str, float] = {}
    bar = tqdm(total=stop - start, initial=0, desc="pretrain", disable=not progress or rank != 0)
    t0, t_data, step = time.perf_counter(), 0.0, start
    t_fetch = time.perf_counter()
    try:
        for step, frames in zip(range(start, stop), loader, strict=True):
            t_data += time.perf_counter() - t_fetch
            clips = frames_to_clips(frames, device)  # [B, 3, T, H, W]
            masks = [m.to(device) for m in masker(clips.shape[0], step, rank)]
            lr = warmup_cosine(step, cfg.steps, cfg.warmup, cfg.lr, cfg.final_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            with autocast:
                loss, h = jepa_step_loss(model, target, clips, masks)
            loss_value = loss.detach().float()
            if world > 1:
                dist.all_reduce(loss_value)
                loss_value /= world
            loss_value = float(loss_value)
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"non-finite loss {loss_value} at step {step}; stopped, the last checkpoint "
                    f"({ckpt_path if checkpoint_exists(ckpt_path) else 'none'}) is untouched. "
                    "Try a lower lr, precision=fp32, or a larger warmup."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(
                nn.utils.clip_grad_norm_(params, cfg.clip_grad if cfg.clip_grad > 0 else float("inf"))
            )
            optimizer.step()
            momentum = linear_momentum(step, cfg.steps, *cfg.ema)
            ema_update(target, encoder, momentum)
            losses.append(loss_value)
            done = step + 1
            metrics: dict[str, float] = {}
            if step % cfg.collapse_every == 0 or done == stop:
                collapse = {"target_std": feature_std(h), "target_eff_rank": effective_rank(h)}
                if h.shape[0] > 1:
                    collapse["target_content_std"] = content_std(h)
                metrics.update(collapse)
                _check_collapse(collapse, cfg, step, logger)
            if step % cfg.log_every == 0 or done == stop or metrics:
                elapsed = time.perf_counter() - t0
                metrics.update(loss=loss_value, lr=lr, momentum=momentum, grad_norm=grad_norm,
                               clips_per_s=(done - start) * cfg.batch_size * world / elapsed,
                               data_s_per_step=t_data / (done - start))  # fmt: skip
                if logger is not None:
                    logger.log(step, metrics)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            bar.update(1)
            if rank == 0 and (done == stop or (cfg.ckpt_every and done % cfg.ckpt_every == 0)):
                _save(ckpt_path, encoder, predictor, target, optimizer, done, loss_value, run_config)
            t_fetch = time.perf_counter()
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    if cfg.steps == 0 and rank == 0 and not checkpoint_exists(ckpt_path):  # the random-init baseline
        _save(ckpt_path, encoder, predictor, target, optimizer, 0, None, run_config)
    if world > 1:
        dist.barrier()
    elapsed = time.perf_counter() - t0
    n_steps = len(losses)
    return PretrainResult(
        checkpoint=str(ckpt_path) if checkpoint_exists(ckpt_path) else None,
        steps=start + n_steps,
        final_loss=losses[-1] if losses else saved_loss(ckpt_path),  # nothing left to run: the saved one
        clips_per_s=n_steps * cfg.batch_size * world / elapsed if n_steps else 0.0,
        skipped_files=count_skipped(dataset),
        losses=losses,
        collapse=collapse,
    )


def _check_collapse(
    stats: dict[str, float], cfg: PretrainConfig, step: int, logger: MetricLogger | None
) -> None:
    if stats["target_std"] < cfg.collapse_min_std or stats["target_eff_rank"] < cfg.collapse_min_rank:
        msg = (
            f"REPRESENTATION COLLAPSE WARNING at step {step}: target feature std {stats['target_std']:.4f} "
            f"(min {cfg.collapse_min_std}), effective rank {stats['target_eff_rank']:.2f} "
            f"(min {cfg.collapse_min_rank}); consider a lower lr, a higher EMA momentum, or more data"
        )
        warnings.warn(msg, CollapseWarning, stacklevel=3)
        if logger is not None:
            logger.log(step, {"collapse_warning": 1.0})


def _architecture(encoder: VideoViT, predictor: MaskedPredictor) -> dict[str, dict[str, Any]]:
    """What builds the encoder and predictor (saved in the checkpoint meta, compared on resume)."""
    return {"encoder": encoder_config(encoder), "predictor": predictor_config(predictor)}


def _check_architecture(path: Path, encoder: VideoViT, predictor: MaskedPredictor) -> None:
    """Refuse to resume into models built differently from the checkpoint's, naming what differs.

    Weights alone cannot tell some changes apart (``pos_embed`` adds no parameters), so the
    constructor arguments saved with the checkpoint are compared; older checkpoints without them
    rely on the strict weight load alone.
    """
    saved = load_meta(path).get("architecture")
    if saved is not None:
        check_resume_matches(path, saved, _architecture(encoder, predictor))


def _save(
    path: Path,
    encoder: VideoViT,
    predictor: MaskedPredictor,
    target: VideoViT,
    optimizer: torch.optim.Optimizer,
    step: int,
    loss: float | None,
    run_config: dict[str, Any] | None,
) -> None:
    train_state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state()}
    modules = {"encoder": encoder, "predictor": predictor, "target_encoder": target}
    meta = {"kind": "pretrain", "step": step, "loss": loss, "architecture": _architecture(encoder, predictor)}
    save_checkpoint(path, modules, run_config, train_state, meta)
