"""The throughput figure of a simulated run: the rate never exceeds one iteration per
iteration time. A failure that joins a recovery gets recompute spans of its own over the same
seconds as the first's, and summing both doubled the rate there."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from analysis.plots import _training_rate
from analysis.results import RunResult
from shared.events import Event
from shared.scenario_loader import parse_scenario
from shared.summary import RunSummary
from sim import simulate

JOINED = """
name: joined
cluster: {nodes: 4, standby_nodes: 2, replacement_s: 0.5, network_bandwidth_gbit_s: 8,
          network_alpha_s: 0, copy_bandwidth_gbyte_s: 0.3}
model: {parameters: 1.0e+6}
training:
  parallelism: zero3
  phases: [{kind: compute, duration_s: 0.6}, {kind: communication, duration_s: 0.4}]
checkpoint: {replicas: 2, placement: group, buffer_mb: 1, sub_buffers: 1}
failures:
  schedule:
    - {kind: hardware, nodes: [0], at_iteration: 3}
    - {kind: hardware, nodes: [2], during: recovery}
detection: {exit_report_s: 0.05, heartbeat_interval_s: 0.5, lease_timeout_s: 3.0}
recovery: {stop_s: 0.5, restart_s: 3.0, node_start_s: 0.25, retrieval_overhead_s: 0.04}
sim: {duration_days: 0.0003}
"""


def _peak_rate(summary: RunSummary, events: tuple[Event, ...]) -> float:
    series = _training_rate(RunResult(Path("joined"), summary, events))
    assert series is not None
    _, rates, how = series
    assert how.startswith("training spans")
    return max(rates)


def test_a_joined_failure_does_not_double_the_simulated_rate() -> None:
    result = simulate(parse_scenario(JOINED))
    first, second = result.summary.failures
    assert second.joined == 0 and second.lost_iterations == 0
    events = tuple(result.events)
    ceiling = 1 / result.summary.iteration_time_s * (1 + 1e-9)
    assert _peak_rate(result.summary, events) <= ceiling
    # Two failures recomputing the same seconds (as the summaries counted a joined failure
    # until 2026-12-06): still one iteration per iteration time.
    overlapping = replace(second, joined=None, lost_iterations=first.lost_iterations)
    summary = replace(result.summary, failures=(first, overlapping))
    assert _peak_rate(summary, events) <= ceiling
