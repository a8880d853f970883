"""Calibration measurements -> scenario overrides the simulator accepts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from analysis.calibration import (
    calibration_overrides,
    calibration_scenarios,
    load_calibration,
    measurements_from_runs,
    write_calibration,
)
from analysis.results import load_run
from analysis.synthetic import SyntheticFailure, SyntheticRun, write_synthetic_run
from shared.events import Event
from shared.scenario_loader import load_scenario

REPO = Path(__file__).resolve().parents[2]

MEASURED = {
    "memory_copy_gbyte_s": 5.8,
    "loopback_tcp_gbit_s": 31,
    "storage_write_gbit_s": 6.1,
    "storage_read_gbit_s": 9.4,
    "process_start_s": 2.0,
    "process_group_s": 0.4,
    "iteration_time_s": 0.045,
}


def test_overrides_follow_the_documented_rules() -> None:
    assert calibration_overrides({"measurements": MEASURED}) == [
        "cluster.copy_bandwidth_gbyte_s=5.8",
        "cluster.network_bandwidth_gbit_s=31",
        "training.iteration_time_s=0.045",
        "cluster.storage.bandwidth_gbit_s=6.1",  # the smaller of write and read
        "recovery.restart_s=2.4",  # process start + group formation
        "recovery.node_start_s=2",  # a replacement's agent: a fresh python importing torch
    ]
    end_to_end = {**MEASURED, "restart_s": 4.9, "stop_s": 0.1, "exit_report_s": 0.05}
    overrides = calibration_overrides(end_to_end)  # the bare measurements mapping works too
    assert "recovery.restart_s=4.9" in overrides
    assert "recovery.stop_s=0.1" in overrides
    assert "detection.exit_report_s=0.05" in overrides
    from_runs = {**end_to_end, "node_start_s": 1.25, "retrieval_overhead_s": 0.04}
    from_runs["run_iteration_time_s"] = 0.06
    overrides = calibration_overrides(from_runs)
    assert "recovery.node_start_s=1.25" in overrides
    assert "recovery.retrieval_overhead_s=0.04" in overrides
    assert [o for o in overrides if o.startswith("training.")] == ["training.iteration_time_s=0.06"]


def test_phases_are_scaled_to_the_iteration_time_the_runs_measured() -> None:
    phases = [["compute", 0.02], ["communication", 0.01]]
    overrides = calibration_overrides(
        {**MEASURED, "iteration_phases": phases, "run_iteration_time_s": 0.06}
    )
    assert overrides[-1] == (
        "training.phases=[{kind: compute, duration_s: 0.04}, "
        "{kind: communication, duration_s: 0.02}]"
    )


def test_phases_replace_the_iteration_time_and_load_in_a_scenario() -> None:
    phases = [["compute", 0.02], ["communication", 0.01]]
    overrides = calibration_overrides({**MEASURED, "iteration_phases": phases})
    assert not any(o.startswith("training.iteration_time_s") for o in overrides)
    scenario = load_scenario(REPO / "scenarios" / "quickstart.yaml", overrides)
    assert [(p.kind, p.duration_s) for p in scenario.training.phases or []] == [
        ("compute", 0.02),
        ("communication", 0.01),
    ]
    assert scenario.recovery.restart_s == pytest.approx(2.4)
    assert scenario.cluster.storage.bandwidth_gbit_s == pytest.approx(6.1)


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"memory_copy_gbyte_s": "fast"}, "memory_copy_gbyte_s"),
        ({"stop_s": -1}, "stop_s"),
        ({"iteration_phases": [["idle", 1.0]]}, "idle"),
    ],
)
def test_bad_measurements_are_named(bad: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        calibration_overrides(bad)


def test_file_round_trip_and_scenarios_used(tmp_path: Path) -> None:
    path = write_calibration(
        tmp_path / "cal.yaml", {"version": 1, "scenarios_used": ["q"], "measurements": MEASURED}
    )
    loaded = load_calibration(path)
    assert loaded["overrides"] == calibration_overrides(loaded)
    assert calibration_scenarios(loaded) == ["q"]
    (tmp_path / "not.yaml").write_text("a: 1\n")
    with pytest.raises(ValueError, match="not a calibration file"):
        load_calibration(tmp_path / "not.yaml")


def test_recovery_costs_from_measured_runs(tmp_path: Path) -> None:
    failures = (
        SyntheticFailure(3, "software", (1,), 0.05, 0.1, 0.0, 4.0, 0.5),
        SyntheticFailure(8, "software", (2,), 0.07, 0.3, 0.0, 6.0, 0.7),
        SyntheticFailure(12, "hardware", (3,), 3.0, 0.0, 1.8, 5.0, 0.6, "peer"),
    )
    real = load_run(write_synthetic_run(tmp_path / "r", SyntheticRun("real", failures=failures)))
    sim = load_run(write_synthetic_run(tmp_path / "s", SyntheticRun("sim", failures=failures[:1])))
    slower = SyntheticRun("real", strategy="persistent", failures=(failures[0],) * 3)
    baseline = load_run(write_synthetic_run(tmp_path / "b", slower))
    saves = tuple(
        Event(t, "persist_done", None, 0, 5, {"blocking": True, "seconds": t / 10})
        for t in (1.0, 3.0, 4.0)
    )
    baseline = dataclasses.replace(baseline, events=(*baseline.events, *saves))
    measured = measurements_from_runs([real, sim, baseline], replacement_s=0.5, transfer_s=0.1)
    assert measured == pytest.approx(
        {
            "stop_s": 0.2,  # crashes only: a lost node's stop overlaps its detection
            "restart_s": 5.0,  # of the Gemini run only (the baseline's restarts are 4.0)
            "exit_report_s": 0.06,
            "node_start_s": 1.3,  # 1.8 - replacement_s
            "retrieval_overhead_s": 0.5,  # median 0.6 - transfer_s
            "run_iteration_time_s": 0.48,  # without checkpointing, as measured (both runs)
            "save_time_s": 0.3,  # the baseline's blocking saves: 0.1, 0.3, 0.4 s
        }
    )


MICRO = {
    "exit_notice_s": 0.01,
    "collective_failure_s": 0.06,
    "probe_s": 0.002,
    "park_s": 0.004,
    "spare_join_s": 0.3,
    "rejoin_s": 0.2,
    "state_load_s": 0.05,
    "agent_poll_s": 0.02,
    "root_poll_s": 0.05,
    "micro_iteration_time_s": 0.1,
    "micro_iteration_phases": [["compute", 0.06], ["communication", 0.04]],
    "recovery_ranks": 2,
    "cpus": 2,
    "world_size": 4,
    "single_host": True,
}


def test_micro_measurements_become_recovery_costs_by_the_documented_rules() -> None:
    # A message waits half a poll at each hop: agent 0.01 + root 0.025 = 0.035 s.
    scenario = load_scenario(REPO / "scenarios" / "quickstart.yaml", calibration_overrides(MICRO))
    detection, recovery = scenario.detection, scenario.recovery
    assert detection.exit_report_s == pytest.approx(0.01 + 0.035)
    assert detection.probe_detection_s == pytest.approx(0.06 + 0.035 + 0.002)
    assert recovery.stop_s == pytest.approx(0.01 + 0.004 + 0.035)
    assert recovery.restart_s == pytest.approx(0.01 + 0.3)  # the slower of join and rejoin
    assert recovery.retrieval_overhead_s == pytest.approx(0.05)
    # 4 ranks share 2 CPUs where the micro-benchmark's 2 ranks had one each: twice as long.
    phases = scenario.training.phases
    assert phases is not None
    assert [p.kind for p in phases] == ["compute", "communication"]
    assert [p.duration_s for p in phases] == pytest.approx([0.12, 0.08])
    # Runs that measured a cost keep theirs.
    overrides = calibration_overrides({**MICRO, "restart_s": 0.9, "run_iteration_time_s": 0.3})
    assert "recovery.restart_s=0.9" in overrides
    assert "recovery.restart_s=0.31" not in overrides
    assert not any(o.startswith("training.phases=") for o in overrides)
    assert "training.iteration_time_s=0.3" in overrides
