"""The simulator and the harness's injector hit the same nodes, the same way, per failure kind.

The simulator runs a tiny scenario; the injector performs the same schedule entry on a stand-in
cluster that records what it is asked to do (no processes). Both must name the same nodes in
their ``failure_injected`` event and treat them the same (a trainer crash keeps the node,
everything else loses it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from memory_kv import DictKV

from real.engine.eventlog import EventLog
from real.launcher.injector import FailureInjector
from real.launcher.progress import Progress, ProgressWatcher
from shared.events import read_events
from shared.scenario import Scenario, ScheduledFailure
from shared.scenario_loader import parse_scenario
from sim import simulate

# 5 nodes, m = 2, mixed placement: group {0, 1} and ring {2, 3, 4}.
SCENARIO = """
name: kinds
cluster: {nodes: 5, standby_nodes: 2, replacement_s: 0.5, network_bandwidth_gbit_s: 8,
          copy_bandwidth_gbyte_s: 0.3}
model: {parameters: 1.0e+6}
training:
  phases: [{kind: compute, duration_s: 0.6}, {kind: communication, duration_s: 0.4}]
checkpoint: {replicas: 2, placement: mixed, buffer_mb: 1, sub_buffers: 1}
detection: {exit_report_s: 0.05, heartbeat_interval_s: 0.5, lease_timeout_s: 3.0}
recovery: {stop_s: 0.5, restart_s: 3.0, node_start_s: 0.25}
sim: {duration_days: 0.0006}
"""


class RecordingCluster:
    """Stands in for ``LocalCluster``: node ids start at slot + 10, a lost node's slot gets a
    new id (its replacement), the surviving slots elect the lowest when the leader is lost,
    and every action is recorded."""

    def __init__(self, run_dir: Path, nodes: int) -> None:
        self.run_dir = run_dir
        self.kv = DictKV()
        self.live = {slot: slot + 10 for slot in range(nodes)}
        self.leader_id: int | None = 10
        self.actions: list[tuple[str, int]] = []

    def members(self) -> dict[int, int]:
        return dict(self.live)

    def leader(self) -> int | None:
        return self.leader_id

    def attempt(self) -> dict[str, Any] | None:
        return None

    def kill_trainer(self, node_id: int, rank: int) -> bool:
        self.actions.append(("kill_trainer", node_id))
        return True

    def kill_node(self, node_id: int) -> None:
        self.actions.append(("kill_node", node_id))
        slot = next(s for s, n in self.live.items() if n == node_id)
        if node_id == self.leader_id:  # the surviving slots elect; the lowest wins here
            survivors = [n for s, n in sorted(self.live.items()) if s != slot]
            self.leader_id = survivors[0] if survivors else None
        self.live[slot] = node_id + 10  # its replacement, once recovered

    def kill_nodes(self, node_ids: list[int], signalled: Callable[[], None] | None = None) -> None:
        for node_id in node_ids:
            self.kill_node(node_id)
        if signalled is not None:
            signalled()

    def partition_node(self, node_id: int) -> None:
        self.actions.append(("partition_node", node_id))


def _simulated(schedule: list[dict[str, Any]]) -> list[tuple[list[int], str, str]]:
    """(nodes, failure kind, effect) of every failure the simulator injected."""
    scenario = parse_scenario(SCENARIO, overrides=[f"failures.schedule={schedule}"])
    events = simulate(scenario, progress_interval_s=1e9).events
    return [
        (list(e.details["nodes"]), str(e.details["failure_kind"]), str(e.details["effect"]))  # type: ignore[arg-type]
        for e in events
        if e.kind == "failure_injected"
    ]


def _injected(
    schedule: list[dict[str, Any]], tmp_path: Path
) -> tuple[list[tuple[list[int], str, str]], list[set[str]]]:
    """The same from the injector: (nodes, kind, effect) and the actions taken per failure."""
    scenario: Scenario = parse_scenario(SCENARIO, overrides=[f"failures.schedule={schedule}"])
    cluster = RecordingCluster(tmp_path, scenario.cluster.nodes)
    log = EventLog(tmp_path / "events" / "launcher.jsonl", time.time())
    injector = FailureInjector(cluster, scenario, log)
    out, actions = [], []
    try:
        for index, entry in enumerate(schedule):
            before = len(cluster.actions)
            done = injector.inject(index, ScheduledFailure.model_validate(entry))
            taken = cluster.actions[before:]
            assert sorted(node_id for _, node_id in taken) == list(done.node_ids)
            actions.append({action for action, _ in taken})
            effect = "software" if actions[-1] == {"kill_trainer"} else "hardware"
            out.append((list(done.nodes), done.kind, effect))
    finally:
        log.close()
    recorded = [
        (e["nodes"], e["failure_kind"], e["effect"])
        for e in map(_json, (tmp_path / "events" / "launcher.jsonl").read_text().splitlines())
        if e["kind"] == "failure_injected"
    ]
    assert recorded == out  # the event says what was done
    return out, actions


def _json(line: str) -> dict[str, Any]:
    import json

    value = json.loads(line)
    return {"kind": value["kind"], **value.get("details", {})}


CASES = [
    ("software", [3], [3], {"kill_trainer"}),
    ("software", [0, 4], [0, 4], {"kill_trainer"}),
    ("hardware", [2], [2], {"kill_node"}),
    ("hardware", [1, 3], [1, 3], {"kill_node"}),
    ("network", [4], [4], {"partition_node"}),
    ("root_agent", [3], [0], {"kill_node"}),  # the root runs on slot 0, whatever is named
    ("group", [1], [0, 1], {"kill_node"}),
    ("group", [3], [2, 3, 4], {"kill_node"}),  # the ring is one group
]


@pytest.mark.parametrize(("kind", "named", "hit", "actions"), CASES)
def test_both_faces_hit_the_same_nodes_the_same_way(
    kind: str, named: list[int], hit: list[int], actions: set[str], tmp_path: Path
) -> None:
    schedule = [{"kind": kind, "nodes": named, "at_iteration": 3}]
    effect = "software" if kind == "software" else "hardware"
    injected, taken = _injected(schedule, tmp_path)
    assert _simulated(schedule) == injected == [(hit, kind, effect)]
    assert taken == [actions]


def test_after_the_root_is_lost_the_next_root_agent_failure_hits_the_new_root(
    tmp_path: Path,
) -> None:
    # Node 0 (the root) is lost; the lowest survivor, node 1, leads; the root_agent failure
    # that follows hits node 1; then the lowest survivor is node 0 again (its replacement).
    schedule = [
        {"kind": "hardware", "nodes": [0], "at_iteration": 3},
        {"kind": "root_agent", "nodes": [0], "at_iteration": 10},
        {"kind": "root_agent", "nodes": [0], "at_iteration": 17},
    ]
    injected, _ = _injected(schedule, tmp_path)
    expected = [
        ([0], "hardware", "hardware"),
        ([1], "root_agent", "hardware"),
        ([0], "root_agent", "hardware"),
    ]
    assert _simulated(schedule) == injected == expected


def test_the_simulator_elects_a_root_whenever_the_roots_node_is_lost() -> None:
    schedule = [
        {"kind": "software", "nodes": [0], "at_iteration": 3},  # the root's node survives
        {"kind": "hardware", "nodes": [0, 2], "at_iteration": 10},  # the root's node is lost
        {"kind": "hardware", "nodes": [4], "at_iteration": 17},  # the root (node 1) lives
    ]
    scenario = parse_scenario(SCENARIO, overrides=[f"failures.schedule={schedule}"])
    events = simulate(scenario, progress_interval_s=1e9).events
    elected = [(e.node, e.details["failure"]) for e in events if e.kind == "root_elected"]
    assert elected == [(1, 1)]


def test_an_iteration_trigger_waits_for_the_failing_nodes_ranks(tmp_path: Path) -> None:
    """``at_iteration: k`` fires once the named nodes' ranks have ended or captured k, as the
    simulator's failure strikes with k captured and its replicas not yet sent; not when some
    other rank got there first. A root_agent failure, whose node is known only when it strikes,
    fires once the ranks held for it (the root's node's) have, or once some rank has when none
    could be held."""
    scenario: Scenario = parse_scenario(SCENARIO)
    cluster = RecordingCluster(tmp_path, scenario.cluster.nodes)
    log = EventLog(tmp_path / "events" / "launcher.jsonl", time.time())
    injector = FailureInjector(cluster, scenario, log)
    try:
        progress = injector.watcher.poll()
        progress.max_iteration = 5
        progress.ended = {0: 5, 1: 5, 2: 4}
        crash = ScheduledFailure.model_validate(
            {"kind": "software", "nodes": [2], "at_iteration": 5}
        )
        lost = ScheduledFailure.model_validate(
            {"kind": "hardware", "nodes": [1], "at_iteration": 5}
        )
        root = ScheduledFailure.model_validate(
            {"kind": "root_agent", "nodes": [2], "at_iteration": 5}
        )
        assert not injector._reached(progress, crash, 5)
        assert injector._reached(progress, lost, 5)
        assert injector._reached(progress, root, 5)
        # Rank 2 held for the root's node: not before it has captured 5, whoever else has.
        assert not injector._reached(progress, root, 5, held=(2,))
        assert injector._reached(progress, root, 5, held=(1,))
        progress.ended[2] = 5
        assert injector._reached(progress, root, 5, held=(2,))
        assert injector._reached(progress, crash, 5)
        # A capture counts as the iteration's end: it comes first, before the replication.
        watcher = injector.watcher
        watcher._see({"kind": "ckpt_captured", "rank": 2, "iteration": 6, "time_s": 1.0})
        assert watcher.progress.ended[2] == 6 and watcher.progress.max_iteration == 5
        assert injector._reached(watcher.progress, crash, 6)
        assert not injector._reached(watcher.progress, lost, 6)
    finally:
        log.close()


def test_nodes_lost_together_are_all_killed_before_any_is_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group failure strikes its nodes at the same instant: the emulated cluster sends every
    SIGKILL first, then says so (``signalled``: the injector lets the held ranks go on), then
    reaps the agents (one takes tens of milliseconds to exit; killed one after the other, the
    next node still answered the new root's probe)."""
    import subprocess
    import sys

    import real.launcher.cluster as cluster_module
    from real.launcher.cluster import LocalCluster

    scenario = parse_scenario(SCENARIO)
    cluster = LocalCluster(scenario, tmp_path / "s.yaml", (), tmp_path, "gemini", time.time())
    order: list[tuple[str, int]] = []

    class Agent(subprocess.Popen[bytes]):
        def wait(self, timeout: float | None = None) -> int:
            order.append(("reap", self.pid))
            return super().wait(timeout)

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    agents = {node: Agent(sleeper, start_new_session=True) for node in (2, 3)}
    cluster.agents = dict(agents)  # type: ignore[assignment]
    killpg = cluster_module.os.killpg

    def recorded(pgid: int, signum: int) -> None:
        order.append(("kill", pgid))
        killpg(pgid, signum)

    monkeypatch.setattr(cluster_module.os, "killpg", recorded)
    monkeypatch.setattr(cluster, "_trainer_pids", lambda node_id: [])
    try:
        cluster.kill_nodes([2, 3], signalled=lambda: order.append(("signalled", 0)))
    finally:
        for agent in agents.values():
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    pids = [agents[2].pid, agents[3].pid]
    assert order == [
        ("kill", pids[0]),
        ("kill", pids[1]),
        ("signalled", 0),
        ("reap", pids[0]),
        ("reap", pids[1]),
    ]
    assert all(agent.returncode == -9 for agent in agents.values())


