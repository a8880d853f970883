"""The key-value store the agents coordinate through: one small interface, two backends.

Everything the agents share lives in one key-value store: the heartbeat of every node
(``nodes/<id>``), the trainer exits an agent reports (``exits/<node>/<rank>``), the root agent's
leadership key (``election/leader``) and later the root's instructions. Agents never talk to
each other for coordination; they read and write keys.

Three things make such a store fit for failure detection and election:

- **Leases.** A lease is granted with a time to live (TTL) and must be refreshed (kept alive)
  before it runs out. Keys written with a lease vanish when it expires or is revoked. An agent
  that dies stops refreshing, so its keys disappear on their own: that is how a lost node is
  noticed without the dead node having to say anything.
- **Create-if-absent.** ``create`` writes a key only when it does not exist, atomically, so of
  several candidates exactly one wins the leadership key.
- **Prefix reads.** ``get_prefix("exits/")`` returns every reported exit at once.
- **Watches.** ``watch(prefixes, cursor, timeout_s)`` returns when a key under the prefixes
  changes, so the agents act on a write at once instead of at their next poll (the embedded
  store notifies; on etcd, its own watch streams, :mod:`real.coord.etcd_watch`).

Backends:

- :class:`~real.coord.etcd_kv.EtcdKV`: etcd (what the paper used) through its HTTP gateway,
  ``etcd://[USER@]HOST:PORT`` (``etcds://`` for TLS). Native leases and transactions. For real
  clusters: with a user, the client logs in with the user's password, taken from
  ``GEMINI_ETCD_PASSWORD``, from the file named by ``GEMINI_ETCD_PASSWORD_FILE``, or derived from
  the job's token; TLS files come from ``GEMINI_ETCD_CA`` / ``GEMINI_ETCD_CERT`` /
  ``GEMINI_ETCD_KEY``. A URL with a password in it is refused: URLs travel on command lines.
- :class:`~real.coord.embedded_kv.EmbeddedKV`: a small store process
  (:mod:`real.coord.kvserver`), ``tcpstore://HOST:PORT``, that serves only clients proving they
  know the job's secret (``GEMINI_TOKEN``). The default when no etcd is configured; leases are
  emulated (see that module for why and how).

An optional namespace (the URL's path: ``etcd://127.0.0.1:2379/job42``) prefixes every key,
so several runs can share one store without seeing each other's keys.
"""

from __future__ import annotations

import abc
import os
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from real.runtime.env import GEMINI_TOKEN

TOKEN_ENV = GEMINI_TOKEN
SCHEMES = ("etcd", "etcds", "tcpstore")


def job_token(token: str | None = None) -> str:
    """``token``, else the job's secret from ``GEMINI_TOKEN``.

    Raises:
        ValueError: neither is set.
    """
    secret = token or os.environ.get(TOKEN_ENV, "")
    if not secret:
        raise ValueError(
            f"no job secret for the coordination store: pass token= or set {TOKEN_ENV} "
            "(the same value for every agent of the job)"
        )
    return secret


class Lease(abc.ABC):
    """A time-limited grant; keys written with it vanish when it expires or is revoked.

    Attributes:
        id: the store's identifier of the lease (unique per store).
        ttl_s: the time to live the store granted, seconds (etcd rounds up to whole seconds).
    """

    id: int
    ttl_s: float

    @abc.abstractmethod
    def refresh(self) -> bool:
        """Keep the lease alive for another ``ttl_s`` seconds from now.

        Returns:
            True if the lease was alive and is extended; False if it had already expired or
            been revoked (its keys are gone: grant a new lease and write them again).
        """

    @abc.abstractmethod
    def revoke(self) -> None:
        """End the lease now; its keys vanish. Revoking an expired lease is not an error."""


