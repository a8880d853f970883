"""Tiny explicit scenarios whose event logs are compared with hand-computed lists (SimPy style)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.scenario_loader import parse_scenario
from sim import simulate

# 4 nodes, groups {0,1} {2,3}; iteration = 0.6 s compute (the idle span) + 0.4 s all-reduce.
# Shard 3 MB per node: replicated in 3 chunks of 1 MB at 1 GB/s inside the span (3 ms), captured
# over a 0.3 GB/s copy engine (10 ms): every checkpoint commits 10 ms after its iteration ends.
TINY = """
name: tiny
cluster: {nodes: 4, standby_nodes: 1, replacement_s: 0.5, network_bandwidth_gbit_s: 8,
          network_alpha_s: 0, copy_bandwidth_gbyte_s: 0.3}
model: {parameters: 1.0e+6}
training:
  phases: [{kind: compute, duration_s: 0.6}, {kind: communication, duration_s: 0.4}]
checkpoint: {replicas: 2, placement: group, buffer_mb: 1, sub_buffers: 1}
failures:
  schedule:
    - {kind: software, nodes: [1], at_iteration: 3}
    - {kind: hardware, nodes: [2], at_iteration: 6}
detection: {exit_report_s: 0.05, heartbeat_interval_s: 0.5, lease_timeout_s: 3.0}
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
    # Failure 1 strikes the moment iteration 3 ends (t = 3.0), before its checkpoint commits
    # (3.01): iteration 2 (committed at 2.01) is restored and iteration 3 recomputed. Detection
    # 0.05, stop 0.5, restart 3, retrieval 0.04 fixed + local copy 0.01. Training resumes at
    # 6.60 from iteration 2, so iteration 6 ends at 10.60 and failure 2 strikes then;
    # iteration 5 committed at 9.61. Detection: lease 3 - half a beat 0.25 = 2.75; stop 0.5
    # overlaps it (the peers' collectives failed); standby 0.5 + node start 0.25; restart 3;
    # 0.04 fixed, then node 2 fetches its shard from node 3 (3 ms) while the copy engine takes
    # 10 ms: restored at 17.15. The run ends at 20 s after iteration 7 (19.15).
    assert _log(TINY) == [
        (0.0, "run_started", None, None, None),
        (2.01, "ckpt_committed", None, 2, None),
        (3.0, "iteration_end", None, 3, None),
        (3.0, "failure_injected", 1, None, None),
        (3.05, "failure_detected", 1, None, None),
        (3.55, "training_stopped", None, None, None),
        (3.55, "restart_begin", None, None, None),
        (6.55, "process_group_ready", None, None, None),
        (6.6, "state_restored", None, 2, "local"),
        (6.6, "training_resumed", None, 2, None),
        (9.61, "ckpt_committed", None, 5, None),
        (10.6, "iteration_end", None, 6, None),
        (10.6, "failure_injected", 2, None, None),
        (13.35, "failure_detected", 2, None, None),
        (13.35, "training_stopped", None, None, None),
        (13.35, "replacement_requested", 2, None, None),
        (14.1, "replacement_ready", None, None, None),
        (14.1, "restart_begin", None, None, None),
        (17.1, "process_group_ready", None, None, None),
        (17.15, "state_restored", 2, 5, "peer"),
        (17.15, "state_restored", None, 5, "peer"),
        (17.15, "training_resumed", None, 5, None),
        (20.0, "run_finished", None, 7, None),
    ]


def test_next_iteration_end_commits_count_one_iteration_later() -> None:
    # commit: next_iteration_end: iteration k's checkpoint counts when k+1 ends (t = k + 1),
    # inside save(k+1). Failure 1 strikes at 3.5, mid-iteration 4: iteration 3 is in memory
    # since 3.01 but not yet counted, so iteration 2 (committed at 3.0) is restored and 1.5 s
    # lost (on_arrival would restore 3 and lose 0.5 s). Exit report 0.05, stop 0.5, restart 3,
    # retrieval 0.05: resumed at 7.1 from 2, so iteration k ends at 5.1 + k. Failure 2 strikes
    # as iteration 6 ends (11.1), after save(6) committed iteration 5; lease 2.75, standby
    # 0.75, restart 3, retrieval 0.05 from the peer. The run ends at 20 s after iteration 7.
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
        (13.85, "failure_detected", 2, None, None),
        (13.85, "training_stopped", None, None, None),
        (13.85, "replacement_requested", 2, None, None),
        (14.6, "replacement_ready", None, None, None),
        (14.6, "restart_begin", None, None, None),
        (17.6, "process_group_ready", None, None, None),
        (17.65, "state_restored", 2, 5, "peer"),
        (17.65, "state_restored", None, 5, "peer"),
        (17.65, "training_resumed", None, 5, None),
        (20.0, "run_finished", None, 7, None),
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
    assert software.lost_progress_s == pytest.approx(1.0)  # iteration 3, recomputed
    assert (hardware.detection_s, hardware.stop_s) == pytest.approx((2.75, 0.0))
    assert hardware.replacement_s == pytest.approx(0.75)
    assert hardware.tier == "peer"
    assert summary.iterations_completed == 7
    assert summary.ettr == pytest.approx(7 * 1.0 / 20.0)