EVERY_RANK = {"every rank"}


@pytest.mark.parametrize(
    ("entry", "leader", "held"),
    [
        # Every rank of the job, whatever the failure strikes: it strikes as k ends everywhere.
        ({"kind": "software", "nodes": [2], "at_iteration": 7}, 10, EVERY_RANK),
        ({"kind": "hardware", "nodes": [1, 3], "at_iteration": 7}, 10, EVERY_RANK),
        ({"kind": "group", "nodes": [3], "at_iteration": 7}, 10, EVERY_RANK),
        ({"kind": "root_agent", "nodes": [3], "at_iteration": 7}, 12, EVERY_RANK),
        ({"kind": "root_agent", "nodes": [3], "at_iteration": 7}, None, EVERY_RANK),
        ({"kind": "hardware", "nodes": [1], "at_iteration": 7, "during": "replication"}, 10, set()),
        ({"kind": "hardware", "nodes": [1], "at_time_s": 3.0}, 10, set()),
    ],
)
def test_the_injector_holds_every_rank_until_its_failure_is_performed(
    tmp_path: Path, entry: dict[str, Any], leader: int | None, held: set[str]
) -> None:
    """``at_iteration: k`` arms a hold for every rank of the job at its save of k
    (``real.trainer.inject.hold_point``), and releases them once it is performed."""
    scenario: Scenario = parse_scenario(SCENARIO, overrides=["cluster.accelerators_per_node=2"])
    if held == EVERY_RANK:
        world = scenario.cluster.nodes * scenario.cluster.accelerators_per_node
        held = {f"{rank}.7" for rank in range(world)}
    cluster = RecordingCluster(tmp_path, scenario.cluster.nodes)
    cluster.leader_id = leader
    log = EventLog(tmp_path / "events" / "launcher.jsonl", time.time())
    failure = ScheduledFailure.model_validate(entry)
    injector = FailureInjector(cluster, scenario, log, schedule=[failure])
    armed: list[set[str]] = []

    def trigger(index: int, scheduled: ScheduledFailure, ranks: tuple[int, ...] = ()) -> bool:
        folder = tmp_path / "holds"
        armed.append({p.name for p in folder.iterdir()} if folder.exists() else set())
        # The trigger waits for the ranks held.
        assert {f"{rank}.{scheduled.at_iteration}" for rank in ranks} == armed[-1]
        return True

    injector._wait_trigger = trigger  # type: ignore[method-assign]
    try:
        injector._run()
    finally:
        log.close()
    assert not injector.errors
    assert armed == [held]
    assert len(injector.injected) == 1 and cluster.actions
    assert not any((tmp_path / "holds").glob("*")), "holds left after the failure"
    events = read_events(tmp_path / "events" / "launcher.jsonl")
    (event,) = (e for e in events if e.kind == "failure_injected")
    if held:  # every rank waits at the end of k: k reached, nothing of k + 1 begun
        assert event.details["reached_iteration"] == 7
        assert event.details["partial_iteration_s"] == 0.0
    else:  # what the ranks' events say
        assert event.details["reached_iteration"] == 0
        assert "partial_iteration_s" not in event.details


