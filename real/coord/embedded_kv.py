"""The embedded backend of the coordination store: a small authenticated store with emulated leases.

Where no etcd runs, the agents coordinate through the embedded store process
(:mod:`real.coord.kvserver`). It gives us plain get/set/delete, an atomic counter (``add``), an
atomic compare-and-set and a prefix scan, after a two-way challenge-response with the job's
secret (``GEMINI_TOKEN``), but **no expiry**: a key stays until someone deletes it. A dead agent
deletes nothing, so without TTLs its heartbeat key would say "alive" forever. Hence the
emulation:

- A lease is a record ``__lease__/<id>`` whose value is its **deadline**, in seconds of the
  store's clock (:class:`~real.coord.kvserver.StoreClock`: wall-clock time less the time the
  store did not run; every reply carries it as ``now``). ``refresh`` moves the deadline to now
  + TTL with a compare-and-set, so a lease that has expired or was revoked is never brought
  back to life; ``revoke`` deletes the record.
- Every value is stored with a small header: the id of its lease (0 for none) and a random
  token. A reader treats a key whose lease is missing or past its deadline as **absent**: keys
  "vanish" at the deadline exactly, without any process having to delete them. (Their bytes
  stay in the store until overwritten or deleted; at our scale of a few dozen keys that does
  not matter.)
- ``create`` is a ``compare_set`` against "absent"; if a key is there but its lease is dead, a
  second ``compare_set`` replaces exactly that stale value, so two candidates racing for an
  expired leadership key still produce one winner. The random token makes every written value
  distinct, so a compare-and-set never mistakes another writer's value for its own.

Deadlines are set and compared on the store's clock, as read in the last reply (plus the
local time since, a few milliseconds), so the hosts' clocks need not agree, and time in which
the store did not run expires no lease (until 2026-12-06 they were wall-clock deadlines, and a
9 s pause of our development machine expired every agent's lease at once: each fenced itself
and the job was lost). Keys starting with ``__`` are reserved for the emulation.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from real.coord.kv import KeyValueStore, Lease, job_token
from real.coord.kvserver import KV_SERVICE, MAX_WATCH_S
from real.engine import protocol
from shared.errors import CredentialsRefused, KVError, TokenRefused

LEASE_PREFIX = "__lease__/"
_DEAD_LEASE = -1


def _encode(lease_id: int, value: bytes) -> bytes:
    return b"%d:%s:" % (lease_id, os.urandom(6).hex().encode("ascii")) + value


def _decode(raw: bytes) -> tuple[int, bytes]:
    """(lease id, value) of a stored value; a value we cannot parse counts as lease-less."""
    lease_text, _, rest = raw.partition(b":")
    _, _, value = rest.partition(b":")
    try:
        return int(lease_text), value
    except ValueError:
        return 0, raw


class EmbeddedLease(Lease):
    """A lease emulated by a deadline record in the store."""

    def __init__(self, store: EmbeddedKV, lease_id: int, ttl_s: float) -> None:
        self.id = lease_id
        self.ttl_s = ttl_s
        self._store = store

    def refresh(self) -> bool:
        record = self._store._record_key(self.id)
        current = self._store._read(record)
        if current is None or float(current) <= self._store.clock():
            return False
        renewed = b"%.6f" % (self._store.clock() + self.ttl_s)
        return self._store._compare_set(record, current, renewed) == renewed

    def revoke(self) -> None:
        self._store._delete_raw(self._store._record_key(self.id))


class _Connection:
    """One authenticated connection to the store process; requests and their replies."""

    def __init__(self, host: str, port: int, token: str, timeout_s: float, url: str) -> None:
        self.url = url
        self.store_clock: tuple[float, float] | None = None
        "(the store's ``now`` in the last reply, this process's monotonic time when it came)"
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as error:
            raise KVError(
                f"no coordination store answers at {url}: {error}; start one with "
                "`python -m real.coord.kvserver` or real.coord.kvserver.StoreServer"
            ) from error
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            protocol.client_handshake(self.sock, token, KV_SERVICE)
        except TimeoutError as error:  # accepted, then silence: not a store of ours at all
            self.sock.close()
            raise KVError(
                f"something accepts connections at {url} but sends no coordination store's "
                f"greeting within {timeout_s:g} s: a wrong address or port, or a store too "
                "busy to answer"
            ) from error
        except TokenRefused as error:
            self.sock.close()
            raise CredentialsRefused(
                f"the coordination store at {url} and this client do not share the job's "
                f"secret: {error}"
            ) from error
        except (ConnectionError, OSError) as error:
            self.sock.close()
            raise KVError(
                f"the connection to the coordination store at {url} broke during its "
                f"handshake: {error}"
            ) from error

    def request(
        self, op: str, payload: bytes | None = None, **fields: Any
    ) -> tuple[dict[str, Any], bytes]:
        protocol.send_frame(self.sock, {"op": op, **fields}, payload)
        header, value = protocol.recv_frame(self.sock)
        now = header.get("now")
        if isinstance(now, (int, float)) and not isinstance(now, bool):
            self.store_clock = (float(now), time.monotonic())
        return header, value

    def close(self) -> None:
        self.sock.close()


class EmbeddedKV(KeyValueStore):
    """Client of the store served by :class:`~real.coord.kvserver.StoreServer`; thread-safe.

    Args:
        host: the store process's address.
        port: its port.
        namespace: prefix of every key, ``""`` or ending in ``/``.
        timeout_s: connect timeout and timeout of each operation.
        token: the job's secret (default: ``GEMINI_TOKEN``).

    Raises:
        KVError: nothing answers, or the store and this client do not share the secret.
    """

    def __init__(
        self,
        host: str,
        port: int,
        namespace: str = "",
        timeout_s: float = 5.0,
        *,
        token: str | None = None,
    ) -> None:
        self.url = f"tcpstore://{host}:{port}/{namespace}"
        self.namespace = namespace
        self._lock = threading.Lock()
        self._address = (host, port, job_token(token), timeout_s)
        self._store: Any = self._connect()
        self._watch_lock = threading.Lock()
        self._watcher: _Connection | None = None
        self._closed = False

    def _connect(self) -> _Connection:
        host, port, secret, timeout_s = self._address
        return _Connection(host, port, secret, timeout_s, self.url)

    def clock(self) -> float:
        """The store's clock now, s: its ``now`` in the newest reply on either connection,
        plus the time since on this process's monotonic clock (the wall clock before any
        reply). The emulated leases' deadlines are in these seconds."""
        readings = [
            c.store_clock
            for c in (self._store, self._watcher)
            if isinstance(c, _Connection) and c.store_clock is not None
        ]
        if not readings:
            return time.time()
        now, at = max(readings, key=lambda reading: reading[1])
        return now + (time.monotonic() - at)

    # -- raw store access (every call under the lock, errors as KVError) --

    def _call(self, op: str, key: str, payload: bytes | None = None, **fields: Any) -> Any:
        with self._lock:
            if self._store is None:  # the last request failed midway: start afresh
                self._store = self._connect()
            try:
                return self._store.request(op, payload, key=key, **fields)
            except (OSError, ValueError) as error:
                # A reply may still be on its way: never read it as the next request's.
                self._store.close()
                self._store = None
                raise KVError(
                    f"coordination store at {self.url}: {op} {key!r} failed: {error}"
                ) from error

    def _read(self, key: str) -> bytes | None:
        header, value = self._call("get", key)
        return value if header.get("found") else None

    def _compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        _, value = self._call("compare_set", key, expected + desired, expected_bytes=len(expected))
        return bytes(value)

    def _delete_raw(self, key: str) -> bool:
        return bool(self._call("delete", key)[0].get("deleted"))

    def _scan(self, prefix: str) -> dict[str, bytes]:
        """Every key under ``prefix`` with its raw value, in one request."""
        header, payload = self._call("scan", prefix)
        found, offset = {}, 0
        for key, size in zip(header.get("keys", []), header.get("sizes", []), strict=True):
            found[str(key)] = payload[offset : offset + int(size)]
            offset += int(size)
        return found

    def _record_key(self, lease_id: int) -> str:
        return f"{self.namespace}{LEASE_PREFIX}{lease_id}"

    # -- lease liveness --

    def _lease_alive(self, lease_id: int, cache: dict[int, bool] | None = None) -> bool:
        if lease_id == 0:
            return True
        if lease_id < 0:
            return False
        if cache is not None and lease_id in cache:
            return cache[lease_id]
        record = self._read(self._record_key(lease_id))
        alive = record is not None and float(record) > self.clock()
        if cache is not None:
            cache[lease_id] = alive
        return alive

    def _live_value(self, raw: bytes | None, cache: dict[int, bool] | None = None) -> bytes | None:
        if raw is None:
            return None
        lease_id, value = _decode(raw)
        return value if self._lease_alive(lease_id, cache) else None

    def _require_lease(self, key: str, lease: Lease | None) -> int:
        if lease is None:
            return 0
        if not self._lease_alive(lease.id):
            raise KVError(
                f"cannot write {key!r} with lease {lease.id}: the lease has expired; "
                "grant a new one"
            )
        return lease.id

    # -- the interface --

    def get(self, key: str) -> bytes | None:
        _check_key(key)
        return self._live_value(self._read(self.namespace + key))

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        # Two requests whatever the number of keys: the values, then (if any value has a
        # lease) every lease record of the namespace; the root polls this many times a second.
        reserved = self.namespace + "__"
        leases: dict[str, bytes] | None = None
        found: dict[str, bytes] = {}
        for key, raw in self._scan(self.namespace + prefix).items():
            if key.startswith(reserved):
                continue
            lease_id, value = _decode(raw)
            if lease_id != 0:
                if leases is None:
                    leases = self._scan(f"{self.namespace}{LEASE_PREFIX}")
                record = leases.get(self._record_key(lease_id)) if lease_id > 0 else None
                if record is None or float(record) <= self.clock():
                    continue
            found[key[len(self.namespace) :]] = value
        return found

    def put(self, key: str, value: bytes, lease: Lease | None = None) -> None:
        _check_key(key)
        lease_id = self._require_lease(key, lease)
        self._call("set", self.namespace + key, _encode(lease_id, value))

    def create(self, key: str, value: bytes, lease: Lease | None = None) -> bool:
        _check_key(key)
        full = self.namespace + key
        desired = _encode(self._require_lease(key, lease), value)
        current = self._compare_set(full, b"", desired)
        if current == desired:
            return True
        stale_lease, _ = _decode(current)
        if self._lease_alive(stale_lease):
            return False
        # The key is there but its lease is dead: replace exactly that stale value.
        return self._compare_set(full, current, desired) == desired

    def replace(self, key: str, expected: bytes | None, value: bytes) -> bool:
        if expected is None:
            return self.create(key, value)
        _check_key(key)
        full = self.namespace + key
        raw = self._read(full)
        if raw is None:
            return False
        lease_id, held = _decode(raw)
        if held != expected or not self._lease_alive(lease_id):
            return False
        # The server swaps only the exact stored bytes (each write's own nonce): another write
        # since the read above makes this fail.
        desired = _encode(0, value)
        return self._compare_set(full, raw, desired) == desired

    def _guard_raw(self, guard: str, held: bytes) -> bytes | None:
        """The stored bytes of ``guard`` if it holds ``held`` under a live lease, else None.
        The guarded operations send them for the server to compare (each write's own nonce):
        a new leader's key, written since this read, makes them fail."""
        _check_key(guard)
        raw = self._read(self.namespace + guard)
        if raw is None:
            return None
        lease_id, current = _decode(raw)
        return raw if current == held and self._lease_alive(lease_id) else None

    def put_guarded(self, key: str, value: bytes, guard: str, held: bytes) -> bool:
        _check_key(key)
        raw = self._guard_raw(guard, held)
        if raw is None:
            return False
        header, _ = self._call(
            "guarded_set",
            self.namespace + key,
            raw + _encode(0, value),
            guard=self.namespace + guard,
            expected_bytes=len(raw),
        )
        return bool(header.get("written"))

    def delete_guarded(self, key: str, guard: str, held: bytes, *, prefix: bool = False) -> bool:
        _check_key(key)  # a prefix too: never the whole namespace, nor the leases' records
        raw = self._guard_raw(guard, held)
        if raw is None:
            return False
        header, _ = self._call(
            "guarded_delete", self.namespace + key, raw, guard=self.namespace + guard, prefix=prefix
        )
        return bool(header.get("written"))

    def delete(self, key: str, *, prefix: bool = False) -> int:
        if not prefix:
            _check_key(key)
            live = self.get(key) is not None
            return int(self._delete_raw(self.namespace + key) and live)
        deleted = 0
        for name in self.get_prefix(key):
            deleted += int(self._delete_raw(self.namespace + name))
        return deleted

    def revoke_lease(self, lease_id: int) -> None:
        EmbeddedLease(self, int(lease_id), 0.0).revoke()

    def grant_lease(self, ttl_s: float) -> EmbeddedLease:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        header, _ = self._call("add", f"{self.namespace}{LEASE_PREFIX}next", amount=1)
        lease_id = int(header["value"])
        self._call("set", self._record_key(lease_id), b"%.6f" % (self.clock() + ttl_s))
        return EmbeddedLease(self, lease_id, float(ttl_s))

    def watch(
        self, prefixes: Sequence[str], after: int | None, timeout_s: float
    ) -> tuple[int, bool]:
        """The store's ``watch`` (see :mod:`real.coord.kvserver`), on a connection of its own
        so that a waiting watcher never holds up this client's other requests."""
        for prefix in prefixes:
            if prefix.startswith("__"):
                raise ValueError(f"prefix {prefix!r}: keys starting with '__' are reserved")
        # The reply must come before the connection's own timeout.
        timeout_s = max(0.0, min(timeout_s, 0.5 * self._address[3], MAX_WATCH_S))
        with self._watch_lock:
            if self._closed:
                raise KVError(f"the client of {self.url} is closed; connect_kv() a new one")
            if self._watcher is None:
                self._watcher = self._connect()
            try:
                header, _ = self._watcher.request(
                    "watch",
                    key="",
                    prefixes=[self.namespace + p for p in prefixes],
                    after=after,
                    timeout_s=timeout_s,
                )
            except (OSError, ValueError) as error:
                self._watcher.close()
                self._watcher = None
                raise KVError(f"coordination store at {self.url}: watch failed: {error}") from error
            return int(header["revision"]), bool(header["changed"])

    def close(self) -> None:
        with self._lock:
            store, self._store = self._store, _Closed(self.url)
        if isinstance(store, _Connection):
            store.close()
        self._closed = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            # A watch in progress ends with an error (its socket is gone), never waits it out.
            with contextlib.suppress(OSError):
                watcher.sock.shutdown(socket.SHUT_RDWR)
            watcher.close()


class _Closed:
    """Stands in for the connection after ``close``: every call raises KVError."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __getattr__(self, name: str) -> Any:
        raise KVError(f"the client of {self.url} is closed; connect_kv() a new one")


def _check_key(key: str) -> None:
    if not key or key.startswith("__"):
        raise ValueError(f"key {key!r}: keys must be non-empty and must not start with '__'")
