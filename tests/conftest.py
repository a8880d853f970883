"""Test-wide settings."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, settings
from running import live_descendants

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True, scope="session")
def _private_config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What a run keeps in the user's configuration folder (the persistent tier's per-user key,
    ``real.persistent.metadata.user_key_path``) goes to a temporary folder, not to ``~/.config``;
    the
    processes the tests start inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
        yield


LEFT_PROCESS_GRACE_S = 15.0
"""How long a module's processes may take to end after its last test and fixtures: a process
that ends when its owner or its store is gone notices within a poll."""


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:200]
    except psutil.Error:
        return "(ended)"


@pytest.fixture(autouse=True, scope="module")
def _no_process_outlives_its_module() -> Iterator[None]:
    """Every process a test module starts (its tests' and its fixtures') has ended by the time
    the module is done. One left running is killed, and the module fails, naming it: once, an
    earlier test's process ran on and a later test saw its secret as a second one (the probe's
    stop in ``benchmarks.exit_chain``)."""
    before = live_descendants().keys()
    yield
    deadline = time.monotonic() + LEFT_PROCESS_GRACE_S
    left = {k: p for k, p in live_descendants().items() if k not in before}
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {k: p for k, p in live_descendants().items() if k not in before}
    commands = {pid: _command(process) for (pid, _), process in sorted(left.items())}
    for process in left.values():
        with contextlib.suppress(psutil.Error):
            process.kill()  # psutil refuses a pid that another process took meanwhile
    assert not left, "processes this module started still ran after it (killed now): " + "; ".join(
        f"pid {pid}: {command}" for pid, command in commands.items()
    )


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back after a test that runs a command in its
    own process: a command configures the root logger as a process of its own would, and a
    handler left on a test's captured stream made later tests log into a closed file."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:], logging.root.level = handlers, level


@pytest.fixture(autouse=True)
def _restore_denormals() -> Iterator[None]:
    """Undo ``torch.set_flush_denormal(True)`` after a test that built a Trainer in-process.

    The trainer sets the processor's flush-to-zero mode (it made CPU iterations 4x faster);
    left on, it breaks every later float computation that expects subnormals (hypothesis
    refuses to generate floats in such a process).
    """
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_flush_denormal(False)
