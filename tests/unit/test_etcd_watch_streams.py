"""PrefixWatches (real.coord.etcd_watch) on scripted streams, without an etcd: what each of
etcd's answers makes of a wait (the behaviour against a real etcd is in
tests/integration/test_etcd_watch.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from real.coord import etcd_watch
from real.coord.etcd_watch import PrefixWatches
from shared.errors import KVError


class Scripted:
    """A streaming response that yields ``messages`` (one JSON line each), then, unless
    ``end``, blocks until closed, as an idle etcd stream does."""

    def __init__(self, messages: list[dict[str, Any]], end: bool = False) -> None:
        self.messages, self.end = messages, end
        self.closed = threading.Event()

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]:
        for message in self.messages:
            yield json.dumps(message).encode() + b"\n"
        if not self.end:
            self.closed.wait(10.0)

    def close(self) -> None:
        self.closed.set()


def watches(*responses: Scripted) -> tuple[PrefixWatches, list[tuple[bytes, int]]]:
    """Watches whose streams are ``responses`` in turn; the (prefix, start) each was opened
    with."""
    opened: list[tuple[bytes, int]] = []
    queue = list(responses)

    def open_stream(prefix: bytes, start: int) -> Any:
        opened.append((prefix, start))
        return queue.pop(0)

    return PrefixWatches(open_stream, "etcd://test"), opened


CREATED = {"result": {"created": True}}


def events(*revisions: int) -> dict[str, Any]:
    return {"result": {"events": [{"kv": {"mod_revision": str(r)}} for r in revisions]}}


def test_an_event_after_the_cursor_wakes_and_one_before_does_not() -> None:
    stream = Scripted([CREATED, events(5), events(9)])
    w, opened = watches(stream)
    try:
        assert w.wait([b"ns/exits/"], 8, 5.0) == (9, True)
        assert opened == [(b"ns/exits/", 9)]
        assert w.wait([b"ns/exits/"], 9, 0.05) == (9, False)
    finally:
        w.close()
    assert stream.closed.is_set()


def test_a_compacted_history_reopens_from_what_is_left_and_reports_a_change() -> None:
    compacted = {"result": {"canceled": True, "compact_revision": "20"}}
    w, opened = watches(Scripted([CREATED, compacted], end=True), Scripted([CREATED]))
    try:
        assert w.wait([b"ns/acks/"], 3, 5.0) == (19, True)
        assert opened == [(b"ns/acks/", 4), (b"ns/acks/", 20)]
        assert w.wait([b"ns/acks/"], 19, 0.05) == (19, False)
    finally:
        w.close()


def test_a_cancel_without_compaction_and_an_error_are_raised_then_retried() -> None:
    canceled = {"result": {"canceled": True, "cancel_reason": "permission denied"}}
    refused = {"error": {"message": "etcdserver: invalid auth token"}}
    w, opened = watches(
        Scripted([CREATED, canceled], end=True),
        Scripted([refused], end=True),
        Scripted([CREATED, events(8)]),
    )
    try:
        with pytest.raises(KVError, match="permission denied"):
            w.wait([b"ns/job/"], 6, 5.0)
        with pytest.raises(KVError, match="invalid auth token"):
            w.wait([b"ns/job/"], 6, 5.0)
        assert w.wait([b"ns/job/"], 6, 5.0) == (8, True)
        assert [start for _, start in opened] == [7, 7, 7]
    finally:
        w.close()


def test_a_stream_closed_as_soon_as_opened_is_an_error_not_a_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "As soon as" on any machine: a loaded one may take longer than 50 ms to run the thread.
    monkeypatch.setattr(etcd_watch, "REOPEN_AFTER_S", 30.0)
    w, opened = watches(Scripted([CREATED], end=True), Scripted([CREATED]))
    try:
        with pytest.raises(KVError, match="closed at once"):
            w.wait([b"ns/job/"], 6, 5.0)
        assert len(opened) == 1
        assert w.wait([b"ns/job/"], 6, 0.05) == (6, False)  # opened again, and idle
    finally:
        w.close()


def test_waits_after_close_are_refused() -> None:
    w, _ = watches()
    w.close()
    with pytest.raises(KVError, match="closed"):
        w.wait([b"ns/job/"], 1, 0.1)
