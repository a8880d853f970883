"""The local processes and ports the harness owns: a free port to listen on, a clean stop,
the last words of a process's log."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL and wait again; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
    return process.returncode


def last_line(path: Path, tail_bytes: int = 4096) -> str:
    """The last non-blank line of a log file (an exception's message ends a traceback); ""
    when there is none or it cannot be read."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(max(0, log_file.seek(0, os.SEEK_END) - tail_bytes))
            tail = log_file.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""
