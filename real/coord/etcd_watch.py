"""etcd's native watch behind :meth:`real.coord.etcd_kv.EtcdKV.watch`: one stream per prefix.

A :class:`PrefixWatches` keeps one etcd watch stream open per prefix a caller has named (the
root names six, a node agent two), each read by a thread of its own, and wakes the callers of
:meth:`PrefixWatches.wait` as soon as an event arrives. Before this, ``EtcdKV.watch`` only
slept its timeout, so on etcd every message between the agents and the root waited for a poll
(25 ms on average at the root's 50 ms period); the embedded store has always notified.

The contract is :meth:`real.coord.kv.KeyValueStore.watch`'s, with etcd's revisions as cursors:
a stream started at revision ``after + 1`` makes etcd replay every change since, so a change
made while no caller waited is not missed, and a stream that etcd or the network ends is opened
again from the caller's cursor. Waking with nothing changed is allowed (callers read the store
on every wake), so when a stream cannot account for every revision after a cursor (it was
opened later for another caller, or etcd compacted that history) the wait reports a change.

Why our own loop rather than etcd3gw's ``Watcher``: its reader runs in an executor whose end
nobody sees (a stream that etcd closes leaves its caller waiting for events that never come),
it drops the revisions and a compaction's cancel, and it cannot pass the request options this
client checks its CA with. The HTTP side (session, login, TLS) stays etcd3gw's and requests'.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import requests

from shared.errors import KVError

log = logging.getLogger(__name__)

IDLE_S = 30.0
"""A stream with nothing to read for this long is closed and opened again at the next wait (a
connection a partition left half-open would otherwise never deliver again)."""

REOPEN_AFTER_S = 0.05
"""A stream that etcd closed (without an error) sooner than this after it was opened is
reported as an error instead of opened again: the caller backs off rather than spin."""

OpenStream = Callable[[bytes, int], requests.Response]
"""Opens etcd's watch of the keys under a prefix from a revision: ``(prefix, start)`` to the
streaming HTTP response (status checked), credentials and TLS included."""


class _Stream:
    """One prefix's watch: the revisions it accounts for are ``start`` .. the latest read."""

    def __init__(self, prefix: bytes, start: int) -> None:
        self.prefix, self.start = prefix, start
        self.last = start - 1  # the newest event's revision read so far
        self.ended = False  # etcd, the network or close() ended it: open it again
        self.error: str | None = None  # why it could not be opened or read
        self.compacted = False  # etcd had compacted the history from ``start``: start moved
        self.opened_at = time.monotonic()
        self.response: requests.Response | None = None
        self.thread: threading.Thread | None = None


