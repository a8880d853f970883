"""The embedded backend of the coordination store: torch's TCPStore with emulated leases.

Where no etcd runs, the agents coordinate through a ``TCPStore`` (the store torchrun itself
uses) hosted by a small store process (:mod:`real.coord.kvserver`). TCPStore gives us plain
set/get/delete, an atomic counter (``add``), an atomic compare-and-set and a key listing, but
**no expiry**: a key stays until someone deletes it. A dead agent deletes nothing, so without
TTLs its heartbeat key would say "alive" forever. Hence the emulation:

- A lease is a record ``__lease__/<id>`` whose value is its **deadline** (wall-clock seconds,
  ``time.time()``). ``refresh`` moves the deadline to now + TTL with a compare-and-set, so a
  lease that has expired or was revoked is never brought back to life; ``revoke`` deletes the
  record.
- Every value is stored with a small header: the id of its lease (0 for none) and a random
  token. A reader treats a key whose lease is missing or past its deadline as **absent**: keys
  "vanish" at the deadline exactly, without any process having to delete them. (Their bytes
  stay in the store until overwritten or deleted; at our scale of a few dozen keys that does
  not matter.)
- ``create`` is a TCPStore ``compare_set`` against "absent"; if a key is there but its lease
  is dead, a second ``compare_set`` replaces exactly that stale value, so two candidates racing
  for an expired leadership key still produce one winner. The token makes every written value
  distinct, so a compare-and-set never mistakes another writer's value for its own.
- Reads never block: TCPStore's ``get`` waits for a missing key until its timeout, so a read
  is ``compare_set(key, SENTINEL, SENTINEL)``, which returns the value, or the sentinel
  (without writing it) when the key is absent.

Deadlines are compared across processes, so the hosts' clocks must agree to well under a TTL:
true on one machine, true with NTP on a cluster; etcd (server-side TTLs) has no such need.
Keys starting with ``__`` are reserved for the emulation.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from typing import Any

import torch.distributed as dist
from torch.distributed import TCPStore  # type: ignore[attr-defined]

from real.coord.kv import KeyValueStore, Lease, StoreError

LEASE_PREFIX = "__lease__/"
_SENTINEL = b"\x00absent\x00"
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
    """A lease emulated by a deadline record in the TCPStore."""

    def __init__(self, store: EmbeddedKV, lease_id: int, ttl_s: float) -> None:
        self.id = lease_id
        self.ttl_s = ttl_s
        self._store = store

    def refresh(self) -> bool:
        record = self._store._record_key(self.id)
        current = self._store._read(record)
        if current is None or float(current) <= time.time():
            return False
        renewed = b"%.6f" % (time.time() + self.ttl_s)
        return self._store._compare_set(record, current, renewed) == renewed

    def revoke(self) -> None:
        self._store._delete_raw(self._store._record_key(self.id))


class EmbeddedKV(KeyValueStore):
    """Client of a TCPStore served by :class:`~real.coord.kvserver.StoreServer`; thread-safe.

    Args:
        host: the store process's address.
        port: its port.
        namespace: prefix of every key, ``""`` or ending in ``/``.
        timeout_s: connect timeout and timeout of each operation.
    """

    def __init__(self, host: str, port: int, namespace: str = "", timeout_s: float = 5.0) -> None:
        self.url = f"tcpstore://{host}:{port}/{namespace}"
        self.namespace = namespace
        self._lock = threading.Lock()
        try:
            # Any: torch's stubs type values as str, but the store takes and returns bytes.
            self._store: Any = TCPStore(
                host,
                port,
                is_master=False,
                timeout=datetime.timedelta(seconds=timeout_s),
                wait_for_workers=False,
            )
        except (RuntimeError, dist.DistStoreError) as error:
            raise StoreError(
                f"no TCPStore answers at {self.url}: {error}; start one with "
                "`python -m real.coord.kvserver` or real.coord.kvserver.StoreServer"
            ) from error

    # -- raw TCPStore access (every call under the lock, errors as StoreError) --

    def _guard(self, operation: str, key: str) -> StoreError:
        return StoreError(f"TCPStore at {self.url}: {operation} {key!r} failed")

    def _read(self, key: str) -> bytes | None:
        raw = self._compare_set(key, _SENTINEL, _SENTINEL)
        return None if raw == _SENTINEL else raw

    def _compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        try:
            with self._lock:
                return bytes(self._store.compare_set(key, expected, desired))
        except (RuntimeError, dist.DistStoreError) as error:
            raise self._guard("compare_set", key) from error

    def _delete_raw(self, key: str) -> bool:
        try:
            with self._lock:
                return bool(self._store.delete_key(key))
        except (RuntimeError, dist.DistStoreError) as error:
            raise self._guard("delete", key) from error

    def _list(self) -> list[str]:
        try:
            with self._lock:
                return list(self._store.list_keys())
        except (RuntimeError, dist.DistStoreError) as error:
            raise self._guard("list_keys", "") from error

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
        alive = record is not None and float(record) > time.time()
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
            raise StoreError(
                f"cannot write {key!r} with lease {lease.id}: the lease has expired; "
                "grant a new one"
            )
        return lease.id

    # -- the interface --

    def get(self, key: str) -> bytes | None:
        _check_key(key)
        return self._live_value(self._read(self.namespace + key))

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        full = self.namespace + prefix
        reserved = self.namespace + "__"
        cache: dict[int, bool] = {}
        found: dict[str, bytes] = {}
        for key in sorted(self._list()):
            if not key.startswith(full) or key.startswith(reserved):
                continue
            value = self._live_value(self._read(key), cache)
            if value is not None:
                found[key[len(self.namespace) :]] = value
        return found

    def put(self, key: str, value: bytes, lease: Lease | None = None) -> None:
        _check_key(key)
        lease_id = self._require_lease(key, lease)
        try:
            with self._lock:
                self._store.set(self.namespace + key, _encode(lease_id, value))
        except (RuntimeError, dist.DistStoreError) as error:
            raise self._guard("set", key) from error

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

    def delete(self, key: str, *, prefix: bool = False) -> int:
        if not prefix:
            _check_key(key)
            live = self.get(key) is not None
            return int(self._delete_raw(self.namespace + key) and live)
        deleted = 0
        for name in self.get_prefix(key):
            deleted += int(self._delete_raw(self.namespace + name))
        return deleted

    def grant_lease(self, ttl_s: float) -> EmbeddedLease:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        try:
            with self._lock:
                lease_id = int(self._store.add(f"{self.namespace}{LEASE_PREFIX}next", 1))
                record = self._record_key(lease_id)
                self._store.set(record, b"%.6f" % (time.time() + ttl_s))
        except (RuntimeError, dist.DistStoreError) as error:
            raise self._guard("grant lease", LEASE_PREFIX) from error
        return EmbeddedLease(self, lease_id, float(ttl_s))

    def close(self) -> None:
        # A TCPStore client closes its socket when collected: drop our reference.
        with self._lock:
            self._store = _Closed(self.url)


class _Closed:
    """Stands in for the TCPStore client after ``close``: every call raises StoreError."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __getattr__(self, name: str) -> Any:
        raise StoreError(f"the client of {self.url} is closed; connect_kv() a new one")


def _check_key(key: str) -> None:
    if not key or key.startswith("__"):
        raise ValueError(f"key {key!r}: keys must be non-empty and must not start with '__'")
