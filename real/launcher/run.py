"""``gemini-ckpt real``: run a scenario on an emulated cluster, with its failures, end to end.

0. Check the scenario for a real run (``shared.scenario_rules``: failures that could never
   fire are errors) and that the cluster fits this host (:mod:`real.launcher.capacity`), before
   anything starts.
1. Bring up the cluster (:mod:`real.launcher.cluster`, or :mod:`real.launcher.netns`): the
   coordination store, one node agent per node; the agents elect a root, which starts training.
2. Inject the scenario's failures (:mod:`real.launcher.injector`) while training runs, start
   the replacement nodes the root orders, fence partitioned nodes once replaced.
3. When the root reports the job finished (every rank wrote its final weights), wait for the
   agents to leave; on any error, on Ctrl-C and on the run's timeout (``real.timeout_s``),
   stop.
4. Always tear everything down: processes, shared memory, namespaces.
5. Merge every process's events into ``events.jsonl``, write ``summary.json`` and return them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from real.coord.kv import TOKEN_ENV
from real.engine.eventlog import EventLog
from real.launcher.capacity import require_fits
from real.launcher.injector import FailureInjector, Injected
from real.launcher.results import summarize_run
from real.runtime.processes import interrupts_handled, last_line
from shared.errors import RunFolderError
from shared.events import Event
from shared.scenario import ScheduledFailure
from shared.scenario_loader import load_scenario, with_strategy
from shared.scenario_rules import Face
from shared.summary import RunSummary

log = logging.getLogger(__name__)
REAL: tuple[Face, ...] = ("real",)


@dataclass(frozen=True)
class RealOptions:
    """One ``gemini-ckpt real`` run.

    Attributes:
        scenario: the scenario file.
        out: the run folder (created; must not hold a previous run's events).
        overrides: ``key=value`` scenario overrides.
        strategy: gemini or persistent; None: the scenario's.
        mode: local or netns; None: the scenario's ``real.mode``.
        schedule: failures to inject instead of the scenario's (the chaos test's).
        force: start even when the size check says the cluster does not fit this host.
        resume: the first attempt resumes from the persistent tier's newest checkpoint (a
            job submitted again after it lost every node; docs/cluster.md); else it starts
            from scratch, whatever the tier holds.
    """

    scenario: Path
    out: Path
    overrides: tuple[str, ...] = ()
    strategy: str | None = None
    mode: str | None = None
    schedule: Sequence[ScheduledFailure] | None = None
    force: bool = False
    resume: bool = False


@dataclass
class RealResult:
    """What a run produced."""

    run_dir: Path
    summary: RunSummary
    events: list[Event]
    injected: list[Injected] = field(default_factory=list)
    job: str = ""

    @property
    def digest(self) -> str | None:
        value = self.summary.extra.get("final_digest")
        return None if value is None else str(value)


def run_real(options: RealOptions) -> RealResult:
    """Run the scenario on an emulated cluster; raises on failure, after tearing down."""
    # --strategy is the scenario's checkpoint.strategy for the whole job (the agents, the root,
    # the trainers, a user's own script's Checkpointer): a script given as the entrypoint
    # read the scenario's and ran Gemini under a run labelled the baseline.
    overrides = with_strategy(
        options.overrides, [f"checkpoint.strategy={options.strategy}"] if options.strategy else []
    )
    scenario = load_scenario(options.scenario, overrides, faces=REAL)
    strategy = scenario.checkpoint.strategy
    require_fits(scenario, strategy, force=options.force)
    mode = options.mode or scenario.real.mode
    run_dir = options.out.resolve()
    if (run_dir / "events").exists():
        raise RunFolderError(f"{run_dir} already holds a run's events; choose a new --out folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    events = EventLog(run_dir / "events" / "launcher.jsonl", t0)
    cluster_class: type
    if mode == "netns":
        from real.launcher.netns import NetnsCluster

        cluster_class = NetnsCluster
    else:
        from real.launcher.cluster import LocalCluster

        cluster_class = LocalCluster
    cluster = cluster_class(scenario, options.scenario.resolve(), overrides, run_dir, strategy, t0)
    cluster.resume = options.resume
    # The launcher is a process of the job too: its clients of the coordination store (and the
    # store it starts) prove the job's secret as the agents' do, from GEMINI_TOKEN.
    outer_token = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = cluster.token
    injector: FailureInjector | None = None
    failed: str | None = None
    try:
        cluster.start()
        injector = FailureInjector(cluster, scenario, events, options.schedule).start()
        _wait_finished(cluster, injector, scenario.real.timeout_s, t0)
        if not cluster.wait_agents(30.0):
            log.warning("agents %s did not leave in time", cluster.alive_agents())
    except Exception as error:
        # A job that failed (the root gave it up, the timeout; not a Ctrl-C): its folder
        # still gets the merged events and the summary of what happened, after the teardown,
        # marked failed (a report leaves it out).
        failed = str(error) or type(error).__name__
        raise
    finally:
        if injector is not None:
            injector.stop()
        with _uninterrupted():
            cluster.teardown()
        events.close()
        if outer_token is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = outer_token
        if failed:
            try:
                summarize_run(run_dir, scenario.name, strategy, scenario.seed, mode, failed)
            except Exception as error:  # the job's own failure is the one to tell
                log.warning("no summary of the failed run: %s", error)
    summary, merged = summarize_run(run_dir, scenario.name, strategy, scenario.seed, mode)
    injected = list(injector.injected if injector else [])
    return RealResult(run_dir, summary, merged, injected, cluster.job)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Answer Ctrl-C (and SIGTERM) without obeying it while the cluster is torn down: a
    second one used to end the launcher with its agents still running. The teardown is
    bounded itself (a grace period, then SIGKILL). SIGTERM too: `gemini-ckpt real` turns it
    into a Ctrl-C, and `run` stops its child so."""
    with interrupts_handled(_still_tearing_down):
        yield


