"""Test-wide settings."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

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
