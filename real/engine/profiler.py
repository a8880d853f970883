"""Profiling the training job's communication, to find the idle spans of an iteration.

Gemini sends checkpoint traffic only while the training traffic leaves the network idle. Over
the first ``profiling_iterations`` iterations a DDP communication hook wraps the default
all-reduce hook and records, for every gradient bucket, when its all-reduce started and when
its future completed. Times are relative to the iteration's start, which the checkpointer marks
when ``save()`` returns (training resumes then). Once enough iterations are profiled, the busy
intervals of all of them (their union: conservative) and the median iteration length become
idle spans through ``shared.scheduling.idle_spans_from_busy``.

Use with DDP: ``CommProfiler.attach(ddp_model)`` right after wrapping the model, before the
first backward pass (DDP accepts one comm hook per model, registered before training). Without
DDP (FSDP2, a single process) nothing is recorded and the whole iteration counts as idle.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from shared.scheduling import IdleSpan, idle_spans_from_busy


class CommProfiler:
    """Busy intervals of the training traffic per iteration, and the idle spans they leave.

    Args:
        iterations: how many complete iterations to profile.
        clock: monotonic clock in seconds (``time.perf_counter``).
    """

    def __init__(self, iterations: int, clock: Any = time.perf_counter) -> None:
        self.iterations = iterations
        self.clock = clock
        self.lock = threading.Lock()
        self.iteration_start: float | None = None
        self.current: list[tuple[float, float]] = []
        self.busy: list[tuple[float, float]] = []
        self.lengths: list[float] = []
        self.spans: tuple[IdleSpan, ...] | None = None
        self.attached = False

    @property
    def done(self) -> bool:
        return self.spans is not None

    def attach(self, ddp_model: Any) -> None:
        """Register the timing comm hook on a ``DistributedDataParallel`` model."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        process_group: Any = getattr(ddp_model, "process_group", None)  # None: WORLD

        # No annotations: DDP checks them and, with postponed evaluation, sees only strings.
        def hook(state, bucket):  # type: ignore[no-untyped-def]
            started = state.clock()
            future = default_hooks.allreduce_hook(process_group, bucket)
            if state.done:
                return future

            def finished(done: Any) -> Any:
                state.record(started, state.clock())
                return done.value()

            return future.then(finished)

        ddp_model.register_comm_hook(self, hook)
        self.attached = True

    def record(self, start: float, end: float) -> None:
        """One busy interval of training communication (clock seconds)."""
        with self.lock:
            if self.iteration_start is not None and not self.done:
                self.current.append((start - self.iteration_start, end - self.iteration_start))

    def iteration_begins(self) -> float:
        """Mark the start of an iteration (``save()`` returning); closes the previous one."""
        now = float(self.clock())
        with self.lock:
            if self.iteration_start is not None and not self.done:
                self.lengths.append(now - self.iteration_start)
                self.busy.extend(self.current)
                if len(self.lengths) >= self.iterations:
                    length = statistics.median(self.lengths)
                    self.spans = idle_spans_from_busy(length, self.busy)
            self.current = []
            self.iteration_start = now
        return now

    def summary(self) -> dict[str, Any]:
        """What was measured, for logs and events."""
        with self.lock:
            spans = self.spans or ()
            length = statistics.median(self.lengths) if self.lengths else 0.0
            idle = sum(s.duration_s for s in spans)
            return {
                "profiled_iterations": len(self.lengths),
                "iteration_s": length,
                "idle_spans": len(spans),
                "idle_fraction": idle / length if length else 0.0,
                "attached": self.attached,
            }
