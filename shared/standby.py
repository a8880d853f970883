"""The standby pool: when a replacement for a lost node is ready.

A job keeps ``standby_nodes`` healthy spares. A lost node is replaced by the spare that is ready
first; bringing it into the job takes ``replacement_s`` plus a uniform jitter in
``[0, replacement_jitter_s]`` (the paper measured 4-7 minutes on a cloud). Each spare taken is
re-ordered from the cloud at once and is ready ``provisioning_delay_s`` later, so the pool
refills; a request that finds no spare waits for the earliest one on order (or, with no spares
at all, for a node provisioned on the spot).

One decision for the simulator (``sim.cluster``) and the real harness's cloud operator
(``real.coord.operator``): both call ``take_replacement`` with their own clock and random draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ReplacementSource = Literal["standby", "provisioned"]


@dataclass(frozen=True)
class StandbyPool:
    """The spares, as the times (s) at which each is or will be ready, earliest first."""

    ready_at_s: tuple[float, ...]

    @classmethod
    def full(cls, standby_nodes: int, now_s: float = 0.0) -> StandbyPool:
        """A pool of ``standby_nodes`` spares, all ready at ``now_s``."""
        if standby_nodes < 0:
            raise ValueError(f"standby_nodes must be >= 0, got {standby_nodes}")
        return cls((now_s,) * standby_nodes)

    def ready(self, now_s: float) -> int:
        """Spares ready to be taken at ``now_s``."""
        return sum(1 for ready in self.ready_at_s if ready <= now_s)


@dataclass(frozen=True)
class ReplacementTiming:
    """When a replacement is ready, and where it came from.

    Attributes:
        ready_at_s: when the replacement node has joined the job, s.
        source: "standby" when a ready spare was taken, else "provisioned" (it waited for one).
        pool: the pool after the request (the spare taken re-ordered).
    """

    ready_at_s: float
    source: ReplacementSource
    pool: StandbyPool


def take_replacement(
    pool: StandbyPool,
    now_s: float,
    *,
    replacement_s: float,
    provisioning_delay_s: float,
    replacement_jitter_s: float = 0.0,
    uniform: float = 0.0,
) -> ReplacementTiming:
    """Take the earliest spare for a node lost at ``now_s`` and re-order one.

    Args:
        pool: the pool before the request.
        now_s: the time of the request, s.
        replacement_s: time to bring a ready spare into the job, s.
        provisioning_delay_s: time to provision a spare from the cloud, s.
        replacement_jitter_s: the largest extra replacement time, s.
        uniform: a draw from U[0, 1) that picks the jitter (the caller owns randomness).

    Raises:
        ValueError: a negative duration, or ``uniform`` outside [0, 1).
    """
    for name, value in (
        ("replacement_s", replacement_s),
        ("provisioning_delay_s", provisioning_delay_s),
        ("replacement_jitter_s", replacement_jitter_s),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not 0.0 <= uniform < 1.0:
        raise ValueError(f"uniform must be in [0, 1), got {uniform}")
    spares = sorted(pool.ready_at_s)
    if spares:
        spare_ready = spares.pop(0)
        spares.append(now_s + provisioning_delay_s)
    else:
        spare_ready = now_s + provisioning_delay_s
    source: ReplacementSource = "standby" if spare_ready <= now_s else "provisioned"
    ready_at = max(now_s, spare_ready) + replacement_s + replacement_jitter_s * uniform
    return ReplacementTiming(ready_at, source, StandbyPool(tuple(sorted(spares))))
