"""``gemini-ckpt calibrate`` measures this machine and writes overrides the simulator loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.calibration import load_calibration
from gemini_ckpt.cli import main
from shared.scenario_loader import load_scenario

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"


@pytest.mark.slow
def test_calibrate_quick_writes_a_loadable_calibration(tmp_path: Path) -> None:
    out = tmp_path / "cal.yaml"
    args = ["calibrate", str(QUICKSTART), "--quick", "--ranks", "2", "--iterations", "2"]
    assert main([*args, "--out", str(out), "--dir", str(tmp_path / "disk")]) == 0
    calibration = load_calibration(out)
    measured = calibration["measurements"]
    for key in ("memory_copy_gbyte_s", "loopback_tcp_gbit_s", "rejoin_s", "iteration_time_s"):
        assert measured[key] > 0
    scenario = load_scenario(QUICKSTART, calibration["overrides"])
    # The restart is a rejoin: the agents see the attempt, then the slower of a spare's join
    # and a survivor's rejoin.
    restart = measured["agent_poll_s"] / 2 + max(measured["spare_join_s"], measured["rejoin_s"])
    assert scenario.recovery.restart_s == pytest.approx(restart, rel=1e-5)
    assert not list((tmp_path / "disk").iterdir())  # the storage probe cleaned up


def test_calibrate_rejects_a_missing_run_folder(tmp_path: Path) -> None:
    code = main(["calibrate", str(QUICKSTART), "--from-run", str(tmp_path / "absent")])
    assert code == 2
