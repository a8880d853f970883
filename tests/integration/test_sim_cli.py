"""``gemini-ckpt sim`` end to end: exit codes, output files, every shipped scenario runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemini_ckpt.cli import main
from shared.events import read_events
from shared.scenario_loader import load_scenario
from shared.summary import read_summary
from sim import simulate

ROOT = Path(__file__).resolve().parents[2]
SIM_SCENARIOS = sorted(
    path for path in (ROOT / "scenarios").rglob("*.yaml") if "sim" in load_scenario(path).targets
)


@pytest.mark.parametrize("path", SIM_SCENARIOS, ids=lambda p: p.stem)
def test_every_shipped_scenario_runs(path: Path) -> None:
    result = simulate(load_scenario(path, ["sim.duration_days=0.5"]))
    assert result.summary.duration_s == pytest.approx(43_200)
    assert result.events[0].kind == "run_started" and result.events[-1].kind == "run_finished"


def test_one_seed_writes_events_and_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sim", str(ROOT / "scenarios/quickstart.yaml"), "--out", str(tmp_path)])
    assert code == 0
    said = capsys.readouterr().err  # fractions as percentages, sizes in their unit
    assert "recovered from memory" in said and "100%" in said and " MB " in said
    summary = read_summary(tmp_path / "summary.json")
    scheduled = load_scenario(ROOT / "scenarios/quickstart.yaml").failures.schedule
    assert summary.source == "sim" and len(summary.failures) == len(scheduled)
    assert {e.kind for e in read_events(tmp_path / "events.jsonl")} >= {
        "failure_injected",
        "state_restored",
        "training_resumed",
    }


def test_seeds_run_in_parallel_with_confidence_intervals(tmp_path: Path) -> None:
    code = main(
        [
            "sim",
            str(ROOT / "scenarios/paper/gpt2-100b-p4d.yaml"),
            "--out",
            str(tmp_path),
            "--seeds",
            "3",
            "--set",
            "sim.duration_days=5",
            "--strategy",
            "highfreq",
        ]
    )
    assert code == 0
    replications = json.loads((tmp_path / "replications.json").read_text())
    assert replications["seeds"] == [0, 1, 2]
    assert replications["ettr"]["ci_low"] <= replications["ettr"]["mean"]
    assert all((tmp_path / f"seed-{s}" / "events.jsonl").exists() for s in range(3))
    assert read_summary(tmp_path / "summary.json").strategy == "persistent"


@pytest.mark.parametrize(
    "argv",
    [
        ["sim", "missing.yaml"],
        ["sim", "scenarios/quickstart.yaml", "--set", "cluster.nodes=zero"],
        ["sim", "scenarios/quickstart.yaml", "--set", "cluster.cpu_memory_gb=0.000001"],
        ["sim", "scenarios/quickstart.yaml", "--seeds", "0"],
        ["sim", "scenarios/quickstart.yaml", "--load", "3"],  # without --calibration
    ],
)
def test_bad_input_exits_2(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert main([*argv, "--out", str(tmp_path)]) == 2


def test_ctrl_c_ends_a_many_seed_simulation_at_once(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole process group. The seeds under way used to run to
    their end (a minute each here), and the queued ones to start, before the command said
    "Interrupted."; now it ends them at once, and writes no seed it had not finished."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sim"
    command = [
        sys.executable,
        "-m",
        "gemini_ckpt",
        "sim",
        str(ROOT / "scenarios/cluster-1000.yaml"),
    ]
    command += ["--set", "cluster.nodes=10000", "--set", "sim.duration_days=1000"]
    command += ["--seeds", "4", "--workers", "2", "--out", str(out)]
    process = subprocess.Popen(
        command, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while len(_children(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # the pool's workers start once the scenario is loaded
        assert len(_children(process.pid)) >= 2, "the workers never started"
        time.sleep(2)  # they are simulating their first seeds (minutes each)
        assert process.poll() is None, process.communicate()
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, err.decode()
    assert "Interrupted." in err.decode()
    assert not list(out.glob("seed-*/summary.json"))
    assert not (out / "summary.json").exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
