"""The simulator's checkpoint interval (checkpoint.interval) and compressed replication: tiny
explicit scenarios whose event logs are compared with hand-computed lists (SimPy style)."""

from __future__ import annotations

from typing import Any

from shared.scenario_loader import parse_scenario
from sim import simulate
from sim.model import build_model

# 4 nodes, groups {0,1} {2,3}; iteration = 0.6 s compute (the idle span) + 0.4 s all-reduce.
# ZeRO-3 shards the 12 MB state: 3 MB per node, one copy to the group peer. The link carries
# 2 MB/s: the span's usable 0.54 s (mu 0.9) take a 1 MB chunk (0.5 s) and 80,000 bytes more,
# 1.08 MB per iteration, so one checkpoint needs ceil(3 / 1.08) = 3 iterations of idle spans.
SLOW = """
name: tiny-slow-link
cluster: {nodes: 4, standby_nodes: 1, replacement_s: 0.5, network_bandwidth_gbit_s: 0.016,
          network_alpha_s: 0, copy_bandwidth_gbyte_s: 0.3}
model: {parameters: 1.0e+6}
training:
  parallelism: zero3
  phases: [{kind: compute, duration_s: 0.6}, {kind: communication, duration_s: 0.4}]
checkpoint: {replicas: 2, placement: group, buffer_mb: 1, sub_buffers: 1, interval: adaptive}
failures:
  schedule:
    - {kind: software, nodes: [1], at_iteration: 7}
detection: {exit_report_s: 0.05, heartbeat_interval_s: 0.5, lease_timeout_s: 3.0}
recovery: {stop_s: 0.5, restart_s: 3.0, node_start_s: 0.25, retrieval_overhead_s: 0.04}
sim: {duration_days: 0.000231481481481481}
"""

RECOVERY = [
    (7.0, "iteration_end", None, 7, None),
    (7.0, "failure_injected", 1, None, None),
    (7.05, "failure_detected", 1, None, None),
    (7.55, "training_stopped", None, None, None),
    (7.55, "restart_begin", None, None, None),
    (10.55, "process_group_ready", None, None, None),
]


def _log(text: str, *overrides: str) -> list[tuple[Any, ...]]:
    result = simulate(parse_scenario(text, overrides=overrides), progress_interval_s=1e9)
    return [
        (round(e.time_s, 9), e.kind, e.node, e.iteration, e.details.get("tier"))
        for e in result.events
    ]


def test_adaptive_interval_event_log() -> None:
    # k = 3: checkpoints of iterations 3, 6, 9, ... Iteration 3's copy rides in the spans of
    # iterations 4, 5 and 6 (1.08 + 1.08 + 0.84 MB): the last chunk (0.42 s) ends at
    # 5.0 + 0.42 = 5.42, when 3 commits. The crash at the end of iteration 7 finds 6 captured
    # (by save(6), at 6.0) but not yet committed (8.42): under commit: on_arrival the crashed
    # node's store reports its own shard of 6, so 6 is restored from local memory and only
    # iteration 7 is recomputed. Detection 0.05, stop 0.5, restart 3, retrieval 0.04 + the
    # 10 ms local copy: resumed at 10.6 from 6; the run ends at 20 s after iteration
    # 6 + 9 = 15.
    assert _log(SLOW) == [
        (0.0, "run_started", None, None, None),
        (0.0, "ckpt_interval_changed", None, None, None),
        (5.42, "ckpt_committed", None, 3, None),
        *RECOVERY,
        (10.6, "state_restored", None, 6, "local"),
        (10.6, "training_resumed", None, 6, None),
        (20.0, "run_finished", None, 15, None),
    ]
    result = simulate(parse_scenario(SLOW), progress_interval_s=1e9)
    change = result.events[1]
    assert change.details["interval"] == 3 and change.details["previous"] == 1
    (failure,) = result.summary.failures
    assert (failure.lost_iterations, failure.restored_iteration) == (1, 6)
    assert result.summary.extra["checkpoint_interval_iterations"] == 3
    # A lost node needs its shard's replica on a peer: the newest committed checkpoint, 3,
    # and iterations 4-7 are recomputed.
    lost = parse_scenario(
        SLOW, overrides=["failures.schedule=[{kind: hardware, nodes: [1], at_iteration: 7}]"]
    )
    (failure,) = simulate(lost).summary.failures
    assert (failure.lost_iterations, failure.restored_iteration, failure.tier) == (4, 3, "peer")


