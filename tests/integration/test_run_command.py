"""``gemini-ckpt run`` into a folder that holds an earlier run (the same command again, or one
stopped with Ctrl-C) replaces that run's real clusters instead of refusing them; a scenario
whose real clusters do not fit this host is refused before anything is calibrated or
simulated."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from gemini_ckpt.cli import main
from gemini_ckpt.commands import run as run_command

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"


def test_a_second_run_replaces_the_earlier_real_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Path] = []

    class FakeChild:
        """The real cluster's child process, as far as ``run`` sees it: it fails at once."""

        def __init__(self, args: Sequence[str], log: Path) -> None:
            folder = Path(args[args.index("--out") + 1])
            assert not folder.exists()  # the earlier run is gone before the new one starts
            started.append(folder)

        def wait(self) -> int:
            return 1

        def stop(self, say: object = None) -> None:
            pass

    monkeypatch.setattr(run_command, "ChildRun", FakeChild)
    out = tmp_path / "q"
    for name in ("real-gemini", "real-baseline"):  # what an earlier run left
        (out / name / "events").mkdir(parents=True)
        (out / name / "events" / "trainer-rank0.jsonl").write_text("{}\n")
    args = ["run", str(QUICKSTART), "--out", str(out), "--no-calibrate", "--no-sweep", "--force"]
    assert main([*args, "--no-gif", "--no-video"]) == 1  # the fake clusters failed
    assert started == [out / "real-gemini", out / "real-baseline"]


def test_a_run_too_big_for_this_host_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_calibration(*args: object) -> None:
        raise AssertionError("calibrated a run that cannot start")

    monkeypatch.setattr(run_command, "calibrate_machine", no_calibration)
    out = tmp_path / "q"
    assert main(["run", str(QUICKSTART), "--out", str(out), "--set", "cluster.nodes=500"]) == 2
    assert "does not fit on this host" in capsys.readouterr().err
    assert not out.exists()


def test_an_unreadable_calibration_is_refused_before_the_run_folder_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("measurements: [not, a, mapping]\n")
    out = tmp_path / "q"
    assert main(["run", str(QUICKSTART), "--out", str(out), "--calibration", str(typo)]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert not out.exists()  # it was left behind, empty


def test_an_interrupted_run_says_what_it_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class InterruptedChild:
        """The first real cluster, stopped by a Ctrl-C while it runs."""

        stopped = False

        def __init__(self, args: Sequence[str], log: Path) -> None:
            pass

        def wait(self) -> int:
            raise KeyboardInterrupt

        def stop(self, say: object = None) -> None:
            InterruptedChild.stopped = True

    monkeypatch.setattr(run_command, "ChildRun", InterruptedChild)
    out = tmp_path / "q"
    args = ["run", str(QUICKSTART), "--out", str(out), "--no-calibrate", "--no-sweep", "--force"]
    assert main(args) == 130
    assert InterruptedChild.stopped
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())  # rich wraps long lines
    assert "Interrupted." in said
    assert f"kept in {out}: sim-gemini, sim-baseline; a run cut short has no summary" in said
    assert "The same command starts over and replaces them; another --out keeps them." in said


# A child that takes 1.5 s to tear down once told to stop (SIGTERM), as a cluster does.
SLOW_TEARDOWN = """
import signal, sys, time
def teardown(signum, frame):
    time.sleep(1.5)
    sys.exit(0)
signal.signal(signal.SIGTERM, teardown)
print("up", flush=True)
time.sleep(60)
"""


def test_a_second_ctrl_c_waits_for_the_clusters_teardown(tmp_path: Path) -> None:
    import signal

    # Python's own Ctrl-C handler, whatever the test run was started with (a run in the
    # background of a shell ignores SIGINT).
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _stop_twice_interrupted(tmp_path)
    finally:
        signal.signal(signal.SIGINT, original)


def _stop_twice_interrupted(tmp_path: Path) -> None:
    import os
    import signal
    import sys
    import threading
    import time

    log = tmp_path / "child.log"
    child = run_command.ChildRun(["-c", SLOW_TEARDOWN], log, program=(sys.executable,))
    while "up" not in log.read_text():
        time.sleep(0.02)
    said: list[str] = []
    # The user presses Ctrl-C again (twice) while the child tears down.
    pressing = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    again = threading.Timer(0.6, lambda: os.kill(os.getpid(), signal.SIGINT))
    pressing.start()
    again.start()
    began = time.monotonic()
    child.stop(said.append)  # no KeyboardInterrupt: it waits for the child
    assert child.process.returncode == 0  # its teardown ran to its end
    assert time.monotonic() - began >= 1.4
    assert len(said) == 2 and "still stopping the running cluster" in said[0]
    # Ctrl-C works as before once the teardown is over.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_while_the_report_is_written_still_interrupts_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal
    import time
    import weakref

    class Figure:
        pass

    def report(*args: object, **kwargs: object) -> None:
        # The user's Ctrl-C lands in a weakref callback of the plotting library, which
        # swallows its KeyboardInterrupt; the report is then written to its end.
        def callback(reference: object) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)

        figure = Figure()
        kept = weakref.ref(figure, callback)
        del figure
        assert kept() is None

    import analysis.report

    monkeypatch.setattr(analysis.report, "write_report", report)
    out = tmp_path / "q"
    args = ["run", str(QUICKSTART), "--out", str(out), "--no-calibrate", "--no-sweep"]
    assert main([*args, "--no-real"]) == 130
