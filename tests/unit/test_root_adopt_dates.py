"""A root elected after its predecessor's node died dates each member it finds lost from that
node's last sign of life, as the detector dates the losses it sees itself: a node whose agent
does not answer from its heartbeat's time, a node whose heartbeat key lapsed a lease before the
adoption. A loss dated at the adoption (latency 0) made a lost root's node look found at once
and left the wait for its lease out of that failure's downtime."""

from __future__ import annotations

import time
from typing import Any

import pytest

from real.agent.root import RootAgent
from real.coord import keys
from real.coord.detector import FailureDetector

LEASE_S = 3.0


class PrefixKV:
    def __init__(self, values: dict[str, dict[str, Any]]) -> None:
        self.values = {key: keys.encode(value) for key, value in values.items()}

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self.values.items() if k.startswith(prefix)}


def adopting_root(heartbeats: dict[int, float], unanswered: list[int]) -> RootAgent:
    kv = PrefixKV({keys.node_key(n): {"beat": 7, "time": at} for n, at in heartbeats.items()})
    root: Any = RootAgent.__new__(RootAgent)
    root.node_id, root.lease_timeout_s = 2, LEASE_S
    root.detector = FailureDetector(kv, LEASE_S)  # type: ignore[arg-type]
    root._probe = lambda nodes: [n for n in nodes if n in unanswered]
    return root  # type: ignore[no-any-return]


def test_adopted_losses_are_dated_from_the_last_sign_of_life() -> None:
    now = time.time()
    # slot 0's node (the old root) lapsed; node 1 still has a heartbeat of 1.5 s ago but its
    # agent does not answer; nodes 2 (the new root's own) and 3 are alive.
    root = adopting_root({1: now - 1.5, 2: now, 3: now - 0.1}, unanswered=[1])
    record = {"attempt": 4, "state": "running", "members": {"0": 0, "1": 1, "2": 2, "3": 3}}
    lost = {d.node: d for d in root._adopt(record)}
    assert sorted(lost) == [0, 1]
    assert lost[0].detected_by == "lease"
    assert lost[0].latency_s == pytest.approx(LEASE_S, abs=1e-6)
    assert lost[1].detected_by == "probe"
    assert lost[1].latency_s == pytest.approx(lost[1].detected_at - (now - 1.5), abs=1e-6)
    assert lost[1].latency_s >= 1.5
    assert root.detector.expected_nodes == [2, 3]
    assert root.detector.attempt == 4
