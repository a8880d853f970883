"""``gemini-ckpt calibrate`` measures this machine, fits laws, and ``sim`` applies them to a
scenario of another shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.calibration import law_costs, load_calibration
from gemini_ckpt.cli import main
from shared.scenario_loader import load_scenario
from shared.summary import read_summary

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"
EIGHT_NODES = REPO / "scenarios" / "validation" / "v03-small-8nodes-hardware.yaml"


@pytest.mark.slow
def test_calibrate_fits_laws_that_sim_applies_to_another_shape(tmp_path: Path) -> None:
    out = tmp_path / "cal.yaml"
    disk = tmp_path / "disk"
    assert main(["calibrate", "--quick", "--out", str(out), "--dir", str(disk)]) == 0
    calibration = load_calibration(out)
    measured = calibration["measurements"]
    for key in ("memory_copy_gbyte_s", "loopback_tcp_gbit_s", "storage_write_gbit_s"):
        assert measured[key] > 0
    laws = measured["laws"]
    assert [s["ranks"] for s in measured["law_samples"]] == [2, 4]  # --quick: two shapes
    for key in ("rejoin_s", "spare_join_s", "state_load_s", "compute_s", "communication_s"):
        assert key in laws, key
    # The laws at 8 nodes (a shape never measured) become the simulated recovery.
    simulated = tmp_path / "sim"
    args = ["sim", str(EIGHT_NODES), "--calibration", str(out), "--out", str(simulated)]
    assert main(args) == 0
    costs = law_costs(laws, load_scenario(EIGHT_NODES))
    restart = laws["agent_poll_s"] / 2 + 2 * costs.get("hop_work_s", 0.0) / 2
    # Gemini's: the slower of join and rejoin, then its engine's build (the rejoin timed with
    # the engine is a law too, recorded, not used).
    assert "engine_rejoin_s" in laws and load_scenario(EIGHT_NODES).checkpoint.strategy == "gemini"
    restart += max(costs["spare_join_s"], costs["rejoin_s"]) + costs["engine_build_s"]
    (failure,) = read_summary(simulated / "summary.json").failures
    assert failure.restart_s == pytest.approx(restart, rel=1e-4)
    # --laws reuses them and adds a failure-free profile of the scenario's configuration.
    profiled = tmp_path / "profiled.yaml"
    args = ["calibrate", str(QUICKSTART), "--laws", str(out), "--profile", "micro", "--quick"]
    assert main([*args, "--out", str(profiled), "--dir", str(disk)]) == 0
    again = load_calibration(profiled)
    assert again["measurements"]["laws"] == laws
    assert again["profile"]["scenario"] == "quickstart"
    assert again["profile"]["micro_iteration_time_s"] > 0
    assert not list(disk.iterdir())  # the storage probe and the reference files cleaned up


def test_calibrate_rejects_a_missing_run_folder(tmp_path: Path) -> None:
    code = main(["calibrate", str(QUICKSTART), "--from-run", str(tmp_path / "absent")])
    assert code == 2
