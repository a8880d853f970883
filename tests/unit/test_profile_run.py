"""``gemini-ckpt calibrate --profile run``'s profile (``profile_run``): what it reads from its
failure-free run of the harness, with the run itself stood in for."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gemini_ckpt.commands import calibrate

REPO = Path(__file__).parents[2]


def _profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, extra: dict[str, Any]) -> Any:
    ran: list[list[str]] = []

    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        ran.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    summary = SimpleNamespace(iteration_time_s=0.21, iteration_time_no_ckpt_s=0.18, extra=extra)
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr("analysis.results.load_run", lambda _: SimpleNamespace(summary=summary))
    monkeypatch.setattr("analysis.calibration.runnable_processes", lambda: 1.5)
    profile = calibrate.profile_run(REPO / "scenarios" / "quickstart.yaml", ("a=1",), tmp_path)
    (args,) = ran
    assert "failures.schedule=[]" in args and "a=1" in args  # failure-free, the user's settings
    return profile


def test_the_profile_says_what_a_trainer_held(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    footprint = {"nodes": 4, "trainer": {"anon": 312e6, "file": 120e6}}
    profile = _profile(monkeypatch, tmp_path, {"node_memory": footprint})
    assert profile == {
        "run_iteration_time_s": 0.21,
        "run_step_s": 0.18,
        "run_trainer_anon_bytes": 312_000_000,
        "iterations": calibrate.PROFILE_ITERATIONS,
        "background": 1.5,
    }
    # A harness that did not report it (or a run on another OS): the laws' reference stands.
    assert "run_trainer_anon_bytes" not in _profile(monkeypatch, tmp_path, {})
