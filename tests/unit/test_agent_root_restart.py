"""A node agent whose root fails (a store request timed out, say) starts a root again, which
adopts the job where it stands; after ``ROOT_FAILURES`` failures in a row it marks the job
failed with the last error, rather than keep the election's lease with no root running (the
job then waited for nobody until ``real.timeout_s``). And an agent's exit status on a signal."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from memory_kv import DictKV

from real.agent import jobkeys, node_agent
from real.agent.node_agent import NodeAgent
from real.coord import keys
from real.engine.eventlog import EventLog
from shared.errors import KVError


def record_kv() -> DictKV:
    """The store, as far as ``_fail_job`` uses it: the attempt record."""
    store = DictKV()
    store.put(jobkeys.ATTEMPT_KEY, keys.encode({"attempt": 3, "state": "running"}))
    return store


def agent_with_roots(
    monkeypatch: pytest.MonkeyPatch, outcomes: list[Exception | None]
) -> tuple[Any, list[int], list[tuple[str, dict[str, Any]]], DictKV]:
    """A NodeAgent (never run) whose roots end as ``outcomes`` say, one per root started."""
    store = record_kv()
    started: list[int] = []

    class Root:
        def __init__(self, *args: Any) -> None:
            started.append(len(started))

        def run_safely(self) -> Exception | None:
            return outcomes[len(started) - 1] if len(started) <= len(outcomes) else outcomes[-1]

    monkeypatch.setattr(node_agent, "RootAgent", Root)
    monkeypatch.setattr(node_agent, "connect_kv", lambda url: store)
    monkeypatch.setattr(node_agent, "ROOT_RESTART_WAIT_S", 0.0)
    emitted: list[tuple[str, dict[str, Any]]] = []
    made: Any = NodeAgent.__new__(NodeAgent)
    made.config = SimpleNamespace(
        node_id=0,
        kv_url="memory://",
        scenario=None,
        token="t",
        parent_pid=None,
        summarize=False,
        resume=True,
    )
    made.slot, made.run_dir = 0, None
    made.events = SimpleNamespace(emit=lambda kind, **details: emitted.append((kind, details)))
    made.stopping = threading.Event()
    return made, started, emitted, store


def test_a_failed_root_starts_again_and_adopts_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    error = KVError("etcd at http://127.0.0.1:2379 failed on /kv/txn: timed out")
    made, started, emitted, store = agent_with_roots(monkeypatch, [error, error, None])
    made._run_root(threading.Event())
    assert len(started) == 3  # two failures, then a root that ran the job to its end
    assert emitted == []
    assert keys.decode(store.data[jobkeys.ATTEMPT_KEY])["state"] == "running"


def test_a_root_failing_again_and_again_fails_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    made, started, emitted, store = agent_with_roots(monkeypatch, [RuntimeError("a bug")])
    made._run_root(threading.Event())
    assert len(started) == node_agent.ROOT_FAILURES
    record = keys.decode(store.data[jobkeys.ATTEMPT_KEY])
    assert record["state"] == "failed" and "a bug" in record["reason"]
    assert [kind for kind, _ in emitted] == ["run_finished"]
    assert emitted[0][1]["failed"] is True


def test_a_job_failed_by_its_agent_is_summarized(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The agent that marks the job failed after its root failed again and again writes the
    run's summary, as a root that ends a job does: ``report`` then names the failed run."""
    made, _, _, _ = agent_with_roots(monkeypatch, [RuntimeError("a bug")])
    made.config.summarize = True
    made.config.scenario = SimpleNamespace(name="handmade", seed=7)
    made.config.spec = SimpleNamespace(checkpointer="gemini")
    made.run_dir = tmp_path
    made.events = EventLog(tmp_path / "events" / "agent-node0.jsonl", t0=time.time(), node=0)
    made._run_root(threading.Event())
    made.events.close()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["scenario"] == "handmade" and summary["strategy"] == "gemini"
    assert "a bug" in summary["extra"]["failed"]
    merged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in merged] == ["run_finished"]


def test_a_root_told_to_stop_is_not_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    made, started, _, _ = agent_with_roots(monkeypatch, [RuntimeError("a bug")])
    stop = threading.Event()
    stop.set()  # leadership lost: the root stops and nobody starts another here
    made._run_root(stop)
    assert started == []


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_an_agent_stopped_by_ctrl_c_exits_130(
    monkeypatch: pytest.MonkeyPatch, signum: int, status: int
) -> None:
    """Ctrl-C (SIGINT) stops a hand-started agent with 130, as every command; a SIGTERM (a
    service manager's stop) is a clean end."""

    class Agent:
        def __init__(self, config: Any) -> None:
            self.stopped = threading.Event()

        def stop(self) -> None:
            self.stopped.set()

        def run(self) -> int:
            os.kill(os.getpid(), signum)
            assert self.stopped.wait(10)
            return 0

    monkeypatch.setattr(node_agent, "NodeAgent", Agent)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert node_agent.run_agent(SimpleNamespace()) == status  # type: ignore[arg-type]
    finally:
        for which, handler in handlers.items():
            signal.signal(which, handler)