class PrefixWatches:
    """Streams of etcd's watch, one per prefix (thread-safe).

    Args:
        open_stream: opens one stream (:data:`OpenStream`).
        name: the store's URL, for errors.
    """

    def __init__(self, open_stream: OpenStream, name: str) -> None:
        self._open, self._name = open_stream, name
        self._streams: dict[bytes, _Stream] = {}
        self._changed = threading.Condition()
        self._closed = False

    def wait(self, prefixes: Sequence[bytes], after: int, timeout_s: float) -> tuple[int, bool]:
        """Until a key under one of ``prefixes`` changes at a revision above ``after`` (or may
        have: see the module's docstring), at most ``timeout_s``; ``(cursor, changed)``.

        Raises:
            KVError: the watches are closed, or a stream could not be opened (the next call
                tries again).
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._changed:
            while True:
                if self._closed:
                    raise KVError(f"the client of {self._name} is closed; connect_kv() a new one")
                cursor, changed = after, False
                for stream in (self._stream(prefix, after) for prefix in prefixes):
                    if stream.start > after + 1:  # opened after the cursor: it may have missed
                        changed, cursor = True, max(cursor, stream.start - 1)
                    if stream.last > after:
                        changed, cursor = True, max(cursor, stream.last)
                if changed:
                    return cursor, True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return after, False
                self._changed.wait(remaining)

    def _stream(self, prefix: bytes, after: int) -> _Stream:
        """The live stream of ``prefix``, opened from ``after + 1`` when there is none (lock
        held). A stream that failed is dropped and its error raised, once."""
        stream = self._streams.get(prefix)
        if stream is not None and stream.ended:
            del self._streams[prefix]
            if stream.error is not None:
                raise KVError(f"etcd at {self._name}: watch of {prefix!r}: {stream.error}")
            if not stream.compacted and time.monotonic() - stream.opened_at < REOPEN_AFTER_S:
                # Closed as soon as opened: say so rather than open it again and again.
                raise KVError(f"etcd at {self._name}: watch of {prefix!r} closed at once")
            # Ended without an error (compacted, idle, or closed by the server): again from
            # the cursor, or from the oldest revision etcd still has.
            stream = None if stream.start <= after + 1 else _Stream(prefix, stream.start)
            if stream is not None:
                self._start(stream)
        if stream is None:
            stream = _Stream(prefix, after + 1)
            self._start(stream)
        return stream

    def _start(self, stream: _Stream) -> None:
        self._streams[stream.prefix] = stream
        stream.thread = threading.Thread(
            target=self._read, args=(stream,), name="etcd-watch", daemon=True
        )
        stream.thread.start()

    def _read(self, stream: _Stream) -> None:
        """The stream's thread: open it, then record each response's events until it ends."""
        try:
            response = self._open(stream.prefix, stream.start)
        except (KVError, requests.RequestException, OSError) as failure:
            self._end(stream, str(failure))
            return
        with self._changed:
            stream.response = response
            closed = self._closed
        if closed:
            response.close()
            return
        reason: str | None = None
        try:
            for message in _messages(response.iter_content(chunk_size=None)):
                reason = self._record(stream, message)
                if reason is not None or stream.ended:
                    break
        except (requests.RequestException, OSError, ValueError) as failure:
            # Also the read timeout of an idle stream (``IDLE_S``): the next wait opens it
            # again from its cursor, so a connection that died silently is not kept forever.
            log.debug("etcd at %s: watch of %r ended: %s", self._name, stream.prefix, failure)
        finally:
            response.close()
        self._end(stream, reason)

    def _record(self, stream: _Stream, message: dict[str, Any]) -> str | None:
        """Take one response of the stream; an error message to end it with, or None."""
        if "error" in message:
            return str(message["error"].get("message", message["error"]))
        result = message.get("result", {})
        with self._changed:
            if result.get("canceled"):
                compacted = int(result.get("compact_revision", 0))
                if compacted <= stream.start:
                    reason = result.get("cancel_reason") or "no reason given"
                    return f"etcd canceled the watch: {reason}"
                # etcd compacted the history this stream was to replay (``compact_revision``
                # is the oldest revision it still has); the next wait opens it again from
                # there, reporting a change.
                stream.start, stream.last, stream.compacted = compacted, compacted - 1, True
                stream.ended = True
                self._changed.notify_all()
                return None
            events = result.get("events", [])
            revisions = [int(event.get("kv", {}).get("mod_revision", 0)) for event in events]
            if revisions:
                stream.last = max(stream.last, *revisions)
                self._changed.notify_all()
        return None

    def _end(self, stream: _Stream, error: str | None) -> None:
        with self._changed:
            stream.ended, stream.error = True, error
            self._changed.notify_all()

    def close(self) -> None:
        """End every stream (their threads return) and refuse further waits. Idempotent."""
        with self._changed:
            self._closed = True
            streams = list(self._streams.values())
            self._streams.clear()
            self._changed.notify_all()
        for stream in streams:
            if stream.response is not None:
                _shut(stream.response)
        for stream in streams:
            if stream.thread is not None:
                stream.thread.join(timeout=1.0)


def _messages(chunks: Iterable[bytes]) -> Iterable[dict[str, Any]]:
    """The JSON messages of etcd's gateway stream: one per line, whatever the chunking."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _shut(response: requests.Response) -> None:
    """Shut the stream's socket, so that its reader blocked in a read returns now."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        duplicate = socket.socket(fileno=socket.dup(response.raw.fileno()))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()
    with contextlib.suppress(Exception):
        response.close()
