"""Following a run's progress from the per-process event files, as they are written.

The injector fires "once iteration N has ended" or "while a checkpoint is being replicated";
both are read from the trainers' event files (``<run_dir>/events/*.jsonl``, line-buffered), not
from inside the trainers, so injection needs no hook in the code under test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Progress:
    """What the trainers have reported so far.

    Attributes:
        max_iteration: the highest iteration any rank ended.
        ended: per rank, the highest iteration it ended, or captured (``save()`` emits
            ``ckpt_captured`` once the copy is done, before the replication starts and before
            the iteration's ``iteration_end``).
        captured: ``(time_s, rank, iteration)`` of every ``ckpt_captured``.
        committed: ``(rank, iteration)`` pairs committed.
        resumed: times of ``training_resumed`` events.
        began: when training began: the first ``iteration_end`` less its duration (the run's
            ``startup_s`` ends there); None before any iteration ended.
    """

    max_iteration: int = 0
    ended: dict[int, int] = field(default_factory=dict)
    captured: list[tuple[float, int, int]] = field(default_factory=list)
    committed: set[tuple[int, int]] = field(default_factory=set)
    resumed: list[float] = field(default_factory=list)
    began: float | None = None


class ProgressWatcher:
    """Reads new complete lines of every event file on each ``poll()``."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = run_dir / "events"
        self.offsets: dict[Path, int] = {}
        self.progress = Progress()

    def poll(self) -> Progress:
        if not self.folder.is_dir():
            return self.progress
        for path in sorted(self.folder.glob("*.jsonl")):
            offset = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n")
            if end < 0:
                continue
            self.offsets[path] = offset + end + 1
            for line in chunk[: end + 1].splitlines():
                try:
                    self._see(json.loads(line))
                except ValueError:
                    continue
        return self.progress

    def _see(self, event: dict[str, Any]) -> None:
        kind, iteration, rank = event.get("kind"), event.get("iteration"), event.get("rank")
        progress = self.progress
        if kind == "iteration_end" and isinstance(iteration, int):
            progress.max_iteration = max(progress.max_iteration, iteration)
            duration = event.get("details", {}).get("duration_s", 0.0)
            began = float(event["time_s"]) - (float(duration) if duration else 0.0)
            progress.began = began if progress.began is None else min(progress.began, began)
            if isinstance(rank, int):
                progress.ended[rank] = max(progress.ended.get(rank, 0), iteration)
        elif kind == "ckpt_captured" and isinstance(iteration, int) and isinstance(rank, int):
            progress.captured.append((float(event["time_s"]), rank, iteration))
            progress.ended[rank] = max(progress.ended.get(rank, 0), iteration)
        elif kind == "ckpt_committed" and isinstance(iteration, int) and isinstance(rank, int):
            progress.committed.add((rank, iteration))
        elif kind == "training_resumed":
            progress.resumed.append(float(event["time_s"]))
