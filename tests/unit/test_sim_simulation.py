"""Tiny explicit scenarios whose event logs are compared with hand-computed lists (SimPy style)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.scenario_loader import parse_scenario
from sim import simulate
from sim.model import build_model

# 4 nodes, groups {0,1} {2,3}; iteration = 0.6 s compute (the idle span) + 0.4 s all-reduce.
# ZeRO-3 shards the 12 MB state: 3 MB per node, replicated in 3 chunks of 1 MB at 1 GB/s inside
# the span (3 ms), captured over a 0.3 GB/s copy engine (10 ms): every checkpoint commits 10 ms
# after its iteration ends.
TINY = """
name: tiny
cluster: {nodes: 4, standby_nodes: 1, replacement_s: 0.5, network_bandwidth_gbit_s: 8,
          network_alpha_s: 0, copy_bandwidth_gbyte_s: 0.3}
model: {parameters: 1.0e+6}
training:
  parallelism: zero3
  phases: [{kind: compute, duration_s: 0.6}, {kind: communication, duration_s: 0.4}]
checkpoint: {replicas: 2, placement: group, buffer_mb: 1, sub_buffers: 1}
failures:
  schedule:
    - {kind: software, nodes: [1], at_iteration: 3}
    - {kind: hardware, nodes: [2], at_iteration: 6}
detection: {exit_report_s: 0.05, heartbeat_interval_s: 0.5, lease_timeout_s: 3.0,
            collective_failure_s: 0.03, probe_detection_s: 0.1}
