"""Multi-block spatio-temporal ("tube") masks for V-JEPA pretraining.

As in V-JEPA (``src/masks/multiseq_multiblock3d.py``): a *mask kind* is a number of rectangular
blocks of a given fraction of the frame and aspect ratio; each block spans all frames (a tube).
The union of one mask's blocks is the **target**; the complement is the **context**. Block size is
sampled once per batch and kind, block positions per sample. V-JEPA uses two kinds on every clip:
short-range (8 blocks x 15% of the frame) and long-range (2 blocks x 70%), each with its own
context-encoder + predictor pass, the loss averaged over the two (:class:`TubeMaskCollator`
returns one :class:`MaskSet` per kind).

To batch variable-size masks, indices are truncated to the minimum count across the batch (as
V-JEPA does: the sorted index lists are cut at the end), so every sample of a batch has the same
number of context and of target tokens; truncated tokens are then neither context nor target.

Every random draw uses a ``torch.Generator`` seeded from ``(seed, step, rank)``
(:func:`step_generator`), so masks depend only on the step: a resumed run sees the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MaskSpec:
    """One mask kind.

    Args:
        num_blocks: blocks whose union is the target.
        spatial_scale: (min, max) fraction of the frame covered by one block.
        aspect_ratio: (min, max) block height / width.
        temporal_scale: (min, max) fraction of the tubelet time steps a block spans (1.0 = all: a tube).
    """

    num_blocks: int
    spatial_scale: tuple[float, float]
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    temporal_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks={self.num_blocks}; expected >= 1")
        for name in ("spatial_scale", "aspect_ratio", "temporal_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name}=({lo}, {hi}); expected 0 < min <= max")
        if self.spatial_scale[1] > 1 or self.temporal_scale[1] > 1:
            raise ValueError(
                f"spatial_scale={self.spatial_scale}, temporal_scale={self.temporal_scale}; expected max <= 1"
            )


SHORT_RANGE = MaskSpec(num_blocks=8, spatial_scale=(0.15, 0.15))
LONG_RANGE = MaskSpec(num_blocks=2, spatial_scale=(0.7, 0.7))
DEFAULT_MASKS: tuple[MaskSpec, ...] = (SHORT_RANGE, LONG_RANGE)


@dataclass
class MaskSet:
    """Context and target token indices for a batch (one mask kind).

    Attributes:
        ctx_idx: Long ``[B, Kc]`` sorted context indices into the flattened ``(T', H', W')`` grid.
        tgt_idx: Long ``[B, Kt]`` sorted target indices (disjoint from ``ctx_idx`` row-wise).
        kind: index of the mask kind (selects the predictor's mask token).
    """

    ctx_idx: torch.Tensor
    tgt_idx: torch.Tensor
    kind: int = 0

    def to(self, device: torch.device | str) -> MaskSet:
        """Move both index tensors to ``device``."""
        return MaskSet(self.ctx_idx.to(device), self.tgt_idx.to(device), self.kind)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator seeded deterministically from ``(seed, step, rank)``."""
    state = np.random.SeedSequence([int(seed) % 2**32, int(step), int(rank)]).generate_state(
        2, dtype=np.uint64
    )
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return lo + torch.rand(1, generator=g).item() * (hi - lo)


def sample_block_size(spec: MaskSpec, grid: tuple[int, int, int], g: torch.Generator) -> tuple[int, int, int]:
    """Sample one block's (time steps, height, width) in tokens for ``spec`` on ``grid = (T', H', W')``."""
    gt, gh, gw = grid
    t = max(1, int(gt * _uniform(*spec.temporal_scale, g)))
    num_tokens = int(gh * gw * _uniform(*spec.spatial_scale, g))
    ar = _uniform(*spec.aspect_ratio, g)
    h = min(gh, max(1, int(round(math.sqrt(num_tokens * ar)))))
    w = min(gw, max(1, int(round(math.sqrt(num_tokens / ar)))))
    return t, h, w


def sample_tube_mask(
    spec: MaskSpec, grid: tuple[int, int, int], block: tuple[int, int, int], g: torch.Generator
) -> torch.Tensor:
    """Place ``spec.num_blocks`` blocks of size ``block`` at random: bool ``[T', H', W']``, True = target."""
    gt, gh, gw = grid
    t, h, w = block
    target = torch.zeros(grid, dtype=torch.bool)
    for _ in range(spec.num_blocks):
        top = int(torch.randint(0, gh - h + 1, (1,), generator=g))
        left = int(torch.randint(0, gw - w + 1, (1,), generator=g))
        start = int(torch.randint(0, gt - t + 1, (1,), generator=g))
        target[start : start + t, top : top + h, left : left + w] = True
    return target


def sample_masks(
    spec: MaskSpec, grid: tuple[int, int, int], batch_size: int, g: torch.Generator, kind: int = 0
) -> MaskSet:
    """Sample one mask kind for a batch; counts truncated to the batch minimum (V-JEPA's collation).

    Raises:
        ValueError: when ``spec`` leaves no context on this grid after 50 tries.
    """
    block = sample_block_size(spec, grid, g)
    ctx, tgt = [], []
    for _ in range(batch_size):
        for _ in range(50):
            flat = sample_tube_mask(spec, grid, block, g).flatten()  # [N]
            if not flat.all():
                break
        else:
            raise ValueError(f"mask {spec} covers the whole {grid} token grid; no context is left")
        ctx.append(torch.nonzero(~flat).squeeze(1))
        tgt.append(torch.nonzero(flat).squeeze(1))
    kc = min(len(c) for c in ctx)
    kt = min(len(t) for t in tgt)
    return MaskSet(torch.stack([c[:kc] for c in ctx]), torch.stack([t[:kt] for t in tgt]), kind)


class TubeMaskCollator:
    """Batch-level mask sampler: one :class:`MaskSet` per mask kind, keyed on (seed, step, rank).

    Args:
        grid: the encoder's token grid ``(T', H', W')``.
        specs: the mask kinds (default: V-JEPA's short-range + long-range).
        seed: run seed.
    """

    def __init__(self, grid: Sequence[int], specs: Sequence[MaskSpec] = DEFAULT_MASKS, seed: int = 0) -> None:
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"grid={tuple(grid)}; expected three positive sizes (T', H', W')")
        if not specs:
            raise ValueError("no mask kinds given; expected at least one MaskSpec")
        self.grid = (int(grid[0]), int(grid[1]), int(grid[2]))
        self.specs = tuple(specs)
        self.seed = seed

    def __call__(self, batch_size: int, step: int, rank: int = 0) -> list[MaskSet]:
        """Masks for ``batch_size`` clips at ``step`` on ``rank`` (deterministic)."""
        g = step_generator(self.seed, step, rank)
        return [sample_masks(s, self.grid, batch_size, g, kind=i) for i, s in enumerate(self.specs)]


def specs_from_config(items: Sequence[dict]) -> tuple[MaskSpec, ...]:
    """Build mask kinds from config dicts (``num_blocks``, ``spatial_scale``, ``aspect_ratio``, ...).

    Raises:
        ValueError: no mask kind, or an invalid one (its index and settings are named).
    """
    if not items:
        raise ValueError(
            "masks=[]; expected at least one mask kind, e.g. the default 8 x 15% and 2 x 70% blocks"
        )
    out = []
    for i, d in enumerate(items):
        d = {
            k: (tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
            for k, v in dict(d).items()
        }
        try:
            out.append(MaskSpec(**d))
        except TypeError as e:
            raise ValueError(f"mask kind #{i} {d} is invalid: {e}") from e
    return tuple(out)
