"""``gemini-ckpt calibrate`` stopped while its rank processes work leaves nothing behind.

SIGTERM is taken as a Ctrl-C (exit 130, "Interrupted."): the ranks are reaped and every
temporary folder removed. SIGKILL of the command itself takes its ranks with it (the kernel
signals them when their parent dies) and their node stores follow. Until 2026-12-06 a SIGTERM
killed the command outright, leaving its forked ranks waiting for minutes and their temporary
folders in place.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"


def _marked(marker: str) -> list[int]:
    """PIDs of the processes whose environment carries ``marker`` (the command's and all it
    started, forked or spawned)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ:
            pids.append(int(entry.name))
    return pids


def _calibrating(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The command, once its ranks have written into their scratch folder (they work)."""
    marker = f"GEMINI_TEST_MARKER={uuid.uuid4().hex}"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    key, value = marker.split("=")
    env = {**os.environ, key: value, "TMPDIR": str(scratch)}
    args = ["calibrate", str(QUICKSTART), "--quick", "--out", str(tmp_path / "cal.yaml")]
    process = subprocess.Popen(
        [sys.executable, "-m", "gemini_ckpt", *args, "--dir", str(tmp_path / "disk")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        folders = list(scratch.glob("gemini-calibrate-ranks-*"))
        if any(any(folder.iterdir()) for folder in folders):
            return process, marker
        time.sleep(0.2)
    process.kill()
    process.wait()
    pytest.fail("the calibration's ranks never started")


def _none_left(marker: str, within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_sigterm_is_a_ctrl_c_that_cleans_up(tmp_path: Path) -> None:
    process, marker = _calibrating(tmp_path)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode(errors="replace")[-2000:]
    assert b"Interrupted." in stderr
    left = _none_left(marker, 30)
    assert left == [], f"processes left: {left}"
    # The ranks' scratch folders too (torch's own compile cache is torch's to keep).
    left_in_tmp = [p.name for p in (tmp_path / "tmp").iterdir()]
    assert [name for name in left_in_tmp if not name.startswith("torchinductor")] == []
    assert list((tmp_path / "disk").iterdir()) == []  # the reference shapes' folder


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_killed_calibration_takes_its_ranks_with_it(tmp_path: Path) -> None:
    process, marker = _calibrating(tmp_path)
    time.sleep(1.0)
    process.kill()
    process.communicate(timeout=60)
    left = _none_left(marker, 45)
    for pid in left:  # never leave them, even when the test fails
        with_it = Path(f"/proc/{pid}/cmdline")
        if with_it.exists():
            os.kill(pid, signal.SIGKILL)
    assert left == [], f"processes left: {left}"
