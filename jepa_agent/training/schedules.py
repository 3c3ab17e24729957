"""Step-indexed schedules: learning rate (linear warm-up + cosine) and EMA momentum.

Pure functions of the step, so a resumed run recomputes exactly the same values.
"""

from __future__ import annotations

import math


def _check(step: int, total: int) -> None:
    if total <= 0:
        raise ValueError(f"total={total} steps; expected a positive number of steps")
    if step < 0:
        raise ValueError(f"step={step}; expected step >= 0")


def warmup_cosine(step: int, total: int, warmup: int, base: float, final: float) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup`` steps, then cosine decay to ``final`` at ``total``.

    Steps beyond ``total`` stay at ``final``.

    Args:
        step: current optimisation step (0-based).
        total: total number of steps of the run.
        warmup: warm-up steps (0 for none); must be <= total.
        base: peak value reached at the end of warm-up.
        final: value at (and after) ``total``.
    """
    _check(step, total)
    if not 0 <= warmup <= total:
        raise ValueError(f"warmup={warmup}; expected 0 <= warmup <= total={total}")
    if step < warmup:
        return base * (step + 1) / warmup
    if total == warmup:
        return final
    progress = min(1.0, (step - warmup) / (total - warmup))
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def linear_momentum(step: int, total: int, start: float, end: float) -> float:
    """EMA momentum increasing linearly from ``start`` (step 0) to ``end`` (step ``total``), then flat."""
    _check(step, total)
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"momentum start={start}, end={end}; expected values in [0, 1]")
    return start + (end - start) * min(1.0, step / total)


def cosine_weight_decay(step: int, total: int, base: float, final: float) -> float:
    """Cosine schedule from ``base`` to ``final`` (V-JEPA ramps weight decay so); flat after ``total``."""
    _check(step, total)
    progress = min(1.0, step / total)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))