recovery: {stop_s: 0.5, restart_s: 3.0, node_start_s: 0.25, retrieval_overhead_s: 0.04}
sim: {duration_days: 0.000231481481481481}
"""


def _log(text: str, *overrides: str) -> list[tuple[Any, ...]]:
    result = simulate(parse_scenario(text, overrides=overrides), progress_interval_s=1e9)
    return [
        (round(e.time_s, 9), e.kind, e.node, e.iteration, e.details.get("tier"))
        for e in result.events
    ]


def test_software_then_hardware_failure_event_log() -> None:
    # Failure 1 strikes the moment iteration 3 ends (t = 3.0), after save(3) captured it and
    # before its checkpoint commits (3.01). A trainer crash keeps the node's memory, and under
    # commit: on_arrival each store reports its own shard once captured: iteration 3 is
    # restored from local memory, nothing recomputed (iteration 2, committed at 2.01, is
    # logged). Detection 0.05, stop 0.5, restart 3, retrieval 0.04 fixed + local copy 0.01.
    # Training resumes at 6.60 from iteration 3, so iteration 6 ends at 9.60 and failure 2
    # strikes then, before 6 commits; iteration 5 committed at 8.61. A lost node needs its
    # shard's replica on a peer: 5. Detection by probe: the survivors' next collective (0.6 s
    # of compute into iteration 7) fails at 10.2, the probe verdict takes 0.1: 10.3; stop 0.5;
    # the warm standby joins in 0.5 (no node start); restart 3; 0.04 fixed, then node 2
    # fetches its shard from node 3 (3 ms) while the copy engine takes 10 ms: restored at
    # 14.35. The run ends at 20 s after iteration 10 (19.35).
    assert _log(TINY) == [
        (0.0, "run_started", None, None, None),
        (2.01, "ckpt_committed", None, 2, None),
        (3.0, "iteration_end", None, 3, None),
        (3.0, "failure_injected", 1, None, None),
        (3.05, "failure_detected", 1, None, None),
        (3.55, "training_stopped", None, None, None),
        (3.55, "restart_begin", None, None, None),
        (6.55, "process_group_ready", None, None, None),
        (6.6, "state_restored", None, 3, "local"),
        (6.6, "training_resumed", None, 3, None),
        (8.61, "ckpt_committed", None, 5, None),
        (9.6, "iteration_end", None, 6, None),
        (9.6, "failure_injected", 2, None, None),
        (10.3, "failure_detected", 2, None, None),
        (10.8, "training_stopped", None, None, None),
        (10.8, "replacement_requested", 2, None, None),
        (11.3, "replacement_ready", None, None, None),
        (11.3, "restart_begin", None, None, None),
        (14.3, "process_group_ready", None, None, None),
        (14.35, "state_restored", 2, 5, "peer"),
        (14.35, "state_restored", None, 5, "peer"),
        (14.35, "training_resumed", None, 5, None),
        (20.0, "run_finished", None, 10, None),
    ]


def test_next_iteration_end_commits_count_one_iteration_later() -> None:
    # commit: next_iteration_end: iteration k's checkpoint counts when k+1 ends (t = k + 1),
    # inside save(k+1). Failure 1 strikes at 3.5, mid-iteration 4: iteration 3 is in memory
    # since 3.01 but not yet counted, so iteration 2 (committed at 3.0) is restored and 1.5 s
    # lost (on_arrival would restore 3 and lose 0.5 s). Exit report 0.05, stop 0.5, restart 3,
    # retrieval 0.05: resumed at 7.1 from 2, so iteration k ends at 5.1 + k. Failure 2 strikes
    # as iteration 6 ends (11.1), after save(6) committed iteration 5; probe 0.6 + 0.1, stop
    # 0.5, warm standby 0.5, restart 3, retrieval 0.05 from the peer. The run ends at 20 s
    # after iteration 9.
    schedule = (
        "failures.schedule=[{kind: software, nodes: [1], at_time_s: 3.5},"
        " {kind: hardware, nodes: [2], at_iteration: 6}]"
    )
    assert _log(TINY, "checkpoint.commit=next_iteration_end", schedule) == [
        (0.0, "run_started", None, None, None),
        (3.0, "iteration_end", None, 3, None),
        (3.0, "ckpt_committed", None, 2, None),
        (3.5, "failure_injected", 1, None, None),
        (3.55, "failure_detected", 1, None, None),
        (4.05, "training_stopped", None, None, None),
        (4.05, "restart_begin", None, None, None),
        (7.05, "process_group_ready", None, None, None),
        (7.1, "state_restored", None, 2, "local"),
        (7.1, "training_resumed", None, 2, None),
        (11.1, "iteration_end", None, 6, None),
        (11.1, "ckpt_committed", None, 5, None),
        (11.1, "failure_injected", 2, None, None),
        (11.8, "failure_detected", 2, None, None),
        (12.3, "training_stopped", None, None, None),
        (12.3, "replacement_requested", 2, None, None),
        (12.8, "replacement_ready", None, None, None),
        (12.8, "restart_begin", None, None, None),
        (15.8, "process_group_ready", None, None, None),
        (15.85, "state_restored", 2, 5, "peer"),
        (15.85, "state_restored", None, 5, "peer"),
        (15.85, "training_resumed", None, 5, None),
        (20.0, "run_finished", None, 9, None),
    ]
    lost = {
        rule: [
            f.lost_progress_s
            for f in simulate(
                parse_scenario(TINY, overrides=[f"checkpoint.commit={rule}", schedule])
            ).summary.failures
        ]
        for rule in ("next_iteration_end", "on_arrival")
    }
    assert lost["next_iteration_end"] == pytest.approx([1.5, 1.0])
    assert lost["on_arrival"] == pytest.approx([0.5, 1.0])


def test_summary_phases_follow_from_the_log() -> None:
    summary = simulate(parse_scenario(TINY)).summary
    software, hardware = summary.failures
    assert (software.detection_s, software.stop_s, software.restart_s) == pytest.approx(
        (0.05, 0.5, 3.0)
    )
    assert software.retrieval_s == pytest.approx(0.05)
    # Iteration 3, captured as the crash struck, is restored: nothing is recomputed.
    assert (software.restored_iteration, software.lost_iterations) == (3, 0)
    assert software.lost_progress_s == pytest.approx(0.0)
    assert (hardware.detection_s, hardware.stop_s) == pytest.approx((0.7, 0.5))
    assert hardware.replacement_s == pytest.approx(0.5)
    assert hardware.tier == "peer"
    # Iteration 6 ended, only 5 committed: iteration 6 is recomputed.
    assert (hardware.restored_iteration, hardware.lost_iterations) == (5, 1)
    assert hardware.lost_progress_s == pytest.approx(1.0)
    assert summary.iterations_completed == 10
    assert summary.ettr == pytest.approx(10 * 1.0 / 20.0)


GROUP_LOST = (
    "failures.schedule=[{kind: group, nodes: [0], at_iteration: 3}]",
    "checkpoint.persist_every_iterations=2",
    "cluster.storage.bandwidth_gbit_s=8",
    "cluster.standby_nodes=2",
)
"""Group {0, 1} lost as iteration 3 ends, with a persistent checkpoint every 2 iterations."""


def test_losing_a_whole_group_rolls_back_to_persistent_storage() -> None:
    # Persist every 2 iterations: a background upload of 12 MB at 0.008 Gbit/s (12 s) ...
    # too slow; at 8 Gbit/s it takes 12 ms. Iteration 2 commits at 2.01 and is persisted at
    # 2.022. Losing group {0, 1} at 3.0 leaves iteration 2 only in storage.
    log = _log(TINY, *GROUP_LOST)
    assert (2.01, "persist_begin", None, 2, None) in log
    assert (2.022, "persist_done", None, 2, None) in log
    restored = [entry for entry in log if entry[1] == "state_restored" and entry[2] is None]
    # The group holds the root (node 0): the survivors' next collective breaks after the
    # 0.6 s of compute, their agent finds the root's agent refusing connections and deposes
    # it, and the new root's probe verdict takes 0.1 s (no election lease to wait for);
    # stop 0.5, two warm standbys 0.5, restart 3. All four nodes roll back: 4 x 3 MB
    # through the storage's shared 1 GB/s take 12 ms (the copy engine, pipelined, 10 ms)
    # after the fixed 0.04 s.
    restored_s = round(3.0 + 0.6 + 0.1 + 0.5 + 0.5 + 3.0 + 0.04 + 0.012, 9)
    assert restored == [(restored_s, "state_restored", None, 2, "persistent")]


def test_a_restore_from_storage_pays_the_persistent_overhead_and_one_from_memory_does_not() -> None:
    # As above, with a fixed cost of its own for restores from storage (DCP's agreement,
    # metadata and planning): 0.3 s instead of the 0.04 s that a restore from memory pays.
    log = _log(TINY, *GROUP_LOST, "recovery.persistent_retrieval_overhead_s=0.3")
    restored = [entry for entry in log if entry[1] == "state_restored" and entry[2] is None]
    restored_s = round(3.0 + 0.6 + 0.1 + 0.5 + 0.5 + 3.0 + 0.3 + 0.012, 9)
    assert restored == [(restored_s, "state_restored", None, 2, "persistent")]
    # The first test's crash and lost node restore from memory: the same log as without it.
    assert _log(TINY, "recovery.persistent_retrieval_overhead_s=0.3") == _log(TINY)


def test_a_fetch_from_a_peer_pays_the_peer_overhead_and_a_local_restore_does_not() -> None:
    # The first test's lost node fetches its shard from node 3 (restored at 14.35 with the
    # 0.04 s overhead): with a peer overhead of 0.07 s, 0.03 s later. Its crash before, a
    # local restore, is unchanged (6.6).
    log = _log(TINY, "recovery.peer_retrieval_overhead_s=0.07")
    restored = [entry for entry in log if entry[1] == "state_restored" and entry[2] is None]
    assert restored == [
        (6.6, "state_restored", None, 3, "local"),
        (14.38, "state_restored", None, 5, "peer"),
    ]
    # A restore from storage pays its own overhead, not the peer's.
    assert _log(TINY, *GROUP_LOST, "recovery.peer_retrieval_overhead_s=0.07") == _log(
        TINY, *GROUP_LOST
    )


def test_a_node_lost_during_recovery_joins_it() -> None:
    text = TINY.replace(
        "    - {kind: software, nodes: [1], at_iteration: 3}\n"
        "    - {kind: hardware, nodes: [2], at_iteration: 6}",
        "    - {kind: hardware, nodes: [0], at_iteration: 3}\n"
        "    - {kind: hardware, nodes: [2], during: recovery}",
    )
    result = simulate(parse_scenario(text, overrides=["cluster.standby_nodes=2"]))
    first, second = result.summary.failures
    # Failure 0 at 3.0 loses the root's node: the survivors' next collective breaks at 3.6,
    # their agent deposes the root, whose agent refuses connections, and the new root's probe
    # finds the node lost (0.1 s): detected at 3.7, when the root stops the job: the injector
    # fires the second loss then, and it joins the recovery. No collective is running to
    # break: its heartbeat stands still for 1 s from its last beat (0.25 s before the loss on
    # average), three of the root's reads add half a poll each (0.075), and its dead agent
    # refuses the probe (0.825 s: 4.525); the stop (0.5) follows; both nodes are replaced by
    # warm standbys (0.5), one restart (3) and one retrieval (0.04 + 0.01): both resume at
    # 8.575 from iteration 2.
    assert (first.time_s, second.time_s) == pytest.approx((3.0, 3.7))
    phases = ("detection_s", "stop_s", "replacement_s", "restart_s", "retrieval_s", "downtime_s")
    assert [getattr(first, p) for p in phases] == pytest.approx([0.7, 1.325, 0.5, 3, 0.05, 5.575])
    assert [getattr(second, p) for p in phases] == pytest.approx([0.825, 0.5, 0.5, 3, 0.05, 4.875])
    assert (first.tier, second.tier) == ("peer", "peer")
    assert first.restored_iteration == second.restored_iteration == 2
    # One recovery: its lost iteration and its retrieval count once, under the first; the
    # downtimes overlap and the run's total counts 3.0 to 8.575 once.
    assert (first.lost_iterations, first.joined, second.joined) == (1, None, 0)
    assert (second.lost_progress_s, second.wasted_s) == (0.0, 0.0)
    assert result.summary.total_downtime_s == pytest.approx(5.575)


def test_crash_during_recovery_strikes_as_the_restarted_trainers_start() -> None:
    log = _log(
        TINY,
        "failures.schedule=[{kind: software, nodes: [0], at_iteration: 3},"
        " {kind: software, nodes: [2], during: recovery}]",
    )
    injected = [entry[0] for entry in log if entry[1] == "failure_injected"]
    # Detected 3.05, stopped 3.55, restart begins 3.55: the crash strikes then; the job is
    # already stopped, so the second recovery is detection 0.05 + restart 3 + 0.04 + 0.01.
    # Nothing was captured in between: every node still holds iteration 3 captured (its
    # end at 3.0, its commit due at 3.01), and both crashes leave memory intact: 3.
    assert injected == [3.0, 3.55]
    assert log[-2] == (6.65, "training_resumed", None, 3, None)


def test_same_seed_same_log_and_other_seeds_differ() -> None:
    text = TINY.replace(
        "  schedule:",
        "  process: {failures_per_node_per_day: 2000, hardware_fraction: 0.5}\n  schedule:",
    )
    first = simulate(parse_scenario(text), 7).events
    assert first == simulate(parse_scenario(text), 7).events
    assert first != simulate(parse_scenario(text), 8).events


@pytest.mark.parametrize(("single_host", "replacement_s"), [(False, 0.75), (True, 1.0)])
def test_cold_nodes_emulated_on_one_host_start_one_after_another(
    single_host: bool, replacement_s: float
) -> None:
    # Group {0, 1} lost with no live standby agent (the pool re-orders at once, so spares are
    # there, but cold): two replacement nodes start their agents and stores (0.25 s each).
    # On one host they share its CPUs: 0.5 + 2 x 0.25; on their own machines: 0.5 + 0.25.
    text = TINY.replace(
        "    - {kind: software, nodes: [1], at_iteration: 3}\n"
        "    - {kind: hardware, nodes: [2], at_iteration: 6}",
        "    - {kind: group, nodes: [0], at_iteration: 3}",
    )
    overrides = [
        "cluster.standby_nodes=0",
        "cluster.provisioning_delay_s=0",
        f"cluster.single_host={str(single_host).lower()}",
    ]
    (failure,) = simulate(parse_scenario(text, overrides=overrides)).summary.failures
    assert failure.replacement_s == pytest.approx(replacement_s)


# TINY with one lost node and no crash: iteration k runs from k - 1 to k, its all-reduce from
# k - 0.4 to k.
LOST_NODE = TINY.replace(
    "    - {kind: software, nodes: [1], at_iteration: 3}\n"
    "    - {kind: hardware, nodes: [2], at_iteration: 6}",
    "    - {kind: hardware, nodes: [2], at_time_s: 3.2}",
)


def _detection(text: str, *overrides: str) -> list[tuple[float, str, Any]]:
    result = simulate(parse_scenario(text, overrides=overrides), progress_interval_s=1e9)
    return [
        (round(e.time_s, 9), e.kind, e.details.get("detected_by"))
        for e in result.events
        if e.kind in ("failure_injected", "failure_detected", "root_elected")
    ]


@pytest.mark.parametrize(
    ("at_time_s", "failure_s", "detected_s"),
    [
        # The survivors' next collective fails once they run it and the lost node's
        # connections have closed (failure_s after the loss), whichever is later; + 0.1 probe.
        (3.2, 0.03, 3.7),  # mid-forward of iteration 4: its all-reduce starts at 3.6
        (3.7, 0.03, 3.83),  # mid-all-reduce: as the connections close
        (3.0, 0.03, 3.7),  # as iteration 3 ends: iteration 4's all-reduce at 3.6
        (3.2, 0.3, 3.7),  # closed at 3.5, before the all-reduce starts
        (3.2, 0.5, 3.8),  # closed at 3.7, inside it
        (3.7, 0.5, 4.3),
    ],
)
def test_a_lost_node_is_found_by_probe_when_the_survivors_next_collective_fails(
    at_time_s: float, failure_s: float, detected_s: float
) -> None:
    text = LOST_NODE.replace("at_time_s: 3.2", f"at_time_s: {at_time_s}")
    assert _detection(text, f"detection.collective_failure_s={failure_s}") == [
        (at_time_s, "failure_injected", None),
        (detected_s, "failure_detected", "probe"),
    ]


def test_probe_event_log_stop_is_an_abort_and_a_warm_standby_needs_no_node_start() -> None:
    # Lost at 3.2; probe at 3.7; stop (abort, survivors park) 0.5; the warm standby agent joins
    # after replacement_s 0.5 (no node start); rejoin 3; 0.04 + the peer's shard (10 ms copy).
    # Iteration 3 committed at 3.01 is restored; 15 iterations by the end (20 s).
    assert _log(LOST_NODE)[1:] == [
        (3.0, "iteration_end", None, 3, None),
        (3.01, "ckpt_committed", None, 3, None),
        (3.2, "failure_injected", 2, None, None),
        (3.7, "failure_detected", 2, None, None),
        (4.2, "training_stopped", None, None, None),
        (4.2, "replacement_requested", 2, None, None),
        (4.7, "replacement_ready", None, None, None),
        (4.7, "restart_begin", None, None, None),
        (7.7, "process_group_ready", None, None, None),
        (7.75, "state_restored", 2, 3, "peer"),
        (7.75, "state_restored", None, 3, "peer"),
        (7.75, "training_resumed", None, 3, None),
        (20.0, "run_finished", None, 15, None),
    ]


def test_without_probing_the_lease_finds_a_lost_node_and_the_stop_follows() -> None:
    # lost_node: lease (the paper's system): 3 - 0.5 / 2 = 2.75 s after the failure, seen at
    # the root's next read of the store (half its 0.05 s period on average): 2.775 s; the
    # stop starts then (no overlap with the detection).
    (failure,) = simulate(
        parse_scenario(LOST_NODE, overrides=["detection.lost_node=lease"])
    ).summary.failures
    assert (failure.detection_s, failure.stop_s) == pytest.approx((2.775, 0.5))
    assert _detection(LOST_NODE, "detection.lost_node=lease")[-1] == (
        5.975,
        "failure_detected",
        "lease",
    )


def test_a_partitioned_node_is_found_by_the_probe_its_silence_starts() -> None:
    # A partition leaves the node's processes alive: the survivors' collectives hang instead
    # of failing, so no broken collective starts a probe. Its heartbeat stands still: 1 s
    # after its last beat (0.25 s before the partition on average) the root probes it, and
    # the probe waits out its 1 s bound; three of the root's reads of the store add half its
    # 0.05 s period each: 3.2 + 1.825.
    text = LOST_NODE.replace("kind: hardware", "kind: network")
    assert _detection(text) == [
        (3.2, "failure_injected", None),
        (5.025, "failure_detected", "silence"),
    ]
    # Probed later than the lease runs out (2.5 - 0.25 + 1 > 3 - 0.25): the lease finds it.
    assert _detection(text, "detection.silence_probe_s=2.5")[-1] == (
        5.975,
        "failure_detected",
        "lease",
    )


def test_survivors_in_a_hung_collective_leave_it_at_the_stop() -> None:
    # A partition, or in netns mode any lost node (its link goes down: no reset reaches the
    # survivors): the probe its heartbeat's silence starts finds it (1.825 s). The stop's abort
    # fails the future their collective waits on (DDP's bucket all-reduce, FSDP2's
    # all-gather): a plain 0.5 s stop, no kill.
    for text, overrides in (
        (LOST_NODE.replace("kind: hardware", "kind: network"), ()),
        (LOST_NODE, ("real.mode=netns",)),
        (LOST_NODE, ("real.mode=netns", "training.parallelism=ddp")),
    ):
        (failure,) = simulate(parse_scenario(text, overrides=overrides)).summary.failures
        assert (failure.detection_s, failure.stop_s) == pytest.approx((1.825, 0.5))
    # A lost node in local mode resets the survivors' connections: probe, and a plain stop.
    (failure,) = simulate(parse_scenario(LOST_NODE)).summary.failures
    assert (failure.detection_s, failure.stop_s) == pytest.approx((0.5, 0.5))


def test_survivors_that_parked_on_a_broken_collective_stop_in_stop_parked_s() -> None:
    """Found by the probe their broken collectives started, a lost node's survivors have left
    the failed group already: the stop is ``stop_parked_s``. Found by the lease (their
    collectives hang), or a crash, the full ``stop_s``."""
    parked = "recovery.stop_parked_s=0.05"
    (failure,) = simulate(parse_scenario(LOST_NODE, overrides=[parked])).summary.failures
    assert (failure.detection_s, failure.stop_s) == pytest.approx((0.5, 0.05))
    assert [e[:2] for e in _log(LOST_NODE, parked)[4:6]] == [
        (3.7, "failure_detected"),
        (3.75, "training_stopped"),
    ]
    for text, overrides in (
        (LOST_NODE, ("detection.lost_node=lease", parked)),
        (LOST_NODE.replace("kind: hardware", "kind: network"), (parked,)),
        (LOST_NODE, ("real.mode=netns", parked)),
    ):
        (failure,) = simulate(parse_scenario(text, overrides=overrides)).summary.failures
        assert failure.stop_s == pytest.approx(0.5)
    crash = LOST_NODE.replace("kind: hardware", "kind: software")
    (failure,) = simulate(parse_scenario(crash, overrides=[parked])).summary.failures
    assert failure.stop_s == pytest.approx(0.5)


def test_losing_the_root_node_is_found_by_the_survivors_probe() -> None:
    # Node 0 runs the root. The survivors' all-reduce breaks at 3.6; their agent finds the
    # root's agent refusing connections and deposes it, and the new root, elected at once,
    # probes (0.1): 3.7, as for any other lost node.
    text = LOST_NODE.replace("nodes: [2]", "nodes: [0]")
    assert _detection(text) == [
        (3.2, "failure_injected", None),
        (3.7, "root_elected", None),
        (3.7, "failure_detected", "probe"),
    ]


def test_losing_the_root_node_without_a_probe_waits_for_a_new_root() -> None:
    # No reset reaches the survivors (netns mode): nobody deposes the root. Its election lease
    # lapses 5/6 x 3 = 2.5 s after the failure on average, a candidate wins half a retry
    # (0.25 / 2) later and probes (0.1): 2.725 s.
    text = LOST_NODE.replace("nodes: [2]", "nodes: [0]")
    assert _detection(text, "real.mode=netns") == [
        (3.2, "failure_injected", None),
        (5.925, "root_elected", None),
        (5.925, "failure_detected", "election"),
    ]
    lease = _detection(text, "detection.lost_node=lease")
    assert lease[-1] == (5.975, "failure_detected", "election")  # the heartbeat lease, 2.775


def test_standby_agents_run_out_then_replacements_start_cold() -> None:
    # One live standby agent: the first loss takes it (0.5 s); the second finds a spare machine
    # (the pool re-orders at once) but no live agent: replacement_s + node_start_s 0.25.
    text = LOST_NODE.replace(
        "    - {kind: hardware, nodes: [2], at_time_s: 3.2}",
        "    - {kind: hardware, nodes: [2], at_time_s: 3.2}\n"
        "    - {kind: hardware, nodes: [3], at_time_s: 12.2}",
    )
    result = simulate(parse_scenario(text, overrides=["cluster.provisioning_delay_s=0"]))
    assert [f.replacement_s for f in result.summary.failures] == pytest.approx([0.5, 0.75])
    requested = [e.details["standby"] for e in result.events if e.kind == "replacement_requested"]
    assert requested == ["warm", "cold"]


def test_under_ddp_every_rank_checkpoints_the_whole_state() -> None:
    # DDP: each rank holds the full 12 MB (1M parameters x 12 bytes), as the harness saves it.

    assert build_model(parse_scenario(TINY)).shard_bytes == pytest.approx(3e6)
    ddp = parse_scenario(TINY, overrides=["training.parallelism=ddp"])
    assert build_model(ddp).shard_bytes == pytest.approx(12e6)
    two_ranks = parse_scenario(
        TINY, overrides=["training.parallelism=ddp", "cluster.accelerators_per_node=2"]
    )
    assert build_model(two_ranks).shard_bytes == pytest.approx(24e6)


def test_a_failure_as_a_save_iteration_ends_finds_the_blocking_save_done() -> None:
    # The baseline saves every 3 iterations, blocking for 12 MB at 8 Gbit/s = 12 ms. The
    # injector fires on iteration 3's end as the trainer reports it, after save(3) returned:
    # at 3.012, and iteration 3 is restored (nothing lost).
    text = LOST_NODE.replace("at_time_s: 3.2", "at_iteration: 3")
    overrides = [
        "checkpoint.strategy=persistent",
        "checkpoint.baseline_every_iterations=3",
        "cluster.storage.bandwidth_gbit_s=8",
    ]
    result = simulate(parse_scenario(text, overrides=overrides))
    (failure,) = result.summary.failures
    assert failure.time_s == pytest.approx(3.012)
    assert (failure.restored_iteration, failure.lost_iterations) == (3, 0)
    # The save made iteration 3 durable, and no part of iteration 4 had begun: nothing is
    # lost, as the harness (which reports 3's end after its save) records it.
    (injected,) = [e for e in result.events if e.kind == "failure_injected"]
    assert injected.details["partial_iteration_s"] == 0.0
    assert failure.lost_progress_s == 0.0


def test_a_save_to_storage_blocks_for_its_fixed_cost_and_its_bytes() -> None:
    # 12 MB at 8 Gbit/s = 12 ms, plus a fixed cost of 0.1 s: the baseline's save of
    # iteration 3 returns at 3.112; Gemini's save from memory, off the training path, takes
    # as long to be done.
    text = LOST_NODE.replace("at_time_s: 3.2", "at_iteration: 3")
    storage = ["cluster.storage.bandwidth_gbit_s=8", "cluster.storage.save_overhead_s=0.1"]
    baseline = simulate(
        parse_scenario(
            text,
            overrides=[
                "checkpoint.strategy=persistent",
                "checkpoint.baseline_every_iterations=3",
                *storage,
            ],
        )
    )
    (failure,) = baseline.summary.failures
    assert failure.time_s == pytest.approx(3.112)
    assert baseline.summary.extra["blocking_save_s"] == pytest.approx(0.112)
    gemini = build_model(
        parse_scenario(text, overrides=[*storage, "checkpoint.persist_every_iterations=2"])
    )
    assert gemini.strategy.upload_s == pytest.approx(0.112)


@pytest.mark.parametrize(
    ("at_time_s", "reached", "partial_s"),
    [
        (3.2, 3, 0.188),  # after save(3) returned at 3.012: only what followed it is lost
        (3.006, 3, 0.006),  # during save(3): its part already made is lost with the rest
        (2.5, 2, 0.5),  # iteration 2 has no save: from its update on
    ],
)
def test_a_baseline_failure_loses_the_work_since_its_last_update_or_save(
    at_time_s: float, reached: int, partial_s: float
) -> None:
    overrides = [
        "checkpoint.strategy=persistent",
        "checkpoint.baseline_every_iterations=3",
        "cluster.storage.bandwidth_gbit_s=8",  # the save of 12 MB blocks 12 ms
    ]
    text = LOST_NODE.replace("at_time_s: 3.2", f"at_time_s: {at_time_s}")
    result = simulate(parse_scenario(text, overrides=overrides))
    (injected,) = [e for e in result.events if e.kind == "failure_injected"]
    assert injected.details["reached_iteration"] == reached
    assert injected.details["partial_iteration_s"] == pytest.approx(partial_s)


# --- what a failure restores: captured (a crash) or committed (a lost node) -------------------

ONE_FAILURE = TINY.replace(
    "    - {kind: software, nodes: [1], at_iteration: 3}\n"
    "    - {kind: hardware, nodes: [2], at_iteration: 6}",
    "    - {kind: KIND, nodes: [2], WHEN}",
)


def _failures(kind: str, when: str, *overrides: str) -> list[Any]:
    text = ONE_FAILURE.replace("KIND", kind).replace("WHEN", when)
    return simulate(parse_scenario(text, overrides=overrides)).summary.failures


@pytest.mark.parametrize(
    "when",
    [
        "at_iteration: 3",  # as iteration 3 ends (3.0), before it commits (3.01)
        "at_iteration: 3, during: replication",  # halfway through its replication (3.005)
        # The first replication after 2.5 s, as the real injector waits for it: 3's (3.005).
        "at_time_s: 2.5, during: replication",
    ],
)
def test_a_crash_as_iteration_k_ends_restores_k_from_local_memory(when: str) -> None:
    # commit: on_arrival (the default): each store reports its own shard of 3 once save(3)
    # has captured it; the crashed trainer's node keeps its memory: 3, locally, nothing lost.
    (failure,) = _failures("software", when)
    assert (failure.restored_iteration, failure.tier, failure.lost_iterations) == (3, "local", 0)
    # Under the paper's accounting only committed checkpoints count: 2, committed as save(3)
    # returned; iteration 3 is recomputed.
    (failure,) = _failures("software", when, "checkpoint.commit=next_iteration_end")
    assert (failure.restored_iteration, failure.tier, failure.lost_iterations) == (2, "local", 1)


def test_a_failure_during_replication_waits_for_a_checkpoint_that_replicates() -> None:
    """With a checkpoint every 2 iterations, iteration 3 has none to replicate: the failure
    strikes in 4's replication, as the real injector waits for the next capture."""
    for when in ("at_iteration: 3, during: replication", "at_time_s: 2.5, during: replication"):
        text = ONE_FAILURE.replace("KIND", "software").replace("WHEN", when)
        result = simulate(parse_scenario(text, overrides=["checkpoint.interval=2"]))
        (injected,) = [e for e in result.events if e.kind == "failure_injected"]
        assert injected.details["reached_iteration"] == 4, when
        (failure,) = result.summary.failures
        assert (failure.restored_iteration, failure.lost_iterations) == (4, 0), when