def _still_tearing_down(signum: int, frame: object) -> None:
    """A Ctrl-C during the teardown is answered, not obeyed (a write of its own to stderr: a
    handler may interrupt a print of the main thread)."""
    with contextlib.suppress(OSError):
        os.write(2, b"still tearing the cluster down (bounded: a grace period, then SIGKILL)\n")


def _first_error(logs: Path) -> str:
    """``: agent-N.log ends with '...'`` for the agent log that stopped first among those that
    end with an exception's message (the line a traceback ends with: the first failure, which
    the others may only follow), else ""."""
    for path in sorted(logs.glob("agent-*.log"), key=lambda p: (p.stat().st_mtime, p.name)):
        line = last_line(path)
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line):
            return f": {path.name} ends with {line!r}"
    return ""


def _wait_finished(cluster: object, injector: FailureInjector, timeout_s: float, t0: float) -> None:
    while True:
        cluster.tick()  # type: ignore[attr-defined]
        record = cluster.attempt()  # type: ignore[attr-defined]
        if record is not None and record.get("state") == "failed":
            raise RuntimeError(f"the root agent gave up the job: {record.get('reason')}")
        if record is not None and record.get("state") == "finished":
            if not injector.finished:
                log.warning(
                    "training finished before every scheduled failure was injected (%d of %d)",
                    len(injector.injected),
                    len(injector.schedule),
                )
            return
        if injector.errors:
            raise RuntimeError(f"failure injection failed: {injector.errors[0]}")
        if not cluster.alive_agents():  # type: ignore[attr-defined]
            logs = cluster.run_dir / "logs"  # type: ignore[attr-defined]
            raise RuntimeError(
                f"every node agent exited before the job finished{_first_error(logs)}; see "
                f"{logs}/agent-*.log"
            )
        if time.time() - t0 > timeout_s:
            raise TimeoutError(
                f"the run did not finish within real.timeout_s={timeout_s} s; see "
                f"{cluster.run_dir}/logs"  # type: ignore[attr-defined]
            )
        time.sleep(0.05)
