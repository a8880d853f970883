"""The root agent stops a job whose attempts make no progress: restart after restart restores
the same iteration, each attempt broken soon after it began, with no node lost. That is what a
model kept from an earlier attempt does (a DDP wrapper or FSDP2 sharding over its dead group):
whichever rank survived the attempt before fails, a different slot each time, or its
collectives break with no trainer exiting at all, so the per-slot crash loop never sees it.
And a job that never gets a live agent on every slot fails once its start's bound passes."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from real.agent.root import RootAgent, _Recovery
from real.coord.detector import Detection
from shared.scenario import RecoveryConfig

WINDOW_S = 30.0


class NoKV:
    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {}


def root() -> Any:
    """The part of a root agent ``_stuck`` reads and writes."""
    recovery = RecoveryConfig(crash_loop_restarts=3, crash_loop_window_s=WINDOW_S)
    return SimpleNamespace(
        kv=NoKV(),
        events=SimpleNamespace(emit=lambda *args, **kwargs: None),
        scenario=SimpleNamespace(recovery=recovery),
        stuck_streak=0,
        last_restart=None,
        attempt_began=1000.0,
        run_dir="RUN",
    )


def restart(agent: Any, iteration: int | None, *detections: Detection) -> str | None:
    """One recovery of ``detections``, restarting from ``iteration``: the root's verdict."""
    recovery = _Recovery(agent, {0: 0, 1: 1}, resumed=[])
    for detection in detections:
        recovery.failed[detection.node] = detection.kind
        recovery._detected(detection.node, detection, (detection.kind,))
    verdict = RootAgent._stuck(agent, recovery, iteration)
    agent.attempt_began += 100.0  # the next attempt begins
    return verdict


def exited(agent: Any, node: int, after_s: float = 3.0) -> Detection:
    at = agent.attempt_began + after_s
    return Detection("software", node, 0, -6, at + 0.05, at, f"exits/{node}/0", "exit")


def suspect(agent: Any, node: int, after_s: float = 3.0) -> Detection:
    at = agent.attempt_began + after_s
    return Detection("software", node, 0, None, at + 2.0, at, f"suspects/{node}/0", "suspect")


def lost(agent: Any, node: int) -> Detection:
    at = agent.attempt_began + 3.0
    return Detection("hardware", node, None, None, at + 0.2, at, None, "probe")


def test_attempts_failing_from_alternating_slots_without_progress_stop_the_job() -> None:
    agent = root()
    assert restart(agent, 20, exited(agent, 1, after_s=40.0)) is None  # the real failure
    for node in (0, 1):  # then each attempt's survivor of the one before fails, in turn
        assert restart(agent, 20, exited(agent, node)) is None
    verdict = restart(agent, 20, suspect(agent, 0))  # or its collectives break, nobody exits
    assert verdict is not None
    assert verdict.startswith("attempt loop: the last 3 attempts each restarted from iteration 20")
    assert "Build outside" in verdict and "RUN/logs/trainer-" in verdict


def test_progress_a_late_failure_or_a_lost_node_ends_the_streak() -> None:
    agent = root()
    restart(agent, 20, exited(agent, 1, after_s=40.0))
    restart(agent, 20, exited(agent, 0))
    restart(agent, 20, exited(agent, 1))
    assert restart(agent, 23, exited(agent, 0)) is None and agent.stuck_streak == 0  # committed
    restart(agent, 23, exited(agent, 1))
    restart(agent, 23, exited(agent, 0))
    # Trained past the window (a checkpoint every k iterations just missed): not stuck.
    assert restart(agent, 23, exited(agent, 1, after_s=WINDOW_S + 5)) is None
    assert agent.stuck_streak == 0
    restart(agent, 23, exited(agent, 1))
    restart(agent, 23, exited(agent, 0))
    assert restart(agent, 23, suspect(agent, 0), lost(agent, 1)) is None  # a storm, not a bug
    assert agent.stuck_streak == 0
    # Failures the injector scheduled are meant, however soon they come (crashes during
    # recovery, a baseline's crashes closer than its saves).
    for _ in range(4):
        recovery = _Recovery(agent, {0: 0, 1: 1}, resumed=[])
        detection = exited(agent, 1)
        recovery.failed[1] = "software"
        recovery.indices.append(3)  # the schedule's index, as the injector's record names it
        recovery.first_seen = detection.last_seen_at
        assert RootAgent._stuck(agent, recovery, 23) is None
        agent.attempt_began += 100.0
    assert agent.stuck_streak == 0
    # From scratch is one place too: the first such restart, then three more.
    for _ in range(4):
        verdict = restart(agent, None, exited(agent, 1))
    assert verdict is not None and "restarted from scratch" in verdict


def test_a_job_whose_slot_never_gets_an_agent_fails_naming_the_slot() -> None:
    """On a real cluster nothing else bounds the start: a node lost while the job started, or
    an agent never launched, left every other agent waiting forever."""
    import threading

    from memory_kv import DictKV

    from real.agent import jobkeys

    kv = DictKV()
    kv.put(f"{jobkeys.STORES_PREFIX}7", b'{"slot": 0, "address": "127.0.0.1:1"}')
    emitted: list[tuple[str, dict[str, Any]]] = []
    agent = SimpleNamespace(
        kv=kv,
        node_id=7,
        nodes=2,
        stop=threading.Event(),
        scenario=SimpleNamespace(recovery=RecoveryConfig(start_timeout_s=0.05)),
        detector=SimpleNamespace(alive_nodes=lambda: [7]),
        wait=lambda: time.sleep(0.01),
        _emit=lambda kind, **details: emitted.append((kind, details)),
    )
    agent._registrations = lambda: RootAgent._registrations(agent)
    agent._require_leadership = lambda: None  # it leads (RootAgent._require_leadership)
    agent._record_raw = None  # no record yet
    agent._write_record = lambda record: RootAgent._write_record(agent, record)
    assert RootAgent._start_job(agent) is None
    record = jobkeys.read_json(kv, jobkeys.ATTEMPT_KEY)
    assert record is not None and record["state"] == "failed"
    assert record["reason"].startswith("the job did not start: no live agent on slot(s) [1]")
    assert emitted == [("run_finished", {"attempt": 0, "failed": True, "reason": record["reason"]})]
