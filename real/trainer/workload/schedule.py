"""The learning-rate schedule: linear warmup, then cosine decay, a pure function of the step.

Because the rate depends only on the step (and the scenario), the "scheduler state" a
checkpoint needs is the step alone, and a restored run sets exactly the rates the
uninterrupted run would have set.
"""

from __future__ import annotations

import math


def learning_rate_at(
    step: int, *, peak: float, warmup_steps: int, total_steps: int, floor_fraction: float = 0.1
) -> float:
    """Learning rate of optimizer step ``step`` (1-based).

    Args:
        step: the step about to run, 1 for the first.
        peak: the rate reached at the end of warmup.
        warmup_steps: steps of linear warmup from ``peak / warmup_steps`` to ``peak``.
        total_steps: the run's length; the cosine reaches ``floor_fraction * peak`` there and
            stays there afterwards.
        floor_fraction: the final rate as a fraction of ``peak``.

    Raises:
        ValueError: a negative step count or a non-positive ``step``.
    """
    if step < 1:
        raise ValueError(f"step must be 1 or more, got {step}")
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) must be >= 0 and total_steps ({total_steps}) >= 1"
        )
    if step <= warmup_steps:
        return peak * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    floor = floor_fraction * peak
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
