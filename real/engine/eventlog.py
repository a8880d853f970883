"""Per-process event logs of the real harness.

Every process of a run (trainer, store, agent, launcher) appends its events to its own file
``<run_dir>/events/<name>.jsonl``; the launcher merges them into the run's ``events.jsonl``.
Times are wall seconds since the run's start ``t0`` (``time.time()`` of the launcher, passed to
every process in the ``GEMINI_RUN_T0`` environment variable), so files of different processes
line up. Writes are line-buffered and flushed, so a SIGKILLed process loses at most the line
it was writing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from real.runtime.env import GEMINI_RUN_DIR, GEMINI_RUN_T0
from shared.events import Event, write_event, write_events

RUN_DIR_ENV = GEMINI_RUN_DIR
RUN_T0_ENV = GEMINI_RUN_T0


class EventLog:
    """Append-only event file of one process; thread-safe.

    Args:
        path: the file to append to (parents created); None makes a log that drops events.
        t0: wall time (``time.time()``) of the run's start.
        node: default node of the events.
        rank: default rank of the events.
    """

    def __init__(
        self, path: str | Path | None, t0: float, node: int | None = None, rank: int | None = None
    ) -> None:
        self.t0 = t0
        self.node = node
        self.rank = rank
        self._lock = threading.Lock()
        self._handle = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    @classmethod
    def from_env(cls, name: str, node: int | None = None, rank: int | None = None) -> EventLog:
        """The log ``<GEMINI_RUN_DIR>/events/<name>.jsonl``, or a null log outside a run."""
        run_dir = os.environ.get(RUN_DIR_ENV)
        t0 = float(os.environ.get(RUN_T0_ENV, time.time()))
        path = Path(run_dir) / "events" / f"{name}.jsonl" if run_dir else None
        return cls(path, t0, node, rank)

    def now(self) -> float:
        """Seconds since the run's start."""
        return time.time() - self.t0

    def emit(
        self,
        kind: str,
        *,
        iteration: int | None = None,
        node: int | None = None,
        rank: int | None = None,
        time_s: float | None = None,
        **details: Any,
    ) -> Event:
        """Record one event now (or at ``time_s``) and return it."""
        event = Event(
            time_s=self.now() if time_s is None else time_s,
            kind=kind,
            node=self.node if node is None else node,
            rank=self.rank if rank is None else rank,
            iteration=iteration,
            details=details,
        )
        if self._handle is not None:
            with self._lock:
                write_event(self._handle, event)
        return event

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


def merge_event_files(run_dir: str | Path) -> list[Event]:
    """Merge ``<run_dir>/events/*.jsonl`` into ``<run_dir>/events.jsonl``, sorted by time."""
    events: list[Event] = []
    folder = Path(run_dir) / "events"
    for path in sorted(folder.glob("*.jsonl")):
        events.extend(_read_tolerant(path))
    events.sort(
        key=lambda e: (e.time_s, -1 if e.node is None else e.node, -1 if e.rank is None else e.rank)
    )
    write_events(Path(run_dir) / "events.jsonl", events)
    return events


def _read_tolerant(path: Path) -> list[Event]:
    """Events of one file; a torn last line (the writer was killed mid-line) is skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(Event.from_json(json.loads(line)))
        except (ValueError, TypeError) as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: {error}") from error
    return events