def test_a_lost_nodes_peers_go_on_before_the_cluster_reaps_it(tmp_path: Path) -> None:
    """The ranks held at a lost node's iteration go on as soon as its processes have their
    SIGKILL, not once the cluster has reaped them and removed their memory: no real node's
    loss makes its peers wait for that (it had added 35-37 ms to the main job's lost nodes'
    detection, traced on 2026-12-07)."""
    scenario: Scenario = parse_scenario(SCENARIO)
    holds = tmp_path / "holds"
    seen: list[tuple[set[str], set[str]]] = []

    class Reaping(RecordingCluster):
        def kill_nodes(
            self, node_ids: list[int], signalled: Callable[[], None] | None = None
        ) -> None:
            for node_id in node_ids:
                self.kill_node(node_id)
            before = {p.name for p in holds.glob("*")}
            assert signalled is not None, "the injector must hear when the nodes are signalled"
            signalled()
            seen.append((before, {p.name for p in holds.glob("*")}))  # then the reaping

    cluster = Reaping(tmp_path, scenario.cluster.nodes)
    log = EventLog(tmp_path / "events" / "launcher.jsonl", time.time())
    failure = ScheduledFailure.model_validate({"kind": "hardware", "nodes": [2], "at_iteration": 7})
    injector = FailureInjector(cluster, scenario, log, schedule=[failure])
    injector._wait_trigger = lambda *args: True  # type: ignore[method-assign]
    try:
        injector._run()
    finally:
        log.close()
    assert not injector.errors
    world = scenario.cluster.nodes * scenario.cluster.accelerators_per_node
    assert seen == [({f"{rank}.7" for rank in range(world)}, set())]