@pytest.mark.parametrize(
    "when",
    [
        "at_iteration: 3",
        "at_iteration: 3, during: replication",
        "at_time_s: 2.5, during: replication",
    ],
)
def test_a_lost_node_as_iteration_k_ends_restores_the_committed_k_minus_1(when: str) -> None:
    # Node 2's memory is gone with it; its shard of 3 has no replica stored on node 3 yet, so
    # every node restores 2, node 2 from its peer.
    text = ONE_FAILURE.replace("KIND", "hardware").replace("WHEN", when)
    restored = [entry[1:] for entry in _log(text) if entry[1] == "state_restored"]
    assert restored == [("state_restored", 2, 2, "peer"), ("state_restored", None, 2, "peer")]
    (failure,) = simulate(parse_scenario(text)).summary.failures
    assert (failure.restored_iteration, failure.lost_iterations) == (2, 1)


# A crash as iteration 3 ends restores the captured 3 at 6.6 (no replica of 3 anywhere); the
# second failure strikes at 7.0, mid-iteration 4, before anything commits again. Iteration 2
# was persisted at 2.022 (every 2 iterations, 12 MB at 8 Gbit/s).
AFTER_A_CAPTURED_RESTORE = (
    "checkpoint.persist_every_iterations=2",
    "cluster.storage.bandwidth_gbit_s=8",
)


