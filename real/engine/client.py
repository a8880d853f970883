"""A client of one node store: a trainer's handle on its own store and on its peers' stores.

One authenticated TCP connection per client, used by one thread at a time. Requests that fail
on the store's side come back as ``{"ok": false, "reason": ...}`` and raise ``NodeStoreError`` here
with the node and the reason; a broken connection raises ``ConnectionError``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from real.engine import protocol
from real.engine.costs import Costs
from real.engine.manifest import BlockHasher, Manifest, checksum, dtype_of, manifest_key
from shared.errors import NodeStoreError, ProtocolError, VerificationError

if TYPE_CHECKING:
    # torch is imported where tensors are made, not here: the node agents (the root's survey
    # of the stores) use this client without torch, which costs each of them seconds of CPU
    # at start (a 2-core host runs every agent of an emulated cluster).
    import torch


class PlacedDataError(VerificationError):
    """A block failed verification after the shard's bytes were placed in their destination
    (live tensors included): the destination holds unverified data."""


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
        self.served_committed: bool | None = None  # of the last ``get``: was it committed?
        self._pending: list[str] = []  # ops sent without waiting, whose replies are due
        try:
            protocol.client_handshake(self.sock, token)
        except BaseException:
            self.sock.close()
            raise

    def call(self, op: str, payload: bytes | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and return the store's reply header (raises NodeStoreError on
        refusal)."""
        with self.lock:
            protocol.send_frame(self.sock, {"op": op, **fields}, payload)
            self._replies_pending()
            reply, _ = protocol.recv_frame(self.sock, max_payload=1 << 20)
        if reply.get("ok") is False:
            raise NodeStoreError(f"node {self.node} store: {op}: {reply.get('reason')}")
        return reply

    def _replies_pending(self) -> None:
        """Read the replies of requests sent without waiting (lock held), in order; the first
        refusal raises NodeStoreError (the store then closes the connection: drop this client)."""
        while self._pending:
            op = self._pending.pop(0)
            reply, _ = protocol.recv_frame(self.sock, max_payload=1 << 20)
            if reply.get("ok") is False:
                self._pending.clear()
                raise NodeStoreError(f"node {self.node} store: {op}: {reply.get('reason')}")

    def holdings(self, complete: bool = False) -> dict[int, list[int]]:
        """Committed iterations per owner rank held by this store; with ``complete``, also
        those complete but not committed (captured by the owner, or a verified replica)."""
        raw = self.call("holdings")["complete" if complete else "holdings"]
        return {int(owner): [int(i) for i in its] for owner, its in raw.items()}

    def stats(self) -> dict[str, Any]:
        return self.call("stats")

    def invalidate(self, owner: int, iteration: int, reason: str) -> None:
        self.call("invalidate", owner=owner, iteration=iteration, reason=reason)

    # -- replication ------------------------------------------------------------------------

    def put_begin(
        self, owner: int, manifest: bytes, keep: int | None = None, *, wait: bool = True
    ) -> None:
        """Start a replica; the store keeps the slot holding iteration ``keep`` intact.

        ``wait=False`` pipelines it: the chunks follow at once and the reply is read before
        the next reply (``put_end``'s), saving a round trip; a refusal then surfaces there.
        """
        if wait:
            self.call("put_begin", manifest, owner=owner, keep=keep)
            return
        with self.lock:
            protocol.send_frame(
                self.sock, {"op": "put_begin", "owner": owner, "keep": keep}, manifest
            )
            self._pending.append("put_begin")

    def put_chunk(
        self,
        offset: int,
        data: bytes | memoryview,
        on_piece: Callable[[int, memoryview], None] | None = None,
        piece_bytes: int = 1 << 20,
    ) -> None:
        """Stream one chunk (no reply; the store hashes it as it lands and reports at
        ``put_end``).

        ``on_piece(offset, piece)`` sees each piece (of at most ``piece_bytes``, ending at
        multiples of it) right after it went out: the kernel's copy into the socket has just
        read it from memory, so the sender hashes it from cache. Hashed before the send, the
        hash made that read itself, at about 20 GB/s against 30-37 GB/s after it, and a
        replica of 280 MiB took 1.18-1.33x a one-way send against 1.04-1.15x
        (``benchmarks/engine_costs.py``, docs/engine.md). The hash still covers the bytes the
        slot holds: had they changed between the send and the hash, the store's hash of
        what it received would not match the sealed manifest, and the replica is refused.
        """
        with self.lock:
            if on_piece is None:
                protocol.send_frame(self.sock, {"op": "put_chunk", "offset": offset}, data)
                return
            view = memoryview(data).cast("B")
            protocol.send_frame(
                self.sock, {"op": "put_chunk", "offset": offset, "payload_bytes": len(view)}
            )
            done = 0
            while done < len(view):
                end = min(len(view), ((offset + done) // piece_bytes + 1) * piece_bytes - offset)
                piece = view[done:end]
                self.sock.sendall(piece)
                on_piece(offset + done, piece)
                done = end

    def put_chunk_encoded(
        self,
        offset: int,
        raw: memoryview,
        payload: bytes,
        codec: str,
        on_piece: Callable[[int, memoryview], None] | None = None,
        piece_bytes: int = 1 << 20,
    ) -> None:
        """Stream one compressed chunk: ``payload`` encodes ``raw``, the data bytes at
        ``offset`` (``real.engine.compress``); ``on_piece`` sees the raw bytes, as with
        ``put_chunk``, since the store hashes what it decodes."""
        with self.lock:
            done = 0
            while on_piece is not None and done < len(raw):
                end = min(len(raw), ((offset + done) // piece_bytes + 1) * piece_bytes - offset)
                on_piece(offset + done, raw[done:end])
                done = end
            header = {"op": "put_chunk", "offset": offset, "codec": codec, "raw_bytes": len(raw)}
            protocol.send_frame(self.sock, header, payload)

    def put_end(self, manifest: bytes | None = None) -> None:
        """Finish a replica; ``manifest``: the sealed manifest (block checksums, MAC), when
        ``put_begin`` carried only the layout."""
        self.call("put_end", manifest)

    def commit(self, owner: int, iteration: int) -> None:
        self.call("commit", owner=owner, iteration=iteration)

    # -- restore ----------------------------------------------------------------------------

    def _get_header(self, owner: int, iteration: int) -> tuple[dict[str, Any], int, int]:
        """Ask for a committed (else complete) shard (the lock held): its reply, manifest and
        data lengths. ``served_committed`` then says whether the copy served was committed."""
        protocol.send_frame(self.sock, {"op": "get", "owner": owner, "iteration": iteration})
        self._replies_pending()
        reply = protocol.recv_header(self.sock)
        if reply.get("ok") is False:
            raise NodeStoreError(f"node {self.node} store: get: {reply.get('reason')}")
        self.served_committed = bool(reply.get("committed", True))
        manifest_len, data_len = int(reply["manifest_bytes"]), int(reply["data_bytes"])
        if manifest_len + data_len != reply["payload_bytes"]:
            raise ProtocolError("get: payload size does not add up")
        return reply, manifest_len, data_len

    def get(self, owner: int, iteration: int) -> tuple[bytes, int, torch.Tensor]:
        """Fetch a committed shard: (manifest bytes, manifest checksum, data as uint8 tensor).

        The caller verifies both before use.
        """
        import torch

        with self.lock:
            reply, manifest_len, data_len = self._get_header(owner, iteration)
            manifest = bytes(protocol.recv_exact(self.sock, manifest_len))
            data = torch.empty(data_len, dtype=torch.uint8)
            if data_len:
                protocol.recv_into_exact(self.sock, data.numpy().data.cast("B"))
        return manifest, int(reply["manifest_checksum"]), data

    def get_into(
        self,
        owner: int,
        iteration: int,
        check: Callable[[bytes, int], Manifest],
        live: Mapping[str, torch.Tensor],
        costs: Costs | None = None,
    ) -> dict[str, Any]:
        """Fetch a committed shard straight into ``live`` tensors (see ``restore.read_peer``).

        ``check(manifest bytes, manifest checksum)`` parses and authenticates the manifest
        before any data byte is placed; a manifest it refuses leaves ``live`` untouched (the
        data is drained, the connection stays usable).

        Raises:
            VerificationError: the manifest or a block does not verify.
        """
        with self.lock:
            reply, manifest_len, data_len = self._get_header(owner, iteration)
            raw = bytes(protocol.recv_exact(self.sock, manifest_len))
            try:
                manifest = check(raw, int(reply["manifest_checksum"]))
                if manifest.data_bytes != data_len:
                    raise VerificationError(
                        f"the store sent {data_len} data bytes, the manifest says "
                        f"{manifest.data_bytes}"
                    )
            except VerificationError:
                protocol.discard(self.sock, data_len)
                raise
            return receive_shard(self.sock, manifest, live, costs)

    def shutdown(self) -> None:
        """Shut the connection from another thread: a call blocked on it fails now."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def receive_shard(
    sock: socket.socket,
    manifest: Manifest,
    live: Mapping[str, torch.Tensor],
    costs: Costs | None = None,
) -> dict[str, Any]:
    """Receive a shard's data region from ``sock`` into its tensors, hashing as it lands.

    Each tensor goes straight into its live tensor when that is a contiguous CPU tensor of the
    same dtype and shape (the kernel's copy is the only one), else into a fresh CPU tensor
    (copied into a live tensor of another layout or device only once every block verified).
    Pieces end at block boundaries, so every block is hashed from cache right after it arrived.
    """
    import torch

    from real.engine.state import unflatten_state

    targets: list[tuple[int, int, memoryview]] = []  # (offset, nbytes, destination bytes)
    out: dict[str, torch.Tensor] = {}
    later: list[tuple[torch.Tensor, torch.Tensor]] = []  # (live tensor, fresh received copy)
    for entry in sorted(manifest.tensors, key=lambda t: t.offset):
        dtype = dtype_of(entry.dtype)
        target = live.get(entry.name)
        local = _local(target) if target is not None else None
        direct = (
            local is not None
            and local.dtype == dtype
            and tuple(local.shape) == entry.shape
            and local.device.type == "cpu"
            and local.is_contiguous()
        )
        if direct:
            assert target is not None and local is not None
            out[entry.name] = target
            place = local
        else:
            place = torch.empty(entry.shape, dtype=dtype)
            fits = local is not None and local.dtype == dtype and tuple(local.shape) == entry.shape
            if fits:
                assert target is not None and local is not None
                later.append((local, place))
                out[entry.name] = target
            else:
                out[entry.name] = place
        if entry.nbytes:
            targets.append((entry.offset, entry.nbytes, _bytes_of(place)))
    hasher = BlockHasher(manifest.data_bytes, manifest.block_bytes)
    timed = TimedHasher(hasher)
    scratch = memoryview(bytearray(64 * 1024))
    position = 0
    started = time.perf_counter()
    for offset, nbytes, view in targets:
        if offset < position:
            raise VerificationError("manifest tensors overlap")
        position = _receive_gap(sock, timed, scratch, position, offset)
        _receive_range(sock, timed, offset, view[:nbytes], manifest.block_bytes)
        position = offset + nbytes
    _receive_gap(sock, timed, scratch, position, manifest.data_bytes)
    if costs is not None:
        total = time.perf_counter() - started
        costs.add(
            "restore: receive into place (socket)", total - timed.seconds, manifest.data_bytes
        )
        costs.add("restore: hash while receiving", timed.seconds, manifest.data_bytes)
    bad = hasher.mismatches(manifest)
    if bad:
        raise PlacedDataError(f"{bad[0]} checksum mismatch")
    if checksum("".join(manifest.blocks).encode()) != manifest.shard_checksum:
        raise PlacedDataError("shard checksum does not match the block checksums")
    with torch.no_grad():
        for local, received in later:
            local.copy_(received)
    return unflatten_state(out, manifest.values)


class TimedHasher:
    """A :class:`BlockHasher` that also sums the time spent hashing (for the cost breakdown)."""

    def __init__(self, hasher: BlockHasher) -> None:
        self.hasher, self.seconds = hasher, 0.0

    def update(self, offset: int, piece: memoryview) -> None:
        started = time.perf_counter()
        self.hasher.update(offset, piece)
        self.seconds += time.perf_counter() - started


def _receive_range(
    sock: socket.socket, hasher: TimedHasher, offset: int, view: memoryview, block: int
) -> None:
    """Receive ``view`` (data bytes ``offset..``) in pieces that end at block boundaries."""
    done, size = 0, len(view)
    while done < size:
        start = offset + done
        end = min(offset + size, (start // block + 1) * block)
        piece = view[done : done + end - start]
        protocol.recv_into_exact(sock, piece)
        hasher.update(start, piece)
        done += end - start


def _receive_gap(
    sock: socket.socket, hasher: TimedHasher, scratch: memoryview, start: int, end: int
) -> int:
    """Receive the alignment padding between tensors (hashed like any byte)."""
    while start < end:
        piece = scratch[: min(len(scratch), end - start)]
        protocol.recv_into_exact(sock, piece)
        hasher.update(start, piece)
        start += len(piece)
    return end


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory."""
    import torch

    if tensor.numel() == 0:
        return memoryview(bytearray(0))
    return tensor.detach().view(-1).view(torch.uint8).numpy().data.cast("B")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    to_local = getattr(tensor, "to_local", None)  # a DTensor: its local shard
    return to_local() if callable(to_local) else tensor
