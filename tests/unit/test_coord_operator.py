"""The cloud operator's standby pool and provisioning delays, on an explicit clock."""

from __future__ import annotations

import random
import threading

import pytest

from real.coord.operator import CloudOperator
from shared.scenario import ClusterConfig


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_standby_then_provisioned_then_refilled() -> None:
    clock = FakeClock()
    operator = CloudOperator(
        nodes=4, standby_nodes=2, replacement_s=5.0, provisioning_delay_s=60.0, clock=clock
    )
    assert operator.standby_ready() == 2

    first = operator.request_replacement(1)
    assert (first.node_id, first.node_rank, first.replaces) == (4, 1, 1)
    assert (first.source, first.delay_s) == ("standby", 5.0)

    clock.now += 10.0
    second = operator.request_replacement(3)
    assert (second.node_id, second.node_rank, second.source) == (5, 3, "standby")
    assert second.ready_at == clock.now + 5.0
    assert operator.standby_ready() == 0

    # Pool empty: the spare ordered at t=100 (first request) is ready at 160, then 5 s to join.
    clock.now += 10.0
    third = operator.request_replacement(0)
    assert third.source == "provisioned"
    assert third.ready_at == pytest.approx(100.0 + 60.0 + 5.0)

    # A replacement that fails is replaced in turn, and its successor keeps the same rank.
    clock.now = 500.0
    fourth = operator.request_replacement(first.node_id)
    assert (fourth.node_rank, fourth.replaces, fourth.source) == (1, 4, "standby")
    assert [r.node_id for r in operator.replacements] == [4, 5, 6, 7]


def test_no_standby_pool_provisions_every_time() -> None:
    clock = FakeClock(0.0)
    operator = CloudOperator(
        nodes=2, standby_nodes=0, replacement_s=1.0, provisioning_delay_s=30.0, clock=clock
    )
    replacement = operator.request_replacement(0)
    assert (replacement.source, replacement.delay_s) == ("provisioned", 31.0)


def test_jitter_is_bounded_and_reproducible() -> None:
    def delays(seed: int) -> list[float]:
        operator = CloudOperator(
            nodes=4,
            standby_nodes=100,
            replacement_s=240.0,
            provisioning_delay_s=600.0,
            replacement_jitter_s=180.0,
            rng=random.Random(seed),
            clock=FakeClock(),
        )
        return [operator.request_replacement(n % 4).delay_s for n in range(50)]

    assert delays(7) == delays(7)
    assert all(240.0 <= d <= 420.0 for d in delays(7))
    assert len(set(delays(7))) > 1


def test_from_scenario_and_errors() -> None:
    cluster = ClusterConfig(nodes=4, standby_nodes=1, replacement_s=2.0, provisioning_delay_s=9.0)
    operator = CloudOperator.from_scenario(cluster, clock=FakeClock(0.0))
    assert operator.request_replacement(2).delay_s == 2.0
    assert operator.request_replacement(3).delay_s == 2.0 + 9.0
    with pytest.raises(ValueError, match="node 17 is not part of this job"):
        operator.request_replacement(17)
    with pytest.raises(ValueError, match="replacement_s"):
        CloudOperator(nodes=4, standby_nodes=1, replacement_s=-1.0, provisioning_delay_s=0.0)


def test_wait_ready_waits_for_the_clock_and_can_be_stopped() -> None:
    operator = CloudOperator(nodes=2, standby_nodes=1, replacement_s=0.05, provisioning_delay_s=0)
    replacement = operator.request_replacement(0)
    assert operator.wait_ready(replacement)
    late = operator.request_replacement(1)
    stop = threading.Event()
    stop.set()
    assert late.delay_s > 0 and not operator.wait_ready(late, stop)
