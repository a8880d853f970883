"""Under the agents, a script that saves without ``Checkpointer.run(train)`` gets no in-process
recovery: its first ``save`` says so, once, in the trainer's log, and tells its agent that it
trains (``resumed``: the node may start the spares it holds back during a recovery); a script
using ``run`` and one under torchrun are told nothing."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from real.trainer.checkpointer import Checkpointer


class _Engine:
    def __init__(self) -> None:
        self.saved: list[int] = []

    def save(self, iteration: int, state: Any) -> None:
        self.saved.append(iteration)


class _Channel:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, op: str, **fields: Any) -> None:
        self.sent.append((op, fields))


class _Assignment:
    attempt = 3


class _Events:
    def emit(self, kind: str, **details: Any) -> None:
        pass


def checkpointer(*, agents: bool, ran: bool) -> tuple[Checkpointer, _Engine, _Channel]:
    """A ``Checkpointer`` as its constructor leaves it, around stand-ins for the engine, the
    event log and the agent's channel (none under torchrun)."""
    engine, channel = _Engine(), _Channel()
    made = object.__new__(Checkpointer)
    made._channel = channel if agents else None  # type: ignore[assignment]
    made._assignment = _Assignment() if agents else None  # type: ignore[assignment]
    made._ran, made._told_plain = ran, False
    made._engine_now = lambda: engine  # type: ignore[method-assign]
    made.events = _Events()  # type: ignore[assignment]
    made._last_step = time.perf_counter()
    return made, engine, channel


@pytest.mark.parametrize(
    ("agents", "ran", "told"), [(True, False, 1), (True, True, 0), (False, False, 0)]
)
def test_a_plain_loop_under_the_agents_is_told_once(
    caplog: pytest.LogCaptureFixture, agents: bool, ran: bool, told: int
) -> None:
    made, engine, channel = checkpointer(agents=agents, ran=ran)
    with caplog.at_level(logging.WARNING, logger="real.trainer.checkpointer"):
        for iteration in (1, 2, 3):
            made.save(iteration, {})
    assert engine.saved == [1, 2, 3]
    warnings = [
        r.getMessage() for r in caplog.records if "without Checkpointer.run" in r.getMessage()
    ]
    assert len(warnings) == told
    assert channel.sent == [("resumed", {"attempt": 3})] * told


def test_an_attempt_that_ends_well_finishes_its_checkpoint_before_leaving_its_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine's last background reduction must start on every rank before any rank
    leaves the attempt's groups; otherwise a rank's release waits out the collective timeout."""
    from real.trainer import checkpointer as module

    order: list[str] = []

    class Engine:
        def close(self, abandon: bool = False) -> None:
            order.append(f"engine closed (abandon={abandon})")

    def run_attempts(body: Any, channel: Any, **kwargs: Any) -> int:
        body(kwargs["joined"])
        order.append("attempt left")  # run_attempts' leave_attempt(together=True)
        return 1

    monkeypatch.setattr(module, "run_attempts", run_attempts)
    made, _, _ = checkpointer(agents=True, ran=False)
    made._engine = Engine()
    made._model = None
    made._restore = lambda template, into: None  # type: ignore[method-assign]
    made.timeout_s = 60.0
    made.run(lambda restored: order.append("trained"))
    assert order == ["trained", "engine closed (abandon=False)", "attempt left"]
