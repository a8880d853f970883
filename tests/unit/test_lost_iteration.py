"""What the harness charges a lost iteration: the median, without the baseline's blocking
saves, which are lost only while in flight."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from real.launcher.results import lost_iteration_s, summarize_run
from shared.events import Event, write_events


def _run(
    saves_every: int, save_s: float, fail_after: int = 10, into_s: float = 0.05
) -> list[Event]:
    """Iterations of 0.1 s; a blocking save of ``save_s`` every ``saves_every``-th (0.001 s
    in the others); a node lost ``into_s`` after iteration ``fail_after`` ended (into the next
    iteration, and into its save past 0.1 s), iteration 8 restored."""
    events: list[Event] = [Event(0.0, "run_started")]
    t = 0.0
    for k in range(1, 13):
        if k == fail_after + 1:
            failed = t + into_s
            events += [
                Event(failed, "failure_injected", node=1, details={"failure": 0}),
                Event(failed + 0.1, "failure_detected", node=1, details={"failure": 0}),
                Event(failed + 0.2, "restart_begin", details={"failure": 0, "attempt": 1}),
                Event(failed + 0.3, "process_group_ready", rank=0),
                Event(
                    failed + 0.4,
                    "state_restored",
                    rank=0,
                    iteration=8,
                    details={"tier": "persistent"},
                ),
                Event(failed + 0.4, "training_resumed", rank=0, iteration=9),
            ]
            break
        save = save_s if k % saves_every == 0 else 0.001
        t += 0.1 + save
        events.append(
            Event(
                t,
                "iteration_end",
                rank=0,
                iteration=k,
                details={"duration_s": 0.1 + save, "save_s": save},
            )
        )
    return events


def test_the_baseline_charges_a_lost_iteration_without_its_saves() -> None:
    events = _run(4, 0.4)  # saves at 4 and 8, 0.001 s in the other iterations
    # The median iteration without its save, plus the median save (the no-op); the longest
    # save bounds the part of an iteration in flight.
    assert lost_iteration_s(events, "persistent", 0.101) == pytest.approx((0.101, 0.4))
    # Gemini's save is a capture in every iteration, already in the median.
    assert lost_iteration_s(events, "gemini", 0.101) == (0.101, 0.0)
    assert lost_iteration_s([Event(0.0, "run_started")], "persistent", 0.2) == (0.2, 0.0)
    # Saving every other iteration, the median save would average a save with a no-op.
    assert lost_iteration_s(_run(2, 0.4), "persistent", 0.101) == pytest.approx((0.101, 0.4))


@pytest.mark.parametrize(
    ("fail_after", "into_s", "lost_iterations", "lost_s"),
    [
        # Iterations 9 and 10 redone (the save of 8 returned: it is not lost), 0.05 s of 11.
        (10, 0.05, 2, 2 * 0.101 + 0.05),
        # During the save of 12: iterations 9-11, and 12 with the 0.2 s of its save made.
        (11, 0.3, 3, 3 * 0.101 + 0.3),
    ],
)
def test_a_measured_baseline_failure_loses_the_time_since_its_checkpoint(
    tmp_path: Path, fail_after: int, into_s: float, lost_iterations: int, lost_s: float
) -> None:
    (tmp_path / "events").mkdir()
    events = _run(4, 0.4, fail_after, into_s)
    write_events(tmp_path / "events" / "rank0.jsonl", events)
    summary, _ = summarize_run(tmp_path, "saves", "persistent", 0, "local")
    (failure,) = summary.failures
    assert summary.iteration_time_s == pytest.approx(0.101)  # the median, as before
    assert failure.lost_iterations == lost_iterations
    # The wall time from the end of the save of 8 to the failure.
    injected = next(e.time_s for e in events if e.kind == "failure_injected")
    save_of_8 = next(e.time_s for e in events if e.kind == "iteration_end" and e.iteration == 8)
    assert failure.lost_progress_s == pytest.approx(lost_s)
    assert failure.lost_progress_s == pytest.approx(injected - save_of_8)


@pytest.mark.parametrize("strategy", ["persistent", "gemini"])
def test_checkpoints_per_hour_count_the_strategys_own_over_training(
    tmp_path: Path, strategy: str
) -> None:
    """As the simulator counts them: the baseline's saves to storage, Gemini's commits in
    memory (rank 0's), per hour of training: the cluster's start-up before the first
    iteration is not in it."""
    startup = [Event(0.0, "run_started")]
    events = [dataclasses.replace(e, time_s=e.time_s + 10.0) for e in _run(4, 0.4)]
    for k in (4, 8):  # two saves to storage, from rank 0
        events.append(Event(10.0 + 0.1 * k, "persist_done", rank=0, iteration=k))
    for k in (2, 5, 7, 9, 10):  # five commits in memory, from rank 0
        events.append(Event(10.0 + 0.1 * k, "ckpt_committed", rank=0, iteration=k))
    events.append(Event(10.9, "ckpt_committed", rank=1, iteration=8))  # rank 1's: not counted
    (tmp_path / "events").mkdir()
    write_events(tmp_path / "events" / "rank0.jsonl", startup + events)
    summary, _ = summarize_run(tmp_path, "rate", strategy, 0, "local")
    training_s = summary.duration_s - summary.extra["startup_s"]
    assert summary.extra["startup_s"] == pytest.approx(10.0)
    own = 2 if strategy == "persistent" else 5
    assert summary.checkpoints_per_hour == pytest.approx(own / training_s * 3600)
