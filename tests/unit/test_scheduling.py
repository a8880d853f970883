"""Tests for shared.scheduling: checkpoint chunks planned into idle spans of training traffic."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.scheduling import Chunk, IdleSpan, TrafficPlan, idle_spans_from_busy, plan_traffic


def _tolerance(value: float) -> float:
    """Slack for floating-point sums of chunk times around ``value`` seconds."""
    return 1e-9 * max(1.0, abs(value))


# --- exact examples ---------------------------------------------------------------------------


def test_example_plan_chunk_by_chunk() -> None:
    # B = 10 bytes/s, alpha = 1 s, chunks of at most 40 // 2 = 20 bytes, two copies of 50 bytes.
    spans = [IdleSpan(0.0, 10.0), IdleSpan(20.0, 3.0), IdleSpan(30.0, 1.0)]
    plan = plan_traffic(
        spans,
        50,
        [1, 2],
        bandwidth_bytes_per_s=10.0,
        alpha_s=1.0,
        safety_factor=1.0,
        buffer_bytes=40,
        sub_buffers=2,
    )
    # Chunk(span_index, start_s, size_bytes, destination, offset_bytes, duration_s)
    assert plan.chunks == (
        Chunk(0, 0.0, 20, 1, 0, 3.0),
        Chunk(0, 3.0, 20, 1, 20, 3.0),
        # The copy to node 1 ends here: a short chunk, then node 2's copy starts in the same span.
        Chunk(0, 6.0, 10, 1, 40, 2.0),
        # Cut to the 2 s left in span 0.
        Chunk(0, 8.0, 10, 2, 0, 2.0),
        Chunk(1, 20.0, 20, 2, 10, 3.0),
        # Span 2 (1 s, no longer than alpha) carries nothing; the rest spills after its end.
        Chunk(None, 31.0, 20, 2, 30, 3.0),
    )
    assert plan.checkpoint_bytes == 50
    assert plan.copies == 2
    assert plan.planned_bytes == 100
    assert plan.in_span_bytes == 80
    assert plan.spill_bytes == 20
    assert plan.spill_time_s == 3.0
    assert plan.chunks_in_span(1) == (plan.chunks[4],)
    assert plan.chunks_in_span(2) == ()
    assert plan.spilled_chunks() == (plan.chunks[5],)


def test_safety_factor_limits_each_span() -> None:
    # mu = 0.5 leaves 4 s of the 8 s span: one 1 s alpha plus 30 bytes at 10 bytes/s.
    plan = plan_traffic(
        [IdleSpan(2.0, 8.0)],
        100,
        [7],
        bandwidth_bytes_per_s=10.0,
        alpha_s=1.0,
        safety_factor=0.5,
        buffer_bytes=1000,
        sub_buffers=1,
    )
    assert plan.chunks_in_span(0) == (Chunk(0, 2.0, 30, 7, 0, 4.0),)
    assert plan.spilled_chunks() == (Chunk(None, 10.0, 70, 7, 30, 8.0),)
    assert plan.spill_time_s == 8.0


def test_a_span_stops_when_less_than_one_byte_fits() -> None:
    # After one 1.05 s chunk (alpha 1 s + 5 bytes at 100 bytes/s), 1.005 s remain: 0.005 s
    # beyond alpha is half a byte, so the span takes no further chunk.
    plan = plan_traffic(
        [IdleSpan(0.0, 2.055)],
        1000,
        [1],
        bandwidth_bytes_per_s=100.0,
        alpha_s=1.0,
        safety_factor=1.0,
        buffer_bytes=5,
        sub_buffers=1,
    )
    in_span = plan.chunks_in_span(0)
    assert [chunk.size_bytes for chunk in in_span] == [5]
    assert plan.spill_bytes == 995


def test_no_spans_spills_everything_from_time_zero() -> None:
    plan = plan_traffic(
        [],
        10,
        [3, 4],
        bandwidth_bytes_per_s=5.0,
        alpha_s=0.5,
        safety_factor=0.9,
        buffer_bytes=8,
        sub_buffers=2,
    )
    assert [(c.destination, c.offset_bytes, c.size_bytes) for c in plan.chunks] == [
        (3, 0, 4),
        (3, 4, 4),
        (3, 8, 2),
        (4, 0, 4),
        (4, 4, 4),
        (4, 8, 2),
    ]
    assert all(chunk.span_index is None for chunk in plan.chunks)
    assert plan.chunks[0].start_s == 0.0
    assert plan.spill_bytes == plan.planned_bytes == 20
    assert plan.in_span_bytes == 0
    assert plan.spill_time_s == pytest.approx(6 * 0.5 + 20 / 5.0)


def test_spans_shorter_than_alpha_and_empty_spans_carry_nothing() -> None:
    spans = [IdleSpan(0.0, 0.0), IdleSpan(1.0, 0.1), IdleSpan(2.0, 0.2)]
    plan = plan_traffic(
        spans,
        64,
        [1],
        bandwidth_bytes_per_s=1e9,
        alpha_s=0.2,
        safety_factor=1.0,
        buffer_bytes=64,
        sub_buffers=1,
    )
    assert plan.in_span_bytes == 0
    assert plan.spilled_chunks()[0].start_s == pytest.approx(2.2)
    assert plan.spill_bytes == 64


def test_zero_checkpoint_bytes_gives_an_empty_plan() -> None:
    plan = plan_traffic(
        [IdleSpan(0.0, 1.0)],
        0,
        [1, 2],
        bandwidth_bytes_per_s=1.0,
        alpha_s=0.0,
        safety_factor=1.0,
        buffer_bytes=1,
        sub_buffers=1,
    )
    assert plan == TrafficPlan(
        chunks=(),
        checkpoint_bytes=0,
        copies=2,
        planned_bytes=0,
        in_span_bytes=0,
        spill_bytes=0,
        spill_time_s=0.0,
    )


def test_no_destinations_gives_an_empty_plan() -> None:
    # m = 1: the node keeps only its own copy, nothing crosses the network.
    plan = plan_traffic(
        [],
        1 << 30,
        [],
        bandwidth_bytes_per_s=1.0,
        alpha_s=0.0,
        safety_factor=1.0,
        buffer_bytes=1,
        sub_buffers=1,
    )
    assert plan.chunks == ()
    assert plan.copies == 0
    assert plan.planned_bytes == plan.spill_bytes == 0
    assert plan.spill_time_s == 0.0


def test_paper_scale_fits_in_one_large_span() -> None:
    # 10 GB to one peer at 50 GB/s through a 128 MB buffer in 4 sub-buffers, 1 s of idle time:
    # 0.2 s of payload plus 299 messages of 10 us fit in mu * 1 s.
    plan = plan_traffic(
        [IdleSpan(0.5, 1.0)],
        10 * 10**9,
        [1],
        bandwidth_bytes_per_s=50e9,
        alpha_s=10e-6,
        safety_factor=0.9,
        buffer_bytes=128 * 2**20,
        sub_buffers=4,
    )
    assert plan.spill_bytes == 0
    assert len(plan.chunks) == math.ceil(10 * 10**9 / (32 * 2**20))
    assert max(chunk.size_bytes for chunk in plan.chunks) == 32 * 2**20


_VALID = {
    "bandwidth_bytes_per_s": 1.0,
    "alpha_s": 0.0,
    "safety_factor": 1.0,
    "buffer_bytes": 4,
    "sub_buffers": 2,
}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"bandwidth_bytes_per_s": 0.0}, "bandwidth_bytes_per_s"),
        ({"bandwidth_bytes_per_s": math.inf}, "bandwidth_bytes_per_s"),
        ({"alpha_s": -1.0}, "alpha_s"),
        ({"alpha_s": math.nan}, "alpha_s"),
        ({"safety_factor": 0.0}, "safety_factor"),
        ({"safety_factor": 1.5}, "safety_factor"),
        ({"safety_factor": math.nan}, "safety_factor"),
        ({"sub_buffers": 0}, "sub_buffers"),
        ({"buffer_bytes": 1}, "buffer_bytes"),
    ],
)
def test_bad_arguments_are_rejected_by_name(override: dict[str, float], named: str) -> None:
    arguments = {**_VALID, **override}
    with pytest.raises(ValueError, match=named):
        plan_traffic([], 10, [1], **arguments)  # type: ignore[arg-type]


def test_bad_spans_checkpoint_and_destinations_are_rejected() -> None:
    with pytest.raises(ValueError, match="spans must be in time order"):
        plan_traffic([IdleSpan(5.0, 1.0), IdleSpan(0.0, 1.0)], 10, [1], **_VALID)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spans must be in time order"):
        plan_traffic([IdleSpan(0.0, 2.0), IdleSpan(1.0, 1.0)], 10, [1], **_VALID)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="checkpoint_bytes"):
        plan_traffic([], -1, [1], **_VALID)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="destinations"):
        plan_traffic([], 10, [1, 1], **_VALID)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start_s"):
        IdleSpan(-1.0, 1.0)
    with pytest.raises(ValueError, match="duration_s"):
        IdleSpan(0.0, math.inf)


# --- properties -------------------------------------------------------------------------------


@st.composite
def _spans(draw: st.DrawFn) -> list[IdleSpan]:
    """Ordered, non-overlapping spans: zero-length, shorter than alpha, and long ones."""
    spans = []
    start_s = draw(st.floats(0.0, 5.0))
    for _ in range(draw(st.integers(0, 6))):
        duration_s = draw(st.one_of(st.just(0.0), st.floats(0.0, 0.01), st.floats(0.0, 20.0)))
        spans.append(IdleSpan(start_s, duration_s))
        start_s = spans[-1].end_s + draw(st.floats(0.0, 5.0))
    return spans


_plan_inputs = st.fixed_dictionaries(
    {
        "spans": _spans(),
        "checkpoint_bytes": st.integers(0, 5000),
        "destinations": st.lists(st.integers(0, 15), max_size=3, unique=True),
        "bandwidth_bytes_per_s": st.floats(1.0, 2000.0),
        "alpha_s": st.one_of(st.just(0.0), st.floats(0.0, 2.0)),
        "safety_factor": st.floats(0.05, 1.0),
        "sub_buffers": st.integers(1, 8),
        "chunk_cap_bytes": st.integers(16, 512),
    }
)


def _plan(inputs: dict[str, object]) -> tuple[TrafficPlan, dict[str, object]]:
    arguments = dict(inputs)
    cap = arguments.pop("chunk_cap_bytes")
    assert isinstance(cap, int) and isinstance(arguments["sub_buffers"], int)
    # A buffer whose sub-buffers hold `cap` bytes, plus a remainder the division drops.
    arguments["buffer_bytes"] = cap * arguments["sub_buffers"] + arguments["sub_buffers"] - 1
    spans = arguments.pop("spans")
    checkpoint_bytes = arguments.pop("checkpoint_bytes")
    destinations = arguments.pop("destinations")
    plan = plan_traffic(spans, checkpoint_bytes, destinations, **arguments)  # type: ignore[arg-type]
    return plan, {**inputs, "cap": cap}


@settings(max_examples=200, deadline=None)
@given(_plan_inputs)
def test_every_byte_of_every_copy_is_planned_once(inputs: dict[str, object]) -> None:
    plan, facts = _plan(inputs)
    checkpoint_bytes = facts["checkpoint_bytes"]
    destinations = facts["destinations"]
    assert isinstance(checkpoint_bytes, int) and isinstance(destinations, list)

    assert plan.copies == len(destinations)
    assert plan.planned_bytes == len(destinations) * checkpoint_bytes
    assert sum(chunk.size_bytes for chunk in plan.chunks) == plan.planned_bytes
    assert plan.in_span_bytes + plan.spill_bytes == plan.planned_bytes
    spilled = plan.spilled_chunks()
    assert plan.spill_bytes == sum(chunk.size_bytes for chunk in spilled)
    assert plan.spill_time_s == pytest.approx(sum(chunk.duration_s for chunk in spilled))

    # Per destination, in send order, the chunks tile [0, C) with no gap and no overlap.
    ranges: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for chunk in plan.chunks:
        ranges[chunk.destination].append((chunk.offset_bytes, chunk.size_bytes))
    assert set(ranges) == (set(destinations) if checkpoint_bytes else set())
    for pieces in ranges.values():
        expected_offset = 0
        for offset, size in pieces:
            assert offset == expected_offset
            expected_offset += size
        assert expected_offset == checkpoint_bytes

    # Copies go one destination after the other, in the order given.
    order = [destinations.index(chunk.destination) for chunk in plan.chunks]
    assert order == sorted(order)


@settings(max_examples=200, deadline=None)
@given(_plan_inputs)
def test_chunks_stay_inside_the_usable_part_of_their_span(inputs: dict[str, object]) -> None:
    plan, facts = _plan(inputs)
    spans = facts["spans"]
    cap = facts["cap"]
    alpha_s = facts["alpha_s"]
    bandwidth = facts["bandwidth_bytes_per_s"]
    mu = facts["safety_factor"]
    assert isinstance(spans, list) and isinstance(cap, int)
    assert isinstance(alpha_s, float) and isinstance(bandwidth, float) and isinstance(mu, float)

    for chunk in plan.chunks:
        assert 1 <= chunk.size_bytes <= cap
        assert chunk.duration_s == alpha_s + chunk.size_bytes / bandwidth

    spans_with_chunks = [i for i, _ in enumerate(spans) if plan.chunks_in_span(i)]
    for index, span in enumerate(spans):
        usable_end_s = span.start_s + mu * span.duration_s
        tolerance = _tolerance(usable_end_s)
        in_span = plan.chunks_in_span(index)
        assert sum(chunk.duration_s for chunk in in_span) <= mu * span.duration_s + tolerance
        previous_end_s = span.start_s
        for chunk in in_span:
            assert chunk.start_s >= previous_end_s - tolerance  # no overlap, in order
            assert chunk.start_s < usable_end_s
            assert chunk.end_s <= usable_end_s + tolerance
            previous_end_s = chunk.end_s
        # Greedy: a span left behind while bytes remain had no room for even one more byte.
        later_bytes_exist = plan.spill_bytes > 0 or any(i > index for i in spans_with_chunks)
        if later_bytes_exist:
            leftover_s = usable_end_s - previous_end_s
            assert leftover_s < alpha_s + 1.0 / bandwidth + tolerance

    # Spilled chunks follow the last span back to back.
    spill_start_s = spans[-1].end_s if spans else 0.0
    for chunk in plan.spilled_chunks():
        assert chunk.start_s == pytest.approx(spill_start_s)
        spill_start_s = chunk.end_s


@settings(max_examples=100, deadline=None)
@given(_plan_inputs)
def test_a_span_long_enough_for_everything_leaves_no_spill(inputs: dict[str, object]) -> None:
    checkpoint_bytes = inputs["checkpoint_bytes"]
    destinations = inputs["destinations"]
    cap = inputs["chunk_cap_bytes"]
    alpha_s = inputs["alpha_s"]
    bandwidth = inputs["bandwidth_bytes_per_s"]
    mu = inputs["safety_factor"]
    assert isinstance(checkpoint_bytes, int) and isinstance(destinations, list)
    assert isinstance(cap, int) and isinstance(alpha_s, float)
    assert isinstance(bandwidth, float) and isinstance(mu, float)
    chunks_needed = len(destinations) * math.ceil(checkpoint_bytes / cap)
    needed_s = chunks_needed * alpha_s + len(destinations) * checkpoint_bytes / bandwidth
    huge = IdleSpan(1.0, 2 * needed_s / mu + 1.0)
    plan, _ = _plan({**inputs, "spans": [huge]})
    assert plan.spill_bytes == 0
    assert plan.spill_time_s == 0.0
    assert plan.spilled_chunks() == ()
    assert len(plan.chunks) == chunks_needed  # nothing is cut when time is ample


# --- idle spans from busy intervals -----------------------------------------------------------


def test_idle_spans_from_overlapping_busy_intervals() -> None:
    busy = [(6.0, 8.0), (1.0, 3.0), (2.0, 4.0), (4.0, 5.0), (9.5, 12.0)]
    assert idle_spans_from_busy(10.0, busy) == (
        IdleSpan(0.0, 1.0),
        IdleSpan(5.0, 1.0),
        IdleSpan(8.0, 1.5),
    )
    assert idle_spans_from_busy(10.0, busy, min_span_s=1.2) == (IdleSpan(8.0, 1.5),)
    assert idle_spans_from_busy(10.0, []) == (IdleSpan(0.0, 10.0),)
    assert idle_spans_from_busy(10.0, [(-1.0, 11.0)]) == ()
    assert idle_spans_from_busy(0.0, [(0.0, 0.0)]) == ()


@pytest.mark.parametrize(
    ("iteration_s", "busy", "min_span_s", "named"),
    [
        (-1.0, [], 0.0, "iteration_s"),
        (math.nan, [], 0.0, "iteration_s"),
        (1.0, [], -0.5, "min_span_s"),
        (1.0, [(0.5, 0.2)], 0.0, r"busy\[0\]"),
        (1.0, [(0.0, 0.1), (0.2, math.inf)], 0.0, r"busy\[1\]"),
    ],
)
def test_idle_spans_reject_bad_arguments(
    iteration_s: float, busy: list[tuple[float, float]], min_span_s: float, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        idle_spans_from_busy(iteration_s, busy, min_span_s=min_span_s)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, cursor = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > cursor:
            total += end - max(start, cursor)
            cursor = end
    return total


# Integer endpoints keep the arithmetic exact, so the cover is checked with no tolerance.
_busy = st.lists(
    st.tuples(st.integers(-10, 110), st.integers(0, 30)).map(
        lambda pair: (float(pair[0]), float(pair[0] + pair[1]))
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 100).map(float), _busy)
def test_idle_spans_and_busy_intervals_tile_the_iteration(
    iteration_s: float, busy: list[tuple[float, float]]
) -> None:
    spans = idle_spans_from_busy(iteration_s, busy)
    clipped = [(max(s, 0.0), min(e, iteration_s)) for s, e in busy]
    clipped = [(s, e) for s, e in clipped if s < e]
    intervals = [(span.start_s, span.end_s) for span in spans]
    for span in spans:
        assert span.start_s >= 0.0 and span.end_s <= iteration_s and span.duration_s > 0
        for interval in clipped:
            assert _overlap((span.start_s, span.end_s), interval) == 0.0
    for earlier, later in itertools.pairwise(spans):
        assert earlier.end_s < later.start_s  # disjoint, ordered, and a busy interval between
    assert _union_length(intervals + clipped) == iteration_s
    assert sum(span.duration_s for span in spans) + _union_length(clipped) == iteration_s


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.0, 1e3),
    st.lists(st.tuples(st.floats(-1.0, 1e3), st.floats(0.0, 50.0)), max_size=12),
    st.floats(0.0, 5.0),
)
def test_profiled_spans_feed_the_planner(
    iteration_s: float, busy: list[tuple[float, float]], min_span_s: float
) -> None:
    intervals = [(start, start + length) for start, length in busy]
    spans = idle_spans_from_busy(iteration_s, intervals, min_span_s=min_span_s)
    unfiltered = idle_spans_from_busy(iteration_s, intervals)
    assert all(span.duration_s >= min_span_s for span in spans)
    assert set(spans) <= set(unfiltered)
    plan = plan_traffic(
        spans,
        1000,
        [1, 2],
        bandwidth_bytes_per_s=50.0,
        alpha_s=0.01,
        safety_factor=0.9,
        buffer_bytes=256,
        sub_buffers=4,
    )
    assert plan.planned_bytes == 2000
