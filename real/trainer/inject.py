"""Failure injection inside a trainer: crash at a chosen iteration, or hold where the harness's
injector strikes.

One shared utility for the tests and the agents. A trainer reads its crash point from the
environment once (``crash_point_from_env``) and calls ``maybe_crash`` at the named phases of
every iteration; the process then dies without cleanup, as a real software failure would:
``kill`` sends itself SIGKILL (nothing runs, not even atexit or finally blocks), ``exit``
calls ``os._exit`` with a nonzero code.

Environment:
    GEMINI_CRASH_AT_ITERATION  the iteration to crash at (unset: never)
    GEMINI_CRASH_RANK          only this rank crashes (unset: every rank)
    GEMINI_CRASH_PHASE         after_step (default: the step is done, its checkpoint not
                               taken), before_step, or after_save
    GEMINI_CRASH_MODE          kill (default) or exit
    GEMINI_CRASH_FAILURE       index of this failure in the run (``details["failure"]`` of
                               the failure_injected event, tying the recovery chain)
    GEMINI_HOLD_DIR            the harness injector's hold points (``hold_point``)

**Hold points.** A scenario's ``at_iteration: k`` strikes as iteration k ends: its capture done,
its replication not started (``sim.failures``). An injector outside the process sees the
capture only once its event is written, and a small state replicates within a few milliseconds
of it (3.9 MB in 4-18 ms in the validation's v05), before any such injector can strike: the
lost node's replica of k had reached its peer and the harness restored k where the scenario
loses it. So the harness's injector arms a hold for every rank of the job (a file
``<rank>.<k>`` in ``GEMINI_HOLD_DIR``), and each waits in ``hold_point`` in its save of k (right
after its capture and before handing it to its sender; in the baseline's save, or an
iteration the engine does not checkpoint, once the iteration's work is done), having said so
(a file ``<rank>.<k>.held``), until the failure is performed (the file removed; the struck
processes killed or frozen meanwhile). No rank has begun k + 1 when it strikes, as in the
simulator. Nothing holds without the variable, which only the harness's clusters set: a trainer
elsewhere pays one dictionary lookup per save.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from real.engine.eventlog import EventLog
from real.runtime.env import (
    GEMINI_CRASH_AT_ITERATION,
    GEMINI_CRASH_FAILURE,
    GEMINI_CRASH_MODE,
    GEMINI_CRASH_PHASE,
    GEMINI_CRASH_RANK,
    GEMINI_HOLD_DIR,
)
from real.trainer.inprocess import check_abort

logger = logging.getLogger(__name__)

CRASH_AT_ENV = GEMINI_CRASH_AT_ITERATION
CRASH_RANK_ENV = GEMINI_CRASH_RANK
CRASH_PHASE_ENV = GEMINI_CRASH_PHASE
CRASH_MODE_ENV = GEMINI_CRASH_MODE
CRASH_FAILURE_ENV = GEMINI_CRASH_FAILURE
EXIT_CODE = 71

Phase = Literal["before_step", "after_step", "after_save"]
Mode = Literal["kill", "exit"]


@dataclass(frozen=True)
class CrashPoint:
    """Where a trainer dies.

    Attributes:
        iteration: the iteration.
        rank: the rank that dies; None: every rank.
        phase: the point inside the iteration.
        mode: ``kill`` (SIGKILL to itself) or ``exit`` (``os._exit(71)``).
        failure: the failure's index in the run, for the event chain.
    """

    iteration: int
    rank: int | None = None
    phase: Phase = "after_step"
    mode: Mode = "kill"
    failure: int | None = None

    def env(self) -> dict[str, str]:
        """The environment variables that set this crash point in a trainer."""
        values = {
            CRASH_AT_ENV: str(self.iteration),
            CRASH_PHASE_ENV: self.phase,
            CRASH_MODE_ENV: self.mode,
        }
        if self.rank is not None:
            values[CRASH_RANK_ENV] = str(self.rank)
        if self.failure is not None:
            values[CRASH_FAILURE_ENV] = str(self.failure)
        return values


def crash_point_from_env(env: Mapping[str, str] | None = None) -> CrashPoint | None:
    """The crash point the environment sets, or None.

    Raises:
        ValueError: a variable holds a value outside its choices.
    """
    env = os.environ if env is None else env
    if not env.get(CRASH_AT_ENV):
        return None
    phase = env.get(CRASH_PHASE_ENV, "after_step")
    mode = env.get(CRASH_MODE_ENV, "kill")
    if phase not in get_args(Phase):
        raise ValueError(f"{CRASH_PHASE_ENV}={phase!r}; choose one of {get_args(Phase)}")
    if mode not in get_args(Mode):
        raise ValueError(f"{CRASH_MODE_ENV}={mode!r}; choose one of {get_args(Mode)}")
    rank = env.get(CRASH_RANK_ENV)
    failure = env.get(CRASH_FAILURE_ENV)
    return CrashPoint(
        iteration=int(env[CRASH_AT_ENV]),
        rank=int(rank) if rank else None,
        phase=phase,  # type: ignore[arg-type]
        mode=mode,  # type: ignore[arg-type]
        failure=int(failure) if failure else None,
    )


def maybe_crash(
    point: CrashPoint | None,
    iteration: int,
    rank: int,
    phase: Phase,
    event_log: EventLog | None = None,
) -> None:
    """Die here if ``point`` says so; otherwise return at once."""
    if point is None or point.iteration != iteration or point.phase != phase:
        return
    if point.rank is not None and point.rank != rank:
        return
    logger.warning("rank %d: injected crash at iteration %d (%s)", rank, iteration, phase)
    if event_log is not None:
        extra = {} if point.failure is None else {"failure": point.failure}
        event_log.emit(
            "failure_injected",
            iteration=iteration,
            failure_kind="software",
            reached_iteration=iteration if phase != "before_step" else iteration - 1,
            phase=phase,
            mode=point.mode,
            **extra,
        )
    if point.mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(EXIT_CODE)


def hold_folder(run_dir: Path) -> Path:
    """Where the harness's injector arms its holds for a run (``GEMINI_HOLD_DIR``)."""
    return run_dir / "holds"


