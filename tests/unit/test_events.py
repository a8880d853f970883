"""The shared event schema and the summary derived from events."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from shared.events import Event, read_events, write_events
from shared.summary import RunSummary, failure_records, read_summary, write_summary


def test_events_round_trip_through_jsonl(tmp_path: Path) -> None:
    events = [
        Event(0.0, "run_started"),
        Event(1.5, "iteration_end", node=0, rank=0, iteration=1, details={"duration_s": 1.5}),
        Event(2.0, "state_restored", node=1, rank=1, iteration=1, details={"tier": "peer"}),
    ]
    path = tmp_path / "events.jsonl"
    write_events(path, events)
    assert read_events(path) == events
    assert len(path.read_text().splitlines()) == 3


def test_unknown_kind_and_bad_fields_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown event kind"):
        Event(0.0, "exploded")
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"time_s": "soon", "kind": "run_started"}) + "\n")
    with pytest.raises(ValueError, match=r"events.jsonl:1: time_s must be a number"):
        read_events(path)
    path.write_text(json.dumps({"time_s": 1, "kind": "run_started", "when": 2}) + "\n")
    with pytest.raises(ValueError, match="unknown event fields"):
        read_events(path)


def chain(
    index: int,
    t0: float,
    kind: str,
    *,
    hardware: bool,
    restored: int,
    tier: str,
    reached: int | None = None,
) -> list[Event]:
    failure = {"failure": index}
    injected = {**failure, "failure_kind": kind, "nodes": [1]}
    if reached is not None:
        injected["reached_iteration"] = reached
        injected["partial_iteration_s"] = 0.25
    events = [
        Event(t0, "failure_injected", node=1, details=injected),
        Event(t0 + 1.0, "failure_detected", node=0, details=failure),
        Event(t0 + 1.5, "training_stopped", details=failure),
    ]
    restart = t0 + 1.5
    if hardware:
        events.append(Event(t0 + 4.5, "replacement_ready", node=1, details=failure))
        restart = t0 + 4.5
    events += [
        Event(restart, "restart_begin", details=failure),
        Event(restart + 1.9, "process_group_ready", rank=1, details=failure),
        Event(restart + 2.0, "process_group_ready", rank=0, details=failure),
        Event(
            restart + 2.2,
            "state_restored",
            rank=0,
            iteration=restored,
            details={**failure, "tier": tier},
        ),
        Event(
            restart + 2.5,
            "state_restored",
            rank=1,
            iteration=restored,
            details={**failure, "tier": tier},
        ),
        Event(restart + 2.6, "training_resumed", details=failure),
    ]
    return events


def test_failure_phases_from_an_event_chain() -> None:
    iterations = [Event(float(i), "iteration_end", iteration=i) for i in range(1, 11)]
    # Failure at t=10.5: iteration 10 ended at t=10, so 0.5 s of iteration 11 was in flight.
    events = iterations + chain(0, 10.5, "hardware", hardware=True, restored=9, tier="peer")
    [record] = failure_records(events, iteration_time_s=1.0)
    assert record.kind == "hardware" and record.nodes == (1,)
    assert record.detection_s == pytest.approx(1.0)
    assert record.stop_s == pytest.approx(0.5)
    assert record.replacement_s == pytest.approx(3.0)
    assert record.restart_s == pytest.approx(2.0)  # until every rank's group is ready
    assert record.retrieval_s == pytest.approx(0.5)  # until the last rank has its state
    assert record.lost_iterations == 1
    assert record.lost_progress_s == pytest.approx(1.5)
    assert record.wasted_s == pytest.approx(2.0)
    assert record.downtime_s == pytest.approx(7.1)
    assert (record.tier, record.restored_iteration, record.complete) == ("peer", 9, True)


def test_software_failure_has_no_replacement_and_simulator_fields_win() -> None:
    events = chain(3, 100.0, "software", hardware=False, restored=40, tier="local", reached=42)
    [record] = failure_records(events, iteration_time_s=2.0)
    assert record.index == 3 and record.replacement_s == 0.0
    assert record.lost_iterations == 2
    assert record.lost_progress_s == pytest.approx(4.25)


def test_a_failure_nothing_injected_starts_at_its_first_evidence() -> None:
    """A real cluster's failure (numbered from 1000 by the root) has no failure_injected: its
    phases start at the trainer's exit, the detection less its latency."""
    iterations = [Event(float(i), "iteration_end", iteration=i) for i in range(1, 11)]
    scheduled = chain(1000, 10.5, "software", hardware=False, restored=10, tier="local")
    events = [e for e in scheduled if e.kind != "failure_injected"]
    detected = next(e for e in events if e.kind == "failure_detected")
    details = {"failure": 1000, "failure_kind": "software", "detection_latency_s": 0.75}
    events[events.index(detected)] = dataclasses.replace(detected, node=2, details=details)
    [record] = failure_records(iterations + events, iteration_time_s=1.0)
    assert (record.index, record.kind, record.nodes) == (1000, "software", (2,))
    assert record.time_s == pytest.approx(10.75)  # detected at 11.5, 0.75 s after the exit
    assert record.detection_s == pytest.approx(0.75)
    assert record.stop_s == pytest.approx(0.5)
    assert record.lost_progress_s == pytest.approx(0.75)  # iteration 11's 0.75 s in flight
    assert record.downtime_s == pytest.approx(14.6 - 10.75)  # resumed at 14.6
    assert record.complete
    # An injected failure keeps its own time: the detection's latency does not move it.
    [injected] = failure_records(iterations + scheduled, iteration_time_s=1.0)
    assert injected.time_s == 10.5 and injected.detection_s == pytest.approx(1.0)