def test_a_held_failure_strikes_once_every_rank_has_ended_its_iteration(tmp_path: Path) -> None:
    """With holds, the struck ranks' end of k is not enough: a survivor still in k would end
    it after the failure, where the simulator's failure strikes as k ends everywhere."""
    scenario: Scenario = parse_scenario(SCENARIO)
    cluster = RecordingCluster(tmp_path, scenario.cluster.nodes)
    log = EventLog(tmp_path / "events" / "launcher.jsonl", time.time())
    failure = ScheduledFailure.model_validate({"kind": "software", "nodes": [1], "at_iteration": 7})
    injector = FailureInjector(cluster, scenario, log, schedule=[failure])
    world = range(scenario.cluster.nodes * scenario.cluster.accelerators_per_node)
    try:
        progress = Progress(max_iteration=7, ended={rank: 7 for rank in world})
        assert injector._reached(progress, failure, 7, held=tuple(world))
        progress.ended[0] = 6  # a survivor, not the struck rank, still in iteration 7
        assert not injector._reached(progress, failure, 7, held=tuple(world))
        assert injector._reached(progress, failure, 7)  # unheld: the struck node's ranks
        # A rank held where it writes no event first (the baseline's save) says it waits.
        folder = tmp_path / "holds"
        folder.mkdir()
        (folder / "0.7.held").touch()
        assert injector._reached(progress, failure, 7, held=tuple(world))
    finally:
        log.close()


