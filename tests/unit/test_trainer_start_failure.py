"""A trainer that ends before it is warm (a wrong ``training.entrypoint``, an import error in
the script) is reported with its exit status and the last line of its log, by its node agent
and by the launcher, instead of a wait said to have timed out."""

from __future__ import annotations

import os
import time
from pathlib import Path

from running import stand_in_pool

from real.launcher.run import _first_error
from real.runtime.processes import last_line

# What python prints for a script path that does not exist, then its exit status.
MISSING_SCRIPT = """
import sys
print("python: can't open file '/job/train_mlpp.py': [Errno 2] No such file", file=sys.stderr)
sys.exit(2)
"""


def test_a_trainer_that_exits_while_starting_is_named_with_its_last_words(
    tmp_path: Path,
) -> None:
    trainers = stand_in_pool(tmp_path, MISSING_SCRIPT)
    try:
        began = time.monotonic()
        assert not trainers.wait_ready(60.0)
        assert time.monotonic() - began < 30.0  # it ended with the process, not the timeout
        failure = trainers.start_failure()
        assert failure is not None
        assert "local rank 0" in failure and "exited with status 2 before it was warm" in failure
        assert failure.endswith("can't open file '/job/train_mlpp.py': [Errno 2] No such file")
    finally:
        trainers.stop(grace_s=1.0)


def test_a_trainer_killed_while_starting_is_named_with_the_signal(tmp_path: Path) -> None:
    trainers = stand_in_pool(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    try:
        assert not trainers.wait_ready(60.0)
        failure = trainers.start_failure()
        assert failure is not None and "was killed by signal 9 before it was warm" in failure
        assert failure.endswith("ends: (empty)")
    finally:
        trainers.stop(grace_s=1.0)


def test_the_launcher_quotes_the_first_agent_log_that_ends_with_an_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "agent-0.log").write_text("INFO node0 started\nINFO node0 stopping\n")
    (tmp_path / "agent-1.log").write_text(
        "Traceback (most recent call last):\n  ...\n"
        "RuntimeError: node 1: trainer for local rank 0 (pid 7) exited with status 2\n\n"
    )
    assert _first_error(tmp_path) == (
        ": agent-1.log ends with 'RuntimeError: node 1: trainer for local rank 0 (pid 7) "
        "exited with status 2'"
    )
    # The agent that stopped first is quoted: the others may only follow its failure.
    (tmp_path / "agent-10.log").write_text("KVError: the root's store went away\n")
    os.utime(tmp_path / "agent-10.log", (1, 1))
    assert (
        _first_error(tmp_path) == ': agent-10.log ends with "KVError: the root\'s store went away"'
    )
    (tmp_path / "agent-10.log").unlink()
    (tmp_path / "agent-1.log").write_text("INFO node1 stopping\n")
    assert _first_error(tmp_path) == ""
    assert last_line(tmp_path / "missing.log") == ""
