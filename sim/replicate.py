"""Running a scenario: one seed (``simulate``), or several in parallel with confidence intervals.

``simulate`` prepares the scenario (``sim.model``), runs the simulation and builds the summary.
``replicate`` runs seeds ``scenario.seed, scenario.seed + 1, ...`` across processes and reports,
for the headline metrics, the mean over seeds and a 95% confidence interval (Student's t over
the per-seed values; a single seed has no interval).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from shared.events import Event, write_events
from shared.scenario import Scenario
from shared.summary import RunSummary, write_summary
from sim.metrics import build_summary
from sim.model import build_model
from sim.simulation import SimProgress, Simulation

HEADLINE_METRICS: tuple[str, ...] = (
    "ettr",
    "failures",
    "mean_wasted_s",
    "mean_downtime_s",
    "fraction_from_memory",
    "checkpoint_overhead",
)


@dataclass(frozen=True)
class SimResult:
    """One run: its summary and its time-ordered events."""

    summary: RunSummary
    events: tuple[Event, ...]


def simulate(
    scenario: Scenario,
    seed: int | None = None,
    *,
    progress_interval_s: float = 3600.0,
    on_progress: Callable[[SimProgress], None] | None = None,
) -> SimResult:
    """Simulate one run of ``scenario`` with ``seed`` (default: the scenario's).

    ``on_progress`` is called about twice a wall second with how far the run has got.
    Raises ``ScenarioError`` when the scenario breaks a rule of the simulator, or when a
    failure storm stops the run (``sim.simulation``).
    """
    seed = scenario.seed if seed is None else seed
    model = build_model(scenario)
    simulation = Simulation(
        model, seed, progress_interval_s=progress_interval_s, on_progress=on_progress
    )
    state = simulation.run()
    summary = build_summary(model, state, seed, simulation.duration_s)
    return SimResult(summary, tuple(state.events))


def write_result(result: SimResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_events(folder / "events.jsonl", result.events)
    write_summary(folder / "summary.json", result.summary)


def headline(summary: RunSummary) -> dict[str, float | None]:
    totals = summary.to_json()["totals"]
    return {name: totals.get(name) for name in HEADLINE_METRICS}


BOUNDS: dict[str, tuple[float, float]] = {
    "ettr": (0.0, 1.0),
    "failures": (0.0, math.inf),
    "mean_wasted_s": (0.0, math.inf),
    "mean_downtime_s": (0.0, math.inf),
    "fraction_from_memory": (0.0, 1.0),
}
"""The range each headline metric can take: its interval is cut to it (a t interval over two
seeds read [-10, 244] failures)."""


def mean_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> dict[str, float | None]:
    """Mean and confidence interval (t distribution) of per-seed values, cut to ``bounds``."""
    if not values:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "n": len(values)}
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * (
        statistics.stdev(values) / math.sqrt(len(values))
    )
    low, high = bounds
    return {
        "mean": mean,
        "ci_low": max(low, mean - half),
        "ci_high": min(high, mean + half),
        "n": len(values),
    }


def aggregate(summaries: Sequence[RunSummary]) -> dict[str, Any]:
    """Means and 95% CIs over seeds of the headline metrics."""
    rows = [headline(s) for s in summaries]
    result: dict[str, Any] = {"seeds": [s.seed for s in summaries]}
    for name in HEADLINE_METRICS:
        values = [float(v) for row in rows if (v := row[name]) is not None]
        result[name] = mean_ci(values, bounds=BOUNDS.get(name, (-math.inf, math.inf)))
    return result


def _run_one(scenario_json: dict[str, Any], seed: int, folder: str | None) -> RunSummary:
    scenario = Scenario.model_validate(scenario_json, strict=False)
    result = simulate(scenario, seed)
    if folder is not None:
        write_result(result, Path(folder))
    return result.summary


def replicate(
    scenario: Scenario,
    seeds: int,
    *,
    out: Path | None = None,
    workers: int | None = None,
    on_done: Callable[[RunSummary], None] | None = None,
) -> list[RunSummary]:
    """Run ``seeds`` seeds in parallel; each seed's result goes to ``out/seed-<seed>``."""
    seed_list = [scenario.seed + i for i in range(seeds)]
    data = scenario.model_dump()
    workers = max(1, min(workers or os.cpu_count() or 1, seeds))
    summaries: list[RunSummary] = []
    if workers == 1:
        for seed in seed_list:
            folder = str(out / f"seed-{seed}") if out else None
            summaries.append(_run_one(data, seed, folder))
            if on_done:
                on_done(summaries[-1])
        return summaries
    # The workers ignore SIGINT, which a terminal sends to the whole group: the parent alone
    # decides. On Ctrl-C (or a seed's error) the seeds not begun are cancelled and those under
    # way ended at once: leaving the executor would wait for each (a minute for a large
    # cluster). A worker that dies breaks the pool (BrokenProcessPool), where
    # multiprocessing's Pool would wait for its task for ever.
    others = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)
    try:
        futures = [
            pool.submit(_run_one, data, seed, str(out / f"seed-{seed}") if out else None)
            for seed in seed_list
        ]
        for future in as_completed(futures):
            summaries.append(future.result())
            if on_done:
                on_done(summaries[-1])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in set(multiprocessing.active_children()) - others:  # the pool's workers
            child.terminate()
        raise
    pool.shutdown()
    return sorted(summaries, key=lambda s: s.seed)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
