"""The throughput figure of a simulated run: the rate never exceeds one iteration per
iteration time. A failure that joins a recovery gets recompute spans of its own over the same
seconds as the first's, and summing both doubled the rate there."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from test_sim_simulation import TINY

from analysis.plots import _training_rate
from analysis.results import RunResult
from shared.events import Event
from shared.scenario_loader import parse_scenario
from shared.summary import RunSummary
from sim import simulate

# The simulator tests' tiny cluster: a lost node, and a second lost during its recovery.
JOINED = TINY.replace(
    "    - {kind: software, nodes: [1], at_iteration: 3}\n"
    "    - {kind: hardware, nodes: [2], at_iteration: 6}",
    "    - {kind: hardware, nodes: [0], at_iteration: 3}\n"
    "    - {kind: hardware, nodes: [2], during: recovery}",
).replace("standby_nodes: 1", "standby_nodes: 2")


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
