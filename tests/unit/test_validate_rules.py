"""Scenario rules: what sim and real would refuse, validate refuses first, naming the field."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gemini_ckpt.cli import main
from real.launcher.capacity import (
    HostLimits,
    estimate_run,
    fit_problems,
    require_fits,
)
from shared.errors import HostCapacityError, ScenarioError
from shared.scenario_loader import parse_scenario
from shared.scenario_rules import SimFacts, check_scenario, errors, warnings
from shared.storms import stall_failure_limit
from sim import SimProgress, simulate
from sim.model import build_model
from sim.simulation import Simulation

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"


def problems_of(text: str, faces: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, source="s.yaml", faces=faces)  # type: ignore[arg-type]
    return caught.value.problems


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# --- rules of every face ------------------------------------------------------------------


def test_group_placement_must_divide_the_nodes() -> None:
    (problem,) = problems_of(
        "name: g\ncluster: {nodes: 4}\ncheckpoint: {replicas: 3, placement: group}"
    )
    assert problem.startswith("checkpoint.placement: group placement needs replicas (3)")
    assert "divide nodes (4)" in problem and "mixed" in problem


def test_a_real_failure_of_every_node_at_once_is_refused() -> None:
    """The root agent runs on one of the job's nodes; standby agents never lead. A failure
    that loses them all would leave the harness waiting for nobody until its timeout."""
    base = "name: w\ncluster: {nodes: 2, standby_nodes: 2}\ntraining: {iterations: 40}\n"
    text = base + "failures: {schedule: [{kind: group, nodes: [1], at_iteration: 5}]}"
    (problem,) = problems_of(text, faces=("real",))
    assert problem.startswith("failures.schedule[0]: this failure loses all 2 nodes of the job")
    parse_scenario(text, faces=("sim",))  # the simulator models the rollback to storage
    both = base + "failures: {schedule: [{kind: hardware, nodes: [0, 1], at_iteration: 5}]}"
    assert len(problems_of(both, faces=("real",))) == 1
    one = base + "failures: {schedule: [{kind: hardware, nodes: [1], at_iteration: 5}]}"
    parse_scenario(one, faces=("real",))
    two = base + (  # two entries, one trigger: the injector fails them together
        "failures: {schedule: [{kind: hardware, nodes: [0], at_iteration: 5},"
        " {kind: hardware, nodes: [1], at_iteration: 5}]}"
    )
    (problem,) = problems_of(two, faces=("real",))
    assert "entries [0, 1], with one trigger, lose all 2 nodes" in problem
    apart = two.replace("nodes: [1], at_iteration: 5", "nodes: [1], at_iteration: 9")
    parse_scenario(apart, faces=("real",))  # one after the other: a survivor each time
    crash = base + "failures: {schedule: [{kind: software, nodes: [0, 1], at_iteration: 5}]}"
    parse_scenario(crash, faces=("real",))  # the nodes live: their agents recover it
    four = base.replace("nodes: 2", "nodes: 4") + (
        "failures: {schedule: [{kind: group, nodes: [1], at_iteration: 5}]}"
    )
    parse_scenario(four, faces=("real",))  # one group of two, of four nodes
    # The simulator recovers such a job at once, as if submitted again: it says so.
    scenario = parse_scenario(text, faces=("sim",))
    (warning,) = warnings(check_scenario(scenario, ("sim",)))
    assert warning.startswith("failures.schedule[0]: this failure loses all 2 nodes")
    assert "as if the job were submitted again with no wait" in warning


def test_explicit_placement_holders_are_checked_by_the_placement_itself() -> None:
    text = (
        "name: e\ncluster: {nodes: 4}\n"
        "checkpoint: {replicas: 2, placement: explicit, explicit_placement: [[1], [0], [3], [3]]}"
    )
    (problem,) = problems_of(text)
    assert problem.startswith("checkpoint.explicit_placement: explicit[3]")
    # every bad row is named at once, not the first alone
    text = text.replace("[[1], [0], [3], [3]]", "[[1], [0, 1], [3], [3]]")
    (problem,) = problems_of(text)
    assert problem.startswith("checkpoint.explicit_placement: explicit[1]: node 1 must be listed")
    assert "; explicit[3]" in problem


def test_exponential_failures_take_no_weibull_shape() -> None:
    text = "name: w\nfailures: {process: {failures_per_node_per_day: 0.01, weibull_shape: 2.0}}"
    (problem,) = problems_of(text)
    assert problem.startswith("failures.process.weibull_shape: weibull_shape must be 1.0")


def test_staging_buffer_must_hold_a_byte_per_sub_buffer() -> None:
    (problem,) = problems_of("name: b\ncheckpoint: {buffer_mb: 0.000001, sub_buffers: 4}")
    assert problem.startswith("checkpoint.buffer_mb: 1e-06 MB is too small for")


def test_a_buffer_cutting_a_checkpoint_into_too_many_chunks() -> None:
    text = (
        "name: c\nmodel: {parameters: 1.0e+9}\ntraining: {parallelism: zero3}\n"
        "checkpoint: {buffer_mb: 0.001, sub_buffers: 1}"
    )
    (problem,) = problems_of(text)
    assert problem.startswith("checkpoint.buffer_mb:") and "chunks" in problem


def test_checkpoints_must_fit_in_cpu_memory() -> None:
    # ZeRO-3: a node's shard is its share, 120 GB / 4; four slots of it at m = 2.
    text = (
        "name: m\nmodel: {parameters: 1.0e+10}\ntraining: {parallelism: zero3}\n"
        "cluster: {nodes: 4, cpu_memory_gb: 24}"
    )
    (problem,) = problems_of(text)
    assert problem.startswith("cluster.cpu_memory_gb: checkpoints need 120 GB per node")


def test_under_ddp_every_rank_checkpoints_the_whole_state() -> None:
    # 1e9 parameters: 12 GB of state, a copy per rank: 2 ranks x 12 GB per node, 4 slots.
    text = (
        "name: m\nmodel: {parameters: 1.0e+9}\ntraining: {parallelism: ddp}\n"
        "cluster: {nodes: 4, accelerators_per_node: 2, cpu_memory_gb: 64}"
    )
    (problem,) = problems_of(text)
    assert problem.startswith("cluster.cpu_memory_gb: checkpoints need 96 GB per node")


def test_one_local_slot_needs_one_shard_less() -> None:
    text = "name: m\nmodel: {parameters: 1.0e+9}\ncluster: {nodes: 4, cpu_memory_gb: 40}"
    (problem,) = problems_of(text)  # 4 slots of 12 GB
    assert problem.startswith("cluster.cpu_memory_gb: checkpoints need 48 GB per node")
    parse_scenario(text + "\ncheckpoint: {local_slots: 1}", source="s.yaml")  # 3 slots: 36 GB


def test_young_and_daly_need_a_failure_rate() -> None:
    text = "name: y\ncheckpoint: {strategy: persistent, baseline_interval: daly}"
    (problem,) = problems_of(text)
    assert problem.startswith("checkpoint.baseline_interval: daly needs failures.process")


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "name: two\ncluster: {nodes: 4}\ncheckpoint: {replicas: 3, placement: group, "
        "buffer_mb: 0.000001, sub_buffers: 4}"
    )
    assert len(problems_of(text)) == 2


def test_shipped_scenarios_have_no_findings_for_their_targets() -> None:
    for path in sorted((REPO / "scenarios").rglob("*.yaml")):
        scenario = parse_scenario(path.read_text(), source=str(path))
        assert not errors(check_scenario(scenario, scenario.targets)), path
        if "sim" in scenario.targets:
            assert not errors(build_model(scenario).findings()), path


# --- failure storms -------------------------------------------------------------------------


def test_a_rate_that_leaves_no_recovery_finished_is_an_error_for_sim() -> None:
    # 4 nodes x 1e6 a day for 0.2 days: 800,000 failures, one every 0.02 s; recoveries >= 5 s.
    text = (
        "name: s\nsim: {duration_days: 0.2}\n"
        "failures: {process: {failures_per_node_per_day: 1000000}}"
    )
    (problem,) = problems_of(text, ("sim",))
    assert problem.startswith("failures.process.failures_per_node_per_day: the job fails every")
    assert "fewer than one is expected to be followed by a finished recovery" in problem
    assert "0.015" in problem  # what the user probably meant
    # The real harness does not use the process: it warns instead.
    scenario = parse_scenario(text, faces=("real",))
    assert any(
        "used by the simulator alone" in w for w in warnings(check_scenario(scenario, ("real",)))
    )


def test_a_typo_in_the_rate_is_a_storm_and_says_what_was_meant() -> None:
    # 1e6 for 0.01 over a whole day: 4 million failures, one every 0.02 s.
    text = "name: s\nfailures: {process: {failures_per_node_per_day: 1000000}}"
    (problem,) = problems_of(text, ("sim",))
    assert problem.startswith("failures.process.failures_per_node_per_day: the job fails every")
    assert "training would make no progress" in problem and "0.015" in problem


def test_too_many_failures_for_a_simulation() -> None:
    # Recoveries that cost nothing keep up with anything: no storm, but 4 million failures.
    text = (
        "name: s\nrecovery: {restart_s: 0, stop_s: 0}\ndetection: {exit_report_s: 0}\n"
        "failures: {process: {failures_per_node_per_day: 1000000}}"
    )
    (problem,) = problems_of(text, ("sim",))
    assert problem.startswith("failures.process.failures_per_node_per_day: about 4e+06 failures")


STORM = (
    "name: s\nsim: {duration_days: 0.05}\nfailures: {process: {failures_per_node_per_day: 20000}}\n"
)


def test_failures_faster_than_recoveries_warn_with_the_implied_ratio() -> None:
    # 4 nodes x 20000 a day: one failure every 1.08 s, recoveries take >= 5.05 s.
    text = STORM
    scenario = parse_scenario(text, faces=("sim",))
    (warning,) = warnings(check_scenario(scenario, ("sim",)))
    assert "failures arrive faster than recoveries finish" in warning
    assert f"{math.exp(-5.05 / (86400 / 80000)):.2g}" in warning


def test_the_storm_guard_stops_the_simulation_and_names_the_rate() -> None:
    scenario = parse_scenario(STORM, faces=("sim",))
    with pytest.raises(ScenarioError) as caught:
        simulate(scenario)
    (problem,) = caught.value.problems
    limit = stall_failure_limit(4000.0, 0)
    assert problem.startswith("failures.process.failures_per_node_per_day: the simulation stopped")
    assert f"{limit} failures in a row" in problem and "the job fails every 1.08 s" in problem


def test_a_run_whose_recoveries_keep_up_is_not_stopped() -> None:
    # One failure every ~29 min (4 nodes x 12 a day) against ~5 s recoveries.
    scenario = parse_scenario(
        "name: ok\nsim: {duration_days: 2}\nfailures: {process: {failures_per_node_per_day: 12}}",
        faces=("sim",),
    )
    result = simulate(scenario)
    assert result.summary.to_json()["totals"]["failures"] > 50


def test_stall_limit_grows_with_the_failures_expected_and_covers_the_schedule() -> None:
    assert stall_failure_limit(1, 0) == math.ceil(math.log(100) / -math.log(1 - math.exp(-1)))
    assert stall_failure_limit(1e6, 0) > stall_failure_limit(1e3, 0) > stall_failure_limit(1, 0)
    assert stall_failure_limit(0, 40) == 41
    # At the limit a run keeping up (interrupted with chance 1 - 1/e) trips < 1% of the time.
    for expected in (10, 1e4, 1e7):
        k = stall_failure_limit(expected, 0)
        assert expected * (1 - math.exp(-1)) ** k <= 0.01


def test_scheduled_failures_chained_on_purpose_do_not_trip_the_guard() -> None:
    schedule = ", ".join(
        f"{{kind: software, nodes: [{i % 4}], at_time_s: {100 + i * 0.01}}}" for i in range(12)
    )
    scenario = parse_scenario(
        f"name: chain\nsim: {{duration_days: 0.01}}\nfailures: {{schedule: [{schedule}]}}",
        faces=("sim",),
    )
    assert simulate(scenario).summary.to_json()["totals"]["failures"] == 12


# --- failures that can never fire -------------------------------------------------------------


LATE = (
    "name: late\ntraining: {iterations: 10}\nreal: {timeout_s: 60}\n"
    "failures: {schedule: [{kind: software, nodes: [0], at_iteration: 50}, "
    "{kind: hardware, nodes: [1], at_time_s: 100}]}"
)


def test_unreachable_failures_are_errors_for_real() -> None:
    first, second = problems_of(LATE, ("real",))
    assert first == (
        "failures.schedule.0.at_iteration: 50 is never reached: training.iterations is 10; "
        "use at most 9 (iteration 10 ends the run)"
    )
    assert second.startswith("failures.schedule.1.at_time_s: 100 s is never reached")
    assert "real.timeout_s (60 s)" in second


def test_unreachable_failures_are_warnings_for_sim() -> None:
    text = (
        LATE.replace("at_iteration: 50", "at_iteration: 5000000") + "\nsim: {duration_days: 0.001}"
    )
    scenario = parse_scenario(text, faces=("sim",))  # no error
    found = warnings(build_model(scenario).findings())
    assert any(
        w.startswith("failures.schedule.0.at_iteration: 5000000 is never reached") for w in found
    )
    # 0.001 days is 86.4 s: the failure at 100 s never strikes either.
    assert any(w.startswith("failures.schedule.1.at_time_s: 100 s is never reached") for w in found)


def test_a_recovery_failure_needs_a_failure_before_it() -> None:
    text = "name: r\nfailures: {schedule: [{kind: hardware, nodes: [1], during: recovery}]}"
    (problem,) = problems_of(text, ("real",))
    assert problem.startswith("failures.schedule.0.during: recovery strikes while")
    scenario = parse_scenario(text, faces=("sim",))
    assert any(
        "entry 0 has no previous entry" in w for w in warnings(check_scenario(scenario, ("sim",)))
    )


def test_too_many_persistent_saves_for_a_simulation() -> None:
    scenario = parse_scenario(
        "name: p\nsim: {duration_days: 100}\ncheckpoint: {persist_every_iterations: 1}\n"
        "training: {iteration_time_s: 0.001}"
    )
    found = errors(check_scenario(scenario, ("sim",), sim=SimFacts(0.001, 1)))
    assert found and found[0].startswith("checkpoint.persist_every_iterations:")
    with pytest.raises(ScenarioError):
        build_model(scenario)


# --- progress ------------------------------------------------------------------------------


def test_the_engine_reports_progress() -> None:
    scenario = parse_scenario(
        "name: p\nsim: {duration_days: 1}\nfailures: {process: {failures_per_node_per_day: 5}}"
    )
    seen: list[SimProgress] = []
    engine = Simulation(build_model(scenario), 0, on_progress=seen.append, progress_wall_s=0.0)
    state = engine.run()
    assert len(seen) >= state.failures > 0
    times = [p.time_s for p in seen]
    assert times == sorted(times) and times[-1] <= 86_400
    assert [p.failures for p in seen] == sorted(p.failures for p in seen)
    assert seen[-1].failures == state.failures and seen[-1].duration_s == 86_400


def test_the_sim_command_prints_a_progress_line_for_a_long_run() -> None:
    import io

    from rich.console import Console

    from gemini_ckpt.commands.sim import PROGRESS_LINE_S, _progress_line

    text = io.StringIO()
    console = Console(file=text, force_terminal=False, width=200)
    with _progress_line(console) as on_progress:
        on_progress(SimProgress(1800.0, 86_400.0, 3, 500, 1.0))  # a short run: nothing yet
        on_progress(SimProgress(3600.0, 86_400.0, 5, 1000, PROGRESS_LINE_S + 0.5))
        on_progress(SimProgress(3700.0, 86_400.0, 6, 1100, PROGRESS_LINE_S + 1.0))  # too soon
    assert text.getvalue().splitlines() == [
        "simulated 3600 s of 24.0 h (4%), 5 failures, 95 events/s"
    ]


# --- the CLI --------------------------------------------------------------------------------


def test_validate_refuses_what_sim_would_crash_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "group.yaml"
    path.write_text("name: g\ncluster: {nodes: 4}\ncheckpoint: {replicas: 3, placement: group}\n")
    for args in (["validate", str(path)], ["sim", str(path), "--out", str(tmp_path / "o")]):
        code, _, err = run(args, capsys)
        assert code == 2
        assert f"{path}: checkpoint.placement: group placement needs replicas (3)" in err
        assert "Traceback" not in err


def test_validate_prints_warnings_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "storm.yaml"
    path.write_text(STORM)
    code, out, err = run(["validate", str(path)], capsys)
    assert code == 0 and out.startswith("ok")
    assert f"warning: {path}: failures.process.failures_per_node_per_day" in err


def test_collectives_longer_than_the_stated_iteration_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The simulator cuts the collectives to the iteration it is given: 72 s of ZeRO-3
    traffic for a 40B model over 25 Gbit/s on 16 nodes in a 30 s iteration is all
    communication, a profile no cluster has, so validate and sim say so."""
    path = tmp_path / "slow.yaml"
    path.write_text(
        "name: slow\ncluster: {nodes: 16, accelerators_per_node: 8, cpu_memory_gb: 2048,"
        " network_bandwidth_gbit_s: 25}\nmodel: {parameters: 40.0e+9}\n"
        "training: {parallelism: zero3, iteration_time_s: 30}\n"
    )
    code, _, err = run(["validate", str(path)], capsys)
    assert code == 0
    assert "training.iteration_time_s: the data-parallel collectives" in err
    assert "take 72 s per iteration, more than the 30 s stated" in err
    # A faster network, given with --set as sim takes it: no warning.
    code, _, err = run(
        ["validate", "--set", "cluster.network_bandwidth_gbit_s=100", str(path)], capsys
    )
    assert code == 0 and "collectives" not in err