def test_every_iteration_on_the_same_link_spills_and_slows_training() -> None:
    # interval 1 (the default): the 3 MB copy cannot ride in one span; the spill (1.92 MB at
    # 2 MB/s, 0.96 s, after the all-reduce) delays every iteration's update to 1.96 s.
    model = build_model(parse_scenario(SLOW, overrides=["checkpoint.interval=1"]))
    assert model.strategy.checkpoint_every == 1
    assert round(model.strategy.cycle_s, 9) == 1.96
    adaptive = build_model(parse_scenario(SLOW))
    assert (adaptive.strategy.checkpoint_every, adaptive.strategy.cycle_s) == (3, 1.0)


def test_fixed_interval_event_log() -> None:
    # interval 2: checkpoints 2, 4, 6, ... The plan over 2 iterations carries 2.16 MB in their
    # spans and spills 0.84 MB (0.42 s) after the second all-reduce, which the next update
    # waits for: every two iterations take 2.42 s, and each copy completes 2.42 s after its
    # iteration ends.
    model = build_model(parse_scenario(SLOW, overrides=["checkpoint.interval=2"]))
    assert model.strategy.checkpoint_every == 2
    assert round(model.strategy.cycle_s, 9) == 1.21
    assert round(model.strategy.last_replica_delay_s, 9) == 2.42


def test_compression_shrinks_the_copy_and_the_interval() -> None:
    # A measured ratio of 3 makes the copy 1 MB: it fits in one span (0.5 s), k = 1. Iteration
    # 6 commits at 6.5; iteration 7, captured as the crash strikes at its end, is restored
    # from local memory. Resumed at 10.6 from 7: iteration 16 ends at 19.6.
    log = _log(SLOW, "checkpoint.compression=on", "checkpoint.compression_ratio=3")
    assert log == [
        (0.0, "run_started", None, None, None),
        (0.0, "ckpt_compression", None, None, None),
        (6.5, "ckpt_committed", None, 6, None),
        *RECOVERY,
        (10.6, "state_restored", None, 7, "local"),
        (10.6, "training_resumed", None, 7, None),
        (20.0, "run_finished", None, 16, None),
    ]


def test_auto_compression_follows_the_bottleneck() -> None:
    # 2 MB/s link. A 1 GB/s codec with ratio 3 moves 6 MB/s of raw bytes (the link bounds it):
    # on, and the 1 MB copy fits in one iteration. A 2 MB/s codec moves no more raw bytes than
    # the plain link (the CPU bounds it): off, and k stays 3.
    fast = build_model(
        parse_scenario(
            SLOW,
            overrides=[
                "checkpoint.compression=auto",
                "checkpoint.compression_ratio=3",
                "checkpoint.compression_gbyte_s=1",
            ],
        )
    )
    assert fast.strategy.compressed and fast.strategy.checkpoint_every == 1
    slow = build_model(
        parse_scenario(
            SLOW,
            overrides=[
                "checkpoint.compression=auto",
                "checkpoint.compression_ratio=3",
                "checkpoint.compression_gbyte_s=0.002",
            ],
        )
    )
    assert not slow.strategy.compressed and slow.strategy.checkpoint_every == 3


def test_next_iteration_end_commits_at_the_first_end_after_the_last_replica() -> None:
    # Iteration 3's replica is stored at 5.42; under next_iteration_end it counts when the
    # next iteration ends after that: iteration 6, at 6.0.
    log = _log(SLOW, "checkpoint.commit=next_iteration_end")
    assert log[2] == (6.0, "ckpt_committed", None, 3, None)