def test_a_restore_of_the_iteration_in_flight_loses_none_of_it() -> None:
    iterations = [Event(float(i), "iteration_end", iteration=i) for i in range(1, 11)]
    # Failure at t=10.4, 0.4 s into iteration 11, after every rank captured it: the restore
    # brings iteration 11 back, so nothing is recomputed.
    events = iterations + chain(0, 10.4, "software", hardware=False, restored=11, tier="local")
    [record] = failure_records(events, iteration_time_s=1.0)
    assert record.lost_iterations == 0
    assert record.lost_progress_s == 0.0
    assert record.wasted_s == pytest.approx(record.retrieval_s)
    # Restoring the iteration before it, the 0.4 s in flight are lost.
    events = iterations + chain(0, 10.4, "software", hardware=False, restored=10, tier="local")
    [record] = failure_records(events, iteration_time_s=1.0)
    assert record.lost_progress_s == pytest.approx(0.4)


def test_summary_totals_and_json_round_trip(tmp_path: Path) -> None:
    events = chain(0, 10.0, "software", hardware=False, restored=5, tier="local", reached=6)
    events += chain(1, 50.0, "hardware", hardware=True, restored=20, tier="persistent", reached=30)
    records = failure_records(events, iteration_time_s=1.0)
    summary = RunSummary(
        source="sim",
        scenario="t",
        strategy="gemini",
        seed=0,
        duration_s=100.0,
        iterations_completed=80,
        iteration_time_s=1.05,
        iteration_time_no_ckpt_s=1.0,
        failures=records,
        checkpoints_per_hour=3600.0,
        checkpoint_memory_bytes=1e9,
    )
    assert summary.fraction_from_memory == 0.5
    assert summary.ettr == pytest.approx(0.8)
    # A real run's cluster start-up before its first iteration is not training time.
    started = dataclasses.replace(summary, source="real", extra={"startup_s": 10.0})
    assert started.ettr == pytest.approx(80 * 1.0 / 90.0)
    assert summary.checkpoint_overhead == pytest.approx(0.05)
    assert summary.total_wasted_s == pytest.approx(sum(r.wasted_s for r in records))
    path = tmp_path / "summary.json"
    write_summary(path, summary)
    assert read_summary(path) == summary
    assert json.loads(path.read_text())["totals"]["failures"] == 2


def test_failure_tier_is_the_farthest_any_rank_went() -> None:
    events = chain(0, 10.0, "hardware", hardware=True, restored=5, tier="local", reached=6)
    events.append(
        Event(16.9, "state_restored", rank=2, iteration=5, details={"failure": 0, "tier": "peer"})
    )
    [record] = failure_records(events, iteration_time_s=1.0)
    assert record.tier == "peer"


def _joined_run(second_restores: int | None) -> list[Event]:
    """Iterations 1-10 ending at t = 1..10; a crash at 10.5 restoring 9, and a second failure
    at 11.3, during that recovery. With ``second_restores`` None the second joins the
    recovery in progress and shares its restore (the harness tags the trainers' events with
    both); else the first's restore is interrupted at 13.0 and a restore of its own follows."""
    first, second = {"failure": 0}, {"failure": 1}
    events = [Event(float(i), "iteration_end", iteration=i) for i in range(1, 11)]
    events += [
        Event(10.5, "failure_injected", node=1, details={**first, "failure_kind": "software"}),
        Event(11.0, "failure_detected", node=1, details=first),
        Event(11.3, "failure_injected", node=2, details={**second, "failure_kind": "hardware"}),
        Event(11.6, "failure_detected", node=2, details=second),
    ]
    both = [first, second] if second_restores is None else [first]
    for failure in both:
        events += [
            Event(12.0, "restart_begin", details=failure),
            Event(12.5, "process_group_ready", rank=0, details=failure),
        ]
    if second_restores is None:
        for failure in both:
            events += [
                Event(13.0, "state_restored", rank=0, iteration=9, details=failure),
                Event(13.5, "training_resumed", details=failure),
            ]
        return events
    events += [
        Event(13.0, "state_restored", rank=0, iteration=9, details={**first, "interrupted": True}),
        Event(14.0, "restart_begin", details=second),
        Event(14.5, "process_group_ready", rank=0, details=second),
        Event(15.5, "state_restored", rank=0, iteration=second_restores, details=second),
        Event(16.0, "training_resumed", details=second),
    ]
    return events


