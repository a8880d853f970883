"""A benchmark script stopped with SIGTERM stops the child it runs, as a Ctrl-C does
(``gemini_ckpt.interrupts.run_script``; ``benchmarks.validate.product``'s child here, a
sleeper in place of ``gemini-ckpt``). Without it, the child outlives the script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from running import stop_process

from real.runtime.processes import pid_alive

REPO = Path(__file__).parents[2]

# argv[1]: the child's log; argv[2]: "run_script" or "plain" (the script's main called bare).
DRIVER = """
import sys
from pathlib import Path
import benchmarks.validate as validate
from gemini_ckpt.commands.run import ChildRun
from gemini_ckpt.interrupts import run_script

class Sleeper(ChildRun):
    def __init__(self, args, log):
        super().__init__(args, log, program=(sys.executable, "-c", "import time; time.sleep(120)"))
        print(self.process.pid, flush=True)

validate.ChildRun = Sleeper
def main():
    return validate.product([], Path(sys.argv[1]))
raise SystemExit(run_script(main) if sys.argv[2] == "run_script" else main())
"""


def _stopped_with_sigterm(tmp_path: Path, mode: str) -> tuple[int, int]:
    """Start the driver, SIGTERM it once its child runs; (its exit code, the child's PID)."""
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "child.log"), mode],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout is not None
        child = int(driver.stdout.readline())
        driver.send_signal(signal.SIGTERM)
        return driver.wait(timeout=60), child
    finally:
        stop_process(driver, 5.0)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_script_stopped_with_sigterm_stops_its_child(tmp_path: Path) -> None:
    code, child = _stopped_with_sigterm(tmp_path, "run_script")
    assert code == 130
    assert _gone_within(child, 10.0)


def test_without_it_the_child_outlives_the_script(tmp_path: Path) -> None:
    code, child = _stopped_with_sigterm(tmp_path, "plain")
    try:
        assert code == -signal.SIGTERM
        assert not _gone_within(child, 1.0)
    finally:
        os.killpg(child, signal.SIGKILL)  # its own session's leader (ChildRun)
        _gone_within(child, 10.0)
