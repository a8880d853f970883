"""The etcd backend of the coordination store, over etcd's HTTP (gRPC-gateway) API.

etcd has everything the agents need natively: leases with a TTL whose keys the server deletes
on expiry, and transactions (``create`` is a transaction comparing the key's create revision
with 0). The client is etcd3gw, which speaks JSON over HTTP: the ``etcd3`` gRPC package fails
to import with current protobuf, and HTTP needs nothing but ``requests``.

etcd 3.4 (Debian's etcd-server) serves the gateway at ``/v3/`` and still at ``/v3beta/``; we
pass ``/v3/`` (3.5 dropped ``/v3beta/``), which also saves etcd3gw's version probe.

**Authentication and TLS.** ``etcd://USER@HOST:PORT`` logs in as ``USER`` (etcd's
``/v3/auth/authenticate``) and sends the token etcd returns with every request, logging in
again when etcd says it expired. The password never comes from the URL or a command line: it
is ``GEMINI_ETCD_PASSWORD``, else the content of the file named by
``GEMINI_ETCD_PASSWORD_FILE``, else derived from the job's secret (``GEMINI_TOKEN``:
HMAC-SHA256(token, "gemini-etcd-password"), hex, so one secret serves a job whose etcd user was
made for it, as :class:`~real.coord.etcd_server.EtcdServer` does). ``etcds://`` speaks HTTPS,
verifying the server against ``GEMINI_ETCD_CA`` (a CA file; default: the system's CAs) and
presenting ``GEMINI_ETCD_CERT`` / ``GEMINI_ETCD_KEY`` as a client certificate when set.

Lease TTLs in etcd are whole seconds: ``grant_lease(1.5)`` asks for 2 s, and etcd may grant
more than asked (never less than 1.5 election timeouts). The server checks expiries every
~0.5 s, so a key outlives its lease by up to about half a second.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from etcd3gw import exceptions as etcd_exceptions
from etcd3gw.client import Etcd3Client

from real.coord.etcd_watch import IDLE_S, PrefixWatches
from real.coord.kv import TOKEN_ENV, KeyValueStore, Lease
from real.runtime.env import (
    GEMINI_ETCD_CA,
    GEMINI_ETCD_CERT,
    GEMINI_ETCD_KEY,
    GEMINI_ETCD_PASSWORD,
    GEMINI_ETCD_PASSWORD_FILE,
)
from shared.errors import CredentialsRefused, KVError

API_PATH = "/v3/"
PASSWORD_ENV, PASSWORD_FILE_ENV = GEMINI_ETCD_PASSWORD, GEMINI_ETCD_PASSWORD_FILE
CA_ENV, CERT_ENV, KEY_ENV = GEMINI_ETCD_CA, GEMINI_ETCD_CERT, GEMINI_ETCD_KEY
# What etcd answers when a request's auth token is missing, expired or unknown.
_LOGIN_AGAIN = ("invalid auth token", "auth token is expired", "user name is empty")


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach an etcd endpoint: credentials and TLS.

    Attributes:
        user: etcd user to log in as; None: no authentication.
        password: that user's password (never printed).
        tls: speak HTTPS.
        ca_file: CA bundle to verify the server with; None: the system's CAs.
        cert_file, key_file: client certificate and its key (both or neither).
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def derived_password(token: str) -> str:
    """The etcd password a job's secret stands for (for users made for one job)."""
    return hmac.new(token.encode(), b"gemini-etcd-password", hashlib.sha256).hexdigest()


