"""Closing the in-memory engine at the end of an attempt finishes its last checkpoint, and an
abort by the agent (a peer gone meanwhile) ends that wait, as in ``save()``: the replication in
flight is then dropped, and the persistent tier, the capture slots and the store connection are
released all the same."""

from __future__ import annotations

from typing import Any

import pytest

from real.engine.checkpointer import GeminiCheckpointer


class Part:
    def __init__(self, log: list[str], name: str, fails: bool = False) -> None:
        self.log, self.name, self.fails = log, name, fails

    def close(self, *args: Any, **kwargs: Any) -> None:
        self.log.append(f"{self.name} closed {kwargs}" if kwargs else f"{self.name} closed")
        if self.fails and kwargs.get("check") is not None:
            raise RuntimeError("attempt 3 aborted by the agent")

    def abandon(self) -> None:
        self.log.append(f"{self.name} abandoned")

    def cancel(self) -> None:
        self.log.append(f"{self.name} cancelled")


def engine(log: list[str], *, aborted: bool) -> Any:
    made: Any = GeminiCheckpointer.__new__(GeminiCheckpointer)
    made.replication = Part(log, "replication", fails=aborted)
    made.persistent, made.capturer, made.client = (
        Part(log, "persistent"),
        Part(log, "capturer"),
        Part(log, "client"),
    )
    made._own_events = False
    return made


def test_an_abort_while_the_last_checkpoint_finishes_drops_it_and_releases_the_rest() -> None:
    log: list[str] = []
    with pytest.raises(RuntimeError, match="aborted"):
        engine(log, aborted=True).close()
    assert log[0].startswith("replication closed {'check'")  # the agent's abort is checked
    assert log[1:] == [
        "persistent cancelled",  # its read-back on the sender thread stops first
        "replication abandoned",
        "persistent closed {'abandon': True}",
        "capturer closed",
        "client closed",
    ]


def test_a_clean_close_finishes_everything() -> None:
    log: list[str] = []
    engine(log, aborted=False).close()
    assert log[1:] == ["persistent closed {'abandon': False}", "capturer closed", "client closed"]


def test_a_failure_cancels_the_persistent_read_back_before_it_waits_for_the_sender() -> None:
    log: list[str] = []
    engine(log, aborted=False).close(abandon=True)
    assert log == [
        "persistent cancelled",
        "replication abandoned",
        "persistent closed {'abandon': True}",
        "capturer closed",
        "client closed",
    ]
