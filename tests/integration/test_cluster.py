"""The emulated cluster end to end (local mode): agents, root, failures, recovery.

Every run trains the same tiny scenario (4 nodes x 1 rank, gloo, 30 iterations); the proof of
recovery is state: the final weights of a run with failures equal, bit for bit, those of the
failure-free run of the same scenario. Runs are shared between tests (session fixtures) and
combine several failures each, to keep the whole file within a few minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from real.launcher.run import RealOptions, RealResult, run_real
from shared.events import Event
from shared.scenario import ScheduledFailure

REPO = Path(__file__).resolve().parents[2]
LEASE_TIMEOUT_S = 2.0
DETECTION_SLACK_S = 2.5

BASE: dict[str, Any] = {
    "name": "cluster-test",
    "targets": ["real"],
    "seed": 0,
    "cluster": {
        "nodes": 4,
        "accelerators_per_node": 1,
        "standby_nodes": 2,
        "replacement_s": 0.2,
        "provisioning_delay_s": 1.0,
    },
    "model": {"layers": 2, "hidden": 32, "heads": 4, "context": 32},
    "training": {"iterations": 30, "batch_size_per_rank": 2},
    "checkpoint": {
        "strategy": "gemini",
        "replicas": 2,
        "placement": "group",
        "profiling_iterations": 3,
    },
    "failures": {"schedule": []},
    "detection": {"heartbeat_interval_s": 0.25, "lease_timeout_s": LEASE_TIMEOUT_S},
    "real": {"timeout_s": 240},
}

pytestmark = pytest.mark.timeout(600)


def scenario_file(
    folder: Path,
    name: str,
    schedule: list[dict[str, Any]],
    sections: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """The test scenario with ``schedule``; ``sections``: keys merged into its sections."""
    document = json.loads(json.dumps(BASE))
    document["failures"]["schedule"] = schedule
    for section, values in (sections or {}).items():
        document.setdefault(section, {}).update(values)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run(folder: Path, name: str, schedule: list[dict[str, Any]]) -> RealResult:
    path = scenario_file(folder, name, schedule)
    return run_real(RealOptions(path, folder / name))


def leftovers(result: RealResult) -> tuple[list[int], list[str]]:
    """Processes whose command line names the run folder, and the job's shared memory."""
    needle = str(result.run_dir).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    shm = sorted(p.name for p in Path("/dev/shm").glob(f"{result.job}-*"))
    return pids, shm


