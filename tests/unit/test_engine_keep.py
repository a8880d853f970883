"""The agreement on the newest iteration every rank has committed, as ``save()`` reads it."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
import torch

import real.trainer.inprocess as inprocess
from real.engine.replication import ReplicationManager
from real.trainer.inprocess import AgentChannel, is_peer_failure
from shared.errors import AttemptAborted


class Work:
    """A finished (or failed) asynchronous all-reduce."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def wait(self) -> None:
        if self.error is not None:
            raise self.error

    def get_future(self) -> torch.futures.Future[None]:  # how a trainer in an attempt waits
        future: torch.futures.Future[None] = torch.futures.Future()
        if self.error is not None:
            future.set_exception(self.error)
        else:
            future.set_result(None)
        return future


def manager(reductions: list[tuple[Any, torch.Tensor]], agreed: int | None) -> ReplicationManager:
    replication = ReplicationManager.__new__(ReplicationManager)
    replication.node, replication.rank = 3, 3
    replication._keep_lock = threading.Lock()
    replication._reductions = reductions
    replication.agreed = agreed
    return replication


def test_finished_reductions_advance_the_agreement() -> None:
    replication = manager([(Work(), torch.tensor([22])), (Work(), torch.tensor([23]))], 21)
    assert replication.keep() == 23
    assert replication.keep() == 23  # nothing pending: the agreement stays


def test_a_failed_reduction_forbids_the_capture() -> None:
    """A peer died during the reduction of 23: other ranks may have completed it and dropped
    22, so this rank must not capture under 22 (it would overwrite 23, and no iteration would
    be held by every rank). It raises what a peer's failure raises."""
    failed = RuntimeError("[gloo/transport/tcp/pair.cc:537] Connection reset by peer")
    replication = manager([(Work(), torch.tensor([22])), (Work(failed), torch.tensor([23]))], 21)
    with pytest.raises(ConnectionError, match="a peer is gone") as raised:
        replication.keep()
    assert is_peer_failure(raised.value)
    assert replication.agreed == 22  # what completed here still counts


def test_a_restore_of_a_committed_iteration_agrees_on_it_and_one_only_captured_does_not() -> None:
    """After a restore of what every rank committed, the next capture keeps it; after a
    restore of what some rank had only captured (its replicas may not exist), nothing is
    agreed, so each rank's capture spares its newest committed slot instead."""
    replication = manager([(Work(), torch.tensor([22]))], 21)
    replication.restored(25)
    assert (replication.keep(), replication.last_committed) == (25, 25)
    replication.restored(26, committed=False)
    assert (replication.keep(), replication.last_committed) == (None, None)


class HungWork:
    """An all-reduce whose peer vanished without closing its sockets: it never completes."""

    def __init__(self) -> None:
        self.future: torch.futures.Future[None] = torch.futures.Future()

    def get_future(self) -> torch.futures.Future[None]:
        return self.future

    def wait(self) -> None:  # what the wait was before: until gloo's timeout
        self.future.wait()


def test_an_abort_ends_the_wait_for_a_reduction_that_never_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A survivor waiting in ``save()`` for the agreement of a reduction whose peer vanished
    leaves the attempt when its agent aborts it, keeping its process, instead of waiting for
    gloo's timeout until the agent kills it."""
    ours, theirs = socket.socketpair()
    channel = AgentChannel(theirs)
    monkeypatch.setattr(inprocess, "_current", (channel, 4))
    hung = HungWork()
    replication = manager([(Work(), torch.tensor([22])), (hung, torch.tensor([23]))], 21)
    raised: list[BaseException] = []

    def save() -> None:
        try:
            replication.keep()
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=save, daemon=True)
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()  # waiting for the reduction
    ours.sendall(b'{"op":"abort","attempt":4}\n')
    thread.join(10)
    try:
        assert not thread.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], AttemptAborted)
        assert replication.agreed == 22  # what completed here still counts
    finally:
        hung.future.set_result(None)
        channel.close()
        ours.close()


def test_an_abort_ends_the_wait_for_a_replica_sent_to_a_vanished_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``save()`` waits for the previous checkpoint's replicas. When the peer's node vanished
    without closing its sockets, the sender waits on them for good: the agent's abort ends the
    survivor's wait, which then keeps its process (the agent's kill came at 2 s before)."""
    ours, theirs = socket.socketpair()
    channel = AgentChannel(theirs)
    monkeypatch.setattr(inprocess, "_current", (channel, 6))
    replication = ReplicationManager.__new__(ReplicationManager)
    replication.node, replication.rank = 1, 1
    replication._idle, replication._flush = threading.Event(), threading.Event()  # sending
    raised: list[BaseException] = []

    def save() -> None:
        try:
            replication.wait(check=inprocess.check_abort)
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=save, daemon=True)
    thread.start()
    try:
        assert replication._flush.wait(10.0)  # it asks the sender to send what is left at once
        assert thread.is_alive()  # and waits for it
        ours.sendall(b'{"op":"abort","attempt":6}\n')
        thread.join(10)
        assert not thread.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], AttemptAborted)
        assert not replication._flush.is_set()
    finally:
        channel.close()
        ours.close()


def test_a_replication_wait_ends_when_the_sender_is_done_or_at_its_bound() -> None:
    replication = ReplicationManager.__new__(ReplicationManager)
    replication.node, replication.rank = 1, 1
    replication._idle, replication._flush = threading.Event(), threading.Event()
    checks: list[float] = []
    began = time.monotonic()
    assert not replication.wait(0.1, check=lambda: checks.append(time.monotonic()))
    assert 0.1 <= time.monotonic() - began < 1.0 and len(checks) >= 2
    threading.Timer(0.05, replication._idle.set).start()
    assert replication.wait(5.0, check=lambda: None)
    assert replication.wait(5.0)  # idle already: at once