def hold_path(folder: str | Path, rank: int, iteration: int) -> Path:
    """The file that holds ``rank`` at ``iteration`` while it exists."""
    return Path(folder) / f"{rank}.{iteration}"


def held_path(hold: Path) -> Path:
    """The file a rank writes beside its ``hold`` (``hold_path``) once it waits there."""
    return hold.with_name(f"{hold.name}.held")


HOLD_TIMEOUT_S = 30.0  # a hold whose failure never comes (the injector gone) ends here
HOLD_POLL_S = 0.001


def hold_point(rank: int, iteration: int, timeout_s: float = HOLD_TIMEOUT_S) -> bool:
    """Wait here while the harness's injector holds ``rank`` at ``iteration`` (see the module's
    docstring); True if it held. Without ``GEMINI_HOLD_DIR``, or with no hold armed for this
    rank and iteration, returns at once. A hold still armed after ``timeout_s`` is left with a
    warning (training goes on).

    Raises:
        AttemptAborted: the node agent stopped the attempt while it held.
    """
    folder = os.environ.get(GEMINI_HOLD_DIR)
    if not folder:
        return False
    path = hold_path(folder, rank, iteration)
    if not path.exists():
        return False
    with contextlib.suppress(OSError):  # the injector's trigger waits for every rank's
        held_path(path).touch()
    logger.info("rank %d: held at iteration %d's end by the failure injector", rank, iteration)
    deadline = time.monotonic() + timeout_s
    while os.path.exists(path):
        check_abort()
        if time.monotonic() >= deadline:
            logger.warning(
                "rank %d: the injector's hold at iteration %d outlasted %.0f s; going on",
                rank,
                iteration,
                timeout_s,
            )
            break
        time.sleep(HOLD_POLL_S)
    return True
