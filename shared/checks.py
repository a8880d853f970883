"""Argument checks shared by the policy modules: each raises ValueError naming the argument."""

from __future__ import annotations

import math


def require_finite_non_negative(name: str, value: float) -> None:
    """``value`` must be a finite number >= 0."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def require_finite_positive(name: str, value: float) -> None:
    """``value`` must be a finite number > 0."""
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def require_int_at_least(name: str, value: int, minimum: int) -> None:
    """``value`` must be an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