class KeyValueStore(abc.ABC):
    """The coordination store: ten operations, keys are ``str``, values ``bytes``.

    Implementations are safe to call from several threads of one process. Keys should be
    ``/``-separated paths without a leading slash (``nodes/3``).
    """

    url: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when it is absent (or its lease has expired)."""

    @abc.abstractmethod
    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """Every live key starting with ``prefix`` and its value (an empty dict if none)."""

    def get_prefixes(self, prefixes: Sequence[str]) -> dict[str, dict[str, bytes]]:
        """``get_prefix`` of each of ``prefixes``, as one consistent read where the backend
        can (etcd: one transaction, one round trip); this default reads them in turn."""
        return {prefix: self.get_prefix(prefix) for prefix in prefixes}

    @abc.abstractmethod
    def put(self, key: str, value: bytes, lease: Lease | None = None) -> None:
        """Write ``key``; with a lease, the key vanishes when the lease ends.

        Raises:
            KVError: the lease has already expired (the key is not written).
        """

    @abc.abstractmethod
    def create(self, key: str, value: bytes, lease: Lease | None = None) -> bool:
        """Write ``key`` only if it is absent, atomically (the election primitive).

        Returns:
            True if this call created the key; False if a live key was already there.
        """

    @abc.abstractmethod
    def replace(self, key: str, expected: bytes | None, value: bytes) -> bool:
        """Write ``key`` (no lease) only if its value is ``expected`` now (None: only if it is
        absent), atomically: a writer that read a key, then wrote it back changed, fails
        instead of overwriting what another wrote meanwhile.

        Returns:
            True if this call wrote the key; False if its value was another.
        """

    @abc.abstractmethod
    def put_guarded(self, key: str, value: bytes, guard: str, held: bytes) -> bool:
        """Write ``key`` (no lease) only while ``guard`` holds ``held`` (its value as read),
        atomically: the fence of a leader's writes. A root checks that the election's key is
        its own, then writes; a root paused between the two (SIGSTOP, a frozen VM) while
        another was elected would write once resumed. Guarded by the key it read, the write
        fails instead once the key is another's, or gone.

        Returns:
            True if this call wrote ``key``; False if ``guard`` held another value, or none.
        """

    @abc.abstractmethod
    def delete_guarded(self, key: str, guard: str, held: bytes, *, prefix: bool = False) -> bool:
        """Delete ``key`` (or every key starting with it) only while ``guard`` holds ``held``,
        atomically: ``put_guarded``'s fence for a leader's deletes.

        Returns:
            True if the guard held (whatever was there is deleted); False otherwise.
        """

    @abc.abstractmethod
    def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key starting with it); returns how many were deleted."""

    @abc.abstractmethod
    def grant_lease(self, ttl_s: float) -> Lease:
        """A new lease that lives ``ttl_s`` seconds unless refreshed."""

    def revoke_lease(self, lease_id: int) -> None:
        """End the lease ``lease_id`` (another process's) now: its keys vanish as if it had
        expired. For a holder known to be dead (its process refuses connections); an unknown
        or expired lease is no error."""
        raise NotImplementedError(f"{type(self).__name__} cannot revoke another's lease")

    def watch(
        self, prefixes: Sequence[str], after: int | None, timeout_s: float
    ) -> tuple[int, bool]:
        """Wait until a key under one of ``prefixes`` changes after ``after``, at most
        ``timeout_s``; returns ``(cursor, changed)``, the cursor to pass next time.

        The agents wait here instead of sleeping between reads, so a change reaches them at
        once. ``after`` None returns a cursor at once (take it before the first read: a change
        between that read and the next call is then not missed). Lease expiry need not be a
        change (etcd's deletion of the lease's keys is one, the embedded store's is not):
        callers still read the store every ``timeout_s``. Both backends notify (waking with
        nothing changed is allowed: callers read the store on every wake); this default, for
        a backend without watches, only sleeps ``timeout_s`` and reports no change, so its
        callers poll at that period.
        """
        if after is not None:
            time.sleep(max(0.0, timeout_s))
        return 0, False

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release the client's connections (not the store). Idempotent."""

    def __enter__(self) -> KeyValueStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def parse_kv_url(url: str) -> tuple[str, str, int, str]:
    """Split a store URL into (scheme, host, port, namespace).

    Raises:
        ValueError: the URL is not ``etcd://[USER@]HOST:PORT[/NAMESPACE]``,
            ``etcds://[USER@]HOST:PORT[/NAMESPACE]`` or ``tcpstore://HOST:PORT[/NAMESPACE]``,
            or it holds a password.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"store URL {url!r}: scheme must be etcd://, etcds:// (TLS) or tcpstore:// "
            "(for example etcd://gemini@127.0.0.1:2379 or tcpstore://127.0.0.1:29400)"
        )
    if parts.password is not None:
        raise ValueError(
            f"store URL of {parts.hostname}: no password in the URL (command lines show it to "
            "every user of the host); set GEMINI_ETCD_PASSWORD or GEMINI_ETCD_PASSWORD_FILE"
        )
    if parts.username and parts.scheme == "tcpstore":
        raise ValueError(
            f"store URL of {parts.hostname}: tcpstore:// takes no user; it authenticates with "
            f"the job's secret ({TOKEN_ENV})"
        )
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"store URL {url!r}: bad port ({error})") from error
    if not parts.hostname or port is None:
        raise ValueError(f"store URL {url!r}: give a host and a port, e.g. 127.0.0.1:2379")
    namespace = parts.path.strip("/")
    return parts.scheme, parts.hostname, port, f"{namespace}/" if namespace else ""
