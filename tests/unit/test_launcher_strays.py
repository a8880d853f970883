"""The launcher's teardown ends trainers no agent is left to stop (``end_stray_trainers``): the
built-in trainer, known by its command line, and a script of the user's, known by the
environment its agent started it with."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from real.launcher.cluster import end_stray_trainers, stray_trainers

# Stands in for a trainer: the launcher knows one by its command line alone.
SLEEPER = "import time; time.sleep(120)"


def _trainer_like(run_dir: Path) -> subprocess.Popen[bytes]:
    """A process whose command line reads like a trainer of ``run_dir``, in its own session
    as an agent starts trainers."""
    process = subprocess.Popen(
        [sys.executable, "-c", SLEEPER, "-m", "real.trainer.main", "--out", str(run_dir)],
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while process.pid not in stray_trainers(run_dir):  # its exec has replaced the fork
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    return process


def test_a_stray_trainer_of_the_run_is_killed_and_another_runs_is_not(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "run", tmp_path / "other-run"
    stray, other = _trainer_like(ours), _trainer_like(theirs)
    try:
        assert stray_trainers(ours) == [stray.pid]
        assert end_stray_trainers(ours, timeout_s=10) == []
        assert stray.wait(10) == -9  # SIGKILL
        assert stray_trainers(ours) == []
        assert other.poll() is None and stray_trainers(theirs) == [other.pid]
    finally:
        for process in (stray, other):
            if process.poll() is None:
                process.kill()
            process.wait(10)


def test_nothing_to_end_returns_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    assert end_stray_trainers(tmp_path / "run", timeout_s=10) == []
    assert time.monotonic() - started < 5


def _script_like(run_dir: Path, agent_fd: bool) -> subprocess.Popen[bytes]:
    """A process whose command line is a script's own, started with the environment an agent
    gives a trainer of ``run_dir`` (or, without ``agent_fd``, one that is no trainer)."""
    env = {**os.environ, "GEMINI_RUN_DIR": str(run_dir)}
    if agent_fd:
        env["GEMINI_AGENT_FD"] = "7"
    return subprocess.Popen(
        [sys.executable, "-c", SLEEPER, "train.py"], env=env, start_new_session=True
    )


def test_a_stray_user_script_is_found_by_its_environment(tmp_path: Path) -> None:
    ours = tmp_path / "run"
    script, helper = _script_like(ours, agent_fd=True), _script_like(ours, agent_fd=False)
    try:
        deadline = time.monotonic() + 10
        while script.pid not in stray_trainers(ours):  # its exec has replaced the fork
            assert time.monotonic() < deadline and script.poll() is None
            time.sleep(0.01)
        assert helper.pid not in stray_trainers(ours)  # the run's, but no agent's trainer
        assert end_stray_trainers(ours, timeout_s=10) == []
        assert script.wait(10) == -9
        assert helper.poll() is None
    finally:
        for process in (script, helper):
            if process.poll() is None:
                process.kill()
            process.wait(10)