def test_at_time_s_counts_from_the_first_iteration_as_in_the_simulator(tmp_path: Path) -> None:
    """The simulator trains from 0; the harness first starts its cluster, for however long
    that takes. ``at_time_s: T`` strikes T s after training began, never before the job runs
    (a node lost before it registered left the root waiting for it)."""
    scenario: Scenario = parse_scenario(SCENARIO)
    cluster = RecordingCluster(tmp_path, scenario.cluster.nodes)
    log = EventLog(tmp_path / "events" / "launcher.jsonl", time.time() - 100.0)  # 100 s in
    failure = ScheduledFailure.model_validate({"kind": "hardware", "nodes": [1], "at_time_s": 3})
    injector = FailureInjector(cluster, scenario, log, schedule=[failure])
    seen: list[float | None] = []
    began = [None, None, log.now() - 2.0, log.now() - 3.5]  # training began 2 s, then 3.5 s ago

    def poll() -> Progress:
        seen.append(began[len(seen)])
        return Progress(began=seen[-1])

    injector.watcher = SimpleNamespace(poll=poll)  # type: ignore[assignment]
    try:
        assert injector._wait_trigger(0, failure)
    finally:
        log.close()
    assert len(seen) == 4  # not before training began, nor 2 s into it: 3.5 s in

    # The watcher reads when training began off the first iteration's end and duration.
    events = tmp_path / "run" / "events"
    events.mkdir(parents=True)
    lines = [
        {
            "time_s": 12.0,
            "kind": "iteration_end",
            "rank": 1,
            "iteration": 1,
            "details": {"duration_s": 0.5},
        },
        {
            "time_s": 11.9,
            "kind": "iteration_end",
            "rank": 0,
            "iteration": 1,
            "details": {"duration_s": 0.6},
        },
        {
            "time_s": 12.4,
            "kind": "iteration_end",
            "rank": 0,
            "iteration": 2,
            "details": {"duration_s": 0.5},
        },
    ]
    (events / "trainer.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert ProgressWatcher(tmp_path / "run").poll().began == pytest.approx(11.3)