def test_a_failure_joining_a_recovery_counts_only_what_it_adds() -> None:
    """Both failures' events name the same restore: the lost iteration, the 0.5 s of
    iteration 11 and the retrieval count once, under the first; the downtimes overlap, and
    the run's total counts each second once."""
    first, second = failure_records(_joined_run(None), iteration_time_s=1.0)
    assert (first.lost_iterations, first.lost_progress_s) == (1, pytest.approx(1.5))
    assert first.wasted_s == pytest.approx(1.5 + 0.5) and first.joined is None
    assert second.joined == 0
    assert (second.lost_iterations, second.lost_progress_s, second.wasted_s) == (0, 0.0, 0.0)
    assert second.retrieval_s == pytest.approx(0.5)  # the phase, as the recovery ran it
    assert (first.downtime_s, second.downtime_s) == (pytest.approx(3.0), pytest.approx(2.2))
    summary = RunSummary(
        source="real",
        scenario="t",
        strategy="gemini",
        seed=0,
        duration_s=20.0,
        iterations_completed=15,
        iteration_time_s=1.0,
        iteration_time_no_ckpt_s=1.0,
        failures=(first, second),
        checkpoints_per_hour=0.0,
        checkpoint_memory_bytes=0.0,
    )
    assert summary.total_downtime_s == pytest.approx(3.0)  # 10.5 to 13.5, once
    assert summary.total_wasted_s == pytest.approx(2.0)


def test_a_failure_interrupting_a_restart_adds_the_iterations_its_restore_goes_back() -> None:
    first, second = failure_records(_joined_run(7), iteration_time_s=1.0)
    assert (first.restored_iteration, first.lost_iterations, first.joined) == (9, 1, None)
    assert second.joined == 0
    # Iterations 8 and 9, which the first's restore would have kept, and its own retrieval.
    assert (second.lost_iterations, second.lost_progress_s) == (2, pytest.approx(2.0))
    assert second.wasted_s == pytest.approx(2.0 + 1.0)


def test_a_failure_after_the_restart_began_is_counted_against_the_restore_that_followed() -> None:
    """As the harness records it: the second failure strikes once the first's restart began,
    before any rank restored, and the root recovers it with a restart of its own, whose events
    name only the second. The first has no restore: its lost work (one iteration and the 0.5 s
    of iteration 11) is counted against the restore that followed, not as a start from
    scratch (ten iterations)."""
    first, second = {"failure": 0}, {"failure": 1}
    events = [Event(float(i), "iteration_end", iteration=i) for i in range(1, 11)]
    events += [
        Event(10.5, "failure_injected", node=1, details={**first, "failure_kind": "software"}),
        Event(11.0, "failure_detected", node=1, details=first),
        Event(12.0, "restart_begin", iteration=9, details={**first, "attempt": 2}),
        Event(12.5, "process_group_ready", details=first),
        Event(12.7, "failure_injected", node=2, details={**second, "failure_kind": "hardware"}),
        Event(13.0, "failure_detected", node=2, details=second),
        Event(14.0, "restart_begin", iteration=9, details={**second, "attempt": 3}),
        Event(14.5, "process_group_ready", details=second),
        Event(15.0, "state_restored", iteration=9, details={**second, "tier": "peer"}),
        Event(15.5, "training_resumed", details=second),
    ]
    a, b = failure_records(events, iteration_time_s=1.0)
    assert (a.lost_iterations, a.restored_iteration, a.tier) == (1, 9, "peer")
    assert a.wasted_s == pytest.approx(1.5)
    assert (b.joined, b.lost_iterations, b.wasted_s) == (0, 0, pytest.approx(0.5))


def test_a_loss_dated_before_a_resume_but_detected_after_it_is_a_failure_of_its_own() -> None:
    """An unannounced lost node is dated from its last heartbeat, up to a beat before it died:
    it may be dated before the resume that ended the previous recovery, which it did not
    interrupt (its detection came after that resume)."""
    events = [Event(float(i), "iteration_end", iteration=i) for i in range(1, 16)]
    events += chain(0, 10.5, "software", hardware=False, restored=10, tier="local")
    # Resumed at 14.6; node 2 last beat at 14.5, found lost at 16.2, restored 14.
    later = {"failure": 1000, "failure_kind": "hardware", "detection_latency_s": 1.7}
    events += [
        Event(16.2, "failure_detected", node=2, details=later),
        Event(16.5, "restart_begin", details={"failure": 1000}),
        Event(17.0, "process_group_ready", details={"failure": 1000}),
        Event(17.2, "state_restored", iteration=14, details={"failure": 1000, "tier": "peer"}),
        Event(17.3, "training_resumed", details={"failure": 1000}),
    ]
    _, own = failure_records(events, iteration_time_s=1.0)
    assert own.time_s == pytest.approx(14.5) and own.joined is None
    # Its own loss counts: the 0.5 s since iteration 14 ended, and its retrieval.
    assert own.lost_progress_s == pytest.approx(0.5)
    assert own.wasted_s == pytest.approx(0.5 + 0.2)
