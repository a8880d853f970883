"""The etcd backend of the coordination store, over etcd's HTTP (gRPC-gateway) API.

etcd has everything the agents need natively: leases with a TTL whose keys the server deletes
on expiry, and transactions (``create`` is a transaction comparing the key's create revision
with 0). The client is etcd3gw, which speaks JSON over HTTP: the ``etcd3`` gRPC package fails
to import with current protobuf, and HTTP needs nothing but ``requests``.

etcd 3.4 (Debian's etcd-server) serves the gateway at ``/v3/`` and still at ``/v3beta/``; we
pass ``/v3/`` (3.5 dropped ``/v3beta/``), which also saves etcd3gw's version probe.

Lease TTLs in etcd are whole seconds: ``grant_lease(1.5)`` asks for 2 s, and etcd may grant
more than asked (never less than 1.5 election timeouts). The server checks expiries every
~0.5 s, so a key outlives its lease by up to about half a second.
"""

from __future__ import annotations

import base64
import contextlib
import math
import threading
from typing import Any

from etcd3gw import exceptions as etcd_exceptions
from etcd3gw.client import Etcd3Client

from real.coord.kv import KeyValueStore, Lease, StoreError

API_PATH = "/v3/"


def _b64(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"  # the whole keyspace
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class EtcdLease(Lease):
    """An etcd lease (server-side TTL)."""

    def __init__(self, store: EtcdKV, lease_id: int, ttl_s: float) -> None:
        self.id = lease_id
        self.ttl_s = ttl_s
        self._store = store

    def refresh(self) -> bool:
        result = self._store._call("/lease/keepalive", {"ID": self.id})
        # etcd answers an expired lease with no TTL (proto3 JSON drops zero fields).
        return int(result.get("result", {}).get("TTL", 0)) > 0

    def revoke(self) -> None:
        with contextlib.suppress(_LeaseNotFound):
            self._store._call("/kv/lease/revoke", {"ID": self.id})


class _LeaseNotFound(StoreError):
    """etcd answered 404: the lease is unknown (expired or revoked)."""


class EtcdKV(KeyValueStore):
    """Client of one etcd endpoint; thread-safe (requests are serialized).

    Args:
        host: etcd's client address.
        port: etcd's client port (2379 by default in etcd).
        namespace: prefix of every key, ``""`` or ending in ``/``.
        timeout_s: timeout of each HTTP request.
    """

    def __init__(self, host: str, port: int, namespace: str = "", timeout_s: float = 5.0) -> None:
        self.url = f"etcd://{host}:{port}/{namespace}"
        self.namespace = namespace
        self._client = Etcd3Client(host=host, port=port, timeout=timeout_s, api_path=API_PATH)
        self._lock = threading.Lock()
        self._call("/maintenance/status", {})  # fail now, with the URL, if nothing answers

    def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            with self._lock:
                result: dict[str, Any] = self._client.post(self._client.get_url(path), json=payload)
                return result
        except etcd_exceptions.Etcd3Exception as error:
            text = str(error)
            if "Not Found" in text or "lease not found" in text:
                raise _LeaseNotFound(f"{self.url}: lease not found (expired or revoked)") from error
            raise StoreError(
                f"etcd at {self.url} failed on {path}: {text or type(error).__name__}; "
                "is etcd running there?"
            ) from error

    def _key(self, key: str) -> bytes:
        return (self.namespace + key).encode("utf-8")

    def get(self, key: str) -> bytes | None:
        result = self._call("/kv/range", {"key": _b64(self._key(key))})
        kvs = result.get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        start = self._key(prefix)
        result = self._call(
            "/kv/range", {"key": _b64(start), "range_end": _b64(_prefix_end(start))}
        )
        strip = len(self.namespace.encode("utf-8"))
        return {
            base64.b64decode(item["key"])[strip:].decode("utf-8"): base64.b64decode(
                item.get("value", "")
            )
            for item in result.get("kvs", [])
        }

    def put(self, key: str, value: bytes, lease: Lease | None = None) -> None:
        payload: dict[str, Any] = {"key": _b64(self._key(key)), "value": _b64(value)}
        if lease is not None:
            payload["lease"] = lease.id
        try:
            self._call("/kv/put", payload)
        except _LeaseNotFound as error:
            raise StoreError(
                f"cannot write {key!r} with lease {lease.id if lease else None}: the lease has "
                "expired; grant a new one"
            ) from error

    def create(self, key: str, value: bytes, lease: Lease | None = None) -> bool:
        encoded = _b64(self._key(key))
        put: dict[str, Any] = {"key": encoded, "value": _b64(value)}
        if lease is not None:
            put["lease"] = lease.id
        transaction = {
            "compare": [
                {"key": encoded, "result": "EQUAL", "target": "CREATE", "create_revision": 0}
            ],
            "success": [{"request_put": put}],
            "failure": [],
        }
        try:
            result = self._call("/kv/txn", transaction)
        except _LeaseNotFound as error:
            raise StoreError(f"cannot create {key!r}: lease {put.get('lease')} expired") from error
        return bool(result.get("succeeded", False))

    def delete(self, key: str, *, prefix: bool = False) -> int:
        start = self._key(key)
        payload = {"key": _b64(start)}
        if prefix:
            payload["range_end"] = _b64(_prefix_end(start))
        return int(self._call("/kv/deleterange", payload).get("deleted", 0))

    def grant_lease(self, ttl_s: float) -> EtcdLease:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        result = self._call("/lease/grant", {"TTL": max(1, math.ceil(ttl_s)), "ID": 0})
        return EtcdLease(self, int(result["ID"]), float(result["TTL"]))

    def close(self) -> None:
        with self._lock:
            self._client.session.close()
