"""A run's results: merged events tied to their failures, the summary, the printed table.

Trainers do not know which failure their restart recovers from, so their recovery events
(``process_group_ready``, ``state_restored``, ``training_resumed``) are tied to it here: each one
after the root's ``restart_begin`` of an attempt belongs to the failures that restart recovers
(``details["failure"]``; a restart that recovers two failures at once, one having struck during
the other's recovery, gives each its own copy). Then ``shared.summary.failure_records`` measures
every failure's phases the same way the simulator's are measured.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from real.engine.eventlog import merge_event_files
from shared.events import Event, event_sort_key, write_events
from shared.summary import RunSummary, failure_records, write_summary

TRAINER_CHAIN = ("process_group_ready", "state_restored", "training_resumed")


def tie_recovery_events(events: Sequence[Event]) -> list[Event]:
    """Events with trainer recovery events tagged with the failures their restart recovers."""
    ordered = sorted(events, key=event_sort_key)
    out: list[Event] = []
    current: list[int] = []
    current_attempt = None
    for event in ordered:
        if event.kind == "restart_begin" and isinstance(event.details.get("failure"), int):
            attempt = event.details.get("attempt")
            if attempt != current_attempt:
                current, current_attempt = [], attempt
            index = int(event.details["failure"])  # type: ignore[arg-type]
            if index not in current:
                current.append(index)
        if event.kind in TRAINER_CHAIN and "failure" not in event.details and current:
            for index in current:
                out.append(replace(event, details={**event.details, "failure": index}))
            continue
        out.append(event)
    return _resumes_from_scratch(out)


def _resumes_from_scratch(events: list[Event]) -> list[Event]:
    """A restart from scratch restores nothing, so no trainer says ``training_resumed``; derive
    it (``derived: true``) at the start of the first iteration after that restart."""
    resumed = {
        e.details["failure"]
        for e in events
        if e.kind == "training_resumed" and "failure" in e.details
    }
    extra = []
    for restart in events:
        if restart.kind != "restart_begin" or restart.iteration is not None:
            continue
        index = restart.details.get("failure")
        if index in resumed:
            continue
        first = next(
            (e for e in events if e.kind == "iteration_end" and e.time_s > restart.time_s), None
        )
        if first is None:
            continue
        began = first.time_s - float(first.details.get("duration_s", 0.0))  # type: ignore[arg-type]
        extra.append(
            Event(
                max(began, restart.time_s),
                "training_resumed",
                first.node,
                first.rank,
                1,
                {"failure": index, "tier": "none", "derived": True},
            )
        )
        resumed.add(index)
    return sorted(events + extra, key=event_sort_key)


def final_digests(run_dir: Path) -> dict[int, str]:
    """``{rank: model_digest}`` of the final weights the trainers wrote."""
    digests = {}
    for path in sorted((run_dir / "final").glob("rank*.bin.json")):
        manifest = json.loads(path.read_text())
        extra = manifest.get("extra", manifest)
        digest = extra.get("model_digest")
        if digest is not None:
            digests[int(path.name[4:].split(".")[0])] = str(digest)
    return digests


def plans(events: Sequence[Event]) -> list[dict[str, Any]]:
    """The root's recovery decisions, one per restart: attempt, iteration, tiers, failures."""
    by_attempt: dict[int, dict[str, Any]] = {}
    for event in events:
        if event.kind != "restart_begin":
            continue
        attempt = int(event.details.get("attempt", 0))  # type: ignore[arg-type]
        entry = by_attempt.setdefault(
            attempt,
            {
                "attempt": attempt,
                "iteration": event.iteration,
                "tiers": event.details.get("tiers"),
                "rollback": event.details.get("rollback"),
                "reason": event.details.get("reason"),
                "failed": event.details.get("failed"),
                "failures": [],
            },
        )
        entry["failures"].append(event.details.get("failure"))
    return [by_attempt[a] for a in sorted(by_attempt)]


