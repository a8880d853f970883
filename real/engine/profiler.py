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

Under NCCL the host clock would measure the wrong thing: the all-reduce is *queued* on the
device when the hook runs, and its future completes when the work is enqueued, not when it ran.
Buckets on a CUDA device are therefore timed with CUDA events: one recorded on the current
stream before the all-reduce is launched (it fires when the bucket's gradients are ready, when
NCCL can start), one recorded in the future's callback (the callback's stream waits for the
NCCL work, so it fires when the all-reduce finished), and one at every iteration start. When
the next iteration begins, their ``elapsed_time`` from that iteration's start event gives the
busy interval on the device's clock.
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
        cuda: ``torch.cuda`` or a stand-in with ``Event(enable_timing=True)`` (default:
            ``torch.cuda``, imported when the first CUDA bucket is timed).
    """

    def __init__(self, iterations: int, clock: Any = time.perf_counter, cuda: Any = None) -> None:
        self.iterations = iterations
        self.clock = clock
        # ``torch.cuda`` once a CUDA bucket was seen (or a stand-in, for tests).
        self.cuda: Any = cuda
        self.pending: list[tuple[Any, Any]] = []  # CUDA events of buckets not yet resolved
        self.reference: Any = None  # CUDA event at the current iteration's start
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

        from real.trainer.inprocess import abortable

        # No annotations: DDP checks them and, with postponed evaluation, sees only strings.
        def hook(state, bucket):  # type: ignore[no-untyped-def]
            on_device = bucket.buffer().is_cuda
            future = state.timed(
                lambda: default_hooks.allreduce_hook(process_group, bucket), on_device
            )
            # A CPU all-reduce that an abort can cut short (in-process recovery).
            return future if on_device else abortable(future)

        ddp_model.register_comm_hook(self, hook)
        self.attached = True

    def timed(self, launch: Any, on_device: bool) -> Any:
        """Launch one bucket's all-reduce (``launch()`` returns its future) and time it: with
        the host clock, or with CUDA events when the bucket lives on a CUDA device."""
        if self.done:
            return launch()
        if on_device:
            start_event = self._event()
            future = launch()

            def device_finished(done: Any) -> Any:
                end_event = self._event()  # this stream now waits for the all-reduce
                with self.lock:
                    self.pending.append((start_event, end_event))
                return done.value()

            return future.then(device_finished)
        started = self.clock()
        future = launch()

        def finished(done: Any) -> Any:
            self.record(started, self.clock())
            return done.value()

        return future.then(finished)

    def _event(self) -> Any:
        """A timing event recorded now on the current stream."""
        cuda = self.cuda if self.cuda is not None else _torch_cuda()
        self.cuda = cuda
        event = cuda.Event(enable_timing=True)
        event.record()
        return event

    def _resolve_device(self) -> None:
        """Turn the previous iteration's CUDA events into busy intervals (lock held)."""
        pending, self.pending = self.pending, []
        reference = self.reference
        if not pending or reference is None:
            return  # buckets before the first iteration start: nothing to measure from
        for start_event, end_event in pending:
            end_event.synchronize()
            self.current.append(
                (
                    reference.elapsed_time(start_event) / 1000.0,
                    reference.elapsed_time(end_event) / 1000.0,
                )
            )

    def record(self, start: float, end: float) -> None:
        """One busy interval of training communication (clock seconds)."""
        with self.lock:
            if self.iteration_start is not None and not self.done:
                self.current.append((start - self.iteration_start, end - self.iteration_start))

    def iteration_begins(self) -> float:
        """Mark the start of an iteration (``save()`` returning); closes the previous one."""
        now = float(self.clock())
        with self.lock:
            # An iteration whose buckets were the first seen on a device has no zero on the
            # device's clock: its buckets cannot be placed, so it is not profiled at all.
            unplaced = False
            if self.cuda is not None and not self.done:
                unplaced = self.reference is None
                self._resolve_device()
                self.reference = self._event()  # the device clock's zero for this iteration
            if self.iteration_start is not None and not self.done and not unplaced:
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


def _torch_cuda() -> Any:
    import torch

    return torch.cuda
