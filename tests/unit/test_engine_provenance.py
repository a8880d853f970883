"""Who may talk to a node store, and whose checkpoints a restore accepts.

Node stores authenticate both ways: a client with the wrong token is refused by the store, and a
listener that speaks the protocol without the token (a fake store) is refused by the client.
Manifests carry a MAC with the job's key: a manifest changed without the key, or written by
another job, is refused by a restore (local and from a peer) and by a store receiving a replica.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import torch
import xxhash

from real.engine import protocol
from real.engine.capture import Capturer
from real.engine.client import StoreClient
from real.engine.manifest import (
    Manifest,
    authenticate,
    block_checksums,
    checksum,
    manifest_key,
    seal,
    sign,
)
from real.engine.restore import read_local, read_peer
from real.engine.shm import SHM_DIR, Slot, best_slot
from real.engine.store import NodeStore
from shared.errors import NodeStoreError, ProtocolError, VerificationError

ITERATION, OWNER = 4, 1


def _state() -> dict[str, object]:
    generator = torch.Generator().manual_seed(7)
    return {"model": {"w": torch.randn(64, 64, generator=generator)}, "position": 12}


@pytest.fixture
def store() -> Iterator[NodeStore]:
    node_store = NodeStore(0, protocol.make_token()).start()
    yield node_store
    node_store.stop()
    assert not [p for p in os.listdir(SHM_DIR) if p.startswith(node_store.prefix)]


@pytest.fixture
def capturer(store: NodeStore) -> Iterator[Capturer]:
    client = StoreClient(0, store.address, store.token)
    capture = Capturer(client, owner=OWNER)
    yield capture
    capture.close()
    client.close()


def _commit(capturer: Capturer) -> Slot:
    """One checkpoint of ``_state()``, sealed and committed as the replication sender does."""
    captured = capturer.capture(ITERATION, _state())
    seal(captured.manifest, captured.slot.data(captured.nbytes))
    raw = captured.manifest.to_bytes()
    captured.slot.write_manifest(raw, xxhash.xxh3_64_intdigest(raw), captured.nbytes)
    capturer.commit(captured)
    return captured.slot


def _rewrite(slot: Slot, change: Callable[[dict[str, object]], None]) -> None:
    """Change the slot's manifest as a stranger would: valid JSON, a fresh xxh3 checksum (so
    only the MAC can tell), the MAC field left as it was."""
    document = json.loads(slot.manifest_bytes())
    change(document)
    raw = json.dumps(document, separators=(",", ":")).encode()
    slot.write_manifest(raw, xxhash.xxh3_64_intdigest(raw), int(str(document["data_bytes"])))


def _set_position(document: dict[str, object]) -> None:
    values = document["values"]
    assert isinstance(values, dict)
    values["position"] = 0


def _drop_mac(document: dict[str, object]) -> None:
    del document["mac"]


# -- the manifest's MAC ---------------------------------------------------------------------


def test_a_signed_manifest_verifies_and_every_change_is_refused() -> None:
    key = manifest_key(protocol.make_token())
    body = json.dumps({"format": "gemini-shard/1", "blocks": ["ab"], "values": {}}).encode()
    signed = sign(body, key)
    authenticate(signed, key)
    flipped = signed.replace(b'"ab"', b'"ac"')
    with pytest.raises(VerificationError, match="MAC mismatch"):
        authenticate(flipped, key)
    with pytest.raises(VerificationError, match="MAC mismatch"):
        authenticate(signed, manifest_key(protocol.make_token()))
    with pytest.raises(VerificationError, match="carries no MAC"):
        authenticate(body, key)


def test_the_manifest_key_is_not_the_token() -> None:
    token = protocol.make_token()
    assert manifest_key(token) != token.encode()
    assert manifest_key(token) == manifest_key(token) != manifest_key(protocol.make_token())


# -- restores -------------------------------------------------------------------------------


def test_an_untouched_checkpoint_restores(capturer: Capturer) -> None:
    _commit(capturer)
    restored = read_local(capturer.slots, OWNER, ITERATION)
    assert restored["position"] == 12
    assert torch.equal(restored["model"]["w"], _state()["model"]["w"])  # type: ignore[index]


@pytest.mark.parametrize("change", [_set_position, _drop_mac], ids=["value", "mac-removed"])
def test_a_manifest_changed_without_the_key_is_refused_locally_and_from_a_peer(
    capturer: Capturer, store: NodeStore, change: Callable[[dict[str, object]], None]
) -> None:
    slot = _commit(capturer)
    _rewrite(slot, change)
    with pytest.raises(VerificationError, match="MAC"):
        read_local(capturer.slots, OWNER, ITERATION)
    with _client(store) as peer, pytest.raises(VerificationError, match="MAC"):
        read_peer(peer, OWNER, ITERATION)


def test_data_forged_with_consistent_checksums_is_refused(capturer: Capturer) -> None:
    """A stranger who changes the weights and recomputes every xxh3 checksum still fails: the
    block checksums sit under the MAC."""
    slot = _commit(capturer)
    manifest = Manifest.from_bytes(slot.manifest_bytes())
    slot.data_tensor(manifest.data_bytes)[:4] += 1
    forged = block_checksums(slot.data(manifest.data_bytes), manifest.block_bytes)

    def forge(document: dict[str, object]) -> None:
        document["blocks"] = forged
        document["shard_checksum"] = checksum("".join(forged).encode())

    _rewrite(slot, forge)
    with pytest.raises(VerificationError, match="MAC mismatch"):
        read_local(capturer.slots, OWNER, ITERATION)


def test_another_jobs_checkpoint_is_refused(capturer: Capturer) -> None:
    _commit(capturer)
    with pytest.raises(VerificationError, match="MAC mismatch"):
        read_local(capturer.slots, OWNER, ITERATION, key=manifest_key(protocol.make_token()))


def test_slots_mapped_without_a_key_are_not_trusted(capturer: Capturer) -> None:
    _commit(capturer)
    slot = best_slot(capturer.slots, ITERATION)
    assert slot is not None
    bare = Slot.open(slot.path)
    try:
        with pytest.raises(VerificationError, match="no manifest key"):
            read_local([bare, None], OWNER, ITERATION)
    finally:
        bare.close()


def test_a_store_refuses_a_replica_whose_manifest_another_job_signed(store: NodeStore) -> None:
    body = json.dumps(
        {
            "format": "gemini-shard/1",
            "iteration": 1,
            "rank": 5,
            "data_bytes": 16,
            "block_bytes": 16,
            "blocks": [checksum(bytes(16))],
            "shard_checksum": checksum(checksum(bytes(16)).encode()),
            "tensors": [],
            "values": {},
        },
        separators=(",", ":"),
    ).encode()
    with _client(store) as client:
        for manifest in (body, sign(body, manifest_key(protocol.make_token()))):
            with pytest.raises(NodeStoreError, match="MAC"):
                client.put_begin(5, manifest)
        client.put_begin(5, sign(body, manifest_key(store.token)))  # this job's: accepted
        client.put_chunk(0, bytes(16))
        client.put_end()


# -- who talks to whom ----------------------------------------------------------------------


def _client(store: NodeStore) -> contextlib.closing[StoreClient]:
    return contextlib.closing(StoreClient(0, store.address, store.token, timeout_s=10.0))


def test_a_client_with_the_wrong_token_can_neither_read_nor_write(capturer: Capturer) -> None:
    slot = _commit(capturer)
    before = slot.manifest_bytes()
    store_address = capturer.client.address
    with pytest.raises(ProtocolError):
        StoreClient(0, store_address, protocol.make_token(), timeout_s=10.0)
    # A raw connection that skips the handshake gets nothing either.
    host, port = protocol.parse_address(store_address)
    with socket.create_connection((host, port), timeout=10.0) as sock:
        assert protocol.recv_header(sock)["op"] == "challenge"
        protocol.send_frame(sock, {"op": "get", "owner": OWNER, "iteration": ITERATION})
        with pytest.raises(ConnectionError):
            protocol.recv_header(sock)
    assert slot.manifest_bytes() == before
    assert capturer.client.holdings() == {OWNER: [ITERATION]}


def _fake_store(
    reply: Callable[[str, dict[str, object]], dict[str, object]],
) -> tuple[str, list[dict[str, object]], threading.Thread]:
    """A listener that speaks the store protocol without knowing the job's token: it sends a
    challenge and answers the client's proof with ``reply(server_nonce, auth_frame)``."""
    server = socket.create_server(("127.0.0.1", 0))
    seen: list[dict[str, object]] = []

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                nonce = os.urandom(32).hex()
                protocol.send_frame(conn, {"op": "challenge", "nonce": nonce})
                auth = protocol.recv_header(conn)
                seen.append(auth)
                protocol.send_frame(conn, reply(nonce, auth))
                with contextlib.suppress(ConnectionError):  # a trusting client would send more
                    seen.append(protocol.recv_header(conn))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"127.0.0.1:{server.getsockname()[1]}", seen, thread