def node_memory(events: Sequence[Event]) -> dict[str, Any] | None:
    """What our processes held per node at the job's end, from the agents' ``node_memory``
    events: for the agent and the node store the median over the nodes that reported, for a
    warm spare the largest (a spare still starting holds less), each as ``anon`` (its own
    pages) and ``file`` (mapped files: libraries, which every process mapping them shares)
    bytes. The store's shared memory is left out: it is the checkpoint memory, reported on its
    own. A trainer (``trainer_memory``, as it ends its last iteration): the median over the
    ranks. None when nothing reported (the simulator, or a run of an older harness)."""
    reports = [e.details for e in events if e.kind == "node_memory"]
    trainers = [e.details for e in events if e.kind == "trainer_memory"]
    if not reports and not trainers:
        return None

    def own(entry: Any) -> tuple[int, int] | None:
        if not isinstance(entry, dict):
            return None
        return int(entry.get("anon", 0)), int(entry.get("file", 0))

    def median(entries: Sequence[Any]) -> dict[str, float] | None:
        found = [m for m in map(own, entries) if m is not None]
        if not found:
            return None
        return {
            "anon": statistics.median(m[0] for m in found),
            "file": statistics.median(m[1] for m in found),
        }

    out: dict[str, Any] = {"nodes": len(reports)}
    for role in ("agent", "store"):
        if (found := median([r.get(role) for r in reports])) is not None:
            out[role] = found
    per_node = [r.get("spares") for r in reports]
    lists = [entries if isinstance(entries, list) else [] for entries in per_node]
    spares = [m for entries in lists for m in (own(s) for s in entries) if m is not None]
    if spares:
        largest = max(spares, key=sum)
        out["spare"] = {"anon": largest[0], "file": largest[1]}
        out["spares_per_node"] = statistics.median(len(entries) for entries in lists)
    if (held := median(trainers)) is not None:
        out["trainer"] = held
    return out


def lost_iteration_s(
    events: Sequence[Event], strategy: str, iteration_s: float
) -> tuple[float, float]:
    """What redoing one lost iteration costs, s, and the longest blocking save an iteration
    ends with (``shared.summary.failure_records``): the median iteration ``iteration_s`` and
    0 for Gemini, whose save is a capture that every iteration makes (redone with it);
    under the persistent baseline the median iteration without its save plus the median
    save (the no-op of an iteration that does not save, once K >= 2), and the longest save.

    The baseline saves every K-th iteration on the training thread. A save that returned made
    its iteration durable, so redoing the iterations after it redoes no save; a failure
    during a save loses the part of it already made, in the iteration in flight. (Until
    2026-12-06 every lost iteration was charged the saves spread over all iterations, which
    counted saves that were never lost: +34% on a baseline failure of the simulator's.)
    """
    if strategy != "persistent":
        return iteration_s, 0.0
    timed = [
        (float(e.details["duration_s"]), float(e.details["save_s"]))  # type: ignore[arg-type]
        for e in events
        if e.kind == "iteration_end" and "save_s" in e.details and "duration_s" in e.details
    ]
    if not timed:
        return iteration_s, 0.0
    return (
        # The lower median: with K = 2 half the iterations save, and the plain median would
        # average a save with a no-op.
        statistics.median(d - s for d, s in timed) + statistics.median_low(s for _, s in timed),
        max(s for _, s in timed),
    )


