"""The embedded store process: a small key-value server the agents reach at
``tcpstore://HOST:PORT``.

Run as ``GEMINI_TOKEN=... python -m real.coord.kvserver --host 127.0.0.1 --port 0
[--port-file PATH]``: it listens on exactly that address (loopback by default: one machine;
port 0: the kernel picks a free one), prints ``PORT <n>`` on its first stdout line, optionally
writes the port to a file (atomically), and serves until SIGTERM / SIGINT, or until the process
that started it is gone (so an orphaned store never lingers).

Every connection authenticates both ways before any request is served: the challenge-response
of the node stores (:mod:`real.engine.protocol`, HMAC-SHA256 over fresh nonces from both sides,
``hmac.compare_digest``) with the job's secret ``GEMINI_TOKEN`` and the label
``gemini-kv-auth``. A client without the token can neither read nor write a key, and a client
knows the store it talks to belongs to its job. The token comes from the environment, never
from the command line, where ``ps`` would show it.

Requests are frames of the same wire format (JSON header, raw payload), one reply each::

    get          key                      -> found, value (payload)
    set          key, value (payload)
    compare_set  key, expected_bytes, expected + desired (payload) -> the value now (payload)
    guarded_set  key, guard, expected_bytes, expected + desired (payload) -> written
    guarded_delete key, guard, prefix, expected (payload) -> written
    add          key, amount              -> value (the integer after adding)
    delete       key                      -> deleted
    scan         prefix                   -> keys, sizes, their values (payload, concatenated)
    watch        key (unused), prefixes, after, timeout_s -> revision, changed

``watch`` is the notification the agents wait on instead of polling: it returns as soon as a
key under one of ``prefixes`` is written or deleted after revision ``after`` (every change
bumps the store's revision), or after ``timeout_s`` (at most ``MAX_WATCH_S``) with
``changed`` false; ``after`` null returns the current revision at once. Lease expiry writes
nothing, so a watcher still looks at the store every ``timeout_s``.

Every reply carries ``now``, the store's clock (:class:`StoreClock`): the clients' emulated
leases (:mod:`real.coord.embedded_kv`) run on it, so that time in which the store itself did
not run (stopped, or its whole machine paused) expires no lease.

``compare_set`` follows torch's ``TCPStore``: an absent key is set when ``expected`` is empty;
the reply is always the key's value afterwards (``expected`` itself when the key is absent and
``expected`` is not empty). ``guarded_set`` writes ``key`` only while the key ``guard`` holds
exactly ``expected`` (a leader's write fenced by its election key); ``guarded_delete`` deletes
``key`` (with ``prefix``, every key starting with it) on the same condition. Values live in memory
only: the store holds small coordination keys, never checkpoint bytes.

:class:`StoreServer` is the owner side: it starts that process with the token in its
environment, reads the port, and stops it (SIGTERM, timed wait, SIGKILL).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from real.coord.kv import TOKEN_ENV, job_token
from real.engine import protocol
from real.runtime.processes import stop_process
from shared.errors import KVError, ProtocolError

log = logging.getLogger(__name__)
KV_SERVICE = "gemini-kv-auth"
MAX_VALUE_BYTES = 1 << 20
MAX_WATCH_S = 10.0
WATCH_HISTORY = 8192
"""Changes remembered for watchers (a watcher further behind is told "changed" at once)."""
_PARENT_POLL_S = 0.5
CLOCK_TICK_S = 0.1
"""How often the store's clock looks at the time, s."""
UNOBSERVED_S = 1.0
"""A gap longer than this between two looks at the time is time the store did not run."""


class StoreClock:
    """The clock the emulated leases run on: wall-clock seconds, less every stretch of time in
    which this process did not run.

    A lease's deadline says "expired unless refreshed by then", and only a store that was
    running could have seen a refresh. After this process was stopped (SIGSTOP, a debugger)
    or its whole machine paused (a VM frozen by its host: 9 s once, 2026-12-06, on our
    development machine, where every agent then found its lease expired, fenced itself, and
    the job was lost), the wall clock has moved past every deadline although no holder failed
    to refresh while the store could hear it. So the clock is read every ``CLOCK_TICK_S`` (and
    at every request), and a gap of more than ``UNOBSERVED_S`` between two readings is taken
    out of it: the leases resume where they stood. A holder that stopped alone still runs out
    its lease, on the store's clock, as before. (etcd keeps its leases on its own server; this
    is the embedded store's equivalent.)

    Args:
        wall: the wall clock; monotonic: a monotonic clock (both injectable for tests).
    """

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall, self._monotonic = wall, monotonic
        self._lock = threading.Lock()
        self._last = monotonic()
        self.unobserved_s = 0.0

    def now(self) -> float:
        """The store's time, s (wall-clock seconds less the time it did not run)."""
        with self._lock:
            reading = self._monotonic()
            gap = reading - self._last
            self._last = reading
            if gap > UNOBSERVED_S:
                self.unobserved_s += gap - CLOCK_TICK_S
                log.warning(
                    "coordination store: did not run for %.1f s (stopped, or its machine "
                    "paused); the leases keep that time",
                    gap,
                )
            return self._wall() - self.unobserved_s


