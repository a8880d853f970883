"""The calibration's spare measurements (``benchmarks.calibrate``): how long a spare of the
scenario's trainer takes to get warm, started as an agent starts one, and how much CPU a
process at the background spares' niceness gets beside busy processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.calibrate import BackgroundProbe, spare_warmup_s

V01 = Path(__file__).parents[2] / "scenarios" / "validation" / "v01-small-software.yaml"

# A stand-in trainer that is warm after sleeping argv[1] seconds, then waits for its agent.
SLOW_TRAINER = """
import json, os, socket, sys, time
sock = socket.socket(fileno=int(os.environ["GEMINI_AGENT_FD"]))
time.sleep(float(sys.argv[1]))
if sys.argv[2] == "dies":
    sys.exit(3)
sock.sendall(json.dumps({"op": "ready"}).encode() + b"\\n")
sock.recv(1)
"""


def _scenario(folder: Path, *arguments: str) -> Path:
    document = yaml.safe_load(V01.read_text())
    document["training"]["entrypoint"] = [sys.executable, "-c", SLOW_TRAINER, *arguments]
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_spares_warm_up_runs_from_its_start_until_it_says_it_is_warm(tmp_path: Path) -> None:
    took = spare_warmup_s(_scenario(tmp_path, "0.8", "lives"), ())
    assert 0.8 <= took < 30.0


def test_a_spare_that_dies_before_it_is_warm_is_an_error_naming_its_log(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"was not warm .*its log"):
        spare_warmup_s(_scenario(tmp_path, "0", "dies"), ())


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_the_background_probe_gets_what_busy_processes_leave_on_its_cpu() -> None:
    cpu = min(os.sched_getaffinity(0))
    probe = BackgroundProbe()
    try:
        os.sched_setaffinity(probe.pid, {cpu})
        probe.share()
        time.sleep(0.5)
        alone = probe.share()
        # A spinning process at the default niceness on the same CPU takes nearly all of it.
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            os.sched_setaffinity(busy.pid, {cpu})
            time.sleep(0.3)
            probe.share()
            time.sleep(0.6)
            beside = probe.share()
        finally:
            busy.kill()
            busy.wait()
    finally:
        probe.close()
    # Alone, it has what other jobs of the machine leave (all of a CPU on an idle one); beside
    # a process at the default niceness, next to nothing (its weight is 15 against 1024).
    assert 0.0 <= alone <= 1.0
    assert 0.0 <= beside < 0.25
    assert beside <= alone + 0.05


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_background_probe_ends_with_a_calibration_killed_outright() -> None:
    # In a session of its own, no terminal's Ctrl-C reaches the probe: it must end with the
    # process that started it, however that one ends.
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from benchmarks.calibrate import BackgroundProbe; "
            "print(BackgroundProbe().pid, flush=True); time.sleep(60)",
        ],
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        probe = int(owner.stdout.readline())
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 10
        while _running(probe) and time.monotonic() < deadline:
            time.sleep(0.05)
        gone = not _running(probe)
        if not gone:
            os.kill(probe, 9)
        assert gone, "the probe outlived the calibration that started it"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
