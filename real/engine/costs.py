"""Where a checkpoint's time goes: seconds and counts per named step, for the cost breakdown.

The engine adds to a :class:`Costs` at every pass over the bytes (copy, hash, send, receive,
verify, clone), every round trip and every fixed step of ``save()`` and ``restore()``; the
training thread, the sender thread and each store keep their own. ``benchmarks/engine_costs.py``
prints them per save and per restore. Adding costs a ``perf_counter`` call and a dict update.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Costs:
    """Accumulated seconds, calls and bytes per step name (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._calls: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    def add(self, name: str, seconds: float, nbytes: int = 0, calls: int = 1) -> None:
        with self._lock:
            self._seconds[name] = self._seconds.get(name, 0.0) + seconds
            self._calls[name] = self._calls.get(name, 0) + calls
            if nbytes:
                self._bytes[name] = self._bytes.get(name, 0) + nbytes

    @contextmanager
    def timed(self, name: str, nbytes: int = 0) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started, nbytes)

    def snapshot(self) -> dict[str, dict[str, float]]:
        """``{name: {"s": seconds, "calls": n, "bytes": b}}``."""
        with self._lock:
            return {
                name: {
                    "s": seconds,
                    "calls": self._calls.get(name, 0),
                    "bytes": self._bytes.get(name, 0),
                }
                for name, seconds in self._seconds.items()
            }

    def reset(self) -> None:
        with self._lock:
            self._seconds.clear()
            self._calls.clear()
            self._bytes.clear()


def difference(
    after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """What was added between two snapshots."""
    out = {}
    for name, now in after.items():
        then = before.get(name, {"s": 0.0, "calls": 0, "bytes": 0})
        delta = {key: now[key] - then.get(key, 0) for key in now}
        if delta["calls"] or delta["s"]:
            out[name] = delta
    return out
