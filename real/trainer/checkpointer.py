"""The public checkpointer, ``from gemini_ckpt import Checkpointer``, for any training script.

One object per trainer process, configured by a few keyword arguments and the environment the
launcher set. A training loop either restores once and saves after every step::

    checkpointer = Checkpointer(replicas=2)
    restored = checkpointer.restore()            # None: nothing to restore, start fresh
    start = 1 if restored is None else restored.iteration + 1
    if restored is not None:
        load(restored.state)
    for iteration in range(start, iterations + 1):
        step()
        checkpointer.save(iteration, state())     # returns once the tensors are copied
    checkpointer.close()

or hands its per-attempt body to :meth:`Checkpointer.run`, which adds in-process recovery under
the gemini-ckpt agents (a surviving process re-runs the body with the restored state; its model
and optimizer objects, built outside the body, are kept)::

    def train(restored):                          # the process group is ready
        ddp = DistributedDataParallel(model)      # wrap per attempt: the group is new
        checkpointer.attach(ddp)                  # profile its traffic (interleaving)
        ...the loop above...

    checkpointer.run(train)

Where it runs decides how it finds its peers:

- **under gemini-ckpt's node agents** (``GEMINI_AGENT_FD`` set: the agent started this process
  ahead of need, as a warm spare): the constructor waits until the agent gives the process its
  first attempt (rank, rendezvous, the node stores' addresses, the job's secret, the root's
  recovery plan), then joins the process group. The job's scenario (``GEMINI_SCENARIO``, with
  ``GEMINI_SCENARIO_SET`` overrides, one per line) is the configuration; keyword arguments
  that disagree with it are an error.
- **under torchrun** (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` set): the process group is
  initialised from the environment if the script has not done it; each node's checkpoint memory
  lives in a store daemon started by the node's first local rank that outlives worker restarts
  (:mod:`real.engine.daemon`), so a restarted worker restores from memory.
- **a single process** (no launcher): a store daemon as under torchrun, which ends with the
  process that started the script (its shell, say), so a rerun from there restores from memory.

Under the agents, use :meth:`Checkpointer.run`: a plain loop works (its ``close()`` tells the
agent the rank is done), but a peer's failure then ends the process, and its rank is recovered
by a spare like a crash, instead of in place.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, get_args

from real.engine.api import Restored
from real.engine.eventlog import RUN_T0_ENV, EventLog
from real.runtime.env import GEMINI_NODE, GEMINI_RUN_DIR, GEMINI_SCENARIO, GEMINI_SCENARIO_SET
from real.trainer.inprocess import (
    AGENT_FD_ENV,
    AgentChannel,
    Assignment,
    checkpoint_modules,
    join_process_group,
    make_fsdp_abortable,
    prewarm,
    report_resumed,
    require_live_groups,
    run_attempts,
)
from real.trainer.templates import initialised
from shared.scenario import Scenario

log = logging.getLogger(__name__)

SCENARIO_ENV, SCENARIO_SET_ENV = GEMINI_SCENARIO, GEMINI_SCENARIO_SET
Strategy = Literal["gemini", "persistent"]


Placement = Literal["auto", "group", "ring", "mixed"]
Traffic = Literal["interleaved", "blocking"]
Commit = Literal["on_arrival", "next_iteration_end"]
LocalSlots = Literal[1, 2]
_CHOICES: dict[str, tuple[Any, ...]] = {
    "placement": get_args(Placement),
    "traffic": get_args(Traffic),
    "commit": get_args(Commit),
    "local_slots": get_args(LocalSlots),
    "strategy": get_args(Strategy),
}


def _check_arguments(**given: Any) -> None:
    """Refuse a bad argument at once, naming it: it used to surface seconds later, once the
    process group had formed, as a scenario field the caller never passed (``persist_every=0``)
    or as gloo's "Invalid timeout" (``timeout_s=-1``)."""
    for name, allowed in _CHOICES.items():
        if isinstance(given[name], bool) or given[name] not in allowed:  # True == 1
            raise ValueError(
                f"Checkpointer({name}={given[name]!r}): use one of "
                + ", ".join(repr(a) for a in allowed)
            )
    for name, least in (("replicas", 1), ("persist_every", 1)):
        value = given[name]
        if value is None and name == "persist_every":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"Checkpointer({name}={value!r}): an integer >= {least}")
    timeout = given["timeout_s"]
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"Checkpointer(timeout_s={timeout!r}): a number of seconds > 0")


