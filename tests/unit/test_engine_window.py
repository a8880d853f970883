"""The sender's wait for a chunk's idle span when a checkpoint rides in k iterations
(``ReplicationManager._wait_for_span`` with ``checkpoint.interval``): span i of the window's
iteration j is timed from when iteration j began, and a chunk never goes in an iteration that
has not begun."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from real.engine.replication import ReplicationManager
from shared.scheduling import IdleSpan

SPANS = (IdleSpan(0.0, 0.2), IdleSpan(0.5, 0.2))  # one iteration of 1 s


def _sender(window: int, starts: list[float]) -> ReplicationManager:
    sender = ReplicationManager.__new__(ReplicationManager)  # the timing state alone
    sender._plan_spans, sender._plan_window, sender._plan_length = SPANS, window, 1.0
    sender.config = SimpleNamespace(safety_factor=1.0)  # type: ignore[assignment]
    sender._flush = threading.Event()
    sender._starts = starts
    return sender


def _chunk(span_index: int | None, start_s: float) -> SimpleNamespace:
    return SimpleNamespace(span_index=span_index, start_s=start_s)


def test_a_chunk_of_the_current_iteration_goes_in_its_span() -> None:
    now = time.perf_counter()
    # Window of 2; iteration 1 began just now: its span 0 (index 2) is open.
    sender = _sender(2, [now - 1.0, now])
    assert sender._wait_for_span(_chunk(2, 1.0))


def test_a_chunk_of_the_next_iteration_waits_for_it_to_begin() -> None:
    now = time.perf_counter()
    starts = [now - 5.0]  # iteration 0 began long ago: all its spans are over
    sender = _sender(2, starts)
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(sender._wait_for_span(_chunk(2, 1.0))))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not outcome  # iteration 1 has not begun
    starts.append(time.perf_counter())  # save() skipped a checkpoint: tick
    waiter.join(10.0)
    assert outcome == [True]


def test_a_late_chunk_takes_a_later_iteration_of_the_window() -> None:
    now = time.perf_counter()
    # Planned in iteration 0's span 0, which is over; iteration 1 has begun: its span 0 is open.
    sender = _sender(3, [now - 5.0, now])
    assert sender._wait_for_span(_chunk(0, 0.0))


def test_past_every_span_of_the_window_it_waits_for_the_flush() -> None:
    now = time.perf_counter()
    sender = _sender(2, [now - 5.0, now - 4.0])  # both iterations over
    asks = threading.Timer(0.1, sender._flush.set)  # the next checkpoint's save() asks
    began = time.monotonic()
    asks.start()
    try:
        assert not sender._wait_for_span(_chunk(3, 1.5))  # it goes now, as spill
        # ... but only once asked: it waited for the flush, it did not give up at once
        assert sender._flush.is_set()
        assert time.monotonic() - began >= 0.09  # the timer's 0.1 s, less clock rounding
    finally:
        asks.cancel()
        asks.join(5.0)