class KVServer:
    """The store itself, serving in background threads; ``stop()`` ends it.

    Args:
        host: the one address to listen on.
        port: 0 for any free port (see ``port``).
        token: the job's secret; every connection must prove it knows it.
    """

    def __init__(self, host: str, port: int, token: str) -> None:
        if not token:
            raise ValueError(f"the embedded store needs the job's secret: set {TOKEN_ENV}")
        self.token = token
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.revision = 0
        self._watchers: list[tuple[tuple[str, ...], threading.Event]] = []
        self.history: collections.deque[tuple[int, str]] = collections.deque(maxlen=WATCH_HISTORY)
        self._server = socket.create_server((host, port))
        self.port: int = self._server.getsockname()[1]
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self.clock = StoreClock()

    def start(self) -> KVServer:
        threading.Thread(target=self._accept_loop, name="kvserver", daemon=True).start()
        threading.Thread(target=self._tick, name="kvserver-clock", daemon=True).start()
        return self

    def _tick(self) -> None:
        while not self._stopping.wait(CLOCK_TICK_S):
            self.clock.now()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, peer = self._server.accept()
            except OSError:
                return  # closed by stop()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        with self.lock:
            self._connections.add(conn)
        try:
            protocol.server_handshake(conn, self.token, KV_SERVICE)
            while not self._stopping.is_set():
                try:
                    header, payload = protocol.recv_frame(conn, max_payload=2 * MAX_VALUE_BYTES)
                except ConnectionError as closed:
                    if isinstance(closed, ProtocolError):
                        raise
                    return  # the client hung up between requests
                reply, value = self._handle(header, payload)
                protocol.send_frame(conn, {"op": "reply", "now": self.clock.now(), **reply}, value)
        except (ConnectionError, ValueError, KeyError, TypeError, OSError) as error:
            log.warning("coordination store: closing connection from %s: %s", peer, error)
        finally:
            with self.lock:
                self._connections.discard(conn)
            conn.close()

    def _handle(
        self, header: dict[str, Any], payload: bytes
    ) -> tuple[dict[str, Any], bytes | None]:
        op, key = header["op"], header.get("key")
        if not isinstance(key, str):
            raise ProtocolError(f"{op}: a string key is required")
        if op == "watch":
            return self._watch(header), None
        with self.lock:
            if op == "get":
                value = self.data.get(key)
                return {"found": value is not None}, value if value is not None else b""
            if op == "set":
                if len(payload) > MAX_VALUE_BYTES:
                    raise ProtocolError(f"set: values are at most {MAX_VALUE_BYTES} bytes")
                self.data[key] = payload
                self._note(key)
                return {}, None
            if op == "compare_set":
                size = header.get("expected_bytes")
                if not isinstance(size, int) or not 0 <= size <= len(payload):
                    raise ProtocolError("compare_set: expected_bytes out of range")
                expected, desired = payload[:size], payload[size:]
                current = self.data.get(key)
                if current is None:
                    if expected:
                        return {}, expected
                    self.data[key] = desired
                    self._note(key)
                    return {}, desired
                if current == expected:
                    self.data[key] = desired
                    self._note(key)
                    return {}, desired
                return {}, current
            if op == "guarded_set":
                guard, size = header.get("guard"), header.get("expected_bytes")
                if not isinstance(guard, str):
                    raise ProtocolError("guarded_set: a string guard is required")
                if not isinstance(size, int) or not 0 < size <= len(payload):
                    raise ProtocolError("guarded_set: expected_bytes out of range")
                if len(payload) - size > MAX_VALUE_BYTES:
                    raise ProtocolError(f"guarded_set: values are at most {MAX_VALUE_BYTES} bytes")
                if self.data.get(guard) != payload[:size]:
                    return {"written": False}, None
                self.data[key] = payload[size:]
                self._note(key)
                return {"written": True}, None
            if op == "guarded_delete":
                guard, prefix = header.get("guard"), header.get("prefix")
                if not isinstance(guard, str) or not isinstance(prefix, bool) or not payload:
                    raise ProtocolError("guarded_delete: a string guard, a prefix flag and a value")
                if self.data.get(guard) != payload:
                    return {"written": False}, None
                doomed = [k for k in self.data if k.startswith(key)] if prefix else [key]
                for name in doomed:
                    if self.data.pop(name, None) is not None:
                        self._note(name)
                return {"written": True}, None
            if op == "add":
                amount = header.get("amount")
                if not isinstance(amount, int) or isinstance(amount, bool):
                    raise ProtocolError("add: amount must be an integer")
                total = int(self.data.get(key, b"0")) + amount
                self.data[key] = str(total).encode()
                self._note(key)
                return {"value": total}, None
            if op == "delete":
                deleted = self.data.pop(key, None) is not None
                if deleted:
                    self._note(key)
                return {"deleted": deleted}, None
            if op == "scan":
                keys = sorted(k for k in self.data if k.startswith(key))
                values = [self.data[k] for k in keys]
                return {"keys": keys, "sizes": [len(v) for v in values]}, b"".join(values)
        raise ProtocolError(f"unknown op {op!r}")

    def _note(self, key: str) -> None:
        """Record a change of ``key`` (under the lock) and wake the watchers of its prefixes
        (only those: heartbeats and lease refreshes, most of the changes, wake nobody)."""
        self.revision += 1
        self.history.append((self.revision, key))
        for prefixes, event in self._watchers:
            if key.startswith(prefixes):
                event.set()

    def _watch(self, header: dict[str, Any]) -> dict[str, Any]:
        prefixes, after, timeout = (
            header.get("prefixes"),
            header.get("after"),
            header.get("timeout_s"),
        )
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            raise ProtocolError("watch: prefixes must be a list of strings")
        if after is not None and (not isinstance(after, int) or isinstance(after, bool)):
            raise ProtocolError("watch: after must be an integer or null")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise ProtocolError("watch: timeout_s must be a number >= 0")
        watcher = (tuple(prefixes), threading.Event())
        with self.lock:
            if after is None:
                return {"revision": self.revision, "changed": False}
            if self._changed_since(after, prefixes):
                return {"revision": self.revision, "changed": True}
            self._watchers.append(watcher)
        try:
            watcher[1].wait(min(float(timeout), MAX_WATCH_S))
        finally:
            with self.lock:
                self._watchers.remove(watcher)
        with self.lock:
            return {"revision": self.revision, "changed": self._changed_since(after, prefixes)}

    def _changed_since(self, after: int, prefixes: list[str]) -> bool:
        if after >= self.revision:
            return False
        if not self.history or self.history[0][0] > after + 1:
            return True  # changes older than the history were forgotten: say "changed"
        for revision, key in reversed(self.history):
            if revision <= after:
                return False
            if key.startswith(tuple(prefixes)):
                return True
        return False

    def stop(self) -> None:
        self._stopping.set()
        self._server.close()
        with self.lock:
            for _, event in self._watchers:
                event.set()
        with self.lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


