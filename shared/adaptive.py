"""Adaptive checkpoint frequency: checkpoint every k iterations when one iteration is too short.

Gemini replicates each in-memory checkpoint inside the idle spans of the next iteration's
training traffic (``shared.scheduling``). When the links are slow or the state is large, one
iteration's idle time cannot carry ``(m - 1)`` copies of the checkpoint: the rest spills, and
the next ``save()`` waits for it (the iteration slows down), or checkpoints queue up. The way
out is to checkpoint less often: every ``k`` iterations, with the checkpoint's chunks spread
over the idle spans of the ``k`` iterations that follow it. A failure then loses up to ``k``
iterations of progress instead of one, which is still far less than a persistent checkpoint
every few hours.

This module decides ``k``, as pure functions and one small stateful controller with no clock,
no I/O and no randomness, so the simulator and the real engine choose the same ``k`` from the
same inputs:

- `tile_spans`: the idle spans of ``k`` consecutive iterations, as offsets from the first one's
  start (the spans of one iteration repeated every ``iteration_s``).
- `required_interval`: the least ``k`` whose ``k`` iterations of idle spans carry every byte
  of the checkpoint's copies without spill, planned exactly as ``shared.scheduling.plan_traffic``
  plans them (chunks of at most ``R / p`` bytes, ``alpha`` per chunk, ``mu`` of each span).
- `next_interval`: hysteresis. ``k`` grows at once when the checkpoint no longer fits (spill
  would slow training down), but shrinks only when it would still fit at a throughput lower by
  the ``hysteresis`` fraction, so a throughput that wavers around a boundary does not make ``k``
  flap between two values.
- `IntervalController`: keeps the recent measured replication throughputs (their median is the
  estimate) and the current ``k``; ``decide`` applies the two functions above.
- `due`: whether an iteration is a checkpoint iteration: every ``k`` iterations from an anchor
  (the iteration training restarted from, or where ``k`` last changed), plus every multiple of
  the persistence interval (a checkpoint to be persisted is never skipped).

The persistent interval follows the failure rate instead (Young 1974, Daly 2006: an interval of
about ``sqrt(2 * t_save * MTBF)``): `estimate_mtbf_s` turns the failures observed so far into an
MTBF (with the scenario's MTBF as a prior worth one failure), and `persistent_interval_iterations`
turns an MTBF into a number of iterations with ``shared.costs``'s formulas.

Times in seconds, sizes in bytes, throughputs in bytes per second.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shared import costs
from shared.checks import require_finite_non_negative, require_finite_positive, require_int_at_least
from shared.scheduling import IdleSpan, plan_traffic

__all__ = [
    "DEFAULT_HYSTERESIS",
    "DEFAULT_MAX_INTERVAL",
    "IntervalController",
    "IntervalDecision",
    "due",
    "estimate_mtbf_s",
    "next_interval",
    "persist_every",
    "persistent_interval_iterations",
    "required_interval",
    "tile_spans",
]

DEFAULT_MAX_INTERVAL = 1000
"""The largest k chosen: a job whose idle spans carry nearly nothing checkpoints this rarely."""

DEFAULT_HYSTERESIS = 0.2
"""k shrinks only when the checkpoint would fit at a throughput 20% below the estimate."""

DEFAULT_WINDOW = 5
"""Measured throughputs kept; their median is the estimate (one slow send does not move it)."""


def tile_spans(spans: Sequence[IdleSpan], iteration_s: float, k: int) -> tuple[IdleSpan, ...]:
    """The idle spans of ``k`` consecutive iterations, from the first iteration's start.

    Iteration ``j`` (0-based) starts at ``j * iteration_s``; its spans are those of one
    iteration shifted by that much. Span ``i`` of iteration ``j`` is entry ``j * len(spans) + i``.

    Raises:
        ValueError: ``iteration_s`` not positive, ``k`` below 1, or a span ending after the
            iteration (the tiles would overlap).
    """
    require_finite_positive("iteration_s", iteration_s)
    require_int_at_least("k", k, 1)
    for index, span in enumerate(spans):
        if span.end_s > iteration_s * (1 + 1e-9):
            raise ValueError(
                f"spans[{index}] ends at {span.end_s!r} s, after the iteration ({iteration_s!r} s)"
            )
    return tuple(
        IdleSpan(j * iteration_s + span.start_s, span.duration_s)
        for j in range(k)
        for span in spans
    )


def required_interval(
    spans: Sequence[IdleSpan],
    iteration_s: float,
    checkpoint_bytes: int,
    copies: int,
    *,
    throughput_bytes_per_s: float,
    alpha_s: float,
    safety_factor: float,
    buffer_bytes: int,
    sub_buffers: int,
    max_interval: int = DEFAULT_MAX_INTERVAL,
) -> int:
    """The least k whose k iterations of idle spans carry all copies without spill.

    Args:
        spans: idle spans of one iteration (profiled), in time order.
        iteration_s: length of one iteration, s (> 0).
        checkpoint_bytes: bytes of one copy as it crosses the network (compressed size when
            replication compresses), >= 0.
        copies: copies sent, ``m - 1`` (>= 0).
        throughput_bytes_per_s: replication throughput, measured (or the link's bandwidth).
        alpha_s, safety_factor, buffer_bytes, sub_buffers: as for ``plan_traffic``.
        max_interval: the answer when even this many iterations are not enough.

    Returns:
        k in ``[1, max_interval]``; 1 when nothing is sent.
    """
    require_finite_positive("iteration_s", iteration_s)
    require_int_at_least("checkpoint_bytes", checkpoint_bytes, 0)
    require_int_at_least("copies", copies, 0)
    require_finite_positive("throughput_bytes_per_s", throughput_bytes_per_s)
    require_int_at_least("max_interval", max_interval, 1)
    total = checkpoint_bytes * copies
    if total == 0:
        return 1

    def spill(k: int) -> int:
        plan = plan_traffic(
            tile_spans(spans, iteration_s, k),
            checkpoint_bytes,
            list(range(copies)),
            bandwidth_bytes_per_s=throughput_bytes_per_s,
            alpha_s=alpha_s,
            safety_factor=safety_factor,
            buffer_bytes=buffer_bytes,
            sub_buffers=sub_buffers,
        )
        return plan.spill_bytes

    # Spans are filled independently, so one iteration carries the same bytes in every tile
    # (a chunk cut at a copy boundary can cost one more alpha: the check below corrects that).
    per_iteration = total - spill(1)
    if per_iteration <= 0:
        return max_interval
    k = min(max(1, math.ceil(total / per_iteration)), max_interval)
    while k < max_interval and spill(k) > 0:
        k += 1
    # The estimate may overshoot by rounding: step down while one less still fits.
    while k > 1 and spill(k - 1) == 0:
        k -= 1
    return k


def next_interval(current: int, required: int, required_pessimistic: int) -> int:
    """The new k, with hysteresis.

    Args:
        current: the k in use.
        required: `required_interval` at the estimated throughput.
        required_pessimistic: `required_interval` at the estimated throughput lowered by the
            hysteresis fraction (>= ``required``).

    Returns:
        ``required`` when it exceeds ``current`` (grow at once: otherwise training waits for
        spill); ``required_pessimistic`` when that is below ``current`` (shrink only with a
        margin); else ``current``.
    """
    require_int_at_least("current", current, 1)
    require_int_at_least("required", required, 1)
    require_int_at_least("required_pessimistic", required_pessimistic, required)
    if required > current:
        return required
    if required_pessimistic < current:
        return required_pessimistic
    return current


@dataclass(frozen=True)
class IntervalDecision:
    """One decision of `IntervalController.decide`.

    Attributes:
        interval: the k to use from now on.
        previous: the k used before.
        required: the least k at the estimated throughput.
        throughput_bytes_per_s: the estimate used (median of the recent measurements).
        idle_s: idle time one iteration's spans offer, before the safety factor, s.
        reason: why k is what it is, in words (for the event log).
    """

    interval: int
    previous: int
    required: int
    throughput_bytes_per_s: float
    idle_s: float
    reason: str

    @property
    def changed(self) -> bool:
        return self.interval != self.previous


class IntervalController:
    """The checkpoint interval k of one rank (or of the simulated job), chosen online.

    Feed it measured replication throughputs (`observe`), and ask for a decision whenever the
    profile or the checkpoint size is known or changes (`decide`). A fixed interval never
    changes.

    Args:
        interval: ``"adaptive"`` or a fixed k (>= 1).
        hysteresis: fraction in [0, 1) by which the throughput must be better than needed
            before k shrinks.
        max_interval: the largest k chosen.
        window: how many throughput measurements the estimate uses (their median).
    """

    def __init__(
        self,
        interval: int | Literal["adaptive"],
        *,
        hysteresis: float = DEFAULT_HYSTERESIS,
        max_interval: int = DEFAULT_MAX_INTERVAL,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if interval != "adaptive":
            require_int_at_least("interval", interval, 1)
        if not (0 <= hysteresis < 1):
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis!r}")
        require_int_at_least("max_interval", max_interval, 1)
        require_int_at_least("window", window, 1)
        self.adaptive = interval == "adaptive"
        self.interval = 1 if interval == "adaptive" else interval
        self.hysteresis = hysteresis
        self.max_interval = max_interval
        self._samples: deque[float] = deque(maxlen=window)

    def observe(self, sent_bytes: int, seconds: float) -> None:
        """One measured transfer: ``sent_bytes`` crossed the network in ``seconds`` of sending
        (time spent waiting for idle spans excluded). Empty or instant transfers are ignored."""
        require_int_at_least("sent_bytes", sent_bytes, 0)
        require_finite_non_negative("seconds", seconds)
        if sent_bytes > 0 and seconds > 0:
            self._samples.append(sent_bytes / seconds)

    @property
    def throughput_bytes_per_s(self) -> float | None:
        """The estimate: the median of the recent measurements, or None before the first."""
        return statistics.median(self._samples) if self._samples else None

    def decide(
        self,
        spans: Sequence[IdleSpan],
        iteration_s: float,
        checkpoint_bytes: int,
        copies: int,
        *,
        bandwidth_bytes_per_s: float,
        alpha_s: float,
        safety_factor: float,
        buffer_bytes: int,
        sub_buffers: int,
    ) -> IntervalDecision:
        """Choose k for a checkpoint of ``checkpoint_bytes`` (per copy, on the wire) given one
        iteration's idle spans; the throughput is the estimate, never above the link's
        ``bandwidth_bytes_per_s`` (a sender's clock can see its socket buffer fill faster than
        the link drains it), or the bandwidth before any measurement. The decision becomes
        the controller's current k."""
        previous = self.interval
        measured = self.throughput_bytes_per_s
        throughput = (
            bandwidth_bytes_per_s if measured is None else min(measured, bandwidth_bytes_per_s)
        )
        idle_s = sum(span.duration_s for span in spans)
        if not self.adaptive:
            return IntervalDecision(
                previous, previous, previous, throughput, idle_s, "fixed interval"
            )

        def least(throughput_bytes_per_s: float) -> int:
            return required_interval(
                spans,
                iteration_s,
                checkpoint_bytes,
                copies,
                throughput_bytes_per_s=throughput_bytes_per_s,
                alpha_s=alpha_s,
                safety_factor=safety_factor,
                buffer_bytes=buffer_bytes,
                sub_buffers=sub_buffers,
                max_interval=self.max_interval,
            )

        required = least(throughput)
        # Only a k above the required one can shrink: then plan at the lowered throughput.
        pessimistic = least(throughput * (1 - self.hysteresis)) if previous > required else required
        chosen = next_interval(previous, required, max(required, pessimistic))
        if chosen > previous:
            reason = (
                f"{copies} x {checkpoint_bytes} bytes need {required} iterations of idle "
                f"spans ({idle_s:.4g} s each) at {throughput:.4g} bytes/s"
            )
        elif chosen < previous:
            reason = (
                f"{chosen} iterations suffice even at {1 - self.hysteresis:.0%} of "
                f"{throughput:.4g} bytes/s"
            )
        else:
            reason = "unchanged"
        self.interval = chosen
        return IntervalDecision(chosen, previous, required, throughput, idle_s, reason)


def due(iteration: int, anchor: int, interval: int, persist_every: int | None = None) -> bool:
    """Whether ``iteration`` is a checkpoint iteration.

    Args:
        iteration: the iteration that has just ended (> anchor).
        anchor: the iteration the current interval counts from: training's start (0), the
            iteration restored, or the checkpoint at which k last changed.
        interval: k.
        persist_every: the persistence interval; its multiples are always checkpointed, so the
            persistent tier sees every iteration it is to persist.
    """
    require_int_at_least("interval", interval, 1)
    if persist_every is not None and iteration % persist_every == 0:
        return True
    return (iteration - anchor) % interval == 0


def estimate_mtbf_s(
    failures: int,
    elapsed_s: float,
    prior_mtbf_s: float | None = None,
    prior_failures: float = 1.0,
) -> float:
    """The job's mean time between failures from what has been observed, s.

    A gamma prior on the failure rate worth ``prior_failures`` failures at ``prior_mtbf_s``
    (the scenario's failure process) keeps the estimate sensible before the first failure;
    observed failures take over as they accumulate:
    ``(elapsed_s + prior_failures * prior_mtbf_s) / (failures + prior_failures)``.

    Returns:
        The MTBF; ``math.inf`` with no prior and no failure observed.
    """
    require_int_at_least("failures", failures, 0)
    require_finite_non_negative("elapsed_s", elapsed_s)
    require_finite_non_negative("prior_failures", prior_failures)
    if prior_mtbf_s is None or prior_failures == 0:
        return elapsed_s / failures if failures else math.inf
    require_finite_positive("prior_mtbf_s", prior_mtbf_s)
    return (elapsed_s + prior_failures * prior_mtbf_s) / (failures + prior_failures)


def persistent_interval_iterations(
    save_s: float,
    mtbf_s: float,
    iteration_s: float,
    rule: Literal["young", "daly"] = "young",
) -> int | None:
    """Iterations between persistent checkpoints for a failure rate (Young or Daly).

    Args:
        save_s: the cost of one persistent checkpoint (the time it stalls training, or the
            upload when it runs in the background), s (> 0).
        mtbf_s: the job's MTBF (`estimate_mtbf_s`), s; ``math.inf``: no failures expected;
            0 (failures observed in no time): every iteration.
        iteration_s: one iteration, s (> 0).
        rule: ``young`` (sqrt(2 t_save MTBF)) or ``daly`` (its higher-order refinement).

    Returns:
        The interval in iterations (>= 1), or None when no failure is expected (never persist).
    """
    require_finite_positive("save_s", save_s)
    require_finite_positive("iteration_s", iteration_s)
    if math.isinf(mtbf_s):
        return None
    if mtbf_s <= 0:  # failures observed in no time at all: persist every iteration
        return 1
    formula = costs.young_interval_s if rule == "young" else costs.daly_interval_s
    return max(1, round(formula(save_s, mtbf_s) / iteration_s))


def persist_every(
    rule: Literal["young", "daly"],
    save_s: float,
    iteration_s: float,
    failures: int,
    elapsed_s: float,
    prior_mtbf_s: float | None,
) -> int | None:
    """The persistence interval in iterations after ``failures`` failures in ``elapsed_s``:
    `persistent_interval_iterations` at the MTBF of `estimate_mtbf_s` (None: never persist,
    when no failure is expected yet)."""
    mtbf_s = estimate_mtbf_s(failures, elapsed_s, prior_mtbf_s)
    return persistent_interval_iterations(save_s, mtbf_s, iteration_s, rule)
