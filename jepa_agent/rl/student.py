"""A student encoder: a small CNN that gives a frame's planning-space features at policy speed.

The distilled policy (:mod:`jepa_agent.rl.distill`) decides in a fraction of a millisecond, but reading its
input through the world model's ViT costs ~2.2 ms per frame on one CPU thread, most of a decision
(docs/benchmarks.md). :class:`StudentEncoder` is trained to give the same features from the same frames
(feature distillation: the mean squared error to the frozen teacher's standardised features, on the recorded
frames; no label), at a fraction of the cost. Its layout follows the pooled latent's: stride-2 convolutions
down to the pooling grid, a 3x3 convolution across it, and a 1x1 convolution to each cell's token
(``[g, g, D]`` flattened as the latent's ``[N, D]``, ``token_head``), or a linear head for features that
are not a grid of tokens (a cost space's head).

:class:`StudentFeatures` runs it as one frozen TorchScript graph per batch size, with the interface of
:class:`~jepa_agent.rl.space.FastFeatures` (``path="student"``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from jepa_agent.checkpoint import load_module_weights, read_module_config, save_module_files
from jepa_agent.rl.space import checked_trace

WEIGHTS_FILE = "student_encoder.safetensors"
CONFIG_FILE = "student_encoder.json"
KIND = "student_encoder"


class _Tokens(nn.Module):
    """``[B, D, g, g]`` -> ``[B, g * g * D]`` in the latent's token order (row-major cells, then channels)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


