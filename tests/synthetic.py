"""Synthetic run folders: schema-valid events and summaries made from a few numbers.

The tests and the documentation examples need run folders whose every phase is known in
advance. ``synthetic_run`` lays out a run of ``iterations`` iterations of fixed length on
``nodes`` nodes (one rank each); at each ``SyntheticFailure`` it stops, spends exactly the given
phase durations (detection, stop, replacement, restart, retrieval), restores the given
iteration and recomputes from there. The summary is derived from the events with
``shared.summary.failure_records``, exactly as both faces do, so the phases in ``summary.json``
equal the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared.events import Event, write_events
from shared.summary import RunSummary, failure_records, write_summary


@dataclass(frozen=True)
class SyntheticFailure:
    """A failure after iteration ``at_iteration``, recovered in the given times (s)."""

    at_iteration: int
    kind: str = "software"
    nodes: tuple[int, ...] = (1,)
    detection_s: float = 0.1
    stop_s: float = 0.2
    replacement_s: float = 0.0
    restart_s: float = 1.0
    retrieval_s: float = 0.5
    tier: str = "local"
    restored_iteration: int | None = None  # default: at_iteration (nothing lost)


@dataclass(frozen=True)
class SyntheticRun:
    """A whole synthetic run."""

    source: str = "sim"
    strategy: str = "gemini"
    scenario: str = "synthetic"
    nodes: int = 4
    iterations: int = 20
    iteration_time_s: float = 0.5
    iteration_time_no_ckpt_s: float | None = 0.48
    failures: Sequence[SyntheticFailure] = field(default_factory=tuple)
    persist_every: int = 5


def synthetic_events(run: SyntheticRun) -> list[Event]:
    """The event log of a synthetic run (see the module docstring)."""
    events = [Event(0.0, "run_started", details={"strategy": run.strategy})]
    now = 0.0
    iteration = 0
    pending = sorted(run.failures, key=lambda f: f.at_iteration)
    done: set[int] = set()
    while iteration < run.iterations:
        iteration += 1
        now += run.iteration_time_s
        for node in range(run.nodes):
            events.append(
                Event(now, "iteration_end", node, node, iteration, {"step_s": run.iteration_time_s})
            )
        if run.strategy == "gemini":
            events.append(Event(now, "ckpt_committed", None, None, iteration))
        if iteration % run.persist_every == 0:
            events.append(Event(now, "persist_done", None, None, iteration))
        for index, failure in enumerate(pending):
            if index in done or failure.at_iteration != iteration:
                continue
            done.add(index)
            chain = {"failure": index}
            events.append(
                Event(
                    now,
                    "failure_injected",
                    failure.nodes[0],
                    None,
                    None,
                    {
                        **chain,
                        "failure_kind": failure.kind,
                        "nodes": list(failure.nodes),
                        "reached_iteration": iteration,
                        "partial_iteration_s": 0.0,
                    },
                )
            )
            t = now + failure.detection_s
            events.append(Event(t, "failure_detected", failure.nodes[0], details=chain))
            t += failure.stop_s
            events.append(Event(t, "training_stopped", details=chain))
            if failure.replacement_s > 0:
                t += failure.replacement_s
                events.append(Event(t, "replacement_ready", details=chain))
            events.append(Event(t, "restart_begin", details=chain))
            t += failure.restart_s
            events.append(Event(t, "process_group_ready", details=chain))
            t += failure.retrieval_s
            restored = (
                failure.at_iteration
                if failure.restored_iteration is None
                else failure.restored_iteration
            )
            events.append(
                Event(t, "state_restored", None, None, restored, {**chain, "tier": failure.tier})
            )
            events.append(Event(t, "training_resumed", None, None, restored, chain))
            now = t
            iteration = restored
    events.append(Event(now, "run_finished", None, None, iteration))
    return events


def synthetic_summary(run: SyntheticRun, events: Sequence[Event]) -> RunSummary:
    """The summary of a synthetic run, derived from its events."""
    duration = max(e.time_s for e in events)
    return RunSummary(
        source=run.source,
        scenario=run.scenario,
        strategy=run.strategy,
        seed=0,
        duration_s=duration,
        iterations_completed=run.iterations,
        iteration_time_s=run.iteration_time_s,
        iteration_time_no_ckpt_s=run.iteration_time_no_ckpt_s,
        failures=failure_records(events, run.iteration_time_s),
        checkpoints_per_hour=3600.0 / run.iteration_time_s,
        checkpoint_memory_bytes=1e6,
        extra={"nodes": run.nodes},
    )


def write_synthetic_run(folder: str | Path, run: SyntheticRun) -> Path:
    """Write ``events.jsonl`` and ``summary.json`` of a synthetic run into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    events = synthetic_events(run)
    write_events(out / "events.jsonl", events)
    write_summary(out / "summary.json", synthetic_summary(run, events))
    return out