class Checkpointer:
    """In-memory checkpoints of one rank, with in-process recovery under the agents.

    Args:
        replicas: m, copies of each node's checkpoint (its own included).
        placement: ``auto``, ``group``, ``ring`` or ``mixed`` (``shared.placement``).
        traffic: ``interleaved`` (in the idle spans of DDP's traffic) or ``blocking``.
        commit: ``on_arrival`` or ``next_iteration_end`` (the paper's accounting).
        local_slots: 2 (default), or 1 for 3 bytes of memory per state byte at m = 2 instead
            of 4, a crash mid-capture then restoring from the peers (``docs/engine.md``).
        persistent_url: fsspec URL (a path or ``s3://...``) of the persistent tier.
        persist_every: Gemini: persist every K-th committed checkpoint in the background;
            ``strategy="persistent"``: the baseline's blocking save every K iterations.
        strategy: ``gemini`` (in memory) or ``persistent`` (the DCP baseline).
        model: a ``DistributedDataParallel`` model to profile (or call :meth:`attach`).
        timeout_s: collective timeout of the process group this object forms, s.
        run_dir: folder for events and the default persistent tier (default:
            ``GEMINI_RUN_DIR``, else ``./gemini-run``).

    Raises:
        ValueError: the arguments, or the launcher's environment, are inconsistent.
        RuntimeError: another Checkpointer of this process is open (not closed).
    """

    _open: ClassVar[weakref.ref[Checkpointer] | None] = None
    """The process's open Checkpointer (one per trainer process: two would share the node's
    checkpoint slots); a weak reference, so one dropped without ``close()`` frees the place."""

    def __init__(
        self,
        replicas: int = 2,
        *,
        placement: Placement = "auto",
        traffic: Traffic = "interleaved",
        commit: Commit = "on_arrival",
        local_slots: LocalSlots = 2,
        persistent_url: str | None = None,
        persist_every: int | None = None,
        strategy: Strategy = "gemini",
        model: Any = None,
        timeout_s: float = 300.0,
        run_dir: str | Path | None = None,
    ) -> None:
        _check_arguments(
            replicas=replicas,
            placement=placement,
            traffic=traffic,
            commit=commit,
            local_slots=local_slots,
            persist_every=persist_every,
            strategy=strategy,
            timeout_s=timeout_s,
        )
        open_one = Checkpointer._open() if Checkpointer._open is not None else None
        if open_one is not None:
            # Two would share this node's checkpoint slots: each restore could return the
            # other's state.
            raise RuntimeError(
                "a Checkpointer is already open in this process (one per trainer process): "
                "use that one, or close() it first"
            )
        self._options: dict[str, Any] = {
            "replicas": replicas,
            "placement": placement,
            "traffic": traffic,
            "commit": commit,
            "local_slots": local_slots,
            "persistent_url": persistent_url,
            "persist_every": persist_every,
            "strategy": strategy,
        }
        self.timeout_s = timeout_s
        # Under the agents the run's folder is the job's (its events feed the harness).
        agent_dir = os.environ.get(GEMINI_RUN_DIR) if os.environ.get(AGENT_FD_ENV) else None
        self.run_dir = Path(agent_dir or run_dir or os.environ.get(GEMINI_RUN_DIR) or "gemini-run")
        self._model = model
        self._began = time.time()
        self._attempts = 0
        self._last_step = time.perf_counter()
        self._engine: Any = None
        self._daemon: Any = None
        self._channel = AgentChannel.from_env()
        self._assignment: Assignment | None = None
        self._owns_group = self._channel is not None
        self._ran = False
        self._told_plain = False  # the warning of a plain loop under the agents, once
        if self._channel is not None:
            # The job's scenario decides, the collective timeout included (a hung peer is
            # noticed after it).
            job = self._job_scenario()
            timeout_s = job.detection.collective_timeout_s
            self.timeout_s = timeout_s
            # A warm spare: pay the lazy imports before the job needs this process.
            config = job.checkpoint
            prewarm(
                checkpoint_modules(
                    config.strategy, config.persists_from_memory, job.cluster.storage.url
                )
            )
            self._channel.send("ready", pid=os.getpid())
            self._assignment = self._channel.next_assignment(0)
            if self._assignment is None:
                raise SystemExit(0)  # the job ended without needing this spare
            os.environ.update(self._assignment.env)
            self._began = self._assignment.received_at
            join_process_group(self._assignment, _backend(), timeout_s)
            self._channel.send("joined", attempt=self._assignment.attempt)
        else:
            self._owns_group = _init_from_torchrun_env(timeout_s)
        self.rank, self.world_size, self.local_rank, self.per_node, self.node = _where()
        self.scenario = self._scenario()
        # The harness's events (restart, restore, iterations): what the failure injector and
        # the analysis read, whatever the training script.
        self.events = EventLog(
            self.run_dir / "events" / f"trainer-rank{self.rank}.jsonl",
            float(os.environ.get(RUN_T0_ENV) or self._began),
            node=self.node,
            rank=self.rank,
        )
        self._ready()
        Checkpointer._open = weakref.ref(self)

    # -- configuration ----------------------------------------------------------------------

    def _scenario(self) -> Scenario:
        """The job's scenario (under the agents), else one built from the keyword arguments."""
        if os.environ.get(SCENARIO_ENV):
            return self._job_scenario()
        options = self._options
        nodes = self.world_size // self.per_node
        checkpoint: dict[str, Any] = {
            "strategy": options["strategy"],
            "replicas": min(int(options["replicas"]), nodes),
            "placement": options["placement"],
            "traffic": options["traffic"],
            "commit": options["commit"],
            "local_slots": options["local_slots"],
        }
        if options["strategy"] == "persistent":
            checkpoint["baseline_every_iterations"] = options["persist_every"] or 10
        elif options["persist_every"] is not None:
            checkpoint["persist_every_iterations"] = options["persist_every"]
        storage = {"url": options["persistent_url"]} if options["persistent_url"] else {}
        return Scenario.model_validate(
            {
                "name": "checkpointer",
                "targets": ["real"],
                "cluster": {
                    "nodes": nodes,
                    "accelerators_per_node": self.per_node,
                    "standby_nodes": 0,
                    "storage": storage,
                },
                "checkpoint": checkpoint,
            }
        )

    def _job_scenario(self) -> Scenario:
        """The scenario the agents run (``GEMINI_SCENARIO`` with ``GEMINI_SCENARIO_SET``).

        Raises:
            ValueError: under the agents without it, or when the arguments disagree with it.
        """
        path = os.environ.get(SCENARIO_ENV)
        if not path:
            raise ValueError(f"{SCENARIO_ENV} is not set: the agents set it for their trainers")
        from shared.scenario_loader import load_scenario

        overrides = tuple(
            line for line in os.environ.get(SCENARIO_SET_ENV, "").splitlines() if line
        )
        scenario = load_scenario(Path(path), overrides)
        self._check_against(scenario)
        return scenario

    def _check_against(self, scenario: Scenario) -> None:
        config = scenario.checkpoint
        given = self._options
        for name, value in (
            ("replicas", config.replicas),
            ("strategy", config.strategy),
            ("traffic", config.traffic),
            ("local_slots", config.local_slots),
        ):
            default = {
                "replicas": 2,
                "strategy": "gemini",
                "traffic": "interleaved",
                "local_slots": 2,
            }[name]
            if given[name] != default and given[name] != value:
                raise ValueError(
                    f"Checkpointer({name}={given[name]!r}) disagrees with the job's scenario "
                    f"(checkpoint.{name}: {value!r}); under the agents the scenario decides: "
                    "change it there, or drop the argument"
                )

    # -- the engine, per attempt ------------------------------------------------------------

    def _engine_now(self) -> Any:
        if self._engine is not None:
            return self._engine
        scenario = self.scenario
        if scenario.checkpoint.strategy == "persistent":
            from real.persistent.baseline import PersistentCheckpointer

            every = scenario.checkpoint.baseline_every_iterations or 10
            self._engine = PersistentCheckpointer(
                scenario.cluster.storage.url or str(self.run_dir / "persistent"),
                every,
                None,  # restore() gives the shape, if any
            )
            return self._engine
        from real.engine import GeminiCheckpointer

        addresses, token = self._stores()
        self._engine = GeminiCheckpointer(
            scenario=scenario,
            rank=self.rank,
            world_size=self.world_size,
            node=self.node,
            local_rank=self.local_rank,
            run_dir=self.run_dir,
            store_addresses=addresses,
            token=token,
            model=self._model,
            event_log=self.events,
        )
        return self._engine

    def _stores(self) -> tuple[list[str] | None, str | None]:
        """Every node's store address and the job's secret: from the agent's assignment, else
        from this node's store daemon (started here by the first local rank if needed)."""
        if self._channel is not None:
            return None, None  # GEMINI_STORE_ADDRS and GEMINI_TOKEN, set by the assignment
        from real.engine.daemon import job_key, node_stores

        if self._daemon is None:
            # The script and the run folder name the job too: two jobs of one host (torchrun's
            # run id is "none" for each `torchrun --nproc-per-node N`; two scripts run from
            # one shell) never share a daemon, nor its checkpoints.
            script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
            job = job_key(script, self.run_dir.resolve())
            self._daemon = node_stores(self.node, self.local_rank, self.per_node, job)
        return list(self._daemon.addresses), str(self._daemon.token)

    # -- the contract -----------------------------------------------------------------------

    def attach(self, ddp_model: Any) -> None:
        """Profile ``ddp_model``'s all-reduces to find idle spans (before its first backward).

        An FSDP2 module (``fully_shard``) is not profiled; on the CPU its all-gathers and
        reduce-scatters are made abortable instead, so that under the agents a survivor leaves
        a failed attempt at once rather than wait for peers that have left it.

        Raises:
            StaleProcessGroupError: the DDP wrapper or the FSDP2 sharding was made in an
                earlier attempt, over a process group that is gone (make it inside ``train``).
        """
        require_live_groups(ddp_model)
        make_fsdp_abortable(ddp_model)
        if not hasattr(ddp_model, "register_comm_hook"):
            return  # not a DDP model: no all-reduces to profile
        if self._engine is None:
            self._model = ddp_model
            self._engine_now()  # the engine attaches the model it is built with
            return
        self._model = ddp_model
        if hasattr(self._engine, "attach"):
            self._engine.attach(ddp_model)

    def restore(
        self,
        template: Mapping[str, Any] | None = None,
        *,
        into: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    ) -> Restored | None:
        """The newest checkpoint every rank can get (local memory, a peer's, or persistent
        storage), or None to start from scratch.

        Without ``into`` (and ``template``) the tensors of ``restored.state`` are fresh, owned
        by the caller. With them, a checkpoint from memory is restored *in place*: each tensor
        is copied once, straight from the checkpoint memory (or a peer's socket), into the live
        tensor of the same name, dtype and shape, and ``restored.state`` holds those very
        tensors; tensors with no live counterpart (an optimizer not stepped yet) come back
        fresh. Restore in place only into tensors nothing overwrites before the state is
        loaded: wrapping a model in ``DistributedDataParallel`` broadcasts rank 0's parameters
        over every rank's, so wrap first, then restore into the wrapped model's state.
        :meth:`run` therefore restores into fresh tensors: its ``train`` wraps the model after.

        Args:
            template: the state's shape: the persistent tier reads this rank's tensors shaped
                as it (under FSDP2 only this rank's shards) into fresh tensors; without one it
                reads every tensor whole, as stored. Also the live state to restore a
                checkpoint from memory into when ``into`` is not given.
            into: the live state, as passed to ``save()`` (model and optimizer tensors), or a
                callable returning it (asked only when a memory tier serves). Default:
                ``template``, else fresh tensors.
        """
        return self._restore(template, into if into is not None else template)

    def _restore(
        self,
        template: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
        into: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
    ) -> Restored | None:
        """:meth:`restore` with the persistent tier's shape (``template``, a state or a
        callable asked only when that tier serves) and the memory tiers' target apart."""
        engine = self._engine_now()
        # Asked for only when a restore needs them, and then loaded over: the adapters' states
        # may give the optimizer's tensors (training_state.initialising_optimizers).
        template = initialised(template) if callable(template) else template
        into = initialised(into) if callable(into) else into
        restored: Restored | None
        if self.scenario.checkpoint.strategy == "gemini":
            restored = engine.restore(template=template, into=into)
        else:  # the baseline: DCP reads into fresh tensors shaped as the template, if any
            restored = engine.restore(into=template)
        if restored is not None:
            self.events.emit(
                "state_restored",
                iteration=restored.iteration,
                tier=restored.tier,
                seconds=restored.seconds,
                source_node=restored.source_node,
            )
            self.events.emit(
                "training_resumed", iteration=restored.iteration + 1, tier=restored.tier
            )
        report_resumed()
        self._last_step = time.perf_counter()
        return restored

    def save(self, iteration: int, state: Mapping[str, Any]) -> None:
        """Checkpoint ``state`` (nested dicts and lists of tensors and plain values) after
        ``iteration``; returns once every tensor is copied."""
        if self._channel is not None and not self._ran and not self._told_plain:
            self._told_plain = True
            if self._assignment is not None:  # it trains: its node may start new spares
                self._channel.send("resumed", attempt=self._assignment.attempt)
            log.warning(
                "Checkpointer.save under gemini-ckpt's agents without Checkpointer.run(train): "
                "a peer's failure ends this process instead of recovering it in place (its "
                "rank goes to a warm spare, and a lost node is found by its lease, not by the "
                "survivors' broken collectives); docs/training.md, 'In-process recovery "
                "under the agents'"
            )
        began = time.perf_counter()
        self._engine_now().save(iteration, state)
        ended = time.perf_counter()
        self.events.emit(
            "iteration_end",
            iteration=iteration,
            duration_s=ended - self._last_step,
            step_s=began - self._last_step,
            save_s=ended - began,
        )
        self._last_step = ended

    def run(
        self,
        train: Callable[[Restored | None], None],
        template: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """Call ``train(restored)`` once per attempt until the job is done.

        Under the agents a failed peer makes ``train``'s collective raise; this process then
        leaves the attempt, waits for the next one, joins its process group, restores per the
        root's plan, and calls ``train`` again (objects built outside ``train`` are kept).
        Elsewhere ``train`` runs once and its errors propagate (torchrun restarts the workers).

        ``restored.state`` holds fresh tensors, never the model's own: ``train`` wraps the model
        in ``DistributedDataParallel``, whose construction overwrites every rank's parameters
        with rank 0's, and rank 0 may be a fresh process whose parameters are still the
        initial ones.

        Args:
            train: the attempt's work: wrap the model, load ``restored`` if any, train.
            template: returns this rank's state as ``save()`` takes it (for instance
                ``lambda: ddp.state_dict(model, optimizer)``; under FSDP2, whose model
                ``train`` builds, docs/training.md shows how), asked for only when the
                checkpoint must come from the persistent tier: that tier then reads only this
                rank's tensors (under FSDP2 its shards) into fresh tensors shaped as it.
                Without it, the tier reads every tensor whole, as stored, which the adapters'
                loads take too (under FSDP2 every rank then reads the whole model).
        """
        self._ran = True
        if self._channel is None:
            train(self._restore(template, None))
            return
        first = self._assignment

        def body(assignment: Assignment) -> None:
            nonlocal first
            if first is None or assignment.attempt != first.attempt:
                self._reset_engine(abandon=False)
                self._began = assignment.received_at
                self._ready()
            first = None
            finished = False
            try:
                train(self._restore(template, None))
                finished = True
            finally:
                if not finished:
                    self._reset_engine(abandon=True)
            # The attempt ended well: finish its last checkpoint now, on every rank before
            # the barrier that leaves the attempt's groups (``run_attempts``). Left running,
            # a rank's last background reduction of the checkpoint every rank committed
            # (``Replicator.announce``) could start after a peer had released that group,
            # and its group's release then waited the collective timeout: 120 s at the end
            # of 5 of 16 jobs.
            self._reset_engine(abandon=False)

        run_attempts(
            body,
            self._channel,
            backend=_backend(),
            timeout_s=self.timeout_s,
            joined=self._assignment,
        )

    def _ready(self) -> None:
        """``process_group_ready``: this attempt's restart is over for this rank."""
        self._attempts += 1
        self.events.emit(
            "process_group_ready", seconds=time.time() - self._began, in_process=self._attempts > 1
        )

    def _reset_engine(self, *, abandon: bool) -> None:
        # The model of the attempt that ended holds its process group: drop it with the engine.
        self._model = None
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close(abandon=abandon)

    def close(self) -> None:
        """Finish the last checkpoint (bounded wait) and release every resource.

        In one process started by hand (no torchrun, no agents), a close while no exception
        is in flight ends the job: the node's store daemon stops with it and its memory is
        freed. A close on the way out of an exception (``finally``, ``with``) leaves the
        daemon to a rerun from the same shell, which restores from its memory."""
        failing = sys.exc_info()[0] is not None
        if Checkpointer._open is not None and Checkpointer._open() is self:
            Checkpointer._open = None
        self._reset_engine(abandon=False)
        if self._channel is not None and not self._ran and self._assignment is not None:
            self._channel.send("done", attempt=self._assignment.attempt)  # a plain loop ended
        daemon, self._daemon = self._daemon, None
        if daemon is not None and daemon.standalone and self.world_size == 1 and not failing:
            from real.engine.daemon import stop_daemon

            if daemon.daemon_pid is not None and daemon.path is not None:
                stop_daemon(daemon.path, daemon.daemon_pid)
        # Otherwise the daemon belongs to the node and ends with the job (torchrun's agent).
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._owns_group:  # formed here: left here (the script's own group is its own)
            from real.runtime.procgroup import leave_process_group

            leave_process_group(together=True)
            self._owns_group = False
        self.events.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def _backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def _init_from_torchrun_env(timeout_s: float) -> bool:
    """Form the default process group from torchrun's environment, unless the script did;
    whether it was formed here."""
    import datetime

    import torch.distributed as dist

    if dist.is_initialized():
        return False
    timeout = datetime.timedelta(seconds=timeout_s)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not os.environ.get("MASTER_ADDR"):
        store = dist.HashStore()  # type: ignore[attr-defined]
        dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timeout)
        return True
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's workers share its rendezvous store across restarts, and a restarted
        # worker's env:// group reads the previous attempt's keys and waits forever
        # (pytorch#135712). On one node the restart count keeps each restart's keys apart;
        # across nodes it does not (an agent whose workers were still healthy restarts them
        # without counting), so there torchrun must give each restart a store of its own.
        if int(os.environ.get("GROUP_WORLD_SIZE", "1")) > 1:
            raise RuntimeError(
                "a multi-node torchrun job shares its rendezvous store with restarted workers, "
                "and torch 2.13 then hangs their process group (pytorch#135712): start "
                "torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment"
            )
        agent_store = dist.TCPStore(  # type: ignore[attr-defined]
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timeout,
        )
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            _backend(),
            store=dist.PrefixStore(f"gemini/restart{restart}/", agent_store),  # type: ignore[attr-defined]
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            timeout=timeout,
        )
        return True
    dist.init_process_group(_backend(), timeout=timeout)
    return True


def _where() -> tuple[int, int, int, int, int]:
    """(rank, world size, local rank, ranks per node, node) from the process group and
    torchrun's variables.

    Raises:
        ValueError: the ranks do not split into equal nodes.
    """
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if per_node < 1 or world % per_node:
        raise ValueError(
            f"WORLD_SIZE {world} is not a multiple of LOCAL_WORLD_SIZE {per_node}: every node "
            "must run the same number of ranks"
        )
    node = int(os.environ.get(GEMINI_NODE) or os.environ.get("GROUP_RANK") or rank // per_node)
    return rank, world, local_rank, per_node, node
