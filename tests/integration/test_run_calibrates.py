"""``gemini-ckpt run`` calibrates this machine with micro-measurements before it simulates."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import pytest

from analysis.calibration import load_calibration
from gemini_ckpt.cli import main
from shared.summary import read_summary

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"


def test_run_simulates_with_the_costs_its_micro_calibration_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import benchmarks.calibrate
    import sim

    calls: list[str] = []
    measured = {
        "exit_notice_s": 0.2,
        "collective_failure_s": 0.1,
        "probe_s": 0.0,
        "park_s": 0.3,
        "spare_join_s": 0.7,
        "rejoin_s": 0.4,
        "state_load_s": 0.25,
        "agent_poll_s": 0.02,
        "root_poll_s": 0.06,
    }

    def fake_measure(options: Any, progress: Any = None) -> dict[str, Any]:
        assert options.scenario == QUICKSTART  # the scenario's model, not a run of it
        calls.append("calibrate")
        return dict(measured)

    simulate = sim.simulate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("simulate")
        return simulate(*args, **kwargs)

    monkeypatch.setattr(benchmarks.calibrate, "measure_recovery", fake_measure)
    monkeypatch.setattr(sim, "simulate", spy)
    out = tmp_path / "q"
    args = ["run", str(QUICKSTART), "--out", str(out), "--no-real", "--no-sweep"]
    assert main([*args, "--no-gif", "--no-video"]) == 0
    assert calls == ["calibrate", "simulate", "simulate"]
    calibration = load_calibration(out / "calibration.yaml")
    assert calibration["source"] == "micro" and calibration["scenarios_used"] == []
    assert calibration["measurements"] == measured
    failures = read_summary(out / "sim-gemini" / "summary.json").failures
    crashes = [f for f in failures if f.kind == "software"]
    losses = [f for f in failures if f.kind == "hardware"]
    assert len(crashes) + len(losses) == len(failures) and crashes and losses
    for crash in crashes:
        # The exit notice holds the agent's exit watch; the report waits half a root poll.
        assert crash.detection_s == pytest.approx(0.2 + 0.03)
        # The crash's stop: the agents see it (half a poll), the trainers park; the root
        # reads the acknowledgements on its store watch as they come.
        assert crash.stop_s == pytest.approx(0.01 + 0.3)
    for lost in losses:
        # The lost node, found by the survivors' probe: they parked already; the agents see
        # the stop (half a poll) and the root reads their acknowledgements as they come.
        assert lost.stop_s == pytest.approx(0.01)
    for failure in failures:
        assert failure.restart_s == pytest.approx(0.01 + 0.7)


def test_the_micro_calibration_measures_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import real.trainer.inprocess as inprocess
    from benchmarks.calibrate import (
        ENGINE_REJOIN_GROUPS,
        ENGINE_REJOINS,
        LOST_NODE_GROUP,
        REJOINS,
        SPARE_ROUNDS,
        CalibrationOptions,
        measure_recovery,
    )

    # Every join it times goes the harness's way (the ranks are forked: they inherit this).
    joins = tmp_path / "joins"
    original = inprocess.join_process_group

    def recorded(assignment, backend, timeout_s):  # type: ignore[no-untyped-def]
        with open(joins, "a") as out:
            out.write(f"{assignment.rank} {assignment.env[inprocess.RDZV_PREFIX_ENV]}\n")
        original(assignment, backend, timeout_s)

    monkeypatch.setattr(inprocess, "join_process_group", recorded)
    # Beside the FSDP2 restore it times what a spare's first FSDP2 state costs beyond a later
    # one's: marked here by 5 s more, it must show in that figure and not in the restore's.
    import benchmarks.calibrate as calibrate

    first_extra = calibrate._first_state_extra_s
    monkeypatch.setattr(
        calibrate, "_first_state_extra_s", lambda first_s, later: 5.0 + first_extra(first_s, later)
    )
    # The persistent save and restore it times write a DCP checkpoint under a key of its own, in a
    # temporary folder it removes: no key file, no folder left.
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    from real.engine.shm import SHM_DIR

    slots_before = set(Path(SHM_DIR).glob("gemini-*"))
    measured = measure_recovery(CalibrationOptions(QUICKSTART, (), tmp_path, quick=True))
    assert not config.exists()
    # Its node stores are processes of their own, as the agents start them; stopped, they
    # leave no slot file behind.
    assert set(Path(SHM_DIR).glob("gemini-*")) <= slots_before
    # (torch's own compile cache, torchinductor_<user>, is torch's to keep)
    left = [p.name for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchinductor")]
    assert left == []
    # The first round's spares, its rejoins, its rejoins with the engine, then the further
    # spare rounds, each in fresh ranks.
    numbers = [
        *range(1 + REJOINS + SPARE_ROUNDS - 1),
        *range(ENGINE_REJOIN_GROUPS, ENGINE_REJOIN_GROUPS + ENGINE_REJOINS),
    ]
    # And each of the two lost-node rounds (--quick): its three forked survivors (the lost
    # node's trainer is a fresh process, which the recording does not reach).
    lost_node = [f"{rank} calibrate/{LOST_NODE_GROUP}" for rank in range(3)] * 2
    assert sorted(joins.read_text().split("\n")[:-1]) == sorted(
        [f"{rank} calibrate/{number}" for rank in range(4) for number in numbers] + lost_node
    )
    rounds = measured["spare_join_rounds_s"]
    assert len(rounds) == SPARE_ROUNDS and all(0 < t < 60 for t in rounds)
    assert measured["spare_join_s"] == pytest.approx(statistics.median(rounds), abs=1e-6)
    keys = ("spare_join_s", "rejoin_s", "park_s", "state_load_s", "micro_iteration_time_s")
    engine = ("engine_build_s", "engine_restore_fixed_s", "engine_rejoin_s")  # quickstart: Gemini
    for key in (*keys, *engine, "persistent_restore_fixed_s", "persistent_save_fixed_s"):
        assert 0 < measured[key] < 60, key
    assert 5.0 < measured["fsdp2_first_state_s"] < 60
    assert 0 < measured["engine_restore_fixed_zero3_s"] < 5.0
    assert 0 <= measured["fsdp2_first_build_s"] < 60  # a spare's first FSDP2 trainer, extra
    # The survivors' all-reduce failed when the lost node's processes (or the forked peer)
    # vanished, well before the 60 s timeout.
    lost = measured["collective_failure_rounds_s"]
    assert len(lost) == 2 and all(0 < t < 30 for t in lost)
    assert measured["collective_failure_s"] == pytest.approx(statistics.median(lost), abs=1e-6)
    assert 0 <= measured["collective_failure_forked_s"] < 30
    assert 0 < measured["probe_s"] < 1.0
    assert measured["world_size"] == measured["recovery_ranks"] == 4  # the run's ranks
    assert [kind for kind, _ in measured["micro_iteration_phases"]].count("communication") >= 1
