"""Event schema shared by the simulator and the real harness.

Both faces write a result folder with ``events.jsonl``: one JSON object per line, each an
``Event`` (time, kind, node, rank, iteration, details). ``analysis/`` reads only these files,
so a simulated run and a measured run are compared field by field.

The recovery of one failure is a chain of events tied by ``details["failure"]`` (the failure's
index in the run)::

    failure_injected -> failure_detected -> training_stopped -> [replacement_ready]
      -> restart_begin -> process_group_ready -> state_restored (tier) -> training_resumed

Two kinds record the checkpoint policy's choices (``shared.adaptive``, ``shared.compression``):
``ckpt_interval_changed`` (``interval``, ``previous``: the checkpoint every k iterations) and
``ckpt_compression`` (``enabled``, with the measured ``ratio`` and throughputs in the harness).

``node_memory`` (the real harness only) is what a node's processes of ours hold in memory at
the job's end: ``agent``, ``store`` and each warm ``spares`` entry, each ``anon``, ``file``
and ``shmem`` bytes (``real.runtime.processes.resident_bytes``). ``trainer_memory`` (the real
harness only) is what a trainer holds, the same three figures, as it ends its last iteration,
its state and checkpoint engine still in hand.

Times are seconds since the run started (simulated seconds in the simulator, wall seconds in
the real harness).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, get_args

EventKind = Literal[
    "run_started",
    "iteration_end",
    "ckpt_captured",
    "ckpt_replicated",
    "ckpt_committed",
    "ckpt_interval_changed",
    "ckpt_compression",
    "persist_begin",
    "persist_done",
    "failure_injected",
    "failure_detected",
    "training_stopped",
    "replacement_requested",
    "replacement_ready",
    "restart_begin",
    "spare_assigned",
    "process_group_ready",
    "state_restored",
    "training_resumed",
    "root_elected",
    "node_memory",
    "trainer_memory",
    "run_finished",
]
EVENT_KINDS: frozenset[str] = frozenset(get_args(EventKind))

JsonValue = str | int | float | bool | None | list[Any] | dict[str, Any]


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run.

    Attributes:
        time_s: seconds since the run started.
        kind: one of ``EVENT_KINDS``.
        node: the node it happened on, if any.
        rank: the trainer rank, if any.
        iteration: the training iteration it concerns, if any.
        details: kind-specific fields (``failure``: failure index; ``tier``: recovery tier;
            ``failure_kind``; ``bytes``; ``duration_s`` ...), JSON values only.
    """

    time_s: float
    kind: str
    node: int | None = None
    rank: int | None = None
    iteration: int | None = None
    details: Mapping[str, JsonValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; known: {sorted(EVENT_KINDS)}")
        if not math.isfinite(self.time_s):
            raise ValueError(f"event time must be finite, got {self.time_s}")

    def to_json(self) -> dict[str, JsonValue]:
        """The JSON object written as one line of ``events.jsonl``."""
        return {
            "time_s": self.time_s,
            "kind": self.kind,
            "node": self.node,
            "rank": self.rank,
            "iteration": self.iteration,
            "details": dict(self.details),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Event:
        """Parse one line's object; ValueError names what is wrong."""
        unknown = set(data) - {"time_s", "kind", "node", "rank", "iteration", "details"}
        if unknown:
            raise ValueError(f"unknown event fields {sorted(unknown)}")
        time_s = data.get("time_s")
        if not isinstance(time_s, int | float) or isinstance(time_s, bool):
            raise ValueError(f"time_s must be a number, got {time_s!r}")
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise ValueError(f"kind must be a string, got {kind!r}")
        ints = {}
        for name in ("node", "rank", "iteration"):
            value = data.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} must be an integer or null, got {value!r}")
            ints[name] = value
        details = data.get("details", {})
        if not isinstance(details, dict):
            raise ValueError(f"details must be an object, got {details!r}")
        return cls(float(time_s), kind, ints["node"], ints["rank"], ints["iteration"], details)


def event_sort_key(event: Event) -> tuple[float, int, int]:
    """Order events by time, then node, then rank (None first)."""
    return (
        event.time_s,
        -1 if event.node is None else event.node,
        -1 if event.rank is None else event.rank,
    )


def write_events(path: str | Path, events: Iterable[Event]) -> None:
    """Write events as JSON Lines, one object per line; whole or not at all
    (``replaced_whole``)."""
    with replaced_whole(path) as partial, open(partial, "w", encoding="utf-8") as handle:
        for event in events:
            write_event(handle, event)


@contextlib.contextmanager
def replaced_whole(path: str | Path) -> Iterator[Path]:
    """A path to write in the block, whose file then replaces ``path``, whole, or not at all:
    a temporary file of a unique name in the same folder (two writers, even on two hosts of a
    shared file system, never share it), renamed over ``path``; removed if the block raises.
    Its name does not end as ``path``'s: a writer that reads the format from the name is
    told it."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
        partial.chmod(0o644)  # as a file open() would make (mkstemp's are private)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_event(handle: IO[str], event: Event) -> None:
    """Append one event to an open text file."""
    handle.write(json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True))
    handle.write("\n")


def read_events(path: str | Path) -> list[Event]:
    """Read an ``events.jsonl`` file; ValueError names the line that is wrong."""
    return list(iter_events(path))


def iter_events(path: str | Path) -> Iterator[Event]:
    """Yield the events of an ``events.jsonl`` file in file order."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield Event.from_json(json.loads(line))
            except (ValueError, TypeError) as error:
                raise ValueError(f"{path}:{number}: {error}") from error
