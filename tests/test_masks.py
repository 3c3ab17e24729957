"""Multi-block tube masks: disjoint context/target, configured block sizes, tubes, batching, determinism."""

from __future__ import annotations

import pytest
import torch

from jepa_agent.masks import (
    DEFAULT_MASKS,
    LONG_RANGE,
    SHORT_RANGE,
    MaskSpec,
    TubeMaskCollator,
    sample_block_size,
    sample_masks,
    sample_tube_mask,
    specs_from_config,
    step_generator,
)

GRID = (4, 8, 8)  # 8 frames / tubelet 2, 64 px / patch 8


def test_context_and_target_are_disjoint_and_sorted() -> None:
    collator = TubeMaskCollator(GRID, DEFAULT_MASKS, seed=1)
    for step in range(5):
        for kind, m in enumerate(collator(16, step)):
            assert m.kind == kind
            assert m.ctx_idx.shape[0] == m.tgt_idx.shape[0] == 16  # same counts across the batch
            for c, t in zip(m.ctx_idx, m.tgt_idx, strict=True):
                assert not set(c.tolist()) & set(t.tolist())
                assert len(c) > 0 and len(t) > 0
                assert (c.diff() > 0).all() and (t.diff() > 0).all()
                assert c.max() < 256 and t.max() < 256


def test_block_size_matches_configured_scale_and_aspect() -> None:
    g = torch.Generator().manual_seed(0)
    for spec, scale in ((SHORT_RANGE, 0.15), (LONG_RANGE, 0.7)):
        for _ in range(50):
            t, h, w = sample_block_size(spec, (4, 16, 16), g)
            assert t == 4  # spans all frames
            assert abs(h * w / 256 - scale) < 0.06  # rounding of h, w only
            assert 0.75 - 0.2 <= h / w <= 1.5 + 0.2


def test_blocks_are_tubes_and_union_is_target() -> None:
    g = torch.Generator().manual_seed(0)
    spec = MaskSpec(num_blocks=3, spatial_scale=(0.1, 0.1))
    block = sample_block_size(spec, GRID, g)
    target = sample_tube_mask(spec, GRID, block, g)
    assert target.shape == GRID
    assert all(torch.equal(target[0], target[t]) for t in range(GRID[0]))  # same in every frame
    assert block[1] * block[2] <= target[0].sum() <= 3 * block[1] * block[2]


def test_masked_ratios_of_default_kinds() -> None:
    g = step_generator(0, 0)
    short = [sample_masks(SHORT_RANGE, GRID, 64, g).tgt_idx.shape[1] / 256 for _ in range(10)]
    long = [sample_masks(LONG_RANGE, GRID, 64, g).tgt_idx.shape[1] / 256 for _ in range(10)]
    # union of 8 x 15% blocks (overlapping) and of 2 x 70% blocks; batch minimum after truncation
    assert 0.15 <= min(short) and max(short) <= 0.9
    assert 0.5 <= min(long) and max(long) < 1.0
    assert sum(long) / 10 > sum(short) / 10


def test_truncation_to_batch_minimum() -> None:
    g = torch.Generator().manual_seed(3)
    m = sample_masks(SHORT_RANGE, GRID, 32, g)
    assert m.ctx_idx.shape[1] + m.tgt_idx.shape[1] <= 256


def test_deterministic_per_step_and_rank() -> None:
    a = TubeMaskCollator(GRID, seed=7)
    b = TubeMaskCollator(GRID, seed=7)
    for x, y in zip(a(4, step=3), b(4, step=3), strict=True):
        assert torch.equal(x.ctx_idx, y.ctx_idx) and torch.equal(x.tgt_idx, y.tgt_idx)
    assert not torch.equal(a(4, step=3)[0].tgt_idx, a(4, step=4)[0].tgt_idx) or not torch.equal(
        a(4, step=3)[0].tgt_idx, a(4, step=3, rank=1)[0].tgt_idx
    )


def test_bad_specs_raise() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        MaskSpec(num_blocks=0, spatial_scale=(0.1, 0.1))
    with pytest.raises(ValueError, match="spatial_scale"):
        MaskSpec(num_blocks=1, spatial_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="no context"):
        sample_masks(MaskSpec(num_blocks=1, spatial_scale=(1.0, 1.0)), (1, 2, 2), 2, torch.Generator())
    with pytest.raises(ValueError, match="mask kind #0"):
        specs_from_config([{"num_blocks": 1, "spatial_scale": [0.1, 0.1], "colour": "red"}])
    assert specs_from_config([{"num_blocks": 8, "spatial_scale": [0.15, 0.15]}]) == (SHORT_RANGE,)
    with pytest.raises(ValueError, match=r"masks=\[\]; expected at least one mask kind"):
        specs_from_config([])
