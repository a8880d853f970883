"""The trainer process: one rank of a training job, with a checkpointer, under an agent.

An agent (or torchrun, or a person) starts one trainer per accelerator with torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``, and
optionally ``GEMINI_NODE``, ``GEMINI_RUN_DIR``, ``GEMINI_RUN_T0``). The trainer joins the
process group (gloo on CPU, NCCL on GPU), builds the model and the checkpointer, restores the
newest checkpoint if there is one, trains to the last iteration (the loop of ``real.engine.api``),
and writes its final weights to ``<run_dir>/final/rank<r>.bin`` (raw bytes) with a JSON
manifest ``rank<r>.bin.json`` holding ``model_digest``, the sha256 of the whole model (equal
on every rank and across runs that trained the same way).

Events (``<run_dir>/events/trainer-rank<r>.jsonl``): process_group_ready, state_restored
(tier, seconds, source_node), training_resumed, iteration_end (duration_s, step_s, save_s,
loss, learning_rate), and failure_injected when ``real.trainer.inject`` crashes the process. A
trainer
started to recover from failure ``i`` of the run (environment ``GEMINI_FAILURE=i``, set by the
agent) tags its process_group_ready, state_restored and training_resumed events with
``failure: i``, tying them to that failure's chain.

Run by hand: ``gemini-ckpt train scenarios/quickstart.yaml --out runs/x`` (one rank), or
``torchrun --nproc-per-node 2 -m real.trainer.main scenarios/quickstart.yaml --out runs/x``.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
import torch
import torch.distributed as dist

from real.engine.api import Checkpointer, LiveState, Restored
from real.engine.eventlog import RUN_DIR_ENV, RUN_T0_ENV, EventLog
from real.runtime.env import GEMINI_FAILURE, GEMINI_NODE
from real.runtime.processes import resident_bytes
from real.runtime.procgroup import leave_process_group
from real.trainer.inject import CrashPoint, crash_point_from_env, maybe_crash
from real.trainer.inprocess import (
    AgentChannel,
    Assignment,
    checkpoint_modules,
    install_abort_checks,
    plan_restores,
    prewarm,
    report_resumed,
    run_attempts,
)
from real.trainer.workload.trainer import Prepared, Trainer, TrainerConfig
from real.trainer.workload.weights import state_digest, write_tensors
from shared.scenario import Scenario
from shared.scenario_loader import load_scenario

logger = logging.getLogger(__name__)

FAILURE_ENV = GEMINI_FAILURE

CheckpointerKind = Literal["gemini", "persistent", "none"]
CHECKPOINTER_KINDS: tuple[CheckpointerKind, ...] = ("gemini", "persistent", "none")


@dataclass(frozen=True)
class TrainerOptions:
    """How to run one trainer.

    Attributes:
        scenario: the scenario file.
        overrides: ``dotted.key=value`` overrides of the scenario.
        run_dir: the run's output folder (events, final weights, default persistent tier).
        checkpointer: the strategy; None: the scenario's ``checkpoint.strategy``.
        iterations: overrides ``training.iterations`` (the schedule's length too).
        threads: intra-op threads (fixed for reproducible results); default
            ``OMP_NUM_THREADS`` or 1.
        timeout_s: collective timeout: a peer silent this long fails the trainer.
    """

    scenario: Path
    overrides: tuple[str, ...] = ()
    run_dir: Path = Path("runs/train")
    checkpointer: CheckpointerKind | None = None
    iterations: int | None = None
    threads: int | None = None
    timeout_s: float = 300.0


@dataclass(frozen=True)
class RankEnv:
    """The torchrun-style environment of one trainer."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RankEnv:
        """Read RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GEMINI_NODE (or GROUP_RANK),
        MASTER_ADDR and MASTER_PORT; missing ones mean a single process.

        Raises:
            ValueError: a variable is not a number, or the ranks are inconsistent.
        """
        env = os.environ if env is None else env

        def number(name: str, default: int | None) -> int | None:
            text = env.get(name)
            if text is None or text == "":
                return default
            try:
                return int(text)
            except ValueError:
                raise ValueError(
                    f"environment variable {name}={text!r} is not an integer"
                ) from None

        rank = number("RANK", 0) or 0
        world_size = number("WORLD_SIZE", 1) or 1
        local_rank = number("LOCAL_RANK", rank) or 0
        local_world_size = number("LOCAL_WORLD_SIZE", world_size) or 1
        node = number(GEMINI_NODE, number("GROUP_RANK", rank // max(local_world_size, 1)))
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK {rank} is outside WORLD_SIZE {world_size}")
        return cls(
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            local_world_size=local_world_size,
            node=node or 0,
            master_addr=env.get("MASTER_ADDR") or None,
            master_port=number("MASTER_PORT", None),
        )


class NullCheckpointer:
    """No checkpoints: restore finds nothing, save does nothing."""

    def restore(self, into: LiveState | None = None) -> Restored | None:
        return None

    def save(self, iteration: int, state: Mapping[str, Any]) -> None:
        return None

    def close(self, abandon: bool = False) -> None:
        return None


def storage_url(scenario: Scenario, run_dir: Path) -> str:
    """The persistent tier's URL: ``cluster.storage.url``, else ``<run_dir>/persistent``."""
    return scenario.cluster.storage.url or str(run_dir / "persistent")


def make_checkpointer(
    kind: CheckpointerKind,
    scenario: Scenario,
    *,
    rank: int,
    world_size: int,
    node: int,
    local_rank: int,
    run_dir: Path,
    template: Callable[[], Mapping[str, Any]],
    event_log: EventLog | None = None,
    model: torch.nn.Module | None = None,
) -> Checkpointer:
    """The checkpointer of ``kind`` for this rank; call on every rank at the same point.

    Args:
        kind: ``gemini`` (in-memory engine), ``persistent`` (the DCP baseline) or ``none``.
        scenario: the run's scenario.
        rank, world_size, node, local_rank: where this trainer sits.
        run_dir: the run's output folder.
        template: returns this rank's current state (restores from storage load into its shape).
        event_log: this trainer's event log.
        model: the wrapped model, for engines that profile its communication.

    Raises:
        ValueError: the scenario lacks a setting the strategy needs.
    """
    if kind == "none":
        return NullCheckpointer()
    if kind == "persistent":
        from real.persistent.baseline import PersistentCheckpointer

        every = scenario.checkpoint.baseline_every_iterations
        if every is None:
            raise ValueError(
                "the persistent baseline in the real harness needs "
                "checkpoint.baseline_every_iterations (e.g. --set "
                "checkpoint.baseline_every_iterations=10)"
            )
        return PersistentCheckpointer(
            storage_url(scenario, run_dir), every, template, event_log=event_log
        )
    if kind == "gemini":
        from real.engine import GeminiCheckpointer  # the in-memory engine, imported when used

        arguments: dict[str, Any] = {
            "scenario": scenario,
            "rank": rank,
            "world_size": world_size,
            "node": node,
            "local_rank": local_rank,
            "run_dir": run_dir,
        }
        # Optional extras, passed only where the engine's constructor takes them.
        parameters = inspect.signature(GeminiCheckpointer).parameters
        for name, value in (("model", model), ("template", template), ("event_log", event_log)):
            if name in parameters and value is not None:
                arguments[name] = value
        checkpointer: Checkpointer = GeminiCheckpointer(**arguments)
        return checkpointer
    raise ValueError(f"unknown checkpointer {kind!r}; choose one of {CHECKPOINTER_KINDS}")


def run_trainer(options: TrainerOptions, env: Mapping[str, str] | None = None) -> Path | None:
    """Run one trainer to the end; return the manifest of its final weights (None: a warm
    spare the job never needed).

    Under a node agent (``GEMINI_AGENT_FD`` set) the process serves the agent's attempts and
    recovers in process (:mod:`real.trainer.inprocess`); otherwise it runs one attempt with
    torchrun's
    environment.

    Raises:
        ScenarioError: the scenario is invalid.
        ValueError, RuntimeError: bad settings, or a failed collective or checkpoint.
    """
    process_start = time.time()
    scenario = load_scenario(options.scenario, options.overrides)
    if options.iterations is not None:
        scenario = scenario.replace(
            training={**scenario.training.model_dump(), "iterations": options.iterations}
        )
    run_dir = options.run_dir.resolve()
    os.environ.setdefault(RUN_DIR_ENV, str(run_dir))
    os.environ.setdefault(RUN_T0_ENV, repr(process_start))
    threads = options.threads or int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    torch.set_num_threads(threads)
    channel = AgentChannel.from_env(env)
    if channel is not None:
        return _serve_agent(options, scenario, run_dir, channel)
    where = RankEnv.from_env(env)
    job = _Job(options, scenario, run_dir, crash_point_from_env(env))
    failure_text = (os.environ if env is None else env).get(FAILURE_ENV)
    if failure_text:
        job.tags = {"failure": int(failure_text)}
    device = _device(where)
    _init_process_group(where, device, options.timeout_s)
    finished = False
    try:
        final = job.attempt(where, device, process_start)
        finished = True
        return final
    except BaseException as error:
        # The traceback keeps the job's frames, and the modules in them, alive: release them
        # before the groups go (the traceback's lines are kept for the report).
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        job.release()  # the model and engine hold the process groups
        leave_process_group(together=finished)
        job.close()


def _serve_agent(
    options: TrainerOptions, scenario: Scenario, run_dir: Path, channel: AgentChannel
) -> Path | None:
    """A warm trainer under a node agent: serve attempts until the job is over."""
    job = _Job(options, scenario, run_dir, crash_point_from_env())
    prewarm(
        checkpoint_modules(
            job.kind, scenario.checkpoint.persists_from_memory, storage_url(scenario, run_dir)
        )
    )
    job.prepare()
    final: list[Path] = []

    def body(assignment: Assignment) -> None:
        where = RankEnv.from_env(assignment.env)
        began = assignment.received_at or time.time()
        final.append(job.attempt(where, _device(where), began, assignment.joined_at or None))

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    try:
        run_attempts(body, channel, backend=backend, timeout_s=options.timeout_s)
    finally:
        job.release()
        job.close()
        channel.close()
    return final[-1] if final else None  # a spare the job never needed


class _Job:
    """The built-in trainer of one process, kept across the attempts it serves.

    The model, optimizer and data pipeline survive a failed attempt (DDP re-wraps the same
    module in the next attempt's group; FSDP2, whose parameters belong to the old group's
    mesh, is rebuilt); the checkpointer is renewed per attempt (its stores, peers and group
    change), the node store's slots stay.
    """

    def __init__(
        self,
        options: TrainerOptions,
        scenario: Scenario,
        run_dir: Path,
        crash: CrashPoint | None,
    ) -> None:
        self.options, self.scenario, self.run_dir, self.crash = options, scenario, run_dir, crash
        self.kind: CheckpointerKind = options.checkpointer or scenario.checkpoint.strategy
        self.trainer: Trainer | None = None
        self.events: EventLog | None = None
        self.tags: dict[str, Any] = {}
        self.attempts = 0
        self.hooked: torch.nn.Module | None = None  # the module carrying the abort checks
        self.prepared: Prepared | None = None
        storage = scenario.cluster.storage
        if storage.emulate_bandwidth:  # read by every PersistentStorage of this process
            from real.persistent.throttle import STORAGE_RATE_ENV, emulated_rate_per_rank

            rate = emulated_rate_per_rank(storage.bandwidth_gbit_s, scenario.cluster.ranks)
            os.environ[STORAGE_RATE_ENV] = repr(rate)

    def prepare(self) -> None:
        """Build the DDP model, optimizer state and corpus now, while this process waits for
        its first attempt (``Trainer.prepare``), so that taking a rank costs a warm spare what
        a survivor's rejoin costs. On the CPU only: on a GPU a spare would hold a second copy
        of its rank's state in the device's memory beside the active trainer's. An FSDP2
        model is sharded over its attempt's group, so it cannot be built before; the process's
        first sharding and first FSDP2 state are paid instead (``Trainer.warm_sharding``, on
        the CPU and a group of its own, dropped before the attempt). Also on the CPU only: on
        a GPU node the whole model, unsharded, would pass through every spare's host memory."""
        config = TrainerConfig.from_scenario(self.scenario)
        if torch.cuda.is_available():
            return
        if config.parallelism == "ddp":
            self.prepared = Trainer.prepare(config, "cpu")
        elif config.parallelism == "zero3":
            Trainer.warm_sharding(config)

    def attempt(
        self, where: RankEnv, device: torch.device, began: float, joined: float | None = None
    ) -> Path:
        """Build (or re-wrap) the trainer and its checkpointer, train, write the final weights.

        ``began``: when this attempt's restart began for this process (its start, or the
        assignment's arrival), so ``process_group_ready`` measures the restart; ``joined``:
        when the attempt's process group was formed (under an agent), for its breakdown.
        """
        building = time.time()
        self.attempts += 1
        if self.events is None:
            self.events = EventLog.from_env(
                f"trainer-rank{where.rank}", node=where.node, rank=where.rank
            )
        events = self.events
        trainer = self.trainer
        if trainer is not None and trainer.config.parallelism == "ddp":
            trainer.rejoin()
        else:
            self.trainer = None  # FSDP2: its parameters belong to the old group's mesh
            trainer = Trainer(
                TrainerConfig.from_scenario(self.scenario),
                rank=where.rank,
                world_size=where.world_size,
                device=device,
                # A spare joining a recovery: the plan's checkpoint overwrites every rank's
                # weights, so DDP need not broadcast rank 0's first.
                restoring=plan_restores(os.environ),
                prepared=self.prepared,
            )
            self.prepared = None
            self.trainer = trainer
        if self.hooked is not trainer.module:
            # An abort from the agent interrupts forward and backward at once (in process).
            install_abort_checks(trainer.module)
            self.hooked = trainer.module
        built = time.time()
        checkpointer = make_checkpointer(
            self.kind,
            self.scenario,
            rank=where.rank,
            world_size=where.world_size,
            node=where.node,
            local_rank=where.local_rank,
            run_dir=self.run_dir,
            template=trainer.state,
            event_log=events,
            model=trainer.model,
        )
        # Restart ends here: processes up, process group formed, model, data and checkpoint
        # engine built. What follows until state_restored is retrieval alone.
        ready = time.time()
        # The restart's parts for this rank: joining the group (from the assignment's arrival),
        # wrapping or building the model (DDP's broadcast and bucket warm-up are collectives,
        # so this waits for the slowest rank), building the checkpointer.
        breakdown: dict[str, Any] = {"build_s": built - building, "checkpointer_s": ready - built}
        if joined is not None:
            breakdown["join_s"] = joined - began
        events.emit(
            "process_group_ready",
            seconds=ready - began,
            in_process=self.attempts > 1,
            **{k: round(v, 6) for k, v in breakdown.items()},
            **self.tags,
        )
        finished = False
        try:
            _train(
                trainer,
                checkpointer,
                self.scenario.training.iterations,
                events,
                self.crash,
                where.rank,
                self.tags,
            )
            finished = True
            # What a trainer holds as it trains (its state, the engine's mappings): the
            # calibration's law of a lost node's detection takes it from a profile run.
            held = resident_bytes(os.getpid())
            if held is not None:
                events.emit("trainer_memory", **held, **self.tags)
        finally:
            checkpointer.close(abandon=not finished)
            del checkpointer
            if not finished:  # leave nothing that holds the failed group
                if trainer.config.parallelism == "ddp":
                    trainer.detach()
                else:
                    self.trainer = None
                del trainer
        return _write_final(trainer, self.run_dir, where, self.kind)

    def release(self) -> None:
        """Drop the model (and the process groups it holds) before the groups are left."""
        self.trainer = None
        self.hooked = None

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


def _train(
    trainer: Trainer,
    checkpointer: Checkpointer,
    iterations: int,
    events: EventLog,
    crash: CrashPoint | None,
    rank: int,
    tags: Mapping[str, Any],
) -> None:
    # In place: the model is wrapped already (DDP's broadcast is behind us), so the checkpoint
    # is copied once, from memory straight into the live tensors, and loading them is a no-op.
    restored = checkpointer.restore(into=trainer.state)
    start = 1
    if restored is not None:
        load_start = time.perf_counter()
        trainer.load_state(restored.state)
        loaded = time.perf_counter() - load_start
        seconds = restored.seconds + loaded
        logger.info("rank %d: restored state loaded in %.3f s", rank, loaded)
        events.emit(
            "state_restored",
            iteration=restored.iteration,
            tier=restored.tier,
            seconds=seconds,
            source_node=restored.source_node,
            **tags,
        )
        start = restored.iteration + 1
        events.emit("training_resumed", iteration=start, tier=restored.tier, **tags)
        logger.info("rank %d: resumed at iteration %d from %s", rank, start, restored.tier)
    report_resumed()
    for iteration in range(start, iterations + 1):
        began = time.perf_counter()
        maybe_crash(crash, iteration, rank, "before_step", events)
        result = trainer.step()
        stepped = time.perf_counter()
        maybe_crash(crash, iteration, rank, "after_step", events)
        if not isinstance(checkpointer, NullCheckpointer):  # state() is not free: skip it
            checkpointer.save(iteration, trainer.state())
        maybe_crash(crash, iteration, rank, "after_save", events)
        ended = time.perf_counter()
        events.emit(
            "iteration_end",
            iteration=iteration,
            duration_s=ended - began,
            step_s=stepped - began,
            save_s=ended - stepped,
            loss=result.loss,
            learning_rate=result.learning_rate,
        )


def _device(where: RankEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(where.local_rank)
        return torch.device("cuda", where.local_rank)
    return torch.device("cpu")


def _init_process_group(where: RankEnv, device: torch.device, timeout_s: float) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if where.master_addr is None or where.master_port is None:
        if where.world_size != 1:
            raise ValueError(
                f"WORLD_SIZE is {where.world_size} but MASTER_ADDR or MASTER_PORT is not set"
            )
        store = dist.HashStore()  # type: ignore[attr-defined]
        dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
        return
    dist.init_process_group(
        backend,
        init_method=f"tcp://{where.master_addr}:{where.master_port}",
        rank=where.rank,
        world_size=where.world_size,
        timeout=timeout,
    )


def _write_final(trainer: Trainer, run_dir: Path, where: RankEnv, kind: str) -> Path:
    full = trainer.model_state(full=True)  # a collective under FSDP2
    local = trainer.model_state()
    path = run_dir / "final" / f"rank{where.rank}.bin"
    write_tensors(
        path,
        local,
        extra={
            "rank": where.rank,
            "world_size": where.world_size,
            "iteration": trainer.iteration,
            "parallelism": trainer.config.parallelism,
            "checkpointer": kind,
            "model_digest": state_digest(full),
        },
    )
    return path.with_name(path.name + ".json")


@click.command(name="train")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a scenario field."
)
@click.option(
    "--out",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/train"),
    show_default=True,
    help="Run folder: events, final weights, default persistent tier.",
)
@click.option(
    "--checkpointer",
    type=click.Choice(CHECKPOINTER_KINDS),
    default=None,
    help="Checkpoint strategy (default: the scenario's checkpoint.strategy).",
)
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Iterations to train.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Intra-op threads (default: OMP_NUM_THREADS, else 1).",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Collective timeout: a silent peer fails the trainer after this long.",
)
def command(
    scenario: Path,
    overrides: tuple[str, ...],
    run_dir: Path,
    checkpointer: CheckpointerKind | None,
    iterations: int | None,
    threads: int | None,
    timeout_s: float,
) -> None:
    """Run one trainer: restore, train, checkpoint every iteration, write final weights.

    The options of ``gemini-ckpt train`` and of ``python -m real.trainer.main`` (defined here
    once). Agents start it once per accelerator with torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without those it trains alone.
    """
    options = TrainerOptions(
        scenario=scenario,
        overrides=overrides,
        run_dir=run_dir,
        checkpointer=checkpointer,
        iterations=iterations,
        threads=threads,
        timeout_s=timeout_s,
    )
    try:
        manifest = run_trainer(options)
    except (ValueError, RuntimeError, OSError, ImportError) as error:
        raise click.ClickException(f"trainer failed: {error}") from error
    if manifest is not None:
        click.echo(str(manifest))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m real.trainer.main``: exit code 0 on success, 2 on a bad scenario or bad
    options, 1 on any other error."""
    from shared.errors import ScenarioError

    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s rank{os.environ.get('RANK', '0')} %(name)s: %(message)s",
    )
    try:
        command.main(
            args=list(sys.argv[1:] if argv is None else argv),
            prog_name="python -m real.trainer.main",
            standalone_mode=False,
        )
    except ScenarioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except click.ClickException as error:
        if error.__cause__ is not None:
            logger.error("trainer failed", exc_info=error.__cause__)
        error.show()
        return error.exit_code
    except Exception as error:
        logger.exception("trainer failed")
        print(f"error: trainer rank {os.environ.get('RANK', '0')} failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