def etcd_options(
    user: str | None,
    *,
    tls: bool,
    token: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> EtcdOptions:
    """Credentials and TLS files for a client, from the environment (never a command line).

    Args:
        user: the URL's user, or None.
        tls: the URL is ``etcds://``.
        token: the job's secret (default: ``GEMINI_TOKEN``), the password's last source.
        environ: where the variables are read.

    Raises:
        ValueError: a user without any password source; a client certificate without its
            key (or the reverse); TLS files for an ``etcd://`` (plain HTTP) URL.
    """
    password = None
    if user:
        file = environ.get(PASSWORD_FILE_ENV, "")
        secret = token or environ.get(TOKEN_ENV, "")
        if environ.get(PASSWORD_ENV):
            password = environ[PASSWORD_ENV]
        elif file:
            try:
                password = Path(file).read_text(encoding="utf-8").strip()
            except OSError as error:
                raise ValueError(f"{PASSWORD_FILE_ENV}={file}: {error}") from error
        elif secret:
            password = derived_password(secret)
        else:
            raise ValueError(
                f"etcd user {user!r} needs a password: set {PASSWORD_ENV} or "
                f"{PASSWORD_FILE_ENV} (or {TOKEN_ENV} for a user made for this job)"
            )
    ca, cert, key = (environ.get(name) or None for name in (CA_ENV, CERT_ENV, KEY_ENV))
    if (cert is None) != (key is None):
        raise ValueError(f"set both {CERT_ENV} and {KEY_ENV} (a client certificate and its key)")
    if not tls and (ca or cert):
        raise ValueError(
            f"{CA_ENV} / {CERT_ENV} are set but the store URL is etcd:// (plain HTTP): use "
            "etcds://HOST:PORT for TLS"
        )
    return EtcdOptions(user or None, password, tls, ca, cert, key)


def _b64(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"  # the whole keyspace
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _text(error: etcd_exceptions.Etcd3Exception) -> str:
    """The HTTP reason and etcd's own message (etcd3gw keeps the body apart)."""
    return f"{error} {getattr(error, 'detail_text', '') or ''}".strip()


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


class _LeaseNotFound(KVError):
    """etcd answered 404: the lease is unknown (expired or revoked)."""


class EtcdKV(KeyValueStore):
    """Client of one etcd endpoint; thread-safe (requests are serialized).

    Args:
        host: etcd's client address.
        port: etcd's client port (2379 by default in etcd).
        namespace: prefix of every key, ``""`` or ending in ``/``.
        timeout_s: timeout of each HTTP request.
        options: user, password and TLS (default: none, plain HTTP).

    Raises:
        KVError: nothing answers, or etcd refused the user's credentials.
    """

    def __init__(
        self,
        host: str,
        port: int,
        namespace: str = "",
        timeout_s: float = 5.0,
        options: EtcdOptions | None = None,
    ) -> None:
        self.options = options or EtcdOptions()
        scheme = "etcds" if self.options.tls else "etcd"
        user = f"{self.options.user}@" if self.options.user else ""
        self.url = f"{scheme}://{user}{host}:{port}/{namespace}"
        self.namespace = namespace
        self._client = Etcd3Client(
            host=host,
            port=port,
            protocol="https" if self.options.tls else "http",
            ca_cert=self.options.ca_file,
            cert_key=self.options.key_file,
            cert_cert=self.options.cert_file,
            timeout=timeout_s,
            api_path=API_PATH,
        )
        # Per request, so that REQUESTS_CA_BUNDLE in the environment (which requests prefers
        # to a session's own setting) can never replace the CA this store is checked against.
        self._request: dict[str, Any] = (
            {"verify": self.options.ca_file} if self.options.ca_file else {}
        )
        self._lock = threading.Lock()
        self._timeout_s = timeout_s
        self._watches = PrefixWatches(self._open_watch, self.url)
        if self.options.user:
            with self._lock:
                self._login()
        self._call("/kv/range", {"key": _b64(self._key("__probe__"))})  # fail now, with the URL

    def _login(self) -> None:
        """Log in (etcd's simple token); the session sends the token from now on."""
        self._client.session.headers.pop("Authorization", None)
        try:
            result = self._client.post(
                self._client.get_url("/auth/authenticate"),
                json={"name": self.options.user, "password": self.options.password},
                **self._request,
            )
        except etcd_exceptions.Etcd3Exception as error:
            raise CredentialsRefused(
                f"etcd at {self.url} refused user {self.options.user!r}: {_text(error)}; check "
                f"{PASSWORD_ENV} / {PASSWORD_FILE_ENV} (or {TOKEN_ENV} for a user made for "
                "this job)"
            ) from error
        self._client.session.headers["Authorization"] = str(result["token"])

    def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            with self._lock:
                try:
                    result: dict[str, Any] = self._client.post(
                        self._client.get_url(path), json=payload, **self._request
                    )
                except etcd_exceptions.Etcd3Exception as error:
                    if not self.options.user or not any(m in _text(error) for m in _LOGIN_AGAIN):
                        raise
                    self._login()  # the token expired (etcd's --auth-token-ttl): again
                    result = self._client.post(
                        self._client.get_url(path), json=payload, **self._request
                    )
                return result
        except etcd_exceptions.Etcd3Exception as error:
            text = _text(error)
            if "Not Found" in text or "lease not found" in text:
                raise _LeaseNotFound(f"{self.url}: lease not found (expired or revoked)") from error
            if "user name is empty" in text or "permission denied" in text:
                raise KVError(
                    f"etcd at {self.url} refused {path}: {text}; this etcd requires a user: "
                    "etcd://USER@HOST:PORT with its password in GEMINI_ETCD_PASSWORD"
                ) from error
            raise KVError(
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
        return self._items(self._call("/kv/range", self._range(prefix)))

    def get_prefixes(self, prefixes: Sequence[str]) -> dict[str, dict[str, bytes]]:
        """One transaction of range reads (one round trip, one revision) for all of them."""
        if len(prefixes) < 2:
            return super().get_prefixes(prefixes)
        reads = [{"request_range": self._range(prefix)} for prefix in prefixes]
        result = self._call("/kv/txn", {"compare": [], "success": reads, "failure": []})
        answers = result.get("responses", [])
        if len(answers) != len(prefixes):
            raise KVError(
                f"etcd at {self.url}: a read of {len(prefixes)} prefixes answered "
                f"{len(answers)} times"
            )
        return {
            prefix: self._items(answer.get("response_range", {}))
            for prefix, answer in zip(prefixes, answers, strict=True)
        }

    def _range(self, prefix: str) -> dict[str, str]:
        start = self._key(prefix)
        return {"key": _b64(start), "range_end": _b64(_prefix_end(start))}

    def _items(self, result: Mapping[str, Any]) -> dict[str, bytes]:
        """The keys (without the namespace) and values of a range read's answer."""
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
            raise KVError(
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
            raise KVError(f"cannot create {key!r}: lease {put.get('lease')} expired") from error
        return bool(result.get("succeeded", False))

    def replace(self, key: str, expected: bytes | None, value: bytes) -> bool:
        encoded = _b64(self._key(key))
        # A comparison of values: the same bytes written back in between pass (the embedded
        # store's values carry a nonce per write and do not). The attempt record changes at
        # every write (its attempt, state or failures), so for it the two agree.
        compare: dict[str, Any] = {"key": encoded, "result": "EQUAL"}
        if expected is None:
            compare.update(target="CREATE", create_revision=0)
        else:
            compare.update(target="VALUE", value=_b64(expected))
        transaction = {
            "compare": [compare],
            "success": [{"request_put": {"key": encoded, "value": _b64(value)}}],
            "failure": [],
        }
        return bool(self._call("/kv/txn", transaction).get("succeeded", False))

    def _guarded(self, guard: str, held: bytes, operation: dict[str, Any]) -> bool:
        """``operation`` in one transaction, only while ``guard``'s value is ``held``: a
        comparison of values, as in replace(); a guard whose lease ended is deleted, and an
        absent key's value compares unequal."""
        compare = {"key": _b64(self._key(guard)), "result": "EQUAL", "target": "VALUE"}
        transaction = {
            "compare": [{**compare, "value": _b64(held)}],
            "success": [operation],
            "failure": [],
        }
        return bool(self._call("/kv/txn", transaction).get("succeeded", False))

    def put_guarded(self, key: str, value: bytes, guard: str, held: bytes) -> bool:
        put = {"key": _b64(self._key(key)), "value": _b64(value)}
        return self._guarded(guard, held, {"request_put": put})

    def delete_guarded(self, key: str, guard: str, held: bytes, *, prefix: bool = False) -> bool:
        start = self._key(key)
        doomed = {"key": _b64(start)}
        if prefix:
            doomed["range_end"] = _b64(_prefix_end(start))
        return self._guarded(guard, held, {"request_delete_range": doomed})

    def delete(self, key: str, *, prefix: bool = False) -> int:
        start = self._key(key)
        payload = {"key": _b64(start)}
        if prefix:
            payload["range_end"] = _b64(_prefix_end(start))
        return int(self._call("/kv/deleterange", payload).get("deleted", 0))

    def revoke_lease(self, lease_id: int) -> None:
        EtcdLease(self, int(lease_id), 0.0).revoke()

    def grant_lease(self, ttl_s: float) -> EtcdLease:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        result = self._call("/lease/grant", {"TTL": max(1, math.ceil(ttl_s)), "ID": 0})
        return EtcdLease(self, int(result["ID"]), float(result["TTL"]))

    def watch(
        self, prefixes: Sequence[str], after: int | None, timeout_s: float
    ) -> tuple[int, bool]:
        """etcd's own watch (:mod:`real.coord.etcd_watch`): the cursor is etcd's revision, and
        a change wakes the caller at once. ``after`` None: the store's revision now."""
        if after is None:
            return self._revision(), False
        keys = [self._key(prefix) for prefix in prefixes]
        try:
            return self._watches.wait(keys, after, timeout_s)
        except KVError as error:
            if not self.options.user or not any(m in str(error) for m in _LOGIN_AGAIN):
                raise
            with self._lock:
                self._login()  # the token expired while the stream was down: log in, again
            return self._watches.wait(keys, after, timeout_s)

    def _revision(self) -> int:
        result = self._call("/kv/range", {"key": _b64(self._key("__probe__")), "count_only": True})
        return int(result.get("header", {}).get("revision", 0))

    def _open_watch(self, prefix: bytes, start: int) -> requests.Response:
        """etcd's watch of the keys under ``prefix`` from revision ``start``, streaming."""
        request: dict[str, Any] = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(_prefix_end(prefix)),
                "start_revision": start,
            }
        }
        response = self._client.session.post(
            self._client.get_url("/watch"),
            json=request,
            stream=True,
            timeout=(self._timeout_s, IDLE_S),
            **self._request,
        )
        if response.status_code != requests.codes.ok:
            text = response.text[:200]
            response.close()
            raise KVError(f"HTTP {response.status_code}: {text}")
        return response

    def close(self) -> None:
        self._watches.close()
        with self._lock:
            self._client.session.close()
