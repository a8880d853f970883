"""Tests for shared.adaptive: the checkpoint interval k, its hysteresis, and Young/Daly."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import costs
from shared.adaptive import (
    IntervalController,
    due,
    estimate_mtbf_s,
    next_interval,
    persist_every,
    persistent_interval_iterations,
    required_interval,
    tile_spans,
)
from shared.scheduling import IdleSpan, plan_traffic

PLANNING = {"alpha_s": 0.0, "safety_factor": 1.0, "buffer_bytes": 100, "sub_buffers": 4}


def _spill(spans: list[IdleSpan], iteration_s: float, k: int, nbytes: int, copies: int, **kw):  # type: ignore[no-untyped-def]
    plan = plan_traffic(
        tile_spans(spans, iteration_s, k),
        nbytes,
        list(range(copies)),
        bandwidth_bytes_per_s=kw["throughput_bytes_per_s"],
        alpha_s=kw["alpha_s"],
        safety_factor=kw["safety_factor"],
        buffer_bytes=kw["buffer_bytes"],
        sub_buffers=kw["sub_buffers"],
    )
    return plan.spill_bytes


# --- exact examples ---------------------------------------------------------------------------


def test_tile_spans_repeats_one_iteration() -> None:
    spans = [IdleSpan(0.0, 1.0), IdleSpan(2.0, 0.5)]
    assert tile_spans(spans, 3.0, 3) == (
        IdleSpan(0.0, 1.0),
        IdleSpan(2.0, 0.5),
        IdleSpan(3.0, 1.0),
        IdleSpan(5.0, 0.5),
        IdleSpan(6.0, 1.0),
        IdleSpan(8.0, 0.5),
    )
    with pytest.raises(ValueError, match="after the iteration"):
        tile_spans([IdleSpan(2.0, 2.0)], 3.0, 2)


def test_required_interval_example() -> None:
    # 1.5 s idle per iteration at 10 bytes/s carries 15 bytes; 2 copies of 40 bytes need 80:
    # ceil(80 / 15) = 6 iterations.
    spans = [IdleSpan(0.0, 1.0), IdleSpan(2.0, 0.5)]
    k = required_interval(spans, 3.0, 40, 2, throughput_bytes_per_s=10.0, **PLANNING)
    assert k == 6
    # Everything fits in one iteration at 100 bytes/s.
    assert required_interval(spans, 3.0, 40, 2, throughput_bytes_per_s=100.0, **PLANNING) == 1
    # Nothing to send.
    assert required_interval(spans, 3.0, 0, 2, throughput_bytes_per_s=1.0, **PLANNING) == 1
    assert required_interval(spans, 3.0, 40, 0, throughput_bytes_per_s=1.0, **PLANNING) == 1


def test_required_interval_without_idle_time_is_the_maximum() -> None:
    assert (
        required_interval([], 1.0, 10, 1, throughput_bytes_per_s=1.0, max_interval=7, **PLANNING)
        == 7
    )


def test_next_interval_hysteresis() -> None:
    assert next_interval(2, 5, 6) == 5  # grows at once
    assert next_interval(5, 3, 4) == 4  # shrinks to the pessimistic need
    assert next_interval(5, 4, 5) == 5  # would fit at 4, but not with the margin: stays
    assert next_interval(5, 5, 5) == 5


def test_controller_does_not_flap_around_a_boundary() -> None:
    spans = [IdleSpan(0.0, 1.0)]
    kwargs = {"bandwidth_bytes_per_s": 1000.0, **PLANNING}
    controller = IntervalController("adaptive", hysteresis=0.2, window=1)
    chosen = []
    # 100 bytes, 1 s idle per iteration: 20 bytes/s needs 5 iterations, 26 bytes/s needs 4.
    for rate in [20.0, 26.0, 20.0, 26.0, 26.0, 40.0]:
        controller.observe(round(rate * 10), 10.0)
        chosen.append(controller.decide(spans, 2.0, 100, 1, **kwargs).interval)
    # 26 bytes/s fits in 4, but at 80% (20.8 bytes/s) it needs 5: k stays 5. 40 bytes/s needs
    # 3, and at 80% (32 bytes/s) 4 still fit: k shrinks to 4, not 3.
    assert chosen == [5, 5, 5, 5, 5, 4]


def test_controller_fixed_interval_never_changes() -> None:
    controller = IntervalController(3)
    controller.observe(1, 100.0)
    decision = controller.decide(
        [IdleSpan(0.0, 0.1)], 1.0, 10**6, 1, bandwidth_bytes_per_s=1.0, **PLANNING
    )
    assert (decision.interval, decision.changed) == (3, False)


def test_controller_uses_bandwidth_before_measurements_and_then_the_median() -> None:
    controller = IntervalController("adaptive", window=3)
    spans = [IdleSpan(0.0, 1.0)]
    first = controller.decide(spans, 1.0, 100, 1, bandwidth_bytes_per_s=50.0, **PLANNING)
    assert (first.interval, first.throughput_bytes_per_s, first.changed) == (2, 50.0, True)
    for rate in (10.0, 1000.0, 20.0):  # median 20 bytes/s: 5 iterations
        controller.observe(int(rate), 1.0)
    assert controller.throughput_bytes_per_s == 20.0
    decision = controller.decide(spans, 1.0, 100, 1, bandwidth_bytes_per_s=50.0, **PLANNING)
    assert (decision.previous, decision.interval) == (2, 5)
    # A measurement above the link's bandwidth counts as the bandwidth.
    for _ in range(3):
        controller.observe(10_000, 1.0)
    capped = controller.decide(spans, 1.0, 100, 1, bandwidth_bytes_per_s=50.0, **PLANNING)
    assert capped.throughput_bytes_per_s == 50.0


def test_due() -> None:
    assert [i for i in range(1, 13) if due(i, 0, 4)] == [4, 8, 12]
    assert [i for i in range(8, 20) if due(i, 7, 5)] == [12, 17]
    assert [i for i in range(1, 13) if due(i, 0, 4, persist_every=6)] == [4, 6, 8, 12]
    assert all(due(i, 0, 1) for i in range(1, 10))


def test_estimate_mtbf() -> None:
    assert estimate_mtbf_s(0, 100.0) == math.inf
    assert estimate_mtbf_s(4, 100.0) == 25.0
    # Prior of one failure at 1000 s: no failure in 100 s gives 1100 s; three in 100 s, 275 s.
    assert estimate_mtbf_s(0, 100.0, prior_mtbf_s=1000.0) == 1100.0
    assert estimate_mtbf_s(3, 100.0, prior_mtbf_s=1000.0) == 275.0


def test_persistent_interval_iterations_young_and_daly() -> None:
    # sqrt(2 * 8 * 3600) = 240 s = 120 iterations of 2 s.
    assert persistent_interval_iterations(8.0, 3600.0, 2.0) == 120
    daly = round(costs.daly_interval_s(8.0, 3600.0) / 2.0)
    assert persistent_interval_iterations(8.0, 3600.0, 2.0, "daly") == daly
    assert persistent_interval_iterations(8.0, math.inf, 2.0) is None
    assert persistent_interval_iterations(1e-6, 1.0, 100.0) == 1


# --- properties -------------------------------------------------------------------------------

span_lists = st.lists(
    st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)), min_size=0, max_size=4
).map(
    lambda pairs: [
        IdleSpan(i * 1.0 + gap * 0.5, length * 0.5) for i, (gap, length) in enumerate(pairs)
    ]
)


@settings(max_examples=60, deadline=None)
@given(
    spans=span_lists,
    nbytes=st.integers(0, 5000),
    copies=st.integers(0, 3),
    throughput=st.floats(1.0, 5000.0),
    alpha=st.sampled_from([0.0, 0.001, 0.05]),
    mu=st.sampled_from([0.5, 0.9, 1.0]),
    buffer_bytes=st.integers(4, 2000),
)
def test_required_interval_is_the_least_k_without_spill(
    spans: list[IdleSpan],
    nbytes: int,
    copies: int,
    throughput: float,
    alpha: float,
    mu: float,
    buffer_bytes: int,
) -> None:
    iteration_s = max(4.0, len(spans) * 1.0)
    kw = {
        "throughput_bytes_per_s": throughput,
        "alpha_s": alpha,
        "safety_factor": mu,
        "buffer_bytes": buffer_bytes,
        "sub_buffers": 4,
    }
    k = required_interval(spans, iteration_s, nbytes, copies, max_interval=60, **kw)
    assert 1 <= k <= 60
    if k < 60:
        assert _spill(spans, iteration_s, k, nbytes, copies, **kw) == 0
    if k > 1:
        assert _spill(spans, iteration_s, k - 1, nbytes, copies, **kw) > 0


@settings(max_examples=100, deadline=None)
@given(
    throughput=st.floats(1.0, 1000.0),
    factor=st.floats(1.0, 10.0),
)
def test_required_interval_falls_as_throughput_rises(throughput: float, factor: float) -> None:
    spans = [IdleSpan(0.0, 0.3), IdleSpan(0.5, 0.2)]
    kw = {"alpha_s": 0.001, "safety_factor": 0.9, "buffer_bytes": 64, "sub_buffers": 4}
    slow = required_interval(spans, 1.0, 3000, 2, throughput_bytes_per_s=throughput, **kw)
    fast = required_interval(spans, 1.0, 3000, 2, throughput_bytes_per_s=throughput * factor, **kw)
    assert fast <= slow


@settings(max_examples=200, deadline=None)
@given(current=st.integers(1, 50), required=st.integers(1, 50), extra=st.integers(0, 10))
def test_next_interval_properties(current: int, required: int, extra: int) -> None:
    pessimistic = required + extra
    chosen = next_interval(current, required, pessimistic)
    assert chosen >= required  # never a k that spills at the estimate
    if chosen != current:
        # Moves only up to what is needed now, or down to what still fits with the margin.
        assert chosen in (required, pessimistic)
    if required <= current <= pessimistic:
        assert chosen == current  # inside the band: no change


@settings(max_examples=100, deadline=None)
@given(rates=st.lists(st.floats(5.0, 200.0), min_size=2, max_size=30))
def test_controller_never_changes_while_throughput_stays_in_its_band(rates: list[float]) -> None:
    """Once chosen at a throughput, k stays while later estimates are within the band."""
    spans = [IdleSpan(0.0, 1.0)]
    kw = {"bandwidth_bytes_per_s": 1000.0, **PLANNING}
    controller = IntervalController("adaptive", hysteresis=0.2, window=1)
    previous = None
    changes = 0
    for rate in rates:
        controller.observe(round(rate * 1000), 1000.0)
        decision = controller.decide(spans, 2.0, 500, 1, **kw)
        assert decision.interval >= decision.required
        if previous is not None and decision.interval != previous:
            changes += 1
            # A change is always to the need now, or the need at 80% of the throughput.
            assert decision.interval == decision.required or decision.interval < previous
        previous = decision.interval
    assert changes <= len(rates)


@settings(max_examples=200, deadline=None)
@given(
    anchor=st.integers(0, 100),
    interval=st.integers(1, 20),
    persist=st.one_of(st.none(), st.integers(1, 30)),
)
def test_due_spacing(anchor: int, interval: int, persist: int | None) -> None:
    iterations = [i for i in range(anchor + 1, anchor + 200) if due(i, anchor, interval, persist)]
    lattice = [i for i in iterations if (i - anchor) % interval == 0]
    assert lattice == list(range(anchor + interval, anchor + 200, interval))
    if persist is not None:
        assert all(i in iterations for i in range(anchor + 1, anchor + 200) if i % persist == 0)


@settings(max_examples=200, deadline=None)
@given(
    failures=st.integers(0, 1000),
    elapsed=st.floats(0.0, 1e7),
    prior=st.floats(1.0, 1e7),
)
def test_mtbf_estimate_lies_between_prior_and_observation(
    failures: int, elapsed: float, prior: float
) -> None:
    estimate = estimate_mtbf_s(failures, elapsed, prior_mtbf_s=prior)
    if failures:
        observed = elapsed / failures
        low, high = min(observed, prior), max(observed, prior)
        assert low * (1 - 1e-9) <= estimate <= high * (1 + 1e-9)
    else:
        assert estimate == pytest.approx(elapsed + prior)


def test_persist_every_follows_the_observed_failures() -> None:
    # Prior MTBF 7200 s (one failure's worth): 8 s uploads, 2 s iterations: sqrt(2*8*7200) =
    # 339 s = 170 iterations. After 3 failures in 600 s the MTBF is (600 + 7200) / 4 = 1950 s:
    # sqrt(2*8*1950) = 177 s = 88 iterations. No prior and no failure: never.
    assert persist_every("young", 8.0, 2.0, 0, 0.0, 7200.0) == 170
    assert persist_every("young", 8.0, 2.0, 3, 600.0, 7200.0) == 88
    assert persist_every("young", 8.0, 2.0, 0, 600.0, None) is None
    assert persist_every("young", 8.0, 2.0, 2, 600.0, None) == round(math.sqrt(2 * 8 * 300) / 2)