def _after_a_captured_restore(kind: str, *overrides: str) -> list[Any]:
    schedule = (
        "failures.schedule=[{kind: software, nodes: [1], at_iteration: 3},"
        f" {{kind: {kind}, nodes: [2], at_time_s: 7.0}}]"
    )
    return simulate(parse_scenario(TINY, overrides=[schedule, *overrides])).summary.failures


def test_a_node_lost_after_a_captured_restore_rolls_back_to_persistent_storage() -> None:
    # Modelled conservatively: after restoring a captured iteration each node holds its own
    # shard of it and no replica, so node 2's shard is in no surviving memory until the next
    # commit: every node reads persistent iteration 2.
    first, second = _after_a_captured_restore("hardware", *AFTER_A_CAPTURED_RESTORE)
    assert (first.restored_iteration, first.tier) == (3, "local")
    assert (second.restored_iteration, second.tier) == (2, "persistent")
    # With nothing persisted, training restarts from scratch.
    first, second = _after_a_captured_restore("hardware")
    assert (first.restored_iteration, second.restored_iteration, second.tier) == (
        3,
        None,
        "scratch",
    )


def test_a_crash_after_a_captured_restore_restores_it_locally_again() -> None:
    first, second = _after_a_captured_restore("software", *AFTER_A_CAPTURED_RESTORE)
    assert (first.restored_iteration, first.tier) == (3, "local")
    assert (second.restored_iteration, second.tier) == (3, "local")