class StudentEncoder(nn.Module):
    """uint8 frames ``[B, H, W, 3]`` -> features ``[B, F]`` in the teacher's units (module docstring).

    Args:
        feature_dim: the teacher's feature size ``F``.
        image_size: the frames' side (a power of two times ``grid``).
        width: channels of the first convolution (doubling at each of the next three, then kept).
        grid: the side of the cell grid the convolutions end on (the pooled latent's, 4 for ``grid_size=4``).
        token_head: the features are ``grid x grid`` tokens (a grid-pooled latent): a 1x1 convolution gives
            each cell's; else a linear head over all cells gives the features.
    """

    def __init__(
        self, feature_dim: int, image_size: int = 64, width: int = 16, grid: int = 4, token_head: bool = True
    ) -> None:
        super().__init__()
        downs = math.log2(image_size / grid) if image_size >= grid > 0 else -1.0
        if not (downs >= 1 and downs.is_integer()):
            raise ValueError(
                f"image_size={image_size}, grid={grid}: the student halves the frame down to the grid, so "
                "image_size must be grid x a power of two (e.g. 64 and 4)"
            )
        if width < 1 or feature_dim < 1:
            raise ValueError(f"width={width}, feature_dim={feature_dim}; expected ints >= 1")
        cells = grid * grid
        if token_head and feature_dim % cells:
            raise ValueError(f"feature_dim={feature_dim} is not {grid} x {grid} tokens; use token_head=False")
        self.feature_dim, self.image_size, self.width, self.grid = int(feature_dim), image_size, width, grid
        self.token_head = bool(token_head)
        layers: list[nn.Module] = []
        channels = 3
        for i in range(int(downs)):
            out = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(channels, out, 4, 2, 1), nn.GELU()]
            channels = out
        layers += [nn.Conv2d(channels, channels, 3, 1, 1), nn.GELU()]  # across the grid: every cell sees all
        if token_head:
            layers += [nn.Conv2d(channels, feature_dim // cells, 1), _Tokens()]
        else:
            layers += [nn.Flatten(), nn.Linear(channels * cells, feature_dim)]
        self.net = nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feature_std", torch.ones(self.feature_dim))
        self.meta: dict[str, Any] = {}

    def set_statistics(self, features: Tensor) -> None:
        """Standardise targets with the mean and std of the teacher's feature rows ``[rows, F]``."""
        std = features.std(0)
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(std.clamp(min=max(1e-3 * float(std.mean()), 1e-6)))  # near-constant features

    def standardised(self, pixels: Tensor) -> Tensor:
        """uint8 ``[B, H, W, 3]`` -> the features in standard units ``[B, F]`` (what training fits)."""
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        return self.net(x)

    def forward(self, pixels: Tensor) -> Tensor:
        """uint8 ``[B, H, W, 3]`` -> features ``[B, F]`` in the teacher's units."""
        return self.standardised(pixels) * self.feature_std + self.feature_mean

    def config(self) -> dict[str, Any]:
        return {"format": 1, "kind": KIND, "feature_dim": self.feature_dim, "image_size": self.image_size,
                "width": self.width, "grid": self.grid, "token_head": self.token_head,
                "meta": self.meta}  # fmt: skip

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``student_encoder.safetensors`` + ``student_encoder.json`` atomically; returns the dir."""
        return save_module_files(self, out_dir, WEIGHTS_FILE, CONFIG_FILE, self.config())

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> StudentEncoder:
        """Rebuild a student written by :meth:`save` (no pickle), in eval mode on the CPU.

        Raises:
            FileNotFoundError: a missing config or weights file.
            ValueError: not a student encoder, or weights that do not fit its config.
        """
        written_by = "scripts/distill.py policy_encoder=student"
        cfg = read_module_config(run_dir, WEIGHTS_FILE, CONFIG_FILE, KIND, written_by)
        student = cls(cfg["feature_dim"], cfg["image_size"], cfg["width"], cfg["grid"], cfg["token_head"])
        load_module_weights(student, Path(run_dir) / WEIGHTS_FILE)
        student.meta = dict(cfg.get("meta") or {})
        return student.eval()


def train_student(
    student: StudentEncoder,
    frames: Tensor,
    features: Tensor,
    val_frames: Tensor | None = None,
    val_features: Tensor | None = None,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: Callable[[int, float], Any] | None = None,
) -> dict[str, float]:
    """Fit ``student`` to the teacher's ``features [F, dim]`` of ``frames`` (uint8 ``[F, H, W, 3]``).

    AdamW with a one-cycle schedule (5% warm-up to ``lr``), fresh random frames each step, on the mean
    squared error in standard units. Returns that loss at the end, ``seconds`` and, with held-out frames,
    ``val_ratio`` (:func:`student_error`: 1.0 = giving the mean feature).
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4 or len(frames) != len(features):
        raise ValueError(
            f"frames {tuple(frames.shape)} {frames.dtype} and features {tuple(features.shape)}; expected "
            "uint8 [F, H, W, 3] and [F, dim] with as many rows"
        )
    student.set_statistics(features)
    target = (features - student.feature_mean) / student.feature_std
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    student.train()
    t0, loss = time.perf_counter(), torch.tensor(float("nan"))
    for step in range(steps):
        i = torch.randint(0, len(frames), (batch_size,), generator=gen)
        loss = (student.standardised(frames[i]) - target[i]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step + 1) % 100 == 0:
            progress(step + 1, float(loss.detach()))
    student.eval()
    out = {"loss_final": float(loss.detach()), "seconds": time.perf_counter() - t0}
    if val_frames is not None and val_features is not None and len(val_frames):
        out["val_ratio"] = student_error(student, val_frames, val_features)
    return out


@torch.inference_mode()
def student_error(student: StudentEncoder, frames: Tensor, features: Tensor, batch_size: int = 1024) -> float:
    """The student's squared error on ``frames`` over the teacher ``features``' own spread about their mean
    (summed over rows and features): 0 is exact, 1.0 no better than giving the mean feature."""
    err = sum(
        float((student(frames[i : i + batch_size]) - features[i : i + batch_size]).square().sum())
        for i in range(0, len(frames), batch_size)
    )
    return err / max(float((features - features.mean(0)).square().sum()), 1e-12)


class StudentFeatures:
    """A :class:`StudentEncoder` behind :class:`~jepa_agent.rl.space.FastFeatures`'s interface: uint8 frames
    ``[B, H, W, 3]`` -> float32 features ``[B, F]``, one frozen TorchScript graph per batch size (checked
    against the eager student at its first use)."""

    path = "student"

    def __init__(self, student: StudentEncoder, tolerance: float = 1e-4) -> None:
        self.student, self.tolerance = student.eval(), float(tolerance)
        self._graphs: dict[tuple[int, ...], Any] = {}

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.ascontiguousarray(pixels))
        size = self.student.image_size
        if x.dim() != 4 or x.dtype != torch.uint8 or tuple(x.shape[1:]) != (size, size, 3):
            raise ValueError(
                f"pixels {tuple(x.shape)} {x.dtype}; the student encoder takes uint8 [B, {size}, {size}, 3]"
            )
        key = tuple(x.shape)
        with torch.inference_mode():
            if key not in self._graphs:
                self._graphs[key] = checked_trace(
                    self.student, x, lambda: self.student(x), self.tolerance, "the traced student's features"
                )
            return self._graphs[key](x).float().numpy()


def episode_frames(
    episodes: str | os.PathLike, split: str | None = None, val_fraction: float = 0.1, progress: bool = False
) -> Tensor:
    """Every frame of a split of recorded episodes, uint8 ``[F, H, W, 3]``, episodes concatenated in the
    order :meth:`~jepa_agent.rl.distill.HindsightData.from_episodes` encodes them (row ``i`` is its row
    ``i``)."""
    from tqdm.auto import tqdm

    from jepa_agent.data import EpisodeDataset

    data = EpisodeDataset(episodes, window=1, split=split, val_fraction=val_fraction, cache=False)
    frames = [
        torch.from_numpy(np.asarray(data.episode(i)["frames"]))
        for i in tqdm(range(data.num_episodes), desc=f"frames {split or 'all'}", disable=not progress)
    ]
    return torch.cat(frames)
