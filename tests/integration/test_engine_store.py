"""The node store as a process: owned lifecycle, cleanup on signals, hostile connections."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from running import ends_with_its_owner

from real.engine import protocol
from real.engine.client import StoreClient
from real.engine.manifest import manifest_key, sign
from real.engine.process import StoreProcess
from real.engine.shm import SHM_DIR


def _leftovers(prefix: str) -> list[str]:
    return [name for name in os.listdir(SHM_DIR) if name.startswith(prefix)]


@pytest.fixture
def store() -> Iterator[StoreProcess]:
    process = StoreProcess(0, protocol.make_token(), prefix=f"gemini-test-{uuid.uuid4().hex[:8]}")
    process.start()
    yield process
    process.stop()
    assert not _leftovers(process.prefix or "")


def _make_slot(store: StoreProcess) -> StoreClient:
    client = StoreClient(0, store.address, store.token)
    client.call("ensure", owner=0, index=0, manifest_capacity=100, data_capacity=1 << 20)
    return client


def test_store_removes_its_memory_on_sigterm_and_leaves_ctrl_c_to_its_owner() -> None:
    prefix = f"gemini-test-{uuid.uuid4().hex[:8]}"
    process = StoreProcess(0, protocol.make_token(), prefix=prefix)
    process.start()
    try:
        _make_slot(process).close()
        assert len(_leftovers(prefix)) == 1
        assert process.process is not None
        # A terminal's Ctrl-C reaches the agent's whole process group: the agent stops its
        # trainers (their last checkpoint may still come here), then this store.
        process.process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert process.process.poll() is None
        _make_slot(process).close()
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(10) == 0
        assert not _leftovers(prefix)
    finally:
        process.stop()


OWNER = """
import sys, time
from real.engine import protocol
from real.engine.process import StoreProcess
store = StoreProcess(0, protocol.make_token(), prefix=sys.argv[1])
print(store.start(), store.pid, flush=True)
time.sleep(60)  # SIGKILLed by the test long before
"""


def test_a_store_whose_agent_was_killed_stops_and_frees_its_memory() -> None:
    """An agent SIGKILLed (or killed by the OOM killer) cannot stop its store: the store sees
    its owner gone and stops, its slot files with it, instead of living on unowned."""
    prefix = f"gemini-test-{uuid.uuid4().hex[:8]}"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, prefix], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        _, pid = owner.stdout.readline().split()
        assert ends_with_its_owner(owner, int(pid))
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for name in _leftovers(prefix):
            (SHM_DIR / name).unlink(missing_ok=True)


def test_stopping_a_store_never_started_leaves_a_live_stores_files() -> None:
    """An agent refused at start (a second copy of a live one) stops a store it never
    started: that must not remove the live store's checkpoints of the same prefix."""
    prefix = f"gemini-test-{uuid.uuid4().hex[:8]}"
    live = StoreProcess(0, protocol.make_token(), prefix=prefix)
    live.start()
    try:
        _make_slot(live).close()
        refused = StoreProcess(0, protocol.make_token(), prefix=prefix)
        refused.stop()
        assert len(_leftovers(prefix)) == 1
    finally:
        live.stop()
    assert not _leftovers(prefix)


def test_the_owner_sweeps_the_files_of_a_store_killed_with_sigkill() -> None:
    """SIGKILL leaves the slot files (the store cannot clean up); its owner removes them."""
    prefix = f"gemini-test-{uuid.uuid4().hex[:8]}"
    process = StoreProcess(0, protocol.make_token(), prefix=prefix)
    process.start()
    try:
        _make_slot(process).close()
        assert process.process is not None
        process.process.send_signal(signal.SIGKILL)
        process.process.wait(10)
        assert len(_leftovers(prefix)) == 1  # what a hardware failure leaves
    finally:
        process.stop()
    assert not _leftovers(prefix)
    # A restarted store of the same prefix starts clean too.
    stale = SHM_DIR / f"{prefix}-n0-o0-s0-v1"
    again = StoreProcess(0, protocol.make_token(), prefix=prefix)
    try:
        stale.write_bytes(b"stale")
        again.start()
        assert not stale.exists()
    finally:
        again.stop()
        stale.unlink(missing_ok=True)