def summarize_run(
    run_dir: Path,
    scenario_name: str,
    strategy: str,
    seed: int,
    mode: str,
    failed: str | None = None,
) -> tuple[RunSummary, list[Event]]:
    """Merge the event files, tie the recovery events, write events.jsonl and summary.json.
    ``failed``: why the job failed, kept in the summary (``extra["failed"]``): a report
    leaves such a run out (``analysis.results.load_runs``)."""
    events = tie_recovery_events(merge_event_files(run_dir))
    write_events(run_dir / "events.jsonl", events)
    durations = [
        float(e.details["duration_s"])  # type: ignore[arg-type]
        for e in events
        if e.kind == "iteration_end" and "duration_s" in e.details
    ]
    iteration_time_s = statistics.median(durations) if durations else 0.0
    # The same iterations' time without the checkpoint: the step alone (forward, backward,
    # optimizer), excluding save(). Background replication still shares the CPU with it, so
    # on a CPU-bound machine this is an upper bound of a run without checkpoints.
    steps = [
        float(e.details["step_s"])  # type: ignore[arg-type]
        for e in events
        if e.kind == "iteration_end" and "step_s" in e.details
    ]
    memory = [
        float(e.details["checkpoint_memory_bytes"])  # type: ignore[arg-type]
        for e in events
        if e.kind == "run_finished" and "checkpoint_memory_bytes" in e.details
    ]
    records = failure_records(events, *lost_iteration_s(events, strategy, iteration_time_s))
    ends = [e.iteration for e in events if e.kind == "iteration_end" and e.iteration is not None]
    duration_s = max((e.time_s for e in events), default=0.0)
    # The cluster's start-up (processes, imports, the first process group) precedes the first
    # iteration; ETTR leaves it out, as the simulator, which starts training at once, does.
    first = next((e for e in events if e.kind == "iteration_end"), None)
    startup_s = (
        0.0
        if first is None
        else max(0.0, first.time_s - float(first.details.get("duration_s", 0.0)))  # type: ignore[arg-type]
    )
    # Checkpoints as the simulator counts them: the strategy's own (Gemini's commits in
    # memory, the baseline's saves to storage; rank 0's), per hour of training (start-up out).
    own = "persist_done" if strategy == "persistent" else "ckpt_committed"
    checkpoints = sum(1 for e in events if e.kind == own and e.rank == 0)
    training_h = max(0.0, duration_s - startup_s) / 3600.0
    digests = final_digests(run_dir)
    summary = RunSummary(
        source="real",
        scenario=scenario_name,
        strategy=strategy,
        seed=seed,
        duration_s=duration_s,
        iterations_completed=max(ends, default=0),
        iteration_time_s=iteration_time_s,
        iteration_time_no_ckpt_s=statistics.median(steps) if steps else None,
        failures=records,
        checkpoints_per_hour=checkpoints / training_h if training_h > 0 else 0.0,
        checkpoint_memory_bytes=max(memory, default=0.0),
        extra={
            **({"failed": failed} if failed else {}),
            "mode": mode,
            "startup_s": round(startup_s, 6),
            "iteration_time_no_ckpt_source": "median step_s of iteration_end (step without save)",
            "final_digest": next(iter(set(digests.values())), None)
            if len(set(digests.values())) == 1
            else None,
            "final_digests": {str(k): v for k, v in digests.items()},
            "plans": plans(events),
            **({"node_memory": footprint} if (footprint := node_memory(events)) else {}),
            "root_elections": [
                {"time_s": e.time_s, "node_id": e.node, "previous": e.details.get("previous")}
                for e in events
                if e.kind == "root_elected"
            ],
        },
    )
    write_summary(run_dir / "summary.json", summary)
    return summary, events


def breakdown_table(summary: RunSummary) -> Any:
    """The recovery breakdown as a rich table (one row per failure, seconds)."""
    from rich.table import Table

    table = Table(title=f"{summary.scenario} ({summary.strategy}): recovery per failure, s")
    columns = [
        "#",
        "kind",
        "nodes",
        "detect",
        "stop",
        "replace",
        "restart",
        "retrieve",
        "lost it.",
        "lost",
        "wasted",
        "downtime",
        "tier",
    ]
    for name in columns:
        table.add_column(name, justify="right" if name not in ("kind", "tier") else "left")
    for f in summary.failures:
        table.add_row(
            str(f.index),
            f.kind,
            ",".join(map(str, f.nodes)),
            f"{f.detection_s:.3f}",
            f"{f.stop_s:.3f}",
            f"{f.replacement_s:.3f}",
            f"{f.restart_s:.3f}",
            f"{f.retrieval_s:.3f}",
            str(f.lost_iterations),
            f"{f.lost_progress_s:.3f}",
            f"{f.wasted_s:.3f}",
            f"{f.downtime_s:.3f}",
            f.tier,
        )
    return table
