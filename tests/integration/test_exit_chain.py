"""The calibration's timing of a crash's detection along the harness's chain
(``benchmarks.exit_chain``): real processes, an embedded coordination store, the root's
detector."""

from __future__ import annotations

import time
from typing import Any

import pytest
from running import live_descendants

from benchmarks.exit_chain import VERDICT_TIMEOUT_S, ExitChainProbe
from real.agent.trainer_processes import EXIT_WATCH_S
from real.coord import keys


def test_each_kill_is_timed_to_the_watchers_verdict_and_nothing_is_left() -> None:
    before = live_descendants().keys()
    probe = ExitChainProbe()
    started = live_descendants().keys() - before  # the store and the watcher
    assert len(started) == 2
    try:
        probe.start()
        deadline = time.monotonic() + 30
        while len(probe.latencies_s()) < 3 and time.monotonic() < deadline:
            assert probe.error is None
            time.sleep(0.05)
    finally:
        latencies = probe.stop()
    assert probe.error is None
    assert len(latencies) >= 3
    # Every verdict came from the watcher after its kill, within the probe's bound (the
    # exit watch alone takes a share of its period).
    assert all(0 < latency < VERDICT_TIMEOUT_S for latency in latencies)
    assert max(latencies) > EXIT_WATCH_S / 10
    assert probe.stop() == latencies  # stopping again changes nothing
    assert not (live_descendants().keys() - before)  # store, watcher and victims ended
    assert not (live_descendants().keys() & started)


def test_a_probe_stopped_while_it_waits_for_a_verdict_reports_no_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopped right after it wrote an exit record, the probe waits for no verdict and
    reports no error: a stop is not a verdict that never came (a calibration once took it
    for one and failed); and its stop still ends the store and the watcher it started."""
    before = live_descendants().keys()
    probe = ExitChainProbe()
    put = probe._kv.put

    def put_then_stop(key: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        put(key, value, *args, **kwargs)
        if key.startswith(keys.EXITS_PREFIX):
            probe._stop.set()

    monkeypatch.setattr(probe._kv, "put", put_then_stop)
    try:
        probe.start()
        deadline = time.monotonic() + 30
        while not probe._stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert probe._stop.is_set(), "no exit record was written"
    finally:
        probe.stop()
    assert probe.error is None
    assert not (live_descendants().keys() - before)  # the stop ended the store and the watcher
