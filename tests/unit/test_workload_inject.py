"""The failure-injection hook: crash points from the environment, and the crash itself."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from real.trainer.inject import EXIT_CODE, CrashPoint, crash_point_from_env, maybe_crash


def test_crash_point_round_trips_through_the_environment() -> None:
    point = CrashPoint(iteration=5, rank=1, phase="after_save", mode="exit", failure=2)
    assert crash_point_from_env(point.env()) == point
    assert crash_point_from_env({}) is None
    assert crash_point_from_env(CrashPoint(3).env()) == CrashPoint(3)


def test_bad_phase_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="after_step"):
        crash_point_from_env({"GEMINI_CRASH_AT_ITERATION": "3", "GEMINI_CRASH_PHASE": "later"})


def test_other_iterations_ranks_and_phases_do_not_crash() -> None:
    point = CrashPoint(iteration=5, rank=1)
    maybe_crash(point, 4, 1, "after_step")
    maybe_crash(point, 5, 0, "after_step")
    maybe_crash(point, 5, 1, "before_step")
    maybe_crash(None, 5, 1, "after_step")


SCRIPT = """
import sys
from real.engine.eventlog import EventLog
from real.trainer.inject import crash_point_from_env, maybe_crash
log = EventLog(sys.argv[1], t0=0.0, node=0, rank=0)
point = crash_point_from_env()
for iteration in range(1, 10):
    maybe_crash(point, iteration, 0, "after_step", log)
print("survived")
"""


@pytest.mark.parametrize(("mode", "returncode"), [("kill", -signal.SIGKILL), ("exit", EXIT_CODE)])
def test_the_process_dies_at_the_crash_point(tmp_path: Path, mode: str, returncode: int) -> None:
    env = {"PATH": "", **CrashPoint(iteration=3, mode=mode, failure=0).env()}  # type: ignore[arg-type]
    log = tmp_path / "events.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == returncode, done.stderr
    assert "survived" not in done.stdout
    event = json.loads(log.read_text().splitlines()[-1])
    assert event["kind"] == "failure_injected" and event["iteration"] == 3
    assert event["details"]["failure"] == 0 and event["details"]["reached_iteration"] == 3


def test_a_rank_holds_at_an_armed_capture_until_the_hold_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The injector's hold: only the armed rank and iteration wait, until the file goes."""
    import threading
    import time

    from real.trainer.inject import hold_point

    monkeypatch.delenv("GEMINI_HOLD_DIR", raising=False)
    (tmp_path / "3.7").touch()
    assert hold_point(3, 7) is False  # no hold folder: never holds
    monkeypatch.setenv("GEMINI_HOLD_DIR", str(tmp_path))
    assert hold_point(3, 6) is False and hold_point(2, 7) is False
    assert not (tmp_path / "3.6.held").exists() and not (tmp_path / "2.7.held").exists()
    released = threading.Timer(0.3, (tmp_path / "3.7").unlink)
    started = time.monotonic()
    released.start()
    try:
        assert hold_point(3, 7) is True
    finally:
        released.join()
    assert time.monotonic() - started >= 0.3
    assert (tmp_path / "3.7.held").exists()  # it said it waits: the injector's trigger reads it


def test_a_hold_never_released_ends_at_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    from real.trainer.inject import hold_point

    monkeypatch.setenv("GEMINI_HOLD_DIR", str(tmp_path))
    (tmp_path / "0.4").touch()
    started = time.monotonic()
    assert hold_point(0, 4, timeout_s=0.2) is True
    assert 0.2 <= time.monotonic() - started < 5.0
    assert "outlasted" in caplog.text