def _raw_connection(store: StoreProcess) -> socket.socket:
    host, port = protocol.parse_address(store.address)
    return socket.create_connection((host, port), timeout=10)


def _closed_by_store(sock: socket.socket) -> bool:
    """True once the store has closed the connection (polled, bounded)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            continue
    return False


def _challenge(sock: socket.socket) -> dict[str, object]:
    header = protocol.recv_header(sock)
    assert header["op"] == "challenge"
    return header


@pytest.mark.parametrize(
    "attack",
    ["wrong-token", "garbage", "huge-header", "request-before-auth", "silence-then-close"],
)
def test_unauthenticated_connections_are_refused_and_the_store_keeps_serving(
    store: StoreProcess, attack: str
) -> None:
    client = _make_slot(store)
    before = client.holdings()
    with _raw_connection(store) as sock:
        challenge = _challenge(sock)
        if attack == "wrong-token":
            nonce = os.urandom(32).hex()
            mac = protocol.auth_mac(
                protocol.make_token(),
                protocol.STORE_SERVICE,
                "client",
                str(challenge["nonce"]),
                nonce,
            )
            protocol.send_frame(sock, {"op": "auth", "nonce": nonce, "mac": mac})
        elif attack == "garbage":
            sock.sendall(os.urandom(64))
        elif attack == "huge-header":
            sock.sendall(struct.pack(">I", 1 << 31))
        elif attack == "request-before-auth":
            protocol.send_frame(
                sock,
                {
                    "op": "ensure",
                    "owner": 0,
                    "index": 0,
                    "manifest_capacity": 1,
                    "data_capacity": 1 << 40,
                },
            )
        if attack != "silence-then-close":
            assert _closed_by_store(sock)
    # The store is unharmed: same holdings, still serving authenticated clients.
    assert client.holdings() == before
    with contextlib.closing(StoreClient(0, store.address, store.token)) as other:
        assert other.call("ping")["node"] == 0
    client.close()


@pytest.mark.parametrize(
    "frame",
    [
        {"op": "no_such_op"},
        {"op": "put_chunk", "offset": 0},
        {"op": "ensure", "owner": -1, "index": 0, "manifest_capacity": 1, "data_capacity": 1},
        {"op": "ensure", "owner": 0, "index": 5, "manifest_capacity": 1, "data_capacity": 1},
    ],
)
def test_malformed_requests_end_only_their_connection(
    store: StoreProcess, frame: dict[str, object]
) -> None:
    client = _make_slot(store)
    bad = StoreClient(0, store.address, store.token)
    protocol.send_frame(bad.sock, frame, b"x" * 8 if frame["op"] == "put_chunk" else None)
    assert _closed_by_store(bad.sock)
    bad.close()
    assert client.call("ping")["node"] == 0
    client.close()


def test_a_chunk_outside_the_replica_is_refused(store: StoreProcess) -> None:
    client = StoreClient(0, store.address, store.token)
    manifest = {
        "format": "gemini-shard/1",
        "iteration": 1,
        "rank": 5,
        "data_bytes": 16,
        "block_bytes": 16,
        "blocks": ["0"],
        "shard_checksum": "0",
        "tensors": [],
        "values": {},
    }
    client.put_begin(5, sign(json.dumps(manifest).encode(), manifest_key(store.token)))
    client.put_chunk(8, b"x" * 16)
    assert _closed_by_store(client.sock)
    client.close()
    with contextlib.closing(StoreClient(0, store.address, store.token)) as other:
        assert other.holdings() == {5: []}


def test_the_owner_keeps_no_temporary_folder_once_the_store_serves() -> None:
    temporary = Path(tempfile.gettempdir())
    before = set(temporary.glob("gemini-store-*"))
    owner = StoreProcess(0, protocol.make_token())
    owner.start()
    try:
        assert set(temporary.glob("gemini-store-*")) == before
    finally:
        owner.stop()