def test_a_node_lost_during_a_crash_recovery_restores_the_committed_iteration() -> None:
    # The crash at iteration 3's end finds 3 captured, 2 committed; node 2, lost as the root
    # stops the job, joins the recovery: its shard of 3 went with it, so all restore 2.
    text = TINY.replace(
        "    - {kind: hardware, nodes: [2], at_iteration: 6}",
        "    - {kind: hardware, nodes: [2], during: recovery}",
    )
    first, second = simulate(parse_scenario(text)).summary.failures
    assert first.restored_iteration == second.restored_iteration == 2
    assert (first.tier, second.tier) == ("peer", "peer")


def test_the_persistent_baseline_restores_its_last_save_after_a_crash() -> None:
    # No checkpoint in CPU memory: a crash as iteration 3 ends restores the save of 2.
    overrides = ("checkpoint.strategy=persistent", "checkpoint.baseline_every_iterations=2")
    (failure,) = _failures("software", "at_iteration: 3", *overrides)
    assert (failure.restored_iteration, failure.tier, failure.lost_iterations) == (
        2,
        "persistent",
        1,
    )


def _restarts(*overrides: str) -> list[tuple[float, float]]:
    """(restart_begin, process_group_ready) of each recovery of TINY with ``overrides``."""
    log = _log(TINY, *overrides)
    begins = [entry[0] for entry in log if entry[1] == "restart_begin"]
    readies = [entry[0] for entry in log if entry[1] == "process_group_ready"]
    return list(zip(begins, readies, strict=True))