def serve(host: str, port: int, port_file: Path | None, parent_pid: int | None) -> int:
    """Serve until told to stop; returns the exit status."""
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"set {TOKEN_ENV} to the job's secret (never on the command line)", file=sys.stderr)
        return 2
    server = KVServer(host, port, token).start()
    if port_file is not None:
        partial = port_file.with_suffix(port_file.suffix + ".partial")
        partial.write_text(f"{server.port}\n")
        partial.replace(port_file)
    print(f"PORT {server.port}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Run by hand, Ctrl-C stops it. Owned by a parent (``--parent-pid``: StoreServer), it
    # leaves Ctrl-C to that parent: a terminal's Ctrl-C reaches the whole foreground process
    # group, and a store gone before the parent's teardown read as a store error, not as an
    # interrupt. The parent stops it with SIGTERM, and it ends with the parent anyway.
    signal.signal(
        signal.SIGINT, signal.SIG_IGN if parent_pid is not None else lambda *_: stop.set()
    )
    while not stop.wait(_PARENT_POLL_S):
        if parent_pid is not None and os.getppid() != parent_pid:
            break
    server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=f"The job's secret comes from {TOKEN_ENV}."
    )
    parser.add_argument("--host", default="127.0.0.1", help="the one address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--port-file", type=Path, help="also write the port to this file")
    parser.add_argument(
        "--parent-pid", type=int, help="exit when this process is no longer our parent"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    return serve(args.host, args.port, args.port_file, args.parent_pid)


class StoreServer:
    """Owner of one embedded store process; a context manager.

    Args:
        host: the one address the store listens on (loopback for the emulated cluster).
        port: 0 to let the kernel choose.
        start_timeout_s: how long to wait for the ``PORT`` line.
        token: the job's secret (default: ``GEMINI_TOKEN``); it reaches the process through
            its environment.

    Raises:
        ValueError: no token given and ``GEMINI_TOKEN`` is not set.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout_s: float = 60.0,
        *,
        token: str | None = None,
    ):
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.token = job_token(token)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``tcpstore://HOST:PORT`` for :func:`real.coord.kv.connect_kv`."""
        return f"tcpstore://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> StoreServer:
        """Start the store process and wait for its port."""
        command = [
            sys.executable,
            "-m",
            "real.coord.kvserver",
            f"--host={self.host}",
            f"--port={self.port}",
            f"--parent-pid={os.getpid()}",
        ]
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, TOKEN_ENV: self.token},
        )
        try:
            self.port = self._read_port(self._process)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_port(self, process: subprocess.Popen[bytes]) -> int:
        assert process.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(timeout=0.1):
                    line = process.stdout.readline().decode("utf-8", "replace").strip()
                    if line.startswith("PORT "):
                        return int(line.split()[1])
                    if not line and process.poll() is not None:
                        break
                elif process.poll() is not None:
                    break
        code = process.poll()
        reason = f"exited with {code}" if code is not None else "did not report its port"
        raise KVError(
            f"the store process (python -m real.coord.kvserver) {reason} within "
            f"{self.start_timeout_s} s; run it by hand to see why"
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        stop_process(process, timeout_s)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> StoreServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
