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
detection: {exit_report_s: 0.05, lease_timeout_s: 3.0}
recovery: {stop_s: 0.5, restart_s: 3.0}
sim: {duration_days: 0.000231481481481481}
"""


def _log(text: str, *overrides: str) -> list[tuple[Any, ...]]:
    result = simulate(parse_scenario(text, overrides=overrides), progress_interval_s=1e9)
    return [
        (round(e.time_s, 9), e.kind, e.node, e.iteration, e.details.get("tier"))
        for e in result.events
    ]


def test_software_then_hardware_failure_event_log() -> None:
    # Failure 1 strikes halfway through iteration 3 (t = 2.5): iteration 2 ended at 2.0 and
    # committed at 2.01. Detection 0.05, stop 0.5, restart 3, local copy 0.01.
    # Training resumes at 6.06 from iteration 2, so iteration 6 starts at 9.06 and failure 2
    # strikes at 9.56; iteration 5 ended at 9.06 and committed at 9.07. Lease 3, stop 0.5,
    # standby 0.5, restart 3; node 2 fetches its shard from node 3 (3 ms) while the copy
    # engine takes 10 ms: restored at 16.57. The run ends at 20 s after iteration 8 (19.57).
    assert _log(TINY) == [
        (0.0, "run_started", None, None, None),
        (2.0, "iteration_end", None, 2, None),
        (2.01, "ckpt_committed", None, 2, None),
        (2.5, "failure_injected", 1, None, None),
        (2.55, "failure_detected", 1, None, None),
        (3.05, "training_stopped", None, None, None),
        (3.05, "restart_begin", None, None, None),
        (6.05, "process_group_ready", None, None, None),
        (6.06, "state_restored", None, 2, "local"),
        (6.06, "training_resumed", None, 2, None),
        (9.06, "iteration_end", None, 5, None),
        (9.07, "ckpt_committed", None, 5, None),
        (9.56, "failure_injected", 2, None, None),
        (12.56, "failure_detected", 2, None, None),
        (13.06, "training_stopped", None, None, None),
        (13.06, "replacement_requested", 2, None, None),
        (13.56, "replacement_ready", None, None, None),
        (13.56, "restart_begin", None, None, None),
        (16.56, "process_group_ready", None, None, None),
        (16.57, "state_restored", 2, 5, "peer"),
        (16.57, "state_restored", None, 5, "peer"),
        (16.57, "training_resumed", None, 5, None),
        (20.0, "run_finished", None, 8, None),
    ]


def test_summary_phases_follow_from_the_log() -> None:
    summary = simulate(parse_scenario(TINY)).summary
    software, hardware = summary.failures
    assert (software.detection_s, software.stop_s, software.restart_s) == pytest.approx(
        (0.05, 0.5, 3.0)
    )
    assert software.retrieval_s == pytest.approx(0.01)
    assert software.lost_progress_s == pytest.approx(0.5)  # half of iteration 3
    assert hardware.replacement_s == pytest.approx(0.5)
    assert hardware.tier == "peer"
    assert summary.iterations_completed == 8
    assert summary.ettr == pytest.approx(8 * 1.0 / 20.0)


def test_losing_a_whole_group_rolls_back_to_persistent_storage() -> None:
    # Persist every 2 iterations: a background upload of 12 MB at 0.008 Gbit/s (12 s) ...
    # too slow; at 8 Gbit/s it takes 12 ms. Iteration 2 commits at 2.01 and is persisted at
    # 2.022. Losing group {0, 1} at 2.5 leaves iteration 2 only in storage.
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
    # copy engine, pipelined, 10 ms).
    assert restored == [
        (round(2.5 + 3.0 + 0.5 + 0.5 + 3.0 + 0.012, 9), "state_restored", None, 2, "persistent")
    ]


def test_failure_during_recovery_ends_the_first_chain_and_recovers_both() -> None:
    log = _log(
        TINY,
        "failures.schedule=[{kind: hardware, nodes: [0], at_iteration: 3},"
        " {kind: hardware, nodes: [2], during: recovery}]",
        "cluster.standby_nodes=2",
    )
    injected = [entry for entry in log if entry[1] == "failure_injected"]
    # Failure 1 at 2.5; detected 5.5, stopped 6.0, replaced 6.5, restart 6.5-9.5: the second
    # failure strikes halfway through the restart, at 8.0.
    assert [entry[0] for entry in injected] == [2.5, 8.0]
    interrupted = next(entry for entry in log if entry[1] == "state_restored")
    assert interrupted == (6.5, "state_restored", None, 2, "peer")
    assert log[-2][1] == "training_resumed" and log[-2][3] == 2


def test_same_seed_same_log_and_other_seeds_differ() -> None:
    text = TINY.replace(
        "  schedule:",
        "  process: {failures_per_node_per_day: 2000, hardware_fraction: 0.5}\n  schedule:",
    )
    first = simulate(parse_scenario(text), 7).events
    assert first == simulate(parse_scenario(text), 7).events
    assert first != simulate(parse_scenario(text), 8).events
