"""Agent processes killed with SIGKILL: the root is re-elected and the node reported lost.

The threaded tests in ``test_coord_kv.py`` simulate death by stopping threads; here two real
candidate processes (heartbeat + election, as a node agent runs them) share the embedded store,
and the leader is SIGKILLed, so nothing of it runs any cleanup.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from real.coord import keys
from real.coord.connect import connect_kv
from real.coord.detector import FailureDetector
from real.coord.kvserver import StoreServer

# Long enough that 1 s of scheduling slack (three Python processes on a slow machine) still
# tells "within the lease" from "after another lease".
LEASE_TIMEOUT_S = 3.0
SLACK_S = 1.0

AGENT = """
import sys, threading
from real.coord import Election, Heartbeat, connect_kv
url, node, ttl = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
kv = connect_kv(url)
Heartbeat(kv, node, interval_s=ttl / 5, lease_timeout_s=ttl).start()
Election(kv, node, ttl_s=ttl, poll_s=0.05).campaign(timeout_s=0)
print("READY", flush=True)
threading.Event().wait(60)  # the test kills us long before
"""


@pytest.fixture
def store_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("GEMINI_TOKEN", os.urandom(16).hex())  # the agents inherit it
    with StoreServer() as server:
        yield server.url


def test_sigkilled_root_is_replaced_and_its_node_reported_lost(store_url: str) -> None:
    agents = {
        node: subprocess.Popen(
            [sys.executable, "-c", AGENT, store_url, str(node), str(LEASE_TIMEOUT_S)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for node in (0, 1)
    }
    kv = connect_kv(store_url)
    try:
        for agent in agents.values():
            assert agent.stdout is not None and agent.stdout.readline().strip() == b"READY"
        detector = FailureDetector(kv, LEASE_TIMEOUT_S, expected_nodes=[0, 1], poll_s=0.02)
        assert detector.poll() == []

        def leader() -> int | None:
            raw = kv.get(keys.LEADER_KEY)
            return None if raw is None else int(keys.decode(raw)["node"])

        # campaign(timeout_s=0) returns before the background candidate's first try
        deadline = time.monotonic() + LEASE_TIMEOUT_S + 2.0
        while (first := leader()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first in (0, 1)
        os.kill(agents[first].pid, signal.SIGKILL)
        killed = time.monotonic()
        found = detector.wait(timeout_s=LEASE_TIMEOUT_S + 2.0)
        detected_s = time.monotonic() - killed
        assert [(d.kind, d.node) for d in found] == [("hardware", first)]
        bound = LEASE_TIMEOUT_S + SLACK_S
        assert detected_s <= bound, f"lost node noticed after {detected_s:.2f} s"

        deadline = killed + LEASE_TIMEOUT_S + 2.0
        while leader() != 1 - first:
            assert time.monotonic() < deadline, "no new root within the lease timeout + 2 s"
            time.sleep(0.02)
        elected_s = time.monotonic() - killed
        assert elected_s <= bound + 0.05, f"re-election took {elected_s:.2f} s"  # + one poll
    finally:
        kv.close()
        for agent in agents.values():
            if agent.poll() is None:
                agent.terminate()
            try:
                agent.wait(timeout=5)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=5)
            if agent.stdout is not None:
                agent.stdout.close()