def test_losing_a_whole_group_rolls_back_to_persistent_storage() -> None:
    # Persist every 2 iterations: a background upload of 12 MB at 0.008 Gbit/s (12 s) ...
    # too slow; at 8 Gbit/s it takes 12 ms. Iteration 2 commits at 2.01 and is persisted at
    # 2.022. Losing group {0, 1} at 3.0 leaves iteration 2 only in storage.
    log = _log(
        TINY,
        "failures.schedule=[{kind: group, nodes: [0], at_iteration: 3}]",
        "checkpoint.persist_every_iterations=2",
        "cluster.storage.bandwidth_gbit_s=8",
        "cluster.standby_nodes=2",
    )
    assert (2.01, "persist_begin", None, 2, None) in log
    assert (2.022, "persist_done", None, 2, None) in log
    restored = [entry for entry in log if entry[1] == "state_restored" and entry[2] is None]
    # All four nodes roll back: 4 x 3 MB through the storage's shared 1 GB/s take 12 ms (the
    # copy engine, pipelined, 10 ms) after the fixed 0.04 s.
    assert restored == [
        (round(3.0 + 2.75 + 0.75 + 3.0 + 0.04 + 0.012, 9), "state_restored", None, 2, "persistent")
    ]


def test_a_node_lost_during_recovery_joins_it() -> None:
    text = TINY.replace(
        "    - {kind: software, nodes: [1], at_iteration: 3}\n"
        "    - {kind: hardware, nodes: [2], at_iteration: 6}",
        "    - {kind: hardware, nodes: [0], at_iteration: 3}\n"
        "    - {kind: hardware, nodes: [2], during: recovery}",
    )
    result = simulate(parse_scenario(text, overrides=["cluster.standby_nodes=2"]))
    first, second = result.summary.failures
    # Failure 0 at 3.0, detected at 5.75, when the root stops the job: the injector fires
    # the second loss then, and it joins the recovery. The stop ends when it is detected
    # (8.5); both nodes are replaced (0.5 + 0.25), one restart (3) and one retrieval
    # (0.04 + 0.01): both resume at 12.3 from iteration 2.
    assert (first.time_s, second.time_s) == pytest.approx((3.0, 5.75))
    phases = ("detection_s", "stop_s", "replacement_s", "restart_s", "retrieval_s", "downtime_s")
    assert [getattr(first, p) for p in phases] == pytest.approx([2.75, 2.75, 0.75, 3, 0.05, 9.3])
    assert [getattr(second, p) for p in phases] == pytest.approx([2.75, 0, 0.75, 3, 0.05, 6.55])
    assert (first.tier, second.tier) == ("peer", "peer")
    assert first.restored_iteration == second.restored_iteration == 2


def test_crash_during_recovery_strikes_as_the_restarted_trainers_start() -> None:
    log = _log(
        TINY,
        "failures.schedule=[{kind: software, nodes: [0], at_iteration: 3},"
        " {kind: software, nodes: [2], during: recovery}]",
    )
    injected = [entry[0] for entry in log if entry[1] == "failure_injected"]
    # Detected 3.05, stopped 3.55, restart begins 3.55: the crash strikes then; the job is
    # already stopped, so the second recovery is detection 0.05 + restart 3 + 0.04 + 0.01.
    assert injected == [3.0, 3.55]
    assert log[-2] == (6.65, "training_resumed", None, 2, None)


def test_same_seed_same_log_and_other_seeds_differ() -> None:
    text = TINY.replace(
        "  schedule:",
        "  process: {failures_per_node_per_day: 2000, hardware_fraction: 0.5}\n  schedule:",
    )
    first = simulate(parse_scenario(text), 7).events
    assert first == simulate(parse_scenario(text), 7).events
    assert first != simulate(parse_scenario(text), 8).events


@pytest.mark.parametrize(("single_host", "replacement_s"), [(False, 0.75), (True, 1.0)])
def test_nodes_emulated_on_one_host_start_one_after_another(
    single_host: bool, replacement_s: float
) -> None:
    # Group {0, 1} lost: two replacement nodes start their agents and stores (0.25 s each).
    # On one host they share its CPUs: 0.5 + 2 x 0.25; on their own machines: 0.5 + 0.25.
    text = TINY.replace(
        "    - {kind: software, nodes: [1], at_iteration: 3}\n"
        "    - {kind: hardware, nodes: [2], at_iteration: 6}",
        "    - {kind: group, nodes: [0], at_iteration: 3}",
    )
    overrides = ["cluster.standby_nodes=2", f"cluster.single_host={str(single_host).lower()}"]
    (failure,) = simulate(parse_scenario(text, overrides=overrides)).summary.failures
    assert failure.replacement_s == pytest.approx(replacement_s)
