"""Traffic scheduling: checkpoint chunks placed in the idle gaps of training traffic.

Every iteration, each node copies its checkpoint (``C`` bytes) to ``m - 1`` peers. Sent naively,
that traffic competes with the training job's own communication (all-reduce, reduce-scatter,
all-gather) and slows every iteration. But training traffic is bursty: within one iteration the
network sits idle during the forward pass, the start of the backward pass and the optimizer step.
Gemini (SOSP 2023, section 5) profiles those **idle spans** over the first iterations and plans
the checkpoint traffic into them, so that replication costs training nothing.

The plan is made once, here, as a pure function:

- A **span** is an idle interval of one iteration, as an offset from the iteration's start
  (`IdleSpan`). `idle_spans_from_busy` turns profiled busy intervals of the training
  communication into spans: the complement of their union within the iteration.
- Only ``mu * duration`` of each span is used (``mu``, the safety factor, absorbs jitter between
  the profile and later iterations).
- Checkpoint bytes travel in **chunks** of at most ``R / p`` bytes: the sender stages them
  through a buffer of ``R`` bytes split into ``p`` sub-buffers, so one chunk fills one sub-buffer.
- A chunk of ``s`` bytes costs ``alpha + s / B`` seconds (alpha-beta model: ``alpha`` per message,
  ``B`` bytes per second). Chunks go back to back, one at a time: ``B`` is the sender's bandwidth,
  shared by all its copies.
- Whatever does not fit in the spans is **spilled** after the last span: it delays the next
  optimizer update, and the plan reports that delay (`TrafficPlan.spill_time_s`).

Design choices, and why:

- *Useful chunk.* A chunk is useful when it carries at least one byte. A span stops taking
  chunks when its remaining usable time ``t`` gives ``floor((t - alpha) * B) < 1``, which
  includes every ``t <= alpha``. We do not demand a larger minimum: a small chunk costs
  ``alpha`` of time that is idle anyway, and every byte moved into a span is a byte less of
  spill. The same rule makes spans shorter than ``alpha`` (or of zero length) carry nothing.
- *Copies in sequence, not interleaved.* All of copy 1 goes to ``destinations[0]``, then copy 2
  to ``destinations[1]``, and so on. Since the sender's bandwidth is shared, interleaving would
  not finish the whole transfer any sooner; sending in sequence makes the first replica complete
  (and commit, and become usable for recovery) as early as possible, and lets each receiver
  write its slot front to back.
- *Cutting at copy boundaries.* A chunk never spans two copies, so each chunk has one
  destination and one contiguous byte range ``[offset_bytes, offset_bytes + size_bytes)`` of the
  checkpoint.

Times are in seconds, sizes in bytes. Floating-point sums of chunk durations may exceed a span's
usable time by rounding error only (a few ulps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Chunk",
    "IdleSpan",
    "TrafficPlan",
    "idle_spans_from_busy",
    "plan_traffic",
]

# Relative slack when checking that spans are in order: spans computed as (start, end - start)
# can overlap their successor by a rounding error.
_ORDER_TOLERANCE = 1e-9


@dataclass(frozen=True)
class IdleSpan:
    """An interval of one iteration during which the training traffic leaves the network idle.

    Attributes:
        start_s: Start of the span, in seconds from the start of the iteration. Must be >= 0.
        duration_s: Length of the span, in seconds. Must be >= 0.
    """

    start_s: float
    duration_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise ValueError(f"start_s must be a finite number >= 0, got {self.start_s!r}")
        if not (math.isfinite(self.duration_s) and self.duration_s >= 0):
            raise ValueError(f"duration_s must be a finite number >= 0, got {self.duration_s!r}")

    @property
    def end_s(self) -> float:
        """End of the span, in seconds from the start of the iteration."""
        return self.start_s + self.duration_s


@dataclass(frozen=True)
class Chunk:
    """One planned send of a contiguous byte range of the checkpoint to one peer.

    Attributes:
        span_index: Index of the idle span the chunk is sent in, or None for a spilled chunk,
            sent after the last span (it delays the next optimizer update).
        start_s: Planned send start, in seconds from the start of the iteration. Spilled chunks
            follow the end of the last span back to back (from 0 when there are no spans).
        size_bytes: Payload, in bytes (>= 1).
        destination: Node id of the peer receiving the chunk.
        offset_bytes: Offset of the chunk within the checkpoint, in bytes.
        duration_s: Planned send time, in seconds: ``alpha + size_bytes / bandwidth``.
    """

    span_index: int | None
    start_s: float
    size_bytes: int
    destination: int
    offset_bytes: int
    duration_s: float

    @property
    def end_s(self) -> float:
        """Planned send end, in seconds from the start of the iteration."""
        return self.start_s + self.duration_s


@dataclass(frozen=True)
class TrafficPlan:
    """The checkpoint traffic of one iteration of one node, chunk by chunk.

    Attributes:
        chunks: Every chunk in send order: span chunks by span, then spilled chunks.
        checkpoint_bytes: Size of the checkpoint copied to each destination, in bytes.
        copies: Number of copies sent (the number of destinations, ``m - 1``).
        planned_bytes: Bytes in all chunks, spill included: ``copies * checkpoint_bytes``.
        in_span_bytes: Bytes sent inside idle spans.
        spill_bytes: Bytes sent after the last span (``planned_bytes - in_span_bytes``).
        spill_time_s: Time the spilled chunks need after the last span, in seconds.
    """

    chunks: tuple[Chunk, ...]
    checkpoint_bytes: int
    copies: int
    planned_bytes: int
    in_span_bytes: int
    spill_bytes: int
    spill_time_s: float

    def chunks_in_span(self, index: int) -> tuple[Chunk, ...]:
        """Return the chunks planned inside idle span ``index``, in send order.

        Args:
            index: Index of the span in the spans given to `plan_traffic`.

        Returns:
            The chunks of that span; empty when the span carries none.
        """
        return tuple(chunk for chunk in self.chunks if chunk.span_index == index)

    def spilled_chunks(self) -> tuple[Chunk, ...]:
        """Return the chunks sent after the last span, in send order."""
        return tuple(chunk for chunk in self.chunks if chunk.span_index is None)


def plan_traffic(
    spans: Sequence[IdleSpan],
    checkpoint_bytes: int,
    destinations: Sequence[int],
    *,
    bandwidth_bytes_per_s: float,
    alpha_s: float,
    safety_factor: float,
    buffer_bytes: int,
    sub_buffers: int,
) -> TrafficPlan:
    """Plan one node's checkpoint copies into the idle spans of an iteration.

    Walks the spans in order and fills ``safety_factor * duration_s`` of each with chunks of at
    most ``buffer_bytes // sub_buffers`` bytes, each costing ``alpha_s + size / bandwidth``;
    the last chunk of a span is cut to fit. Copies are sent one destination after the other.
    Bytes that do not fit are spilled after the last span. See the module docstring for the
    reasoning.

    Args:
        spans: Idle spans of one iteration, in time order, not overlapping.
        checkpoint_bytes: Size ``C`` of the checkpoint, in bytes (>= 0).
        destinations: Peer node ids receiving one copy each (``m - 1`` of them), distinct. Empty
            when the checkpoint is not replicated (``m = 1``).
        bandwidth_bytes_per_s: Sender bandwidth ``B``, in bytes per second (> 0, finite).
        alpha_s: Per-chunk latency ``alpha``, in seconds (>= 0, finite).
        safety_factor: Fraction ``mu`` of each span that may be used, in (0, 1].
        buffer_bytes: Staging buffer size ``R``, in bytes (>= 1).
        sub_buffers: Number ``p`` of sub-buffers the buffer is split into (>= 1, at most
            ``buffer_bytes``); one chunk fills at most one sub-buffer.

    Returns:
        The plan, with every byte of every copy in exactly one chunk.

    Raises:
        ValueError: If an argument is outside the range given above.
    """
    _check_traffic_arguments(
        spans,
        checkpoint_bytes,
        destinations,
        bandwidth_bytes_per_s,
        alpha_s,
        safety_factor,
        buffer_bytes,
        sub_buffers,
    )
    max_chunk_bytes = buffer_bytes // sub_buffers
    copies = len(destinations)
    chunks: list[Chunk] = []
    # Progress through the copies: which copy is being sent, and how far into it.
    copy_index = 0
    offset = 0
    if checkpoint_bytes == 0:
        copy_index = copies

    for span_index, span in enumerate(spans):
        if copy_index == copies:
            break
        usable_s = safety_factor * span.duration_s
        elapsed_s = 0.0
        while copy_index < copies:
            wanted = min(max_chunk_bytes, checkpoint_bytes - offset)
            size = _payload_that_fits(
                usable_s - elapsed_s, alpha_s, bandwidth_bytes_per_s, limit_bytes=wanted
            )
            if size < 1:
                break  # no useful chunk fits in what remains of this span
            duration_s = alpha_s + size / bandwidth_bytes_per_s
            chunks.append(
                Chunk(
                    span_index=span_index,
                    start_s=span.start_s + elapsed_s,
                    size_bytes=size,
                    destination=destinations[copy_index],
                    offset_bytes=offset,
                    duration_s=duration_s,
                )
            )
            elapsed_s += duration_s
            offset += size
            if offset == checkpoint_bytes:
                copy_index += 1
                offset = 0

    in_span_bytes = sum(chunk.size_bytes for chunk in chunks)
    spill_start_s = spans[-1].end_s if spans else 0.0
    spill_time_s = 0.0
    while copy_index < copies:
        size = min(max_chunk_bytes, checkpoint_bytes - offset)
        duration_s = alpha_s + size / bandwidth_bytes_per_s
        chunks.append(
            Chunk(
                span_index=None,
                start_s=spill_start_s + spill_time_s,
                size_bytes=size,
                destination=destinations[copy_index],
                offset_bytes=offset,
                duration_s=duration_s,
            )
        )
        spill_time_s += duration_s
        offset += size
        if offset == checkpoint_bytes:
            copy_index += 1
            offset = 0

    planned_bytes = copies * checkpoint_bytes
    return TrafficPlan(
        chunks=tuple(chunks),
        checkpoint_bytes=checkpoint_bytes,
        copies=copies,
        planned_bytes=planned_bytes,
        in_span_bytes=in_span_bytes,
        spill_bytes=planned_bytes - in_span_bytes,
        spill_time_s=spill_time_s,
    )


def idle_spans_from_busy(
    iteration_s: float,
    busy: Sequence[tuple[float, float]],
    *,
    min_span_s: float = 0.0,
) -> tuple[IdleSpan, ...]:
    """Turn profiled busy intervals of training communication into the idle spans between them.

    The busy intervals (for example, each gradient bucket's all-reduce from start to completion)
    may overlap and come in any order; they are clipped to ``[0, iteration_s]`` and merged, and
    the complement of their union within the iteration is returned. With ``min_span_s = 0``,
    the spans and the busy intervals together cover the iteration, and the spans are disjoint
    from the busy intervals and from each other.

    Args:
        iteration_s: Length of the iteration, in seconds (>= 0, finite).
        busy: ``(start_s, end_s)`` intervals, in seconds from the start of the iteration, each
            finite with ``start_s <= end_s``. Parts outside the iteration are ignored.
        min_span_s: Idle gaps shorter than this, in seconds, are dropped (>= 0, finite). Gaps of
            zero length are always dropped.

    Returns:
        The idle spans, in time order.

    Raises:
        ValueError: If an argument is outside the range given above.
    """
    if not (math.isfinite(iteration_s) and iteration_s >= 0):
        raise ValueError(f"iteration_s must be a finite number >= 0, got {iteration_s!r}")
    if not (math.isfinite(min_span_s) and min_span_s >= 0):
        raise ValueError(f"min_span_s must be a finite number >= 0, got {min_span_s!r}")
    clipped: list[tuple[float, float]] = []
    for index, (start_s, end_s) in enumerate(busy):
        if not (math.isfinite(start_s) and math.isfinite(end_s) and start_s <= end_s):
            raise ValueError(
                f"busy[{index}] must be finite (start_s, end_s) with start_s <= end_s, "
                f"got {(start_s, end_s)!r}"
            )
        low, high = max(start_s, 0.0), min(end_s, iteration_s)
        if low < high:
            clipped.append((low, high))

    spans: list[IdleSpan] = []
    cursor_s = 0.0  # end of the busy time seen so far
    for start_s, end_s in sorted(clipped):
        _append_gap(spans, cursor_s, start_s, min_span_s)
        cursor_s = max(cursor_s, end_s)
    _append_gap(spans, cursor_s, iteration_s, min_span_s)
    return tuple(spans)


def _append_gap(spans: list[IdleSpan], start_s: float, end_s: float, min_span_s: float) -> None:
    """Append the gap [start_s, end_s) to ``spans`` when it is non-empty and long enough."""
    duration_s = end_s - start_s
    if duration_s > 0 and duration_s >= min_span_s:
        spans.append(IdleSpan(start_s=start_s, duration_s=duration_s))


def _payload_that_fits(
    remaining_s: float, alpha_s: float, bandwidth_bytes_per_s: float, *, limit_bytes: int
) -> int:
    """Return the most whole bytes, up to ``limit_bytes``, one chunk carries in ``remaining_s``.

    Returns 0 when not even one byte fits (in particular when ``remaining_s <= alpha_s``).
    """
    if remaining_s <= alpha_s:
        return 0
    payload = (remaining_s - alpha_s) * bandwidth_bytes_per_s
    if payload >= limit_bytes:  # also keeps math.floor away from huge or infinite products
        return limit_bytes
    return math.floor(payload)


def _check_traffic_arguments(
    spans: Sequence[IdleSpan],
    checkpoint_bytes: int,
    destinations: Sequence[int],
    bandwidth_bytes_per_s: float,
    alpha_s: float,
    safety_factor: float,
    buffer_bytes: int,
    sub_buffers: int,
) -> None:
    """Raise ValueError naming the first argument of `plan_traffic` that is out of range."""
    for index in range(1, len(spans)):
        previous_end_s = spans[index - 1].end_s
        if spans[index].start_s < previous_end_s - _ORDER_TOLERANCE * max(1.0, previous_end_s):
            raise ValueError(
                f"spans must be in time order and not overlap: spans[{index}] starts at "
                f"{spans[index].start_s!r} s, before spans[{index - 1}] ends at "
                f"{previous_end_s!r} s"
            )
    if checkpoint_bytes < 0:
        raise ValueError(f"checkpoint_bytes must be >= 0, got {checkpoint_bytes!r}")
    if len(set(destinations)) != len(destinations):
        raise ValueError(f"destinations must be distinct node ids, got {list(destinations)!r}")
    if not (math.isfinite(bandwidth_bytes_per_s) and bandwidth_bytes_per_s > 0):
        raise ValueError(
            f"bandwidth_bytes_per_s must be a finite number > 0, got {bandwidth_bytes_per_s!r}"
        )
    if not (math.isfinite(alpha_s) and alpha_s >= 0):
        raise ValueError(f"alpha_s must be a finite number >= 0, got {alpha_s!r}")
    if not (0 < safety_factor <= 1):
        raise ValueError(f"safety_factor must be in (0, 1], got {safety_factor!r}")
    if sub_buffers < 1:
        raise ValueError(f"sub_buffers must be >= 1, got {sub_buffers!r}")
    if buffer_bytes < sub_buffers:
        raise ValueError(
            f"buffer_bytes must be >= sub_buffers ({sub_buffers}) so that each sub-buffer holds "
            f"at least one byte, got {buffer_bytes!r}"
        )