TWO_CRASHES_ON_NODE_1 = (
    "failures.schedule=[{kind: software, nodes: [1], at_iteration: 3},"
    " {kind: software, nodes: [1], at_iteration: 6}]"
)


def test_a_second_crash_on_a_node_waits_for_its_new_spare_to_finish_warming() -> None:
    # The first crash (3.0) takes node 1's warm spare: restart 3.55 -> 6.55, resumed at 6.6,
    # and the new spare begins warming then, in the background at half the pace. The second
    # crash (iteration 6 ends at 9.6) restarts at 10.15: 3.55 s in the background warmed
    # 1.775 of its 4 s, the rest (2.225 s) comes before the restart's 3 s: ready at 15.375.
    spares = ("recovery.spare_warmup_s=4", "recovery.spare_background_share=0.5")
    assert _restarts(TWO_CRASHES_ON_NODE_1, *spares) == [(3.55, 6.55), (10.15, 15.375)]
    # A second warm spare per rank takes the second crash instead.
    assert _restarts(TWO_CRASHES_ON_NODE_1, *spares, "recovery.warm_spares=2") == [
        (3.55, 6.55),
        (10.15, 13.15),
    ]
    # Another node's crash finds its own spare warm.
    other = TWO_CRASHES_ON_NODE_1.replace("[1], at_iteration: 6", "[2], at_iteration: 6")
    assert _restarts(other, *spares) == [(3.55, 6.55), (10.15, 13.15)]
    # Without a warm-up (the default) every spare is warm.
    assert _restarts(TWO_CRASHES_ON_NODE_1) == [(3.55, 6.55), (10.15, 13.15)]