# -- runs shared by the tests ---------------------------------------------------------------


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="session")
def reference(runs_dir: Path) -> dict[str, Any]:
    """The failure-free run, through the command line (``gemini-ckpt real``)."""
    path = scenario_file(runs_dir, "reference", [])
    out = runs_dir / "reference"
    completed = subprocess.run(
        [sys.executable, "-m", "gemini_ckpt", "real", str(path), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "recovery per failure" in completed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations_completed"] == 30
    return summary


@pytest.fixture(scope="session")
def node_failures(runs_dir: Path) -> RealResult:
    """A trainer crash, a lost node, the root's node lost, a crash during replication."""
    return run(
        runs_dir,
        "node-failures",
        [
            {"kind": "software", "nodes": [1], "at_iteration": 5},
            {"kind": "hardware", "nodes": [2], "at_iteration": 10},
            {"kind": "root_agent", "nodes": [0], "at_iteration": 15},
            {"kind": "software", "nodes": [3], "at_iteration": 20, "during": "replication"},
        ],
    )


@pytest.fixture(scope="session")
def group_failures(runs_dir: Path) -> RealResult:
    """Two nodes of different groups at once, a whole group, a node lost during recovery."""
    return run(
        runs_dir,
        "group-failures",
        [
            {"kind": "hardware", "nodes": [0, 2], "at_iteration": 5},
            {"kind": "group", "nodes": [1], "at_iteration": 12},
            {"kind": "hardware", "nodes": [3], "during": "recovery"},
        ],
    )


# -- helpers over events --------------------------------------------------------------------


def restarts(events: list[Event]) -> dict[int, Event]:
    """The root's restart_begin of each attempt (one is enough: the plan is the same)."""
    out: dict[int, Event] = {}
    for event in events:
        if event.kind == "restart_begin":
            out.setdefault(int(event.details["attempt"]), event)  # type: ignore[arg-type]
    return out


def restored_by_failure(events: list[Event]) -> dict[int, dict[int, str]]:
    """{failure: {rank: tier}} from the checkpointers' state_restored (they name the source)."""
    out: dict[int, dict[int, str]] = {}
    for event in events:
        if event.kind == "state_restored" and "source_node" in event.details:
            index = event.details.get("failure")
            if isinstance(index, int) and event.rank is not None:
                out.setdefault(index, {})[event.rank] = str(event.details["tier"])
    return out


def check_tiers_follow_plans(result: RealResult) -> None:
    """Every rank restored from the tier the root's plan (shared.plan_recovery) named."""
    plans = {}
    for event in restarts(result.events).values():
        for index in [
            e.details["failure"]
            for e in result.events
            if e.kind == "restart_begin" and e.details.get("attempt") == event.details["attempt"]
        ]:
            plans[index] = event
    restored = restored_by_failure(result.events)
    assert plans, "no restart recorded"
    for index, event in plans.items():
        sources = {int(node): tier for node, tier, _ in event.details["sources"]}  # type: ignore[union-attr]
        if event.iteration is None:
            assert index not in restored, (
                f"failure {index}: restored although the plan said scratch"
            )
            continue
        assert restored.get(index), f"failure {index}: no rank reported its restore"
        for rank, tier in restored[index].items():
            assert tier == sources[rank], (index, rank, tier, sources)


def check_complete(result: RealResult, injected_count: int) -> None:
    records = result.summary.failures
    scheduled = [r for r in records if r.index < 1000]
    assert len(result.injected) == injected_count
    assert len(scheduled) == injected_count, records
    assert all(r.complete for r in scheduled), records
    assert result.summary.iterations_completed == 30


# -- tests ------------------------------------------------------------------------------------


def test_node_failures_recover_bitwise(
    node_failures: RealResult, reference: dict[str, Any]
) -> None:
    check_complete(node_failures, 4)
    assert node_failures.digest is not None, node_failures.summary.extra
    assert node_failures.digest == reference["extra"]["final_digest"]


def test_group_failures_recover_bitwise(
    group_failures: RealResult, reference: dict[str, Any]
) -> None:
    check_complete(group_failures, 3)
    assert group_failures.digest == reference["extra"]["final_digest"]


def test_tiers_follow_the_plan(node_failures: RealResult, group_failures: RealResult) -> None:
    check_tiers_follow_plans(node_failures)
    check_tiers_follow_plans(group_failures)
    # A trainer crash keeps the node's memory: everyone restores locally.
    first = restored_by_failure(node_failures.events)[0]
    assert set(first.values()) == {"local"}, first
    # A whole group gone: the plan rolls back (persistent storage, else from scratch).
    group_restart = next(
        e for e in group_failures.events if e.kind == "restart_begin" and e.details["failure"] == 1
    )
    assert group_restart.details["rollback"] is True


def test_a_crash_restores_what_every_rank_captured(node_failures: RealResult) -> None:
    """A trainer crash keeps every node's memory: the plan restores the newest iteration every
    rank captured before the restart, committed or not (commit: on_arrival). The crash as
    iteration 5 ends, and the one while iteration 20 replicates, lose no finished iteration
    whenever every rank had captured it."""
    events = node_failures.events
    for index, record in enumerate(node_failures.summary.failures):
        if record.kind != "software" or record.index >= 1000:
            continue
        restart = next(
            e for e in events if e.kind == "restart_begin" and e.details["failure"] == index
        )
        newest: dict[int, int] = {}
        for event in events:
            if event.kind == "ckpt_captured" and event.time_s < restart.time_s:
                assert event.rank is not None and event.iteration is not None
                newest[event.rank] = max(newest.get(event.rank, -1), event.iteration)
        assert len(newest) == 4, newest
        assert restart.iteration == min(newest.values()), (index, newest, restart)
        assert record.restored_iteration == restart.iteration


def test_a_node_lost_as_an_iteration_ends_loses_that_iteration(node_failures: RealResult) -> None:
    """``at_iteration: k`` strikes as k ends, before any byte of k leaves the node (the
    simulator's meaning): the lost node's shard of k is nowhere else, so the job restores
    k - 1, every rank holding it. Without the injector's hold at the capture, a state this
    small reached the peers before the failure struck, and the harness restored k."""
    for index, at in ((1, 10), (2, 15)):  # the lost node, then the root's node
        record = next(r for r in node_failures.summary.failures if r.index == index)
        assert record.kind in ("hardware", "root_agent"), record
        assert record.restored_iteration == at - 1, record
        injected = next(
            e
            for e in node_failures.events
            if e.kind == "failure_injected" and e.details.get("failure") == index
        )
        assert injected.details["replicating"] is True, injected


def root_at(events: list[Event], time_s: float) -> int | None:
    """The node that was root at ``time_s`` (the last election before it)."""
    elected = [e for e in events if e.kind == "root_elected" and e.time_s <= time_s]
    return elected[-1].node if elected else None


def test_detection_within_bounds(node_failures: RealResult, group_failures: RealResult) -> None:
    for result in (node_failures, group_failures):
        for record in result.summary.failures:
            if record.kind == "software":
                # The exit report: under a second on its own, plus the same scheduling slack
                # the lease bound has (the node's agent still beats: no lease finds it).
                assert record.detection_s < 1.0 + DETECTION_SLACK_S, record
                continue
            # The lease expires within its timeout; the slack covers the root's poll and
            # scheduling delays of 4 trainers, 4 agents and 4 stores on 2 cores. When the
            # root's own node is among the lost, a new root must first win the election (one
            # more lease period) before it can notice.
            bound = LEASE_TIMEOUT_S + DETECTION_SLACK_S
            if root_at(result.events, record.time_s) in record.nodes:
                bound += LEASE_TIMEOUT_S
            assert record.detection_s <= bound, record


def test_lost_node_found_by_probe_before_its_lease(node_failures: RealResult) -> None:
    """The lost node (not the root's) is found when the survivors' collectives break and its
    agent does not answer a probe: well before its lease would expire."""
    record = next(r for r in node_failures.summary.failures if r.index == 1)
    assert record.kind == "hardware"
    detected = next(
        e
        for e in node_failures.events
        if e.kind == "failure_detected" and e.details.get("failure") == 1
    )
    assert detected.details["detected_by"] == "probe", detected
    assert record.detection_s < LEASE_TIMEOUT_S, record


def assignments(result: RealResult) -> dict[int, dict[int, tuple[int, float]]]:
    """``{attempt: {rank: (pid, started_s)}}``: which process ran each rank in each attempt
    (from the agents' pid files), with its process start in run seconds."""
    out: dict[int, dict[int, tuple[int, float]]] = {}
    for path in (result.run_dir / "pids").glob("*.json"):
        for entry in json.loads(path.read_text()).get("assignments", []):
            out.setdefault(int(entry["attempt"]), {})[int(entry["rank"])] = (
                int(entry["pid"]),
                float(entry["started_s"]),
            )
    return out


def test_survivors_keep_their_processes(
    node_failures: RealResult, group_failures: RealResult
) -> None:
    """In-process recovery: a rank on a node that did not fail keeps its process across the
    restart (a rollback to scratch excepted: every trainer that trained then hands its rank to
    a fresh one). That the failed ranks' processes were replaced, by warm ones, is the next
    test's."""
    checked = 0
    for result in (node_failures, group_failures):
        runs = assignments(result)
        for attempt, restart in restarts(result.events).items():
            if restart.iteration is None:
                continue
            failed = {int(slot) for slot in restart.details["failed"]}  # type: ignore[union-attr]
            before, after = runs[attempt - 1], runs[attempt]
            for rank, (pid, _) in after.items():
                if rank not in failed:  # one rank per node: the rank is the slot
                    assert pid == before[rank][0], (attempt, rank, before, after)
                    checked += 1
    assert checked >= 6


def test_failed_ranks_taken_by_warm_processes(node_failures: RealResult) -> None:
    """A crashed trainer's rank goes to its node's warm spare, a lost node's to a standby
    node's trainer: processes started before the failure, so no interpreter starts on the
    recovery's path."""
    runs = assignments(node_failures)
    injected = {
        e.details["failure"]: e.time_s for e in node_failures.events if e.kind == "failure_injected"
    }
    replaced = 0
    for attempt in restarts(node_failures.events):
        failures = [
            e.details["failure"]
            for e in node_failures.events
            if e.kind == "restart_begin" and e.details.get("attempt") == attempt
        ]
        if not any(f in injected for f in failures):
            continue  # a restart for a failure nobody injected (none expected; see the others)
        struck = min(injected[f] for f in failures if f in injected)
        for rank, (pid, started_s) in runs[attempt].items():
            if pid != runs[attempt - 1][rank][0]:
                assert started_s < struck, (attempt, rank, started_s, struck)
                replaced += 1
    assert replaced >= 4  # a crash, a lost node, the root's node, a crash in replication


def test_root_reelected_after_its_node_dies(node_failures: RealResult) -> None:
    elections = [e for e in node_failures.events if e.kind == "root_elected"]
    injected = next(
        e
        for e in node_failures.events
        if e.kind == "failure_injected" and e.details["failure"] == 2
    )
    later = [e for e in elections if e.time_s > injected.time_s]
    assert later, elections
    # The survivors' broken collectives made their agents probe the root's agent, which
    # refused: its election lease was revoked, not waited out (LEASE_TIMEOUT_S + a poll).
    assert later[0].time_s - injected.time_s < LEASE_TIMEOUT_S, (later[0], injected)


def test_failure_during_recovery_joins_it(group_failures: RealResult) -> None:
    by_index = {r.index: r for r in group_failures.summary.failures}
    assert by_index[2].kind == "hardware"
    assert by_index[2].complete
    injected = {
        e.details["failure"]: e for e in group_failures.events if e.kind == "failure_injected"
    }
    # Injected once the root had stopped the job for failure 1. The stop may come from the
    # survivors' failed collectives before the lost nodes' leases expire, so failure 1's
    # failure_detected can come after it; what matters is that both end in one restart.
    assert injected[2].time_s > injected[1].time_s
    attempts = {
        e.details["failure"]: e.details["attempt"]
        for e in group_failures.events
        if e.kind == "restart_begin"
    }
    assert attempts[2] == attempts[1], attempts
    resumed_between = [
        e
        for e in group_failures.events
        if e.kind == "training_resumed" and injected[1].time_s < e.time_s < injected[2].time_s
    ]
    assert not resumed_between, resumed_between


def test_nothing_left_behind(node_failures: RealResult, group_failures: RealResult) -> None:
    for result in (node_failures, group_failures):
        pids, shm = leftovers(result)
        assert not pids and not shm, (pids, shm)
        summary = json.loads((result.run_dir / "summary.json").read_text())
        assert len(summary["failures"]) >= 1
        assert (result.run_dir / "events.jsonl").stat().st_size > 0


def test_summary_reports_memory_and_step_time(node_failures: RealResult) -> None:
    summary = node_failures.summary
    # Every node store holds 2 own + 2 replica slots of its rank's state (m = 2).
    assert summary.checkpoint_memory_bytes > 0
    finished = next(e for e in node_failures.events if e.kind == "run_finished")
    per_slot = finished.details["store_memory_bytes"]
    assert sorted(per_slot) == ["0", "1", "2", "3"]  # type: ignore[arg-type]
    assert summary.iteration_time_no_ckpt_s is not None
    assert 0 < summary.iteration_time_no_ckpt_s <= summary.iteration_time_s
    # What our processes hold per node at the job's end: every agent that saw its trainer
    # finish reported (nodes lost during the run did not); each agent and store imports
    # Python and holds pages of its own; the warm spares have torch imported.
    footprint = summary.extra["node_memory"]
    assert 1 <= footprint["nodes"] <= 4
    for role in ("agent", "store", "spare"):
        assert footprint[role]["anon"] > 1e6 and footprint[role]["file"] > 1e6, role
    assert footprint["spare"]["anon"] + footprint["spare"]["file"] > 50e6  # torch imported
    assert footprint["spares_per_node"] >= 1
    # Every trainer that ended its last iteration said what it held: torch, its state and
    # the engine's mappings (the calibration's law of a lost node's detection reads it).
    assert footprint["trainer"]["anon"] > 50e6 and footprint["trainer"]["file"] > 1e6


# Slow (42-50 s): etcd's election, leases and watches are in the default run already
# (tests/integration/test_coord_kv.py, test_etcd_watch.py), a root's failure on the embedded store
# too (test_node_failures_recover_bitwise).
@pytest.mark.slow
def test_etcd_store_recovers_a_root_failure(runs_dir: Path, reference: dict[str, Any]) -> None:
    """``real.store: etcd`` (local mode): election, leases and recovery over etcd."""
    from real.coord.etcd_server import etcd_binary

    if etcd_binary() is None:
        pytest.skip("etcd binary absent: install Debian's etcd-server")
    path = scenario_file(
        runs_dir,
        "etcd",
        [{"kind": "root_agent", "nodes": [0], "at_iteration": 8}],
        # etcd leases count whole seconds; a longer lease keeps a CPU-starved 2-core machine
        # from expiring a live root's lease (election churn) while the test still proves
        # election, leases and recovery over etcd.
        {
            "real": {"store": "etcd"},
            "detection": {"heartbeat_interval_s": 0.5, "lease_timeout_s": 4.0},
        },
    )
    result = run_real(RealOptions(path, runs_dir / "etcd"))
    check_complete(result, 1)
    assert result.digest == reference["extra"]["final_digest"]
    check_tiers_follow_plans(result)
    assert len([e for e in result.events if e.kind == "root_elected"]) >= 2
    pids, shm = leftovers(result)
    assert not pids and not shm, (pids, shm)


def job_of(run_dir: Path) -> str | None:
    """The job id (the prefix of its ``/dev/shm`` files), read from the command line of a
    running node agent of ``run_dir`` (``--job``)."""
    needle = str(run_dir.resolve()).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--job" in args[:-1] and any(needle in arg for arg in args):
            return args[args.index(b"--job") + 1].decode()
    return None


def _default_sigint() -> None:
    """A shell that starts the tests in the background (``cmd &`` without job control) leaves
    SIGINT ignored, and every child inherits that, so Python would install no handler: the
    command under test gets Ctrl-C's default disposition, as in a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_tears_everything_down(runs_dir: Path) -> None:
    """A terminal's Ctrl-C: SIGINT to the command's whole process group (the launcher and
    the children in its group, such as the coordination store), mid-training."""
    path = scenario_file(runs_dir, "interrupted", [])
    out = runs_dir / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "gemini_ckpt", "real", str(path), "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_default_sigint,
        start_new_session=True,  # a process group of its own, as a terminal's job
    )
    try:
        deadline = time.monotonic() + 120
        while not list((out / "events").glob("trainer-rank*.jsonl")):
            assert process.poll() is None, process.stdout.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        job = job_of(out)
        assert job is not None, "no node agent of the run found"
        os.killpg(process.pid, signal.SIGINT)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = process.stdout.read().decode()  # type: ignore[union-attr]
    # An interrupt, not a store error: the store, in the group too, left Ctrl-C to its owner.
    assert process.returncode == 130, output[-2000:]
    assert "Interrupted." in output and "coordination store" not in output, output[-2000:]
    needle = str(out.resolve()).encode()
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    left.append(int(entry.name))
            except OSError:
                pass
    assert not left
    shm = sorted(Path("/dev/shm").glob(f"{job}-*"))  # the job's slot files
    for path in shm:  # the test itself leaves nothing behind either
        path.unlink(missing_ok=True)
    assert not shm, [path.name for path in shm]


def _stored_iterations(store: Path) -> list[int]:
    try:
        index = json.loads((store / "index.json").read_text())
    except (OSError, ValueError):
        return []
    return [int(entry["iteration"]) for entry in index["complete"]]


# Slow (92-142 s): a restore from persistent storage is in the default run already, in one
# process (tests/integration/test_one_process.py) and on every rank of a group
# (test_baseline.py); this is the cluster's resubmission with --resume.
@pytest.mark.slow
def test_a_job_submitted_again_resumes_from_storage(
    runs_dir: Path, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every node of a job lost at once (here its launcher killed, so its agents leave): the
    job submitted again (``--resume``), with the same storage and the key it signed its
    checkpoints with, resumes from the newest one and ends with the failure-free run's
    weights; without that key it fails at once, before any trainer starts, and overwrites
    nothing."""
    store = runs_dir / "resubmitted-store"
    sections = {
        "checkpoint": {"persist_every_iterations": 5},
        "cluster": {"storage": {"url": str(store)}},
    }
    path = scenario_file(runs_dir, "resubmitted", [], sections)
    monkeypatch.setenv("GEMINI_PERSISTENT_KEY", "the key every submission of the job shares")
    first = runs_dir / "resubmitted-1"
    process = subprocess.Popen(
        [sys.executable, "-m", "gemini_ckpt", "real", str(path), "--out", str(first), "--resume"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not _stored_iterations(store):
            assert process.poll() is None, "the first submission ended before it persisted"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.kill()  # the job's whole cluster is gone: its agents follow their launcher
        process.wait()
        deadline = time.monotonic() + 60
        needle = str(first.resolve()).encode()
        while any(
            needle in (entry / "cmdline").read_bytes()
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and (entry / "cmdline").exists()
        ):
            assert time.monotonic() < deadline, "the first submission's agents did not leave"
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stored = _stored_iterations(store)
    assert stored and max(stored) < 30, stored

    monkeypatch.setenv("GEMINI_PERSISTENT_KEY", "another job's key")
    with pytest.raises(RuntimeError, match="cannot resume from"):
        run_real(RealOptions(path, runs_dir / "resubmitted-wrong-key", resume=True))
    assert _stored_iterations(store) == stored  # nothing overwritten
    # Its folder still tells what happened, marked failed: a report leaves such a run out.
    refused = json.loads((runs_dir / "resubmitted-wrong-key" / "summary.json").read_text())
    assert "cannot resume from" in refused["extra"]["failed"]

    monkeypatch.setenv("GEMINI_PERSISTENT_KEY", "the key every submission of the job shares")
    second = run_real(RealOptions(path, runs_dir / "resubmitted-2", resume=True))
    started = next(e for e in second.events if e.kind == "run_started")
    assert started.details["resumed_from"] == max(stored)
    restored = {
        e.rank: (e.iteration, e.details["tier"])
        for e in second.events
        if e.kind == "state_restored"
    }
    assert restored == {rank: (max(stored), "persistent") for rank in range(4)}
    first_trained = min(e.iteration for e in second.events if e.kind == "iteration_end")
    assert first_trained == max(stored) + 1
    assert second.summary.iterations_completed == 30
    assert second.digest == reference["extra"]["final_digest"]


@pytest.mark.slow
def test_chaos(runs_dir: Path, reference: dict[str, Any]) -> None:
    """Random failures of every kind for several minutes; the same checks each time."""
    import random

    from real.launcher.injector import chaos_schedule
    from shared.scenario_loader import load_scenario

    rng = random.Random(int(os.environ.get("GEMINI_CHAOS_SEED", "1")))
    deadline = time.monotonic() + float(os.environ.get("GEMINI_CHAOS_S", "300"))
    round_ = 0
    while time.monotonic() < deadline:
        path = scenario_file(runs_dir, f"chaos-{round_}", [])
        scenario = load_scenario(path)
        schedule: list[ScheduledFailure] = chaos_schedule(scenario, 4, rng, first=3, gap=6)
        result = run_real(RealOptions(path, runs_dir / f"chaos-{round_}", schedule=schedule))
        assert result.digest == reference["extra"]["final_digest"], schedule
        check_tiers_follow_plans(result)
        pids, shm = leftovers(result)
        assert not pids and not shm
        round_ += 1


# -- a slow node is not lost; a hung trainer is replaced ------------------------------------


def agent_pids(run_dir: Path) -> dict[int, dict[str, Any]]:
    return {
        int(path.stem): json.loads(path.read_text()) for path in (run_dir / "pids").glob("*.json")
    }


def reached(run_dir: Path, iteration: int) -> bool:
    """Whether some trainer has ended ``iteration``."""
    for path in (run_dir / "events").glob("trainer-rank*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # a line being written
                continue
            if event["kind"] == "iteration_end" and event["iteration"] >= iteration:
                return True
    return False


def agent_events(run_dir: Path) -> list[dict[str, Any]]:
    """The agents' events so far (the root's among them), in time order."""
    events = []
    for path in (run_dir / "events").glob("agent-*.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line being written
                events.append(json.loads(line))
    return sorted(events, key=lambda event: event["time_s"])


def current_root(run_dir: Path) -> int | None:
    elected = [e["node"] for e in agent_events(run_dir) if e["kind"] == "root_elected"]
    return elected[-1] if elected else None


def detected_lost(run_dir: Path, node: int) -> bool:
    return any(
        e["kind"] == "failure_detected"
        and e["node"] == node
        and e["details"].get("failure_kind") == "hardware"
        for e in agent_events(run_dir)
    )


def signal_node(record: dict[str, Any], signum: int) -> None:
    """Signal a node's agent (and its store: the agent's process group) and trainers."""
    os.killpg(int(record["agent"]), signum)
    for pid in record["trainers"].values():
        os.kill(int(pid), signum)


STALLS_LEASE_S = 5.0


@pytest.fixture(scope="session")
def stalls(runs_dir: Path) -> tuple[RealResult, dict[str, Any]]:
    """Three stalls, done from outside with signals (nothing recorded anywhere):

    1. node 3 stops (SIGSTOP: agent, store, trainers) and node 1's trainer is killed at the
       same moment; node 3 resumes 0.5 s later, inside the probe bound: only node 1's crash
       is a failure, node 3 answers the probe late but in time and is not lost;
    2. node 2's trainer hangs (SIGSTOP, never resumed): its peers' collectives time out, the
       root finds every agent alive, stops the job, and the hung trainer, which cannot leave
       its collective, is killed and replaced by its node's spare.

    3. at iteration 25, a node that is not the root's (the election is first-come, so any
       node may lead) is partitioned: stopped, agent, store and trainers, until it is found
       lost. Its peers' collectives hang without breaking; the root, which sees its
       heartbeat stand still, probes it and finds it lost well before its lease (5 s) would
       run out. Resumed once replaced, it finds its slot taken and leaves.
    """
    out = runs_dir / "stalls"
    path = scenario_file(
        runs_dir,
        "stalls",
        [],
        {
            "detection": {
                "heartbeat_interval_s": 0.25,
                "lease_timeout_s": STALLS_LEASE_S,
                "probe_timeout_s": 2.0,
                "collective_timeout_s": 6.0,
            }
        },
    )
    seen: dict[str, Any] = {}

    def stall() -> None:
        deadline = time.monotonic() + 400
        while not reached(out, 6) and time.monotonic() < deadline:
            time.sleep(0.05)
        nodes = agent_pids(out)
        signal_node(nodes[3], signal.SIGSTOP)
        crashed = int(nodes[1]["trainers"]["1"])
        os.kill(crashed, signal.SIGKILL)
        time.sleep(0.5)
        signal_node(nodes[3], signal.SIGCONT)
        seen["crashed"] = crashed
        while not reached(out, 18) and time.monotonic() < deadline:
            time.sleep(0.05)
        hung = int(agent_pids(out)[2]["trainers"]["2"])
        os.kill(hung, signal.SIGSTOP)
        seen["hung"] = hung
        while not reached(out, 25) and time.monotonic() < deadline:
            time.sleep(0.05)
        partitioned = 1 if current_root(out) == 0 else 0
        record = agent_pids(out)[partitioned]
        signal_node(record, signal.SIGSTOP)
        seen["partitioned"] = partitioned
        until = time.monotonic() + 60
        while not detected_lost(out, partitioned) and time.monotonic() < until:
            time.sleep(0.05)
        signal_node(record, signal.SIGCONT)

    import threading

    thread = threading.Thread(target=stall, daemon=True)
    thread.start()
    result = run_real(RealOptions(path, out))
    thread.join(10)
    return result, seen


def test_slow_node_is_not_lost_hung_trainer_replaced_partition_found_by_silence(
    stalls: tuple[RealResult, dict[str, Any]], reference: dict[str, Any]
) -> None:
    result, seen = stalls
    assert {"crashed", "hung", "partitioned"} <= set(seen), seen
    detected = [e for e in result.events if e.kind == "failure_detected"]
    # Node 3 was stopped while the root probed every agent (its heartbeat stood still too);
    # it answered once resumed.
    assert all(e.node != 3 for e in detected), detected
    kinds = [e.details["failure_kind"] for e in detected]
    assert kinds == ["software", "software", "hardware"], detected
    assert detected[0].node == 1 and detected[0].details["detected_by"] == "exit"
    # The hang: noticed through the peers' timed-out collectives (no exit, no lost node).
    assert detected[1].details["detected_by"] == "suspect", detected[1]
    assert detected[1].node == 2, detected[1]  # the silent member: the hung trainer's node
    # Dated from before its peers waited out their collective (6 s), not from their reports.
    assert detected[1].details["detection_latency_s"] >= 6.0, detected[1]
    # The partition: found by the probe its heartbeat's silence started, before its lease
    # could run out (the latency runs from the node's last beat).
    partition = detected[2]
    assert (partition.node, partition.details["detected_by"]) == (seen["partitioned"], "silence")
    assert partition.details["detection_latency_s"] < STALLS_LEASE_S, partition
    runs = assignments(result)
    last = runs[max(runs)]
    assert last[2][0] != seen["hung"]  # the hung trainer's rank went to another process
    assert last[3][0] == runs[1][3][0]  # node 3's trainer lived through its stop
    assert result.digest == reference["extra"]["final_digest"]
    pids, shm = leftovers(result)
    assert not pids and not shm, (pids, shm)


def test_crash_loop_stops_the_job(runs_dir: Path) -> None:
    """Rank 1 dies at iteration 3 in every process that runs it (a bug, not bad luck): the
    job is recovered twice, then stops with the crash loop as its reason."""
    path = scenario_file(
        runs_dir,
        "crash-loop",
        [],
        {
            "cluster": {"nodes": 2, "standby_nodes": 0},
            "recovery": {"crash_loop_restarts": 3, "crash_loop_window_s": 60.0},
        },
    )
    out = runs_dir / "crash-loop"
    completed = subprocess.run(
        [sys.executable, "-m", "gemini_ckpt", "real", str(path), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "GEMINI_CRASH_AT_ITERATION": "3", "GEMINI_CRASH_RANK": "1"},
    )
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert "crash loop: node 1's trainer died" in completed.stderr, completed.stderr[-3000:]
    events = [
        json.loads(line)
        for path in (out / "events").glob("agent-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    detected = [e for e in events if e["kind"] == "failure_detected"]
    assert [e["node"] for e in detected] == [1, 1, 1]
    # A job that failed still leaves its merged events and the summary of what happened.
    summary = json.loads((out / "summary.json").read_text())
    assert [f["nodes"] for f in summary["failures"]] == [[1], [1], [1]]
    assert (out / "events.jsonl").exists()