def test_validate_checks_the_targets_faces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "late.yaml"
    path.write_text(LATE.replace("name: late", "name: late\ntargets: [sim]") + "\n")
    assert run(["validate", str(path)], capsys)[0] == 0
    code, _, err = run(["validate", "--target", "real", str(path)], capsys)
    assert code == 2 and "failures.schedule.0.at_iteration" in err


def test_validate_reports_the_rules_of_every_face_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        "name: broken\ntargets: [sim, real]\ncluster: {nodes: 4}\n"
        "checkpoint: {replicas: 3, placement: group}\ntraining: {iterations: 10}\n"
        "failures: {schedule: [{kind: software, nodes: [0], at_iteration: 50}]}\n"
    )
    code, _, err = run(["validate", str(path)], capsys)
    assert code == 2
    assert f"{path}: checkpoint.placement:" in err
    assert f"{path}: failures.schedule.0.at_iteration: 50 is never reached" in err


def test_sim_stopped_by_a_storm_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "storm.yaml"
    path.write_text(STORM)
    code, _, err = run(["sim", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert f"{path}: failures.process.failures_per_node_per_day: the simulation stopped" in err
    assert not (tmp_path / "o").exists()


def test_an_unexpected_error_is_one_line_and_the_trace_comes_with_vv(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sim

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("slot")

    monkeypatch.setattr(sim, "simulate", broken)
    code, _, err = run(["sim", str(QUICKSTART), "--out", "/nonexistent/x"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err
    assert lines[-1].startswith("internal error in `gemini-ckpt sim` on ")
    assert "quickstart.yaml: KeyError" in lines[-1] and "please report it" in lines[-1]
    code, _, err = run(["-vv", "sim", str(QUICKSTART), "--out", "/nonexistent/x"], capsys)
    assert code == 1 and "Traceback (most recent call last)" in err and "broken" in err


# --- the size check of the emulated cluster -----------------------------------------------------

SMALL_HOST = HostLimits(cpus=2, memory_bytes=24 * 2**30, shm_bytes=24 * 2**30, processes=10_000)


def test_the_quickstart_fits_a_two_core_machine() -> None:
    scenario = parse_scenario(QUICKSTART.read_text())
    estimate = estimate_run(scenario, "gemini")
    # 4 nodes and 2 standby nodes: an agent, a store and two trainers (active + warm spare)
    # each, and the kv store.
    assert scenario.cluster.standby_nodes == 2
    assert estimate.processes == 1 + 6 * 4 and estimate.trainers == 12
    # Two slots per own state and per replica held: 2 m node states.
    per_rank = scenario.model.parameter_count * scenario.model.checkpoint_bytes_per_parameter
    assert estimate.slots_bytes_per_node == pytest.approx(2 * 2 * per_rank)
    assert fit_problems(estimate, SMALL_HOST, scenario.real.timeout_s) == []


def test_each_warm_spare_per_rank_counts_a_trainer_per_rank_and_node() -> None:
    one = estimate_run(parse_scenario(QUICKSTART.read_text()), "gemini")
    two = estimate_run(
        parse_scenario(QUICKSTART.read_text(), overrides=["recovery.warm_spares=2"]), "gemini"
    )
    # 6 nodes (4 and 2 standby) of one rank each: one more process per node, and its memory.
    assert two.trainers == one.trainers + 6 and two.processes == one.processes + 6
    assert two.trainer_bytes_per_node == pytest.approx(one.trainer_bytes_per_node * 3 / 2)
    assert two.memory_bytes > one.memory_bytes


def test_500_nodes_are_refused_with_the_estimate_and_the_limits() -> None:
    scenario = parse_scenario(QUICKSTART.read_text(), overrides=["cluster.nodes=500"])
    with pytest.raises(HostCapacityError) as caught:
        require_fits(scenario, "gemini", host=SMALL_HOST)
    error = caught.value
    assert [p.split(":")[0] for p in error.problems] == ["memory", "CPU"]
    assert "this host has 24 GiB available" in error.problems[0]
    assert "longer than real.timeout_s (900 s)" in error.problems[1]
    assert "502 nodes: 2009 processes" in error.estimate and "--force" in str(error)
    assert require_fits(scenario, "gemini", host=SMALL_HOST, force=True).nodes == 502


def test_the_persistent_baseline_needs_no_slots() -> None:
    scenario = parse_scenario(QUICKSTART.read_text())
    assert estimate_run(scenario, "persistent").shm_bytes == 0


def test_real_refuses_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: big\ntargets: [real]\ncluster: {nodes: 20000, single_host: true}\n")
    out = tmp_path / "run"
    code, _, err = run(["real", str(path), "--out", str(out)], capsys)
    assert code == 2 and not out.exists()
    assert f"error: scenario {path} does not fit on this host" in err and "20002 nodes" in err


def test_a_failure_on_a_node_that_does_not_exist() -> None:
    text = (
        "name: n\ncluster: {nodes: 4}\nsim: {duration_days: 0.01}\nfailures: {schedule: "
        "[{kind: hardware, nodes: [7], at_iteration: 2}, {kind: software, nodes: [1], "
        "at_iteration: 3}]}"
    )
    (problem,) = problems_of(text, ("real",))
    assert problem == "failures.schedule.0.nodes: [7] out of range 0..3 (cluster.nodes is 4)"
    scenario = parse_scenario(text, faces=("sim",))
    (warning,) = warnings(build_model(scenario).findings())
    assert warning.endswith("(cluster.nodes is 4); the simulation skips this failure")
    injected = [e for e in simulate(scenario).events if e.kind == "failure_injected"]
    assert [e.details["nodes"] for e in injected] == [[1]]


def test_a_lost_nodes_fastest_detection_is_its_connections_closing_and_the_probe() -> None:
    # Hardware failures only, found by probe: at the soonest the survivors are inside a
    # collective as the node goes, so it fails as the connections close (0.2 s), + the probe.
    from shared.storms import fastest_recovery_s

    text = (
        "name: s\nfailures: {process: {failures_per_node_per_day: 1, hardware_fraction: 1}}\n"
        "detection: {collective_failure_s: 0.2, probe_detection_s: 0.05}\n"
    )
    _, how = fastest_recovery_s(parse_scenario(text, faces=("sim",)))
    assert "detection (probe) 0.25 s" in how