@pytest.mark.parametrize(
    "reply",
    [
        lambda nonce, auth: {"op": "ok"},
        lambda nonce, auth: {"op": "ok", "mac": "0" * 64},
        lambda nonce, auth: {"op": "ok", "mac": auth["mac"]},  # echo the client's own proof
        lambda nonce, auth: {
            "op": "ok",
            "mac": protocol.auth_mac(
                protocol.make_token(), protocol.STORE_SERVICE, "server", nonce, str(auth["nonce"])
            ),
        },
    ],
    ids=["no-proof", "garbage-proof", "reflected-proof", "another-jobs-token"],
)
def test_a_fake_store_is_refused_by_the_client(
    reply: Callable[[str, dict[str, object]], dict[str, object]],
) -> None:
    address, seen, thread = _fake_store(reply)
    with pytest.raises(ProtocolError, match="could not prove"):
        StoreClient(0, address, protocol.make_token(), timeout_s=10.0)
    thread.join(10.0)  # the client hung up: the fake store's last read ends
    assert not thread.is_alive()
    assert seen and seen[0]["op"] == "auth"  # it got only the proof, bound to its own nonce
    assert all(frame["op"] == "auth" for frame in seen)  # and never a request


def test_a_genuine_store_proves_itself(store: NodeStore) -> None:
    with _client(store) as client:
        assert client.call("ping")["node"] == 0
