"""The local processes and ports the harness owns: a free port to listen on, a clean stop,
a child that ends with its parent, the last words of a process's log, interrupts handled for a
while, a process's resident memory."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
_PRCTL = None
with contextlib.suppress(AttributeError, OSError):  # not Linux: no such signal
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl


def end_with_parent(signum: int = signal.SIGTERM, parent: int | None = None) -> None:
    """In a child process: have the kernel send it ``signum`` once the thread that started it
    ends (Linux's ``PR_SET_PDEATHSIG``; elsewhere nothing), so that a parent killed outright
    leaves no orphan. ``parent``: the PID it was started by, when known: a parent already gone
    before the signal was armed sends it at once. Safe in a forked child and before ``exec``
    (the C function was looked up in the parent: the child of a threaded process only calls
    it)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signum)
        if parent is not None and os.getppid() != parent:
            os.kill(os.getpid(), signum)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (one we may not signal counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_RESIDENT_FIELDS = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}


def resident_bytes(pid: int) -> dict[str, int] | None:
    """What process ``pid`` holds in memory now, from ``/proc/<pid>/status``: ``anon`` (its
    own pages: heap, stacks), ``file`` (mapped files, such as the libraries it loaded, which
    other processes mapping them share), ``shmem`` (shared memory it touched, such as the
    node store's checkpoint slots); None once the process is gone, or where /proc has no such
    fields (not Linux). (psutil, a test dependency of ours, gives mapped files and shared
    memory as one figure; the three apart are these lines of /proc.)"""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                words = line.split()  # "RssAnon:", "152", "kB"
                field = _RESIDENT_FIELDS.get(words[0]) if words else None
                if field is not None:
                    found[field] = int(words[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return found if len(found) == len(_RESIDENT_FIELDS) else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], timeout_s: float) -> int | None:
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


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
"""Ctrl-C, and SIGTERM, which the commands take as one."""


@contextlib.contextmanager
def interrupts_handled(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM go to ``handler``, then back to their handlers
    before. Only in the main thread, where Python runs signal handlers; elsewhere the block
    runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {which: signal.signal(which, handler) for which in INTERRUPTS}
    try:
        yield
    finally:
        for which, before in previous.items():
            if before is not None:
                signal.signal(which, before)
