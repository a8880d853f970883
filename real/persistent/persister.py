"""Saves that log their events, and the background persister: ``save_persistent`` in its
own thread, so training never waits for storage."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from real.engine.eventlog import EventLog
from real.persistent.dcp import DEFAULT_KEEP, _rank_and_world, save_persistent
from real.persistent.metadata import metadata_key
from real.persistent.storage import PersistentStorage
from real.runtime.peers import follows_peer_failure, peer_failure_text
from real.runtime.procgroup import gloo_group

logger = logging.getLogger(__name__)


def save_persistent_logged(
    event_log: EventLog,
    url: str,
    iteration: int,
    state: Mapping[str, Any],
    *,
    blocking: bool,
    process_group: dist.ProcessGroup | None,
    storage_options: Mapping[str, Any] | None,
    keep: int | None,
    key: str | bytes | None = None,
) -> int:
    """:func:`save_persistent` between ``persist_begin`` and ``persist_done`` events (with the
    seconds and bytes; ``blocking``: training waits for it); returns the bytes written."""
    event_log.emit("persist_begin", iteration=iteration, url=url, blocking=blocking)
    start = time.perf_counter()
    size = save_persistent(
        url,
        iteration,
        state,
        process_group=process_group,
        storage_options=storage_options,
        keep=keep,
        key=key,
    )
    event_log.emit(
        "persist_done",
        iteration=iteration,
        url=url,
        seconds=time.perf_counter() - start,
        bytes=size,
        blocking=blocking,
    )
    return size


class BackgroundPersister:
    """Writes states to the persistent tier in a background thread.

    ``submit`` hands over a state (already copied: the persister keeps a reference and reads
    it later) and returns at once. One save is in flight at a time; a newer submission
    supersedes the ones still queued. With several ranks the ranks agree, before each save, on
    the iteration to write (the oldest of the ranks' newest submissions; every rank still
    holds it), so all ranks write the same checkpoint even when their threads run at
    different paces.

    Construct it on every rank at the same point (it may create a gloo process group).

    Args:
        url: the tier's location.
        storage_options: fsspec options.
        event_log: where persist_begin / persist_done events go.
        keep: complete checkpoints to keep.
        process_group: group for DCP's collectives, used by no other thread (default: a new
            gloo group, which connects at the thread's first save, off the caller's path).
        key: the key of the ``.metadata`` sidecars (default: :func:`metadata_key`'s).
    """

    def __init__(
        self,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        event_log: EventLog | None = None,
        keep: int | None = DEFAULT_KEEP,
        process_group: dist.ProcessGroup | None = None,
        key: str | bytes | None = None,
    ) -> None:
        PersistentStorage(url, storage_options)  # fail now on a bad URL, not in the thread
        self._key = metadata_key(key)[0] if key is not None else None
        self.url = url
        self.storage_options = None if storage_options is None else dict(storage_options)
        self.event_log = event_log or EventLog(None, time.time())
        self.keep = keep
        self.rank, self.world_size = _rank_and_world()
        self._group = (
            process_group if process_group is not None else gloo_group(dedicated=True, lazy=True)
        )
        self._distributed = dist.is_available() and dist.is_initialized()
        self._pending: dict[int, Mapping[str, Any]] = {}
        self._condition = threading.Condition()
        self._stopping = False
        self._abandoned = False  # abandon(): a write in flight fails with its attempt's group
        self._busy = False
        self.last_persisted: int | None = None
        self.errors: list[str] = []
        self._thread = threading.Thread(
            target=self._run, name=f"persister-rank{self.rank}", daemon=True
        )
        self._thread.start()

    def submit(self, iteration: int, state: Mapping[str, Any]) -> None:
        """Queue ``state`` of ``iteration`` for writing; returns at once."""
        with self._condition:
            if self._stopping:
                raise RuntimeError("submit() after close() of the background persister")
            self._pending[iteration] = state
            self._condition.notify_all()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted state is written or superseded; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._condition:
            while self._pending or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def close(self, timeout_s: float = 300.0) -> None:
        """Write what is queued (bounded wait), then stop the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning(
                "rank %d: background persister still writing after %.0f s; abandoning it",
                self.rank,
                timeout_s,
            )

    def abandon(self) -> None:
        """Drop what is queued and stop (a failure stopped the job) without waiting for a write
        in flight: it is left to fail with its group (a peer of the collective save is gone,
        so its checkpoint is never indexed as complete) on this daemon thread, and an idle
        thread ends on its own. Waiting for the write held survivors in their failed attempt
        while it went on (1.2-1.5 s at the headline's emulated storage bandwidth); even a
        bounded wait of 50 ms, which such a write always used up, was most of a survivor's
        stop after a crash (the quickstart's survivors left 50-55 ms after their collectives
        failed while iteration 10 was being persisted, 2-6 ms when nothing was)."""
        with self._condition:
            self._stopping = True
            self._abandoned = True
            self._pending.clear()
            self._condition.notify_all()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._stopping:
                    self._condition.wait()
                if not self._pending:
                    return
                newest = max(self._pending)
                self._busy = True
            try:
                try:
                    target = self._agree(newest)
                except Exception:
                    # The group is broken (a peer is gone) and stays so: drop what it could
                    # not agree on rather than retry it in a loop; a later save on a working
                    # group persists again.
                    with self._condition:
                        for waiting in [i for i in self._pending if i <= newest]:
                            del self._pending[waiting]
                    raise
                with self._condition:
                    state = self._pending.pop(target)
                    for older in [i for i in self._pending if i < target]:
                        del self._pending[older]
                self._persist(target, state)
            except Exception as error:  # record and go on: the next checkpoint may succeed
                if follows_peer_failure(error):
                    # A recovery's ordinary aftermath, not a fault of the persistent tier.
                    logger.warning(
                        "rank %d: background persist abandoned, a peer is gone (%s)",
                        self.rank,
                        peer_failure_text(error),
                    )
                elif self._abandoned:
                    # This process left the failed attempt and its groups while the write
                    # was in flight (abandon): its collectives fail on a group no longer
                    # there, whatever they raise.
                    logger.info(
                        "rank %d: background persist ended with its attempt (%s: %s)",
                        self.rank,
                        type(error).__name__,
                        str(error).splitlines()[0] if str(error) else "",
                    )
                else:
                    logger.exception("rank %d: background persist failed", self.rank)
                self.errors.append(f"{type(error).__name__}: {error}")
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def _agree(self, newest: int) -> int:
        if not self._distributed:
            return newest
        value = torch.tensor([newest], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self._group)
        return int(value.item())

    def _persist(self, iteration: int, state: Mapping[str, Any]) -> None:
        save_persistent_logged(
            self.event_log,
            self.url,
            iteration,
            state,
            blocking=False,
            process_group=self._group,
            storage_options=self.storage_options,
            keep=self.keep,
            key=self._key,
        )
        self.last_persisted = iteration
