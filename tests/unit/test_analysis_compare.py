"""Comparison numbers on hand-made run folders: phase errors, the validation table, speedups."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import SyntheticFailure, SyntheticRun, write_synthetic_run

from analysis.compare import GOAL, compare_strategies, phase_error, validate, validate_pair
from analysis.results import load_run

SOFT = SyntheticFailure(4, "software", (1,), 0.1, 0.2, 0.0, 2.0, 0.5, "local", 3)
HARD = SyntheticFailure(10, "hardware", (2,), 3.0, 0.25, 0.5, 2.0, 1.0, "peer", 9)


def run(tmp_path: Path, name: str, **fields: object):  # type: ignore[no-untyped-def]
    return load_run(write_synthetic_run(tmp_path / name, SyntheticRun(**fields)))  # type: ignore[arg-type]


def test_phase_error_is_signed_and_relative_to_the_measurement() -> None:
    error = phase_error("restart_s", 3.0, 4.0)
    assert error.error == -1.0
    assert error.relative_error == -0.25
    assert phase_error("replacement_s", 0.0, 0.0).relative_error is None
    assert error.label == "restart"


def test_synthetic_phases_reach_the_summary_exactly(tmp_path: Path) -> None:
    result = run(tmp_path, "sim", failures=(SOFT, HARD))
    soft, hard = result.summary.failures
    assert (soft.detection_s, soft.stop_s, soft.restart_s) == pytest.approx((0.1, 0.2, 2.0))
    assert soft.downtime_s == pytest.approx(0.1 + 0.2 + 2.0 + 0.5)
    assert hard.replacement_s == pytest.approx(0.5)
    assert hard.downtime_s == pytest.approx(3.0 + 0.25 + 0.5 + 2.0 + 1.0)
    assert (soft.lost_iterations, hard.lost_iterations) == (1, 1)
    assert soft.wasted_s == pytest.approx(0.5 + 0.5)  # one 0.5 s iteration + retrieval


def test_validation_of_one_pair_is_exact(tmp_path: Path) -> None:
    slow = SyntheticFailure(4, "software", (1,), 0.1, 0.2, 0.0, 3.0, 0.5, "local", 3)
    sim = run(tmp_path, "sim", failures=(SOFT,))
    real = run(tmp_path, "real", source="real", failures=(slow,))
    row = validate_pair(sim.summary, real.summary)
    assert row.predicted_downtime_s == pytest.approx(2.8)
    assert row.measured_downtime_s == pytest.approx(3.8)
    assert row.downtime_error == pytest.approx(-1.0 / 3.8)
    assert row.meets_goal is False
    restart = row.failures[0].phase("restart_s")
    assert (restart.predicted, restart.measured, restart.error) == pytest.approx((2.0, 3.0, -1.0))
    assert "restart predicted 2 s, measured 3 s" in row.note
    assert "misses the goal" in row.note


def test_median_over_scenarios_excludes_calibration_and_says_why(tmp_path: Path) -> None:
    # Three scenarios with downtime errors 0%, +10% (restart 2.28 vs 2.0 of 2.8 s) and -26%.
    runs = []
    for scenario, restart_real in (("a", 2.0), ("b", 1.72), ("c", 3.0)):
        measured = SyntheticFailure(
            4, "software", (1,), 0.1, 0.2, 0.0, restart_real, 0.5, "local", 3
        )
        runs.append(run(tmp_path, f"{scenario}-sim", scenario=scenario, failures=(SOFT,)))
        runs.append(
            run(
                tmp_path, f"{scenario}-real", scenario=scenario, source="real", failures=(measured,)
            )
        )
    report = validate(runs)
    errors = {row.scenario: row.downtime_error for row in report.scenarios}
    assert errors["a"] == pytest.approx(0.0)
    assert errors["b"] == pytest.approx(0.28 / 2.52)
    assert errors["c"] == pytest.approx(-1.0 / 3.8)
    assert report.counted == 3
    assert report.median_abs_error == pytest.approx(0.28 / 2.52)
    assert report.holds is False  # 11.1% > 10%
    # Three pairs: reported, not judged (a verdict needs six), with the one that missed.
    assert "not judged on 3, it needs at least 6" in report.verdict
    assert "not within it (missed by b (gemini)" in report.verdict and " met" not in report.verdict
    calibrated = validate(runs, calibration_scenarios={"c"})
    assert calibrated.counted == 2
    assert calibrated.median_abs_error == pytest.approx((0.0 + 0.28 / 2.52) / 2)
    assert calibrated.holds is (calibrated.median_abs_error <= GOAL)
    assert calibrated.phase_median_abs_error["detection_s"] == 0.0


def test_unmatched_failures_and_tiers_are_reported(tmp_path: Path) -> None:
    sim = run(tmp_path, "sim", failures=(SOFT,))
    other_tier = SyntheticFailure(4, "software", (1,), 0.1, 0.2, 0.0, 2.0, 0.5, "peer", 3)
    real = run(tmp_path, "real", source="real", failures=(other_tier, HARD))
    row = validate_pair(sim.summary, real.summary)
    assert row.only_measured == (1,)
    assert "tier predicted local, measured peer" in row.note
    assert "failures only measured: [1]" in row.note


def test_no_pair_means_no_verdict(tmp_path: Path) -> None:
    report = validate([run(tmp_path, "sim", failures=(SOFT,))])
    assert report.median_abs_error is None and report.holds is None
    assert "cannot be checked" in report.verdict


def test_strategy_speedups_are_ratios_of_the_means(tmp_path: Path) -> None:
    slow_soft = SyntheticFailure(4, "software", (1,), 0.1, 0.2, 0.0, 2.0, 4.5, "persistent", 0)
    slow_hard = SyntheticFailure(10, "hardware", (2,), 3.0, 0.25, 0.5, 2.0, 5.0, "persistent", 5)
    gemini = run(tmp_path, "g", failures=(SOFT, HARD))
    baseline = run(tmp_path, "b", strategy="persistent", failures=(slow_soft, slow_hard))
    (comparison,) = compare_strategies([gemini, baseline])
    assert comparison.source == "sim"
    assert comparison.wasted_speedup == pytest.approx(
        baseline.summary.mean_wasted_s / gemini.summary.mean_wasted_s
    )
    # Gemini: wasted (0.5 + 0.5) and (0.5 + 1.0); baseline: (2.0 + 4.5) and (2.5 + 5.0).
    assert comparison.wasted_speedup == pytest.approx((6.5 + 7.5) / (1.0 + 1.5))
    assert comparison.downtime_speedup == pytest.approx((6.8 + 10.75) / (2.8 + 6.75))


def test_six_pairs_are_judged(tmp_path: Path) -> None:
    runs = []
    for index in range(6):
        scenario = f"s{index}"
        measured = SyntheticFailure(4, "software", (1,), 0.1, 0.2, 0.0, 2.0, 0.5, "local", 3)
        runs.append(run(tmp_path, f"{scenario}-sim", scenario=scenario, failures=(SOFT,)))
        runs.append(
            run(
                tmp_path, f"{scenario}-real", scenario=scenario, source="real", failures=(measured,)
            )
        )
    report = validate(runs)
    assert report.counted == 6 and report.holds is True
    assert report.verdict.endswith("goal <= 10%: met.")
