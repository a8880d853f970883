"""One pass per byte: hashing while sending and receiving, restores into the live state, the
capture's reused layout (in-process stores)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash

from real.engine.capture import Capturer
from real.engine.client import PlacedDataError, StoreClient
from real.engine.manifest import (
    BlockHasher,
    Manifest,
    block_checksums,
    layout,
    seal,
    seal_with,
    sign,
)
from real.engine.protocol import make_token
from real.engine.replication import ReplicationManager
from real.engine.restore import read_local, read_peer
from real.engine.shm import SHM_DIR, best_slot
from real.engine.store import NodeStore
from real.engine.tiers import persistent_exists
from shared.errors import NodeStoreError, VerificationError
from shared.placement import plan_placement
from shared.scenario import Scenario

BLOCK = 1 << 20


def _state(iteration: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(iteration)
    return {
        "model": {
            "w": torch.randn(700, 700, generator=generator),  # ~1.9 MiB: spans blocks
            "b": torch.randn(7, generator=generator),
            "h": torch.randn(33, generator=generator).to(torch.bfloat16),
        },
        "optim": {"state": {0: {"step": torch.tensor(float(iteration))}}},
        "position": 10 * iteration,
    }


def _live() -> dict[str, Any]:
    """A live state of the same layout, other values."""
    live = _state(999)
    live["position"] = -1
    return live


def _tensors(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            out.update(_tensors(value, f"{prefix}/{key}"))
        return out
    return {}


def _assert_restored(restored: dict[str, Any], iteration: int) -> None:
    want = _tensors(_state(iteration))
    got = _tensors(restored)
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    assert restored["position"] == 10 * iteration


@pytest.fixture
def stores() -> Iterator[tuple[NodeStore, NodeStore]]:
    token = make_token()
    pair = NodeStore(0, token).start(), NodeStore(1, token).start()
    yield pair
    for store in pair:
        store.stop()
        assert not [p for p in os.listdir(SHM_DIR) if p.startswith(store.prefix)]


@pytest.fixture
def rig(stores: tuple[NodeStore, NodeStore]) -> Iterator[dict[str, Any]]:
    local, remote = stores
    client = StoreClient(0, local.address, local.token)
    capturer = Capturer(client, owner=0)
    scenario = Scenario.model_validate(
        {"name": "inplace", "cluster": {"nodes": 2}, "checkpoint": {"replicas": 2}}
    )
    manager = ReplicationManager(
        scenario, plan_placement(2, 2), 0, 0, capturer, [local.address, remote.address], local.token
    )
    peer = StoreClient(1, remote.address, remote.token)
    yield {"capturer": capturer, "manager": manager, "peer": peer, "remote": remote}
    manager.close()
    peer.close()
    capturer.close()
    client.close()


def _replicate(rig: dict[str, Any], iteration: int) -> None:
    captured = rig["capturer"].capture(iteration, _state(iteration))
    assert rig["manager"]._finish(captured, flushing=True)
    assert rig["manager"].last_committed == iteration


# -- hashing while the bytes pass ---------------------------------------------------------------


@pytest.mark.parametrize("piece", [BLOCK, 300_000, 4 * BLOCK + 5])
def test_block_hasher_matches_a_separate_pass(piece: int) -> None:
    data = memoryview(os.urandom(3 * BLOCK + 12345))
    hasher = BlockHasher(len(data), BLOCK)
    for start in range(0, len(data), piece):
        hasher.update(start, data[start : start + piece])
    assert hasher.finish() == block_checksums(data, BLOCK)  # every block hashed on the fly


def test_block_hasher_hashes_out_of_order_and_repeated_blocks_from_the_data() -> None:
    data = memoryview(os.urandom(2 * BLOCK + 10))
    hasher = BlockHasher(len(data), BLOCK)
    hasher.update(BLOCK + 100, data[BLOCK + 100 : 2 * BLOCK])  # block 1 starts mid-way
    hasher.update(0, data[:BLOCK])
    hasher.update(0, data[:10])  # block 0 again
    hasher.update(2 * BLOCK, data[2 * BLOCK :])
    with pytest.raises(ValueError, match="block 0 was not hashed"):
        hasher.finish()
    assert hasher.finish(data) == block_checksums(data, BLOCK)


def test_a_layout_manifest_parses_only_as_a_layout() -> None:
    key = b"k" * 32
    planned = layout(3, 0, {"w": torch.zeros(10)}, {"p": 1}, key)
    raw = planned.to_bytes()
    parsed = Manifest.from_bytes(raw, key=key, sealed=False)
    assert parsed.blocks == [] and parsed.same_layout(planned)
    with pytest.raises(VerificationError, match="do not cover"):
        Manifest.from_bytes(raw, key=key)


def test_replication_hashes_once_per_side_and_seals_after_the_first_byte(
    rig: dict[str, Any],
) -> None:
    _replicate(rig, 1)
    _replicate(rig, 2)
    capturer, remote = rig["capturer"], rig["remote"]
    slot = best_slot(capturer.slots, 2)
    assert slot is not None
    sealed = Manifest.from_bytes(slot.manifest_bytes(), key=capturer.client.manifest_key)
    data = slot.data(sealed.data_bytes)
    assert sealed.blocks == block_checksums(data, sealed.block_bytes)  # hashed while sent
    replica = remote.held_slot(0, 2)
    assert replica is not None
    assert replica.manifest_bytes() == slot.manifest_bytes()
    assert bytes(replica.data(sealed.data_bytes)) == bytes(data)
    sender = rig["manager"].costs.snapshot()
    assert "seal: hash every block (no peers)" not in sender  # no separate pass
    assert sender["send: hash while sending"]["bytes"] == 2 * sealed.data_bytes
    store = remote.costs.snapshot()
    assert store["store: hash while receiving"]["bytes"] == 2 * sealed.data_bytes


class _CountingSocket:
    """A client's socket that counts the bytes handed to ``sendall``."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.sent = sock, 0

    def sendall(self, data: Any) -> None:
        self.sock.sendall(data)
        self.sent += memoryview(data).nbytes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_the_sender_hashes_each_piece_once_it_is_in_the_socket(rig: dict[str, Any]) -> None:
    """Hashed after the kernel's copy has read it (from cache, about 1.5x the rate of a hash
    that reads the piece from memory itself), and still the bytes the store receives."""
    capturer, remote = rig["capturer"], rig["remote"]
    captured = capturer.capture(1, _state(1))
    raw = captured.layout_raw
    data = captured.slot.data(captured.nbytes)
    client = StoreClient(1, remote.address, remote.token)
    counting = _CountingSocket(client.sock)
    client.sock = counting  # type: ignore[assignment]
    hasher = BlockHasher(captured.nbytes, BLOCK)
    seen: list[tuple[int, int, int]] = []  # offset, size, bytes sent when it was hashed

    def on_piece(offset: int, piece: memoryview) -> None:
        seen.append((offset, len(piece), counting.sent))
        hasher.update(offset, piece)

    try:
        client.put_begin(0, raw)
        before = counting.sent
        client.put_chunk(0, data, on_piece, BLOCK)
        header = seen[0][2] - before - seen[0][1]  # the frame's header went out first
        assert len(seen) == -(-captured.nbytes // BLOCK)  # pieces end at block boundaries
        for offset, size, sent in seen:
            assert sent - before - header == offset + size  # sent, then hashed
        digests = hasher.finish()  # every block hashed on the fly
        assert digests == block_checksums(data, BLOCK)
        seal_with(captured.manifest, digests)
        client.put_end(captured.manifest.to_bytes())  # the store verified every block
    finally:
        client.close()
    assert remote.held_slot(0, 1) is not None


def test_a_sealed_manifest_of_another_shard_is_refused(rig: dict[str, Any]) -> None:
    _replicate(rig, 1)
    capturer, remote = rig["capturer"], rig["remote"]
    slot = best_slot(capturer.slots, 1)
    assert slot is not None
    key = capturer.client.manifest_key
    sealed = Manifest.from_bytes(slot.manifest_bytes(), key=key)
    data = bytes(slot.data(sealed.data_bytes))
    begin = json.loads(Manifest(2, 0, sealed.tensors, {}, sealed.data_bytes).to_bytes())
    client = StoreClient(1, remote.address, remote.token)
    try:
        client.put_begin(0, sign(json.dumps(begin, separators=(",", ":")).encode(), key))
        client.put_chunk(0, data)
        with pytest.raises(Exception, match="describes another shard"):
            client.put_end(slot.manifest_bytes())  # iteration 1's, after a begin of 2
    finally:
        client.close()
    assert remote.holdings() == {0: [1]}


# -- restores into the live state ----------------------------------------------------------------


def test_a_local_restore_copies_into_the_live_tensors(rig: dict[str, Any]) -> None:
    _replicate(rig, 1)
    live = _live()
    objects = _tensors(live)
    restored = read_local(rig["capturer"].slots, 0, 1, into=live, verify_data=False)
    _assert_restored(restored, 1)
    assert all(_tensors(restored)[name] is tensor for name, tensor in objects.items())


def test_tensors_that_do_not_fit_come_back_fresh(rig: dict[str, Any]) -> None:
    _replicate(rig, 1)
    live = _live()
    live["model"]["w"] = torch.zeros(70, 7000)  # another shape
    live["model"]["b"] = torch.zeros(7, dtype=torch.float64)  # another dtype
    # A meta tensor (a model built on the meta device): a copy into it would do nothing.
    meta = torch.empty(live["model"]["h"].shape, dtype=live["model"]["h"].dtype, device="meta")
    live["model"]["h"] = meta
    del live["optim"]  # an optimizer that has not stepped yet
    restored = read_local(rig["capturer"].slots, 0, 1, into=live)
    _assert_restored(restored, 1)
    assert restored["model"]["h"] is not meta and restored["model"]["h"].device.type == "cpu"
    assert restored["model"]["w"] is not live["model"]["w"]
    assert torch.equal(live["model"]["w"], torch.zeros(70, 7000))  # left alone
    assert restored["model"]["b"] is not live["model"]["b"]


def test_local_verification_is_a_choice(rig: dict[str, Any]) -> None:
    """Without ``verify_data`` a sealed slot's data is trusted (its manifest still checked)."""
    _replicate(rig, 1)
    slot = best_slot(rig["capturer"].slots, 1)
    assert slot is not None
    slot.data()[100] ^= 1
    with pytest.raises(VerificationError, match="block 0"):
        read_local(rig["capturer"].slots, 0, 1, into=_live())
    trusted = read_local(rig["capturer"].slots, 0, 1, into=_live(), verify_data=False)
    assert not torch.equal(trusted["model"]["w"], _state(1)["model"]["w"])


def test_a_peer_restore_streams_into_the_live_tensors(rig: dict[str, Any]) -> None:
    _replicate(rig, 1)
    live = _live()
    live["model"]["w"] = torch.zeros(700, 700).t()  # not contiguous: received aside
    objects = _tensors(live)
    restored = read_peer(rig["peer"], 0, 1, into=live)
    _assert_restored(restored, 1)
    assert all(_tensors(restored)[name] is tensor for name, tensor in objects.items())
    assert torch.equal(live["model"]["w"], _state(1)["model"]["w"])


def test_a_corrupted_replica_raises_after_placing_its_data(rig: dict[str, Any]) -> None:
    _replicate(rig, 1)
    replica = rig["remote"].held_slot(0, 1)
    replica.data()[5 * 4096] ^= 1
    with pytest.raises(PlacedDataError, match="block 0"):
        read_peer(rig["peer"], 0, 1, into=_live())
    # The connection stays usable, and a refused manifest places nothing.
    replica.data()[5 * 4096] ^= 1
    _assert_restored(read_peer(rig["peer"], 0, 1), 1)
    other = StoreClient(1, rig["remote"].address, rig["remote"].token)
    other.manifest_key = b"another job's key".ljust(32, b"!")
    live = _live()
    try:
        with pytest.raises(VerificationError, match="MAC"):
            read_peer(other, 0, 1, into=live)
        assert torch.equal(live["model"]["w"], _state(999)["model"]["w"])
        _assert_restored(read_peer(rig["peer"], 0, 1), 1)
    finally:
        other.close()


# -- fixed costs ---------------------------------------------------------------------------------


def test_the_capture_plans_its_layout_once_while_it_holds(rig: dict[str, Any]) -> None:
    capturer = rig["capturer"]
    first = capturer.capture(1, _state(1))
    second = capturer.capture(2, _state(2))
    assert second.manifest.tensors is first.manifest.tensors  # reused, not rebuilt
    assert second.manifest.values == {"position": 20}
    grown = _state(3)
    grown["model"]["extra"] = torch.ones(5)
    third = capturer.capture(3, grown)
    assert third.manifest.tensors is not first.manifest.tensors
    assert "model/extra" in [t.name for t in third.manifest.tensors]
    seal(third.manifest, third.slot.data(third.nbytes))
    raw = third.manifest.to_bytes()
    third.slot.write_manifest(raw, xxhash.xxh3_64_intdigest(raw), third.nbytes)
    capturer.commit(third)
    assert torch.equal(read_local(capturer.slots, 0, 3)["model"]["extra"], torch.ones(5))


def test_a_persistent_tier_that_was_never_written_is_not_opened(tmp_path: Path) -> None:
    assert not persistent_exists(str(tmp_path / "persistent"))
    assert not persistent_exists(f"file://{tmp_path}/persistent")
    (tmp_path / "persistent").mkdir()
    assert persistent_exists(str(tmp_path / "persistent"))
    assert persistent_exists("s3://bucket/run")  # remote: may hold checkpoints


def test_a_pipelined_put_begin_refused_fails_the_replica(rig: dict[str, Any]) -> None:
    """put_begin goes without waiting for its reply; a refusal surfaces at put_end."""
    remote = rig["remote"]
    unsigned = layout(1, 0, {"w": torch.zeros(4)}, {}).to_bytes()  # no MAC: refused
    client = StoreClient(1, remote.address, remote.token)
    try:
        client.put_begin(0, unsigned, wait=False)
        with pytest.raises((NodeStoreError, OSError)):
            client.put_chunk(0, bytes(16))
            client.put_end()
    finally:
        client.close()
    assert remote.holdings() == {}
    _replicate(rig, 1)  # the sender's own pipelined replicas go through
    assert remote.holdings() == {0: [1]}


def test_a_prepared_replica_and_a_sealed_capture_count_as_complete_before_commit(
    rig: dict[str, Any],
) -> None:
    """Iteration 2 is captured, sealed and its replica verified, but the owner stops before
    committing it: both copies count as complete (not committed), and the peer serves its
    replica, saying it is not committed."""
    _replicate(rig, 1)
    capturer, manager, remote, peer = rig["capturer"], rig["manager"], rig["remote"], rig["peer"]

    def stop_before_commit(phase: str, iteration: int) -> None:
        if (phase, iteration) == ("replication", 2):
            manager._abandoned = True  # the job stops: the sender finishes this send only

    manager.hook = stop_before_commit
    assert manager._finish(capturer.capture(2, _state(2)), flushing=True)
    assert manager.last_committed == 1
    assert remote.holdings() == {0: [1]}
    assert remote.holdings(complete=True) == {0: [1, 2]}
    assert capturer.client.holdings(complete=True) == {0: [1, 2]}
    assert capturer.client.holdings() == {0: [1]}
    _assert_restored(read_peer(peer, 0, 2), 2)
    assert peer.served_committed is False
    _assert_restored(read_peer(peer, 0, 1), 1)
    assert peer.served_committed is True
    _assert_restored(read_local(capturer.slots, 0, 2), 2)  # sealed: verifiable


def test_persistence_reads_a_checkpoint_back_after_the_peers_committed_it(
    rig: dict[str, Any],
) -> None:
    """The persistent tier's read-back (a pass over the bytes) comes after the peers' commits,
    which a recovery needs; it came before them and held the replicas uncommitted."""
    seen: list[list[int]] = []

    def read_back(captured: Any) -> None:
        seen.append(rig["peer"].holdings().get(0, []))

    rig["manager"].on_commit = read_back
    _replicate(rig, 1)
    assert seen == [[1]], "the peer had committed its replica when persistence read it back"


def test_persistence_does_not_hash_a_slot_this_process_just_sealed(
    monkeypatch: pytest.MonkeyPatch, rig: dict[str, Any]
) -> None:
    from real.persistent import from_memory

    calls: list[dict[str, Any]] = []

    def reading(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return read_local(*args, **kwargs)

    monkeypatch.setattr(from_memory, "read_local", reading)
    submitted: list[int] = []
    tier: Any = from_memory.PersistentTier.__new__(from_memory.PersistentTier)
    tier.every, tier.capturer, tier.rank, tier._layouts = 1, rig["capturer"], 0, {1: {}}
    tier._cancelled = False
    tier.persister = type("P", (), {"submit": lambda self, i, state: submitted.append(i)})()
    rig["manager"].on_commit = tier.committed
    _replicate(rig, 1)
    assert submitted == [1] and [c["verify_data"] for c in calls] == [False]


def test_a_read_back_stops_between_tensors_once_cancelled(rig: dict[str, Any]) -> None:
    """A survivor's stop waits for the sender thread: the persistent tier's read-back on it
    stops before its next tensor once the job stopped, not after the whole state."""
    from shared.errors import ReadCancelled

    _replicate(rig, 1)
    asked: list[int] = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > 1  # the job stops after the first tensor

    with pytest.raises(ReadCancelled):
        read_local(rig["capturer"].slots, 0, 1, verify_data=False, cancelled=cancelled)
    assert len(asked) == 2
    _assert_restored(read_local(rig["capturer"].slots, 0, 1, cancelled=lambda: False), 1)


def test_a_cancelled_persistent_tier_reads_nothing_back(rig: dict[str, Any]) -> None:
    from real.persistent import from_memory

    submitted: list[int] = []
    tier: Any = from_memory.PersistentTier.__new__(from_memory.PersistentTier)
    tier.every, tier.capturer, tier.rank, tier._layouts = 1, rig["capturer"], 0, {1: {}}
    tier._cancelled = False
    tier.persister = type("P", (), {"submit": lambda self, i, state: submitted.append(i)})()
    tier.cancel()
    rig["manager"].on_commit = tier.committed
    _replicate(rig, 1)
    assert submitted == []
