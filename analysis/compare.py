"""Comparisons: the simulator's prediction against the measurement, and Gemini against the
persistent-storage baseline.

**Validation.** A simulated run and a measured run of the same scenario and strategy are paired
(``analysis.results.pair_runs``), and their failures matched by index (the schedule's order).
For each matched failure and each recovery phase (detection, stop, replacement, restart,
retrieval, lost progress, and the totals wasted time and downtime) the *error* is
``predicted - measured`` (seconds) and the *relative error* that over the measurement.

The goal is about total recovery time: per scenario, the relative error of the summed
downtime of its matched failures; across scenarios, the **median absolute relative error** must
be at most 10%. Scenarios used to calibrate the simulator are listed but left out of the
median. Where a scenario misses, the table says where: the phase whose error contributes most
to the downtime miss, a different recovery tier, or failures present in one run only.

**Strategies.** For each (scenario, source), the mean wasted time and downtime per failure of
Gemini and of the persistent baseline, and their ratios (the recovery speedup).
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from analysis.results import RunResult, pair_runs
from shared.summary import FailureRecord, RunSummary

JUDGED_OVER = 6
"""Pairs of runs below which the validation goal is reported, not judged."""
GOAL = 0.10
"""Median absolute relative error of downtime that the simulator must meet."""

PHASES: tuple[tuple[str, str], ...] = (
    ("detection_s", "detection"),
    ("stop_s", "stop"),
    ("replacement_s", "replacement"),
    ("restart_s", "restart"),
    ("retrieval_s", "retrieval"),
    ("lost_progress_s", "lost progress"),
    ("wasted_s", "wasted"),
    ("downtime_s", "downtime"),
)
"""(FailureRecord field, label) of every phase compared."""

DOWNTIME_PARTS = ("detection_s", "stop_s", "replacement_s", "restart_s", "retrieval_s")
"""The phases that add up to (most of) the downtime; used to explain a miss."""


@dataclass(frozen=True)
class PhaseError:
    """Prediction against measurement for one phase (seconds).

    Attributes:
        phase: the FailureRecord field, e.g. ``restart_s``.
        predicted: the simulator's value.
        measured: the real harness's value.
        error: predicted - measured.
        relative_error: error / measured; None when measured is 0.
    """

    phase: str
    predicted: float
    measured: float
    error: float
    relative_error: float | None

    @property
    def label(self) -> str:
        return dict(PHASES).get(self.phase, self.phase)


def phase_error(phase: str, predicted: float, measured: float) -> PhaseError:
    """The error of one predicted value against its measurement."""
    error = predicted - measured
    relative = error / measured if measured != 0 else None
    return PhaseError(phase, predicted, measured, error, relative)


@dataclass(frozen=True)
class FailureComparison:
    """One failure, predicted and measured."""

    index: int
    predicted: FailureRecord
    measured: FailureRecord
    phases: tuple[PhaseError, ...]

    @property
    def tier_matches(self) -> bool:
        return self.predicted.tier == self.measured.tier

    def phase(self, name: str) -> PhaseError:
        return next(p for p in self.phases if p.phase == name)


def compare_failures(predicted: FailureRecord, measured: FailureRecord) -> FailureComparison:
    """Phase-by-phase errors of one failure."""
    phases = tuple(
        phase_error(name, float(getattr(predicted, name)), float(getattr(measured, name)))
        for name, _ in PHASES
    )
    return FailureComparison(measured.index, predicted, measured, phases)


@dataclass(frozen=True)
class ScenarioValidation:
    """A scenario's prediction against its measurement.

    Attributes:
        scenario: the scenario's name.
        strategy: gemini or persistent.
        failures: the matched failures.
        predicted_downtime_s: summed downtime of the matched failures, simulated.
        measured_downtime_s: the same, measured.
        downtime_error: relative error of the summed downtime; None without matched failures
            or with zero measured downtime.
        used_for_calibration: True if this scenario calibrated the simulator (then it does not
            count towards the median).
        only_predicted: failure indices the simulator has and the measurement lacks.
        only_measured: failure indices measured but not predicted.
        note: where and why the prediction misses (or that it holds).
    """

    scenario: str
    strategy: str
    failures: tuple[FailureComparison, ...]
    predicted_downtime_s: float
    measured_downtime_s: float
    downtime_error: float | None
    used_for_calibration: bool
    only_predicted: tuple[int, ...]
    only_measured: tuple[int, ...]
    note: str

    @property
    def meets_goal(self) -> bool | None:
        """|downtime error| <= GOAL; None when there is nothing to compare."""
        if self.downtime_error is None:
            return None
        return abs(self.downtime_error) <= GOAL


def validate_pair(
    predicted: RunSummary, measured: RunSummary, *, used_for_calibration: bool = False
) -> ScenarioValidation:
    """Compare a simulated run with the measured run of the same scenario and strategy."""
    sim_by_index = {f.index: f for f in predicted.failures}
    real_by_index = {f.index: f for f in measured.failures}
    common = sorted(set(sim_by_index) & set(real_by_index))
    failures = tuple(compare_failures(sim_by_index[i], real_by_index[i]) for i in common)
    predicted_total = sum(f.predicted.downtime_s for f in failures)
    measured_total = sum(f.measured.downtime_s for f in failures)
    error = (predicted_total - measured_total) / measured_total if measured_total > 0 else None
    only_predicted = tuple(sorted(set(sim_by_index) - set(real_by_index)))
    only_measured = tuple(sorted(set(real_by_index) - set(sim_by_index)))
    note = explain(failures, error, only_predicted, only_measured)
    return ScenarioValidation(
        predicted.scenario,
        predicted.strategy,
        failures,
        predicted_total,
        measured_total,
        error,
        used_for_calibration,
        only_predicted,
        only_measured,
        note,
    )


def explain(
    failures: Sequence[FailureComparison],
    downtime_error: float | None,
    only_predicted: Sequence[int] = (),
    only_measured: Sequence[int] = (),
) -> str:
    """One sentence (or a few) saying where a prediction misses, and by how much."""
    if not failures:
        return "no failure in both runs: nothing to compare"
    notes: list[str] = []
    totals = {
        name: sum(f.phase(name).error for f in failures) for name in (*DOWNTIME_PARTS, "downtime_s")
    }
    miss = totals["downtime_s"]
    worst = max(DOWNTIME_PARTS, key=lambda name: abs(totals[name]))
    predicted = sum(f.phase(worst).predicted for f in failures)
    measured = sum(f.phase(worst).measured for f in failures)
    label = dict(PHASES)[worst]
    within = downtime_error is not None and abs(downtime_error) <= GOAL
    lead = "within the goal" if within else "misses the goal"
    if abs(totals[worst]) > 0:
        notes.append(
            f"{lead}; largest phase error: {label} predicted {predicted:.3g} s, measured "
            f"{measured:.3g} s ({totals[worst]:+.3g} s of the {miss:+.3g} s downtime error)"
        )
    else:
        notes.append(lead)
    rest = miss - sum(totals[name] for name in DOWNTIME_PARTS)
    if abs(rest) > 0.25 * max(abs(miss), 1e-9) and abs(rest) > 1e-3:
        notes.append(f"{rest:+.3g} s outside the named phases (resume after restore)")
    tiers = [f for f in failures if not f.tier_matches]
    for f in tiers:
        notes.append(
            f"failure {f.index}: tier predicted {f.predicted.tier}, measured {f.measured.tier}"
        )
    if only_predicted:
        notes.append(f"failures only simulated: {list(only_predicted)}")
    if only_measured:
        notes.append(f"failures only measured: {list(only_measured)}")
    return "; ".join(notes)


@dataclass(frozen=True)
class ValidationReport:
    """The validation table across scenarios.

    Attributes:
        scenarios: one row per (scenario, strategy) pair.
        median_abs_error: median over the scenarios not used for calibration of
            |downtime_error|; None when there are none.
        counted: how many scenarios entered the median.
        phase_median_abs_error: per phase, median |relative error| over all matched failures
            (phases whose measurement is always 0 are left out).
        goal: the bound on the median.
    """

    scenarios: tuple[ScenarioValidation, ...]
    median_abs_error: float | None
    counted: int
    phase_median_abs_error: dict[str, float]
    goal: float = GOAL

    @property
    def holds(self) -> bool | None:
        """Whether the median meets the goal; None when nothing was compared."""
        if self.median_abs_error is None:
            return None
        return self.median_abs_error <= self.goal

    @property
    def verdict(self) -> str:
        """A sentence for the report: holds or not, over how many runs, and why not. Each
        (scenario, strategy) pair of a simulated and a measured run counts once; under
        ``JUDGED_OVER`` of them the goal is not judged, only reported."""
        if self.median_abs_error is None:
            return (
                "No scenario has both a simulated and a measured run with matching failures "
                "(calibration scenarios excluded): the goal cannot be checked."
            )
        head = (
            f"Median absolute error of total recovery time (downtime): "
            f"{self.median_abs_error:.1%} over {self.counted} pair(s) of a simulated and a "
            f"measured run (a scenario under one strategy) not used for calibration; "
            f"goal <= {self.goal:.0%}: "
        )
        missing = [s for s in self.scenarios if s.meets_goal is False]
        names = ", ".join(f"{s.scenario} ({s.strategy})" for s in missing)
        if self.counted < JUDGED_OVER:
            within = "within it" if self.holds else f"not within it (missed by {names})"
            return head + (
                f"not judged on {self.counted}, it needs at least {JUDGED_OVER} (the full "
                f"set: benchmarks/validate.py); these are {within}."
            )
        if self.holds:
            return head + "met."
        return head + f"NOT met; missed by {names}. See the notes per scenario."


def validate(
    runs: Sequence[RunResult], *, calibration_scenarios: Collection[str] = ()
) -> ValidationReport:
    """The validation table of every (sim, real) pair among ``runs``.

    Args:
        runs: loaded run folders (any mix).
        calibration_scenarios: names of scenarios used to calibrate the simulator; they are
            shown but not counted in the median.
    """
    rows = tuple(
        validate_pair(
            sim.summary, real.summary, used_for_calibration=sim.scenario in calibration_scenarios
        )
        for sim, real in pair_runs(runs)
    )
    counted = [
        abs(r.downtime_error)
        for r in rows
        if r.downtime_error is not None and not r.used_for_calibration
    ]
    per_phase: dict[str, list[float]] = {name: [] for name, _ in PHASES}
    for row in rows:
        for failure in row.failures:
            for phase in failure.phases:
                if phase.relative_error is not None:
                    per_phase[phase.phase].append(abs(phase.relative_error))
    return ValidationReport(
        rows,
        statistics.median(counted) if counted else None,
        len(counted),
        {name: statistics.median(values) for name, values in per_phase.items() if values},
    )


@dataclass(frozen=True)
class StrategyComparison:
    """Gemini against the persistent baseline, for one scenario and one source.

    Attributes:
        scenario: the scenario's name.
        source: sim or real.
        gemini: Gemini's summary.
        baseline: the persistent baseline's summary.
        wasted_speedup: baseline mean wasted time per failure / Gemini's (None if Gemini's
            is 0 or either has no failure).
        downtime_speedup: the same for downtime.
    """

    scenario: str
    source: str
    gemini: RunSummary
    baseline: RunSummary
    wasted_speedup: float | None
    downtime_speedup: float | None


def _ratio(baseline: RunSummary, gemini: RunSummary, attribute: str) -> float | None:
    if not baseline.failures or not gemini.failures:
        return None
    numerator = float(getattr(baseline, attribute))
    denominator = float(getattr(gemini, attribute))
    return numerator / denominator if denominator > 0 else None


def compare_strategies(runs: Sequence[RunResult]) -> list[StrategyComparison]:
    """One comparison per (scenario, source) that has both a Gemini and a baseline run."""
    by_key: dict[tuple[str, str], dict[str, RunSummary]] = {}
    for run in runs:
        by_key.setdefault((run.scenario, run.source), {}).setdefault(run.strategy, run.summary)
    out = []
    for (scenario, source), strategies in by_key.items():
        gemini = strategies.get("gemini")
        baseline = strategies.get("persistent")
        if gemini is None or baseline is None:
            continue
        out.append(
            StrategyComparison(
                scenario,
                source,
                gemini,
                baseline,
                _ratio(baseline, gemini, "mean_wasted_s"),
                _ratio(baseline, gemini, "mean_downtime_s"),
            )
        )
    return out
