"""etcd's watch streams behind ``EtcdKV.watch`` (real.coord.etcd_watch), against a real etcd
with authentication on (Debian's etcd-server; skipped when the binary is absent): a change
wakes a waiter at once, a stream cut off or a history compacted loses no change, and closing
the client ends its streams."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from real.coord.connect import connect_kv
from real.coord.etcd_kv import EtcdKV
from real.coord.etcd_server import EtcdServer, etcd_binary
from real.coord.etcd_watch import _messages, _shut

WATCH_THREAD = "etcd-watch"


@pytest.fixture(scope="module")
def etcd_url() -> Iterator[str]:
    if etcd_binary() is None:
        pytest.skip(
            "etcd binary absent: install Debian's etcd-server (GEMINI_SETUP_APT=1 ./setup.sh)"
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GEMINI_TOKEN", uuid.uuid4().hex)
        with EtcdServer() as etcd:
            yield etcd.url


@pytest.fixture
def make_kv(etcd_url: str) -> Iterator[Callable[[], EtcdKV]]:
    namespace = uuid.uuid4().hex[:12]
    clients: list[EtcdKV] = []

    def make() -> EtcdKV:
        client = connect_kv(f"{etcd_url}/{namespace}")
        assert isinstance(client, EtcdKV)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_a_change_wakes_the_waiter_at_once_and_another_prefix_does_not(
    make_kv: Callable[[], EtcdKV],
) -> None:
    watcher, writer = make_kv(), make_kv()
    cursor, changed = watcher.watch(["exits/", "acks/"], None, 0.0)
    assert not changed and cursor > 0  # etcd's revision
    writer.put("nodes/1", b"beat")
    cursor, changed = watcher.watch(["exits/", "acks/"], cursor, 0.3)
    assert not changed
    woke: list[tuple[float, tuple[int, bool]]] = []

    def wait() -> None:
        result = watcher.watch(["exits/", "acks/"], cursor, 10.0)
        woke.append((time.monotonic(), result))

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)  # the waiter is in its wait
    wrote = time.monotonic()
    writer.put("acks/3", b"1")
    thread.join(15.0)
    assert woke, "no wake"
    (when, (new_cursor, changed)) = woke[0]
    assert changed and new_cursor > cursor
    # Woken by the write, not by its 10 s timeout (a poll would report no change at all).
    assert when - wrote < 5.0
    # The same cursor again: the change is still after it; the new cursor: nothing new.
    assert watcher.watch(["exits/"], new_cursor, 0.0) == (new_cursor, False)
    assert watcher.watch(["acks/"], cursor, 0.0)[1]


def test_a_change_made_while_the_stream_was_cut_is_not_missed(
    make_kv: Callable[[], EtcdKV],
) -> None:
    watcher, writer = make_kv(), make_kv()
    cursor, _ = watcher.watch(["exits/"], None, 0.0)
    cursor, changed = watcher.watch(["exits/"], cursor, 0.1)  # opens the stream
    assert not changed
    stream = next(iter(watcher._watches._streams.values()))
    assert stream.response is not None
    _shut(stream.response)  # as a network failure would
    deadline = time.monotonic() + 5.0
    while not stream.ended and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.ended and stream.error is None
    writer.put("exits/2", b"crash")
    new_cursor, changed = watcher.watch(["exits/"], cursor, 5.0)
    assert changed and new_cursor > cursor
    assert watcher._watches._streams[stream.prefix] is not stream  # opened again


def test_a_compacted_history_reports_a_change_then_watches_on(
    make_kv: Callable[[], EtcdKV],
) -> None:
    watcher, writer = make_kv(), make_kv()
    old, _ = watcher.watch(["exits/"], None, 0.0)
    writer.put("exits/1", b"a")
    writer.put("exits/1", b"b")
    now = watcher._revision()
    watcher._call("/kv/compaction", {"revision": now})  # etcd forgets what came before
    cursor, changed = watcher.watch(["exits/"], old, 5.0)
    assert changed and cursor >= old
    cursor, changed = watcher.watch(["exits/"], max(cursor, now), 0.2)
    assert not changed
    writer.put("exits/1", b"c")
    assert watcher.watch(["exits/"], cursor, 5.0)[1]


def test_closing_the_client_ends_its_streams(etcd_url: str) -> None:
    kv = connect_kv(f"{etcd_url}/{uuid.uuid4().hex[:12]}")
    assert isinstance(kv, EtcdKV)
    cursor, _ = kv.watch(["a/", "b/", "c/"], None, 0.0)
    kv.watch(["a/", "b/", "c/"], cursor, 0.05)
    threads = [stream.thread for stream in kv._watches._streams.values()]
    assert len(threads) == 3
    assert all(t is not None and t.name == WATCH_THREAD and t.is_alive() for t in threads)
    kv.close()
    assert not any(t is not None and t.is_alive() for t in threads)


def test_several_prefixes_are_read_in_one_transaction(
    make_kv: Callable[[], EtcdKV], monkeypatch: pytest.MonkeyPatch
) -> None:
    kv = make_kv()
    kv.put("exits/1", b"a")
    kv.put("nodes/1", b"b")
    calls: list[str] = []
    call = kv._call
    monkeypatch.setattr(
        kv, "_call", lambda path, payload: calls.append(path) or call(path, payload)
    )
    found = kv.get_prefixes(["nodes/", "exits/", "suspects/"])
    assert found == {"nodes/": {"nodes/1": b"b"}, "exits/": {"exits/1": b"a"}, "suspects/": {}}
    assert calls == ["/kv/txn"]


def test_messages_are_split_by_line_whatever_the_chunking() -> None:
    stream = b'{"result":{"created":true}}\n{"result":{"events":[{"kv":{"mod_revision":"7"}}]}}\n'
    for size in (1, 5, len(stream)):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        messages = list(_messages(chunks))
        assert messages == [
            {"result": {"created": True}},
            {"result": {"events": [{"kv": {"mod_revision": "7"}}]}},
        ]