# Storage at 0.08 Gbit/s (10 MB/s): the job's whole 12 MB state uploads in 1.2 s. Fast links:
# every iteration commits 10 ms after it ends.
YOUNG = """
name: tiny-young
cluster: {nodes: 4, standby_nodes: 1, replacement_s: 0.5, network_bandwidth_gbit_s: 8,
          network_alpha_s: 0, copy_bandwidth_gbyte_s: 0.3, storage: {bandwidth_gbit_s: 0.08}}
model: {parameters: 1.0e+6}
training:
  parallelism: zero3
  phases: [{kind: compute, duration_s: 0.6}, {kind: communication, duration_s: 0.4}]
checkpoint: {replicas: 2, placement: group, buffer_mb: 1, sub_buffers: 1, persist_interval: young}
failures:
  schedule:
    - {kind: software, nodes: [1], at_iteration: 3}
detection: {exit_report_s: 0.05, heartbeat_interval_s: 0.5, lease_timeout_s: 3.0}
recovery: {stop_s: 0.5, restart_s: 3.0, node_start_s: 0.25, retrieval_overhead_s: 0.04}
sim: {duration_days: 0.000231481481481481}
"""


def test_young_persistence_follows_the_observed_failures() -> None:
    # No failure process, so no prior: nothing is persisted until a failure is seen. Training
    # resumes at 6.6 s after one failure: MTBF 6.6 s, Young's sqrt(2 x 1.2 x 6.6) = 3.98 s = 4
    # iterations. The crash at the end of iteration 3 restores 3 (captured), so iteration k
    # ends at 3.6 + k: iterations 4, 8, 12, 16 commit 10 ms after they end (7.6, 11.6, 15.6,
    # 19.6) and upload for 1.2 s; the last upload is still running when the run ends at 20 s.
    assert build_model(parse_scenario(YOUNG)).strategy.persist_every is None
    log = _log(YOUNG)
    assert [entry for entry in log if entry[1].startswith("persist")] == [
        (7.61, "persist_begin", None, 4, None),
        (8.81, "persist_done", None, 4, None),
        (11.61, "persist_begin", None, 8, None),
        (12.81, "persist_done", None, 8, None),
        (15.61, "persist_begin", None, 12, None),
        (16.81, "persist_done", None, 12, None),
        (19.61, "persist_begin", None, 16, None),
    ]


def test_young_persistence_starts_from_the_failure_process() -> None:
    # 2000 failures a day over the job: MTBF 43.2 s; sqrt(2 x 1.2 x 43.2) = 10.2 s = 10 iterations.
    scenario = parse_scenario(
        YOUNG, overrides=["failures.schedule=[]", "failures.process={failures_per_day: 2000}"]
    )
    assert build_model(scenario).strategy.persist_every == 10


def _with_checkpoint(phases: str, flagged: bool) -> Any:
    text = SLOW.replace("interval: adaptive", "interval: 1").replace(
        "  phases: [{kind: compute, duration_s: 0.6}, {kind: communication, duration_s: 0.4}]",
        f"  phases: {phases}\n  phases_with_checkpoint: {str(flagged).lower()}",
    )
    return build_model(parse_scenario(text))


def test_phases_measured_with_the_checkpoint_count_its_traffic_once() -> None:
    """Phases that add up to an iteration measured with Gemini's checkpoint running are scaled
    so that the simulated iteration, with the traffic the simulator adds, lasts as long; the
    same phases taken as an iteration without checkpoints come out longer."""
    phases = "[{kind: compute, duration_s: 1.2}, {kind: communication, duration_s: 0.8}]"
    plain = _with_checkpoint(phases, False)
    assert plain.strategy.cycle_s > 2.1  # the 1.2 s idle span carries 2.16 of the 3 MB
    flagged = _with_checkpoint(phases, True)
    assert abs(flagged.strategy.cycle_s - 2.0) < 1e-3
    compute, communication = (p.duration_s for p in flagged.profile.phases)
    assert compute + communication < 1.9
    assert abs(compute / communication - 1.5) < 1e-9  # one scale for every phase
    # When the traffic alone (1.5 s) outlasts the measured iteration, the phases stay.
    short = "[{kind: compute, duration_s: 0.6}, {kind: communication, duration_s: 0.4}]"
    kept = _with_checkpoint(short, True)
    assert [p.duration_s for p in kept.profile.phases] == [0.6, 0.4]