def test_a_crash_with_no_spare_left_waits_for_a_whole_warm_up_and_a_replaced_node_is_warm() -> None:
    spares = ("recovery.spare_warmup_s=4", "recovery.spare_background_share=0.5")
    # The restarted trainer of node 2 crashes as it starts (3.55): node 2's one spare is
    # taken and no new one starts before the node trains again, so a process starts on the
    # spot: detection 0.05, then 4 s of warm-up before the restart's 3 s.
    again = (
        "failures.schedule=[{kind: software, nodes: [2], at_iteration: 3},"
        " {kind: software, nodes: [2], during: recovery}]"
    )
    log = _log(TINY, again, *spares)
    assert [entry[0] for entry in log if entry[1] == "restart_begin"] == [3.55, 3.6]
    assert [entry[0] for entry in log if entry[1] == "process_group_ready"] == [10.6]
    # A lost node's ranks run in its replacement's trainers, whose spares are warm: a crash
    # after the replacement waits for nothing.
    replaced = (
        "failures.schedule=[{kind: software, nodes: [2], at_iteration: 3},"
        " {kind: hardware, nodes: [2], at_iteration: 5},"
        " {kind: software, nodes: [2], at_iteration: 6}]"
    )
    restarts = _restarts(replaced, *spares)
    assert [round(ready - begin, 9) for begin, ready in restarts] == [3.0, 3.0, 3.0]
    # Without the loss, a second crash as iteration 9 ends (12.6; its restart at 13.15, 6.55
    # s after the node trained again) finds its new spare 3.275 s into its 4: 0.725 s more.
    crashes = replaced.replace(" {kind: hardware, nodes: [2], at_iteration: 5},", "")
    restarts = _restarts(crashes.replace("at_iteration: 6", "at_iteration: 9"), *spares)
    assert [round(ready - begin, 9) for begin, ready in restarts] == [3.0, 3.725]
