"""A client of one node store: a trainer's handle on its own store and on its peers' stores.

One authenticated TCP connection per client, used by one thread at a time. Requests that fail
on the store's side come back as ``{"ok": false, "reason": ...}`` and raise ``StoreError`` here
with the node and the reason; a broken connection raises ``ConnectionError``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import torch

from real.engine import protocol
from real.engine.manifest import manifest_key


class StoreError(RuntimeError):
    """The store refused a request; the message names the node and the store's reason."""


class StoreClient:
    """Connection to the store of node ``node`` at ``address`` (``host:port``).

    Connecting authenticates both ways (:mod:`real.engine.protocol`): the store checks that
    this client knows ``token``, and the client that the store does; a store of another job,
    or a stranger listening at ``address``, raises ``ProtocolError``.

    Attributes:
        manifest_key: the job's manifest key (derived from ``token``), with which manifests
            are signed at capture and checked at restore.
    """

    def __init__(self, node: int, address: str, token: str, timeout_s: float = 30.0) -> None:
        self.node = node
        self.address = address
        self.manifest_key = manifest_key(token)
        host, port = protocol.parse_address(address)
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = threading.Lock()
        try:
            protocol.client_handshake(self.sock, token)
        except BaseException:
            self.sock.close()
            raise

    def call(self, op: str, payload: bytes | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and return the store's reply header (raises StoreError on refusal)."""
        with self.lock:
            protocol.send_frame(self.sock, {"op": op, **fields}, payload)
            reply, _ = protocol.recv_frame(self.sock, max_payload=1 << 20)
        if reply.get("ok") is False:
            raise StoreError(f"node {self.node} store: {op}: {reply.get('reason')}")
        return reply

    def holdings(self) -> dict[int, list[int]]:
        """Committed iterations per owner rank held by this store."""
        raw = self.call("holdings")["holdings"]
        return {int(owner): [int(i) for i in its] for owner, its in raw.items()}

    def stats(self) -> dict[str, Any]:
        return self.call("stats")

    def invalidate(self, owner: int, iteration: int, reason: str) -> None:
        self.call("invalidate", owner=owner, iteration=iteration, reason=reason)

    # -- replication ------------------------------------------------------------------------

    def put_begin(self, owner: int, manifest: bytes, keep: int | None = None) -> None:
        """Start a replica; the store keeps the slot holding iteration ``keep`` intact."""
        self.call("put_begin", manifest, owner=owner, keep=keep)

    def put_chunk(self, offset: int, data: bytes | memoryview) -> None:
        """Stream one chunk (no reply; the store verifies it against the manifest's block
        checksums and reports at ``put_end``)."""
        with self.lock:
            protocol.send_frame(self.sock, {"op": "put_chunk", "offset": offset}, data)

    def put_end(self) -> None:
        self.call("put_end")

    def commit(self, owner: int, iteration: int) -> None:
        self.call("commit", owner=owner, iteration=iteration)

    # -- restore ----------------------------------------------------------------------------

    def get(self, owner: int, iteration: int) -> tuple[bytes, int, torch.Tensor]:
        """Fetch a committed shard: (manifest bytes, manifest checksum, data as uint8 tensor).

        The caller verifies both before use.
        """
        with self.lock:
            protocol.send_frame(self.sock, {"op": "get", "owner": owner, "iteration": iteration})
            reply = protocol.recv_header(self.sock)
            if reply.get("ok") is False:
                raise StoreError(f"node {self.node} store: get: {reply.get('reason')}")
            manifest_len, data_len = int(reply["manifest_bytes"]), int(reply["data_bytes"])
            if manifest_len + data_len != reply["payload_bytes"]:
                raise protocol.ProtocolError("get: payload size does not add up")
            manifest = bytes(protocol.recv_exact(self.sock, manifest_len))
            data = torch.empty(data_len, dtype=torch.uint8)
            if data_len:
                protocol.recv_into_exact(self.sock, data.numpy().data.cast("B"))
        return manifest, int(reply["manifest_checksum"]), data

    def shutdown(self) -> None:
        """Shut the connection from another thread: a call blocked on it fails now."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
