"""The agreement on the newest iteration every rank has committed, as ``save()`` reads it."""

from __future__ import annotations

import threading

import pytest
import torch

from real.engine.replication import ReplicationManager
from real.trainer.inprocess import is_peer_failure


class Work:
    """A finished (or failed) asynchronous all-reduce."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def wait(self) -> None:
        if self.error is not None:
            raise self.error


def manager(reductions: list[tuple[Work, torch.Tensor]], agreed: int | None) -> ReplicationManager:
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
