"""Slots, capture, commit and local restore against an in-process node store."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from real.engine.capture import Capturer
from real.engine.client import StoreClient
from real.engine.manifest import seal
from real.engine.profiler import CommProfiler
from real.engine.protocol import make_token
from real.engine.restore import read_local
from real.engine.shm import SHM_DIR, in_progress_index, newest_committed
from real.engine.store import NodeStore
from shared.errors import NodeStoreError, VerificationError


def _state(iteration: int) -> dict[str, object]:
    generator = torch.Generator().manual_seed(iteration)
    return {
        "model": {"w": torch.randn(256, 256, generator=generator), "b": torch.zeros(3)},
        "optim": {"state": {0: {"step": torch.tensor(float(iteration))}}, "lr": [0.1, 0.2]},
        "iteration": iteration,
    }


@pytest.fixture
def store() -> Iterator[NodeStore]:
    node_store = NodeStore(0, make_token()).start()
    yield node_store
    node_store.stop()
    assert not [p for p in os.listdir(SHM_DIR) if p.startswith(node_store.prefix)]


@pytest.fixture
def capturer(store: NodeStore) -> Iterator[Capturer]:
    client = StoreClient(0, store.address, store.token)
    capture = Capturer(client, owner=3)
    yield capture
    capture.close()
    client.close()


def _checkpoint(capturer: Capturer, iteration: int) -> None:
    captured = capturer.capture(iteration, _state(iteration))
    seal(captured.manifest, captured.slot.data(captured.nbytes))
    raw = captured.manifest.to_bytes()
    import xxhash

    captured.slot.write_manifest(raw, xxhash.xxh3_64_intdigest(raw), captured.nbytes)
    capturer.commit(captured)


def _assert_equal(restored: dict[str, object], iteration: int) -> None:
    expected = _state(iteration)
    assert torch.equal(restored["model"]["w"], expected["model"]["w"])  # type: ignore[index]
    assert torch.equal(
        restored["optim"]["state"][0]["step"],  # type: ignore[index]
        expected["optim"]["state"][0]["step"],  # type: ignore[index]
    )
    assert restored["optim"]["lr"] == [0.1, 0.2]  # type: ignore[index]
    assert restored["iteration"] == iteration


def test_capture_and_local_restore_round_trip_bitwise(capturer: Capturer) -> None:
    for iteration in (1, 2, 3):
        _checkpoint(capturer, iteration)
    assert newest_committed(capturer.slots) is not None
    _assert_equal(read_local(capturer.slots, 3, 3), 3)
    _assert_equal(read_local(capturer.slots, 3, 2), 2)  # the other slot still holds 2


def test_a_capture_that_never_commits_leaves_the_last_commit_intact(
    capturer: Capturer, store: NodeStore
) -> None:
    _checkpoint(capturer, 1)
    _checkpoint(capturer, 2)
    capturer.capture(3, _state(3))  # "crash" before sealing and committing
    assert store.holdings() == {3: [2]}
    _assert_equal(read_local(capturer.slots, 3, 2), 2)
    # The next capture goes to the same in-progress slot, never over iteration 2.
    assert in_progress_index(capturer.slots) != newest_committed(capturer.slots)
    _checkpoint(capturer, 4)
    assert store.holdings() == {3: [2, 4]}


def test_a_flipped_byte_in_a_slot_is_detected(capturer: Capturer) -> None:
    _checkpoint(capturer, 1)
    slot = capturer.slots[newest_committed(capturer.slots) or 0]
    assert slot is not None
    slot.data()[100] ^= 0xFF
    with pytest.raises(VerificationError, match="block 0"):
        read_local(capturer.slots, 3, 1)


def test_a_restarted_trainer_maps_the_same_slots(capturer: Capturer, store: NodeStore) -> None:
    _checkpoint(capturer, 7)
    capturer.close()
    client = StoreClient(0, store.address, store.token)
    again = Capturer(client, owner=3)
    try:
        _assert_equal(read_local(again.slots, 3, 7), 7)
    finally:
        again.close()
        client.close()


def test_state_growth_reallocates_only_the_in_progress_slot(
    capturer: Capturer, store: NodeStore
) -> None:
    _checkpoint(capturer, 1)
    bigger = _state(2)
    bigger["extra"] = torch.ones(1 << 20)
    captured = capturer.capture(2, bigger)
    assert captured.slot.state().data_capacity >= captured.nbytes
    _assert_equal(read_local(capturer.slots, 3, 1), 1)
    client = StoreClient(0, store.address, store.token)
    with pytest.raises(NodeStoreError, match="newest committed"):
        index = newest_committed(capturer.slots)
        client.call("ensure", owner=3, index=index, manifest_capacity=1, data_capacity=1 << 30)
    client.close()


def test_memory_use_is_reported(capturer: Capturer, store: NodeStore) -> None:
    _checkpoint(capturer, 1)
    stats = capturer.client.stats()
    assert stats["memory_bytes"] == store.memory_bytes() > 256 * 256 * 4
    assert 0 < stats["fraction"] < 1


def test_profiler_turns_comm_intervals_into_idle_spans() -> None:
    now = [0.0]
    profiler = CommProfiler(iterations=2, clock=lambda: now[0])
    profiler.iteration_begins()
    for _ in range(2):
        begin = now[0]
        profiler.record(begin + 0.2, begin + 0.5)
        profiler.record(begin + 0.4, begin + 0.6)
        now[0] = begin + 1.0
        profiler.iteration_begins()
    assert profiler.done
    spans = [(round(s.start_s, 6), round(s.duration_s, 6)) for s in profiler.spans or ()]
    assert spans == [(0.0, 0.2), (0.6, 0.4)]
    assert profiler.summary()["idle_fraction"] == pytest.approx(0.6)


def test_the_iteration_every_rank_committed_is_never_overwritten(
    capturer: Capturer, store: NodeStore
) -> None:
    _checkpoint(capturer, 1)
    _checkpoint(capturer, 2)  # committed here, but (say) not yet by every rank: keep 1
    captured = capturer.capture(3, _state(3), keep=1)
    assert store.holdings() == {3: [1]}
    _assert_equal(read_local(capturer.slots, 3, 1), 1)
    assert captured.keep == 1


def test_a_finished_capture_is_complete_and_restorable_before_it_is_sealed(
    capturer: Capturer, store: NodeStore
) -> None:
    """save() returns with the slot marked complete and its signed layout in place: a restore
    trusting this job's memory reads it back bitwise though no checksum exists yet; one that
    verifies every block refuses it, without calling it corrupted."""
    _checkpoint(capturer, 1)
    capturer.capture(2, _state(2))
    assert store.holdings() == {3: [1]}
    assert store.holdings(complete=True) == {3: [1, 2]}
    _assert_equal(read_local(capturer.slots, 3, 2, verify_data=False), 2)
    with pytest.raises(VerificationError, match="no committed copy of iteration 2 to verify"):
        read_local(capturer.slots, 3, 2)
    # The next capture spares the complete 2 when told to keep it, else the committed 1.
    held = [slot.state().held if slot is not None else None for slot in capturer.slots]
    assert held[in_progress_index(capturer.slots, keep=2)] == 1
    assert held[in_progress_index(capturer.slots, keep=1)] == 2
    assert held[in_progress_index(capturer.slots)] == 2


def test_a_capture_cut_short_is_not_complete(capturer: Capturer, store: NodeStore) -> None:
    """A trainer killed mid-capture leaves a slot that counts for nothing: invalidated first,
    marked complete only after the last byte."""
    _checkpoint(capturer, 1)

    def die(phase: str, iteration: int) -> None:
        raise KeyboardInterrupt  # stands in for the kill, mid-copy

    capturer.hook = die
    with pytest.raises(KeyboardInterrupt):
        capturer.capture(2, _state(2))
    capturer.hook = None
    assert store.holdings(complete=True) == {3: [1]}
    with pytest.raises(VerificationError):
        read_local(capturer.slots, 3, 2, verify_data=False)


def test_one_local_slot_holds_each_capture_in_the_same_slot(store: NodeStore) -> None:
    """``checkpoint.local_slots: 1``: every capture overwrites the one slot, the iteration every
    rank committed included (its replicas on the peers stand in), and a growing state
    reallocates that slot, which the two-slot rule refuses."""
    client = StoreClient(0, store.address, store.token)
    capturer = Capturer(client, owner=3, local_slots=1)
    try:
        _checkpoint(capturer, 1)
        one_slot = store.memory_bytes()
        _checkpoint(capturer, 2)
        assert capturer.slots[1] is None and store.memory_bytes() == one_slot
        assert store.holdings() == {3: [2]}
        captured = capturer.capture(3, _state(3), keep=2)  # keep 2 is the peers' job now
        assert captured.slot_index == 0
        assert store.holdings() == {3: []}
        assert store.holdings(complete=True) == {3: [3]}
        _checkpoint(capturer, 4)
        bigger = _state(5)
        bigger["extra"] = torch.ones(1 << 20)
        grown = capturer.capture(5, bigger, keep=4)
        assert grown.slot_index == 0 and grown.slot.state().data_capacity >= grown.nbytes
        assert capturer.slots[1] is None
    finally:
        capturer.close()
        client.close()
    with pytest.raises(ValueError, match="local_slots must be 1 or 2"):
        Capturer(client, owner=3, local_slots=3)
