"""In-process recovery: a trainer process that outlives its peers' failures.

Under a node agent, a trainer process is started before it has a place in the job (a **warm
spare**: interpreter up, torch imported, an optimizer built once so that its lazy imports are
paid) and is then given **attempts**. For each attempt it joins a fresh process group (the
attempt's own rendezvous port, so nothing stale is read), runs the training body, and either
finishes or **parks**: a collective that failed because a peer vanished, or an abort from its
agent, hands control back here; the process group is torn down and the process waits for the
next attempt, keeping whatever the body keeps outside the attempt (model, optimizer, data; the
checkpointers close their engine at each attempt's end and build it anew, while the node
store's slots stay). Only processes that died are replaced, by the node's warm spares.

The agent and the trainer talk over a socket the agent created and the trainer inherited
(file descriptor ``GEMINI_AGENT_FD``): one JSON object per line, so no address to find and no
secret to prove. Agent to trainer::

    {"op": "assign", "attempt": n, "env": {...}}   RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
                                                   GEMINI_RDZV_PREFIX, GEMINI_STORE_ADDRS,
                                                   GEMINI_RESTORE_PLAN, ...
    {"op": "abort", "attempt": n}                  leave attempt n (its job was stopped)
    {"op": "finish"}                               the job is over: exit

and trainer to agent: ``ready`` (spare up), ``joined`` (process group formed), ``failed``
(a collective broke: the first sign of a peer's failure), ``parked`` (left the failed attempt),
``done`` (the body returned), ``retired`` (told to start from scratch after it had trained: the
agent gives the rank to a fresh spare, since the objects this process keeps hold the abandoned
run).

gloo cannot abort a collective that waits for a *hung* peer (torch 2.13: ``abort()`` from
another thread returns at once and the wait goes on); a peer that *died* makes the survivors'
collectives fail within tens of milliseconds. So an abort is cooperative (checked by
:func:`check_abort` at every checkpoint, and with :func:`install_abort_checks` at every block
of the model's forward and backward passes, and raised from there), and the agent kills a trainer
that has not parked within ``detection.abort_timeout_s``; its spare takes its place. NCCL
communicators are aborted (``abort_process_group``) so a CUDA rank never waits forever.

Two waits are not the training thread's own and are cut short here. DDP waits for its gradient
buckets' all-reduces in C++, where no hook runs: the engine's communication hook hands DDP an
:func:`abortable` future instead of gloo's, which an abort fails at once, so ``backward()``
raises. And tearing a gloo group down joins its worker thread, which may wait in that very
all-reduce for a peer that also waits (each survivor for another): a failed attempt's groups
are therefore released by a background thread (:func:`leave_attempt`), whose wait ends when
the peers' sockets close or the collective timeout runs out, while this process goes on to the
next attempt on new groups.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import faulthandler
import gc
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from real.runtime.env import GEMINI_AGENT_FD, GEMINI_RDZV_PREFIX, GEMINI_RESTORE_PLAN
from real.runtime.peers import is_peer_failure, peer_failure_text
from shared.errors import AttemptAborted, PeerLost

log = logging.getLogger(__name__)

AGENT_FD_ENV = GEMINI_AGENT_FD
RDZV_PREFIX_ENV = GEMINI_RDZV_PREFIX
JOIN_TIMEOUT_S = 120.0
"""The longest a rank waits at an attempt's rendezvous for the others to arrive (one that
never comes is the root's business: a lost node is probed, the stop kills what cannot leave)."""


@dataclass(frozen=True)
class Assignment:
    """One attempt as the agent gave it to this trainer.

    Attributes:
        attempt: the attempt number (the root's record).
        env: torchrun's variables for this attempt and the job's (stores, plan, failure).
    """

    attempt: int
    env: Mapping[str, str]
    received_at: float = 0.0
    joined_at: float = 0.0

    def _number(self, name: str) -> int:
        text = self.env.get(name, "")
        return int(text) if text else 0

    @property
    def rank(self) -> int:
        return self._number("RANK")

    @property
    def world_size(self) -> int:
        return self._number("WORLD_SIZE") or 1


class AgentChannel:
    """This trainer's end of its agent's socket (see the module docstring).

    Args:
        sock: the connected socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._assignments: list[Assignment] = []
        self._aborted: set[int] = set()
        self._finish = False
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="agent-channel", daemon=True)
        self._reader.start()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentChannel | None:
        """The channel named by ``GEMINI_AGENT_FD``, or None outside an agent."""
        env = os.environ if env is None else env
        text = env.get(AGENT_FD_ENV)
        if not text:
            return None
        try:
            fd = int(text)
        except ValueError:
            raise ValueError(f"{AGENT_FD_ENV}={text!r} is not a file descriptor") from None
        return cls(socket.socket(fileno=fd))

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._handle(json.loads(line))
        except (OSError, ValueError) as error:
            if not self._closed:
                log.warning("agent channel broken: %s", error)
        with self._changed:
            # The agent is gone: nothing more will come; a trainer without its agent stops.
            self._finish = True
            self._changed.notify_all()

    def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        with self._changed:
            if op == "assign":
                env = {str(k): str(v) for k, v in message["env"].items()}
                self._assignments.append(Assignment(int(message["attempt"]), env, time.time()))
            elif op == "abort":
                self._aborted.add(int(message["attempt"]))
                log.info("abort of attempt %s received", message["attempt"])
                _fail_pending(int(message["attempt"]))
            elif op == "finish":
                self._finish = True
            else:
                log.warning("agent channel: unknown message %r", message)
            self._changed.notify_all()

    def send(self, op: str, **fields: Any) -> None:
        """Tell the agent ``op`` (best effort: a vanished agent ends the trainer anyway)."""
        line = json.dumps({"op": op, **fields}, separators=(",", ":")).encode() + b"\n"
        with self._lock, contextlib.suppress(OSError):
            self._sock.sendall(line)

    def next_assignment(self, after: int, timeout_s: float | None = None) -> Assignment | None:
        """The first assignment of an attempt newer than ``after``; None when the job is over
        (or nothing came within ``timeout_s``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            while True:
                newer = [a for a in self._assignments if a.attempt > after]
                if newer:
                    chosen = max(newer, key=lambda a: a.attempt)
                    self._assignments = [a for a in self._assignments if a.attempt > after]
                    if chosen.attempt not in self._aborted:
                        return chosen
                    self._assignments.remove(chosen)
                    continue
                if self._finish:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def aborted(self, attempt: int) -> bool:
        """Whether the agent told this trainer to leave ``attempt``, or the job is over."""
        with self._changed:
            return attempt in self._aborted or self._finish

    def aborted_now(self, attempt: int) -> bool:
        """:meth:`aborted` without the lock, for checks on the training's hot path (reading a
        set and a flag that the reader thread only ever adds to is safe without it)."""
        return self._finish or attempt in self._aborted

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


_current: tuple[AgentChannel, int] | None = None


def check_abort() -> None:
    """Raise :class:`AttemptAborted` if this trainer's agent stopped the running attempt, or
    :class:`PeerLost` if one of the attempt's :func:`abortable` collectives failed.

    Called by the checkpointer at every save and, through :func:`install_abort_checks`, at
    every module's forward and every parameter's gradient, so a trainer whose peers are gone
    leaves its attempt within one layer's compute: when its agent aborts the attempt, and when
    a collective it launched failed while it went on computing (DDP waits for its buckets'
    all-reduces only at the end of ``backward()``; a survivor would otherwise compute the whole
    pass before it learns, and tells its agent, that a peer is gone). Cheap: two lookups, no
    lock.
    """
    current = _current
    if current is None:
        return
    if current[0].aborted_now(current[1]):
        raise AttemptAborted(f"attempt {current[1]} aborted by the node agent")
    broken = _broken.get(current[1])
    if broken is not None:
        raise PeerLost(f"attempt {current[1]}: a collective failed ({broken})")


def report_resumed() -> None:
    """Tell this trainer's agent that its restore in the running attempt is over (restored,
    or nothing to restore): it trains again. A standby node that took a lost node's slot holds
    its spares' warm-up back until then (``TrainerPool.take_slot``). Outside an attempt it
    does nothing."""
    current = _current
    if current is not None:
        current[0].send("resumed", attempt=current[1])


_pending_lock = threading.Lock()
_pending: dict[int, set[Any]] = {}  # attempt -> abortable futures not completed yet
_broken: dict[int, str] = {}  # attempt -> the first error of one of its collectives


def abortable(future: Any) -> Any:
    """``future`` (a ``torch.futures.Future`` of a CPU collective), as a future that also fails
    with :class:`AttemptAborted` the moment this trainer's agent aborts the running attempt.

    DDP waits for each bucket's all-reduce future in C++ at the end of ``backward()``, beyond
    any hook: when a peer hangs (or waits on a peer that does), the gloo all-reduce never
    completes and only the agent's kill would end the wait. A communication hook that returns
    this future instead lets the abort make ``backward()`` raise. Outside an attempt it returns
    ``future`` itself. Do not use it for CUDA futures (their streams need the original).
    """
    current = _current
    if current is None:
        return future
    import torch

    channel, attempt = current
    outer: Any = torch.futures.Future()
    with _pending_lock:
        _pending.setdefault(attempt, set()).add(outer)

    def settle(done: Any) -> None:
        with _pending_lock:
            waiting = _pending.get(attempt, set())
            if outer not in waiting:
                return  # failed by an abort already
            waiting.discard(outer)
            if not waiting:
                del _pending[attempt]
        try:
            outer.set_result(done.value())
        except Exception as error:
            # A peer is gone: the training thread leaves at its next check (a gradient hook,
            # a forward hook, a save) instead of computing the rest of its pass first. Any
            # other error reaches the training thread as the backend raises it.
            if is_peer_failure(error):
                _broken.setdefault(attempt, peer_failure_text(error))
            outer.set_exception(error)

    future.add_done_callback(settle)
    if channel.aborted_now(attempt):
        _fail_pending(attempt)
    return outer


def _fail_pending(attempt: int) -> None:
    """Fail every :func:`abortable` future of ``attempt`` still waiting (the reader thread)."""
    with _pending_lock:
        waiting = _pending.pop(attempt, set())
    for outer in waiting:
        outer.set_exception(AttemptAborted(f"attempt {attempt} aborted by the node agent"))


def wait_collective(work: Any) -> None:
    """Wait for a CPU collective launched with ``async_op=True``, leaving at once with
    :class:`AttemptAborted` when this trainer's agent aborts the running attempt (a peer's
    error is raised as ``work.wait()`` would raise it).

    A synchronous gloo collective waits in C++: when the peers it waits for have left the
    attempt (their sockets stay open until their groups are released), only the agent's kill
    at ``detection.abort_timeout_s`` would end it. Outside an attempt this is ``work.wait()``.
    """
    if _current is None:
        work.wait()
        return
    try:
        future = work.get_future()
    except RuntimeError:  # gloo's reduce-scatter has none ("Work::getFuture not implemented")
        future = _future_of(work)
    abortable(future).wait()


def _future_of(work: Any) -> Any:
    """A future of ``work`` for the collectives whose work has none: a daemon thread waits.

    The thread outlives an abort when the peers never answer, like the wait it replaces (the
    failed attempt's group is released when their sockets close or the collective timeout
    runs out), while the trainer goes on to the next attempt."""
    import torch

    future: Any = torch.futures.Future()

    def wait() -> None:
        try:
            work.wait()
        except Exception as error:
            future.set_exception(error)
        else:
            future.set_result(None)

    threading.Thread(target=wait, name="collective-wait", daemon=True).start()
    return future


class _PlainBuffers:
    """FSDP2's ``Comm.allocate``: plain tensors, as its default collectives allocate.

    The collectives below follow FSDP2's ``AllGather`` and ``ReduceScatter`` interfaces
    (``allocate`` and the call), which torch keeps in a private module, hence no torch base.
    """

    def allocate(self, size: Any, *, dtype: Any, device: Any) -> Any:
        import torch

        return torch.empty(*size, dtype=dtype, device=device)


class AbortableAllGather(_PlainBuffers):
    """FSDP2's all-gather for CPU tensors (gloo), waited with :func:`wait_collective`.

    Installed with ``FSDPModule.set_custom_all_gather`` (:func:`make_fsdp_abortable`): FSDP2
    calls it synchronously from its forward and backward hooks, where a survivor otherwise
    waits in C++ for peers that have already left.
    """

    def __call__(
        self, output_tensor: Any, input_tensor: Any, group: Any, async_op: bool = False
    ) -> Any:
        import torch.distributed as dist

        work = dist.all_gather_single(output_tensor, input_tensor, group=group, async_op=True)
        if async_op:  # FSDP2 waits for it itself (explicit prefetching)
            return work
        wait_collective(work)
        return None


class AbortableReduceScatter(_PlainBuffers):
    """FSDP2's gradient reduce-scatter for CPU tensors, waited with :func:`wait_collective`
    (see :class:`AbortableAllGather`)."""

    def __call__(
        self, output_tensor: Any, input_tensor: Any, group: Any, op: Any, async_op: bool = False
    ) -> Any:
        import torch.distributed as dist

        work = dist.reduce_scatter_single(
            output_tensor, input_tensor, op=op, group=group, async_op=True
        )
        if async_op:
            return work
        wait_collective(work)
        return None


class StaleProcessGroupError(RuntimeError):
    """A model is wrapped (DDP) or sharded (FSDP2) over a process group that is gone: that of
    an earlier attempt. A bug of the training script, not a peer's failure: its collectives
    would fail at once in every attempt."""


def require_live_groups(module: Any) -> None:
    """Raise :class:`StaleProcessGroupError` when ``module`` (a DDP wrapper, or a module with
    FSDP2 modules in it) holds a process group that has been destroyed.

    Under in-process recovery every attempt forms a new group and drops the old one; a DDP
    wrapper or FSDP2 sharding kept from an earlier attempt still points at the old one, and its
    first collective fails in every attempt after it, which looks like a peer's failure.
    """
    import torch.distributed as dist

    groups: list[tuple[str, Any]] = []
    if getattr(module, "process_group", None) is not None:  # DistributedDataParallel
        groups.append(("DDP wrapper", module.process_group))
    for sub in module.modules():
        # FSDP2 collects over the group objects it took from its mesh at ``fully_shard``
        # (``mesh_info``); the mesh itself resolves its groups by name, and so would name the
        # new attempt's. No public accessor: without these attributes (another torch) the
        # check is skipped, and the root agent's loop guard still stops such a job.
        state_of = getattr(sub, "_get_fsdp_state", None)
        param_group = getattr(state_of(), "_fsdp_param_group", None) if state_of else None
        mesh_info = getattr(param_group, "mesh_info", None)
        for name in ("shard_process_group", "replicate_process_group"):
            if getattr(mesh_info, name, None) is not None:
                groups.append(("FSDP2 sharding", getattr(mesh_info, name)))
    for what, group in groups:
        try:
            dist.get_process_group_ranks(group)
        except (KeyError, ValueError, RuntimeError):
            raise StaleProcessGroupError(
                f"this model's {what} belongs to the process group of an earlier attempt, "
                "which is gone: make the DDP wrapper, and under FSDP2 the model and its "
                "optimizer, inside the function given to Checkpointer.run() (docs/training.md, "
                '"Build outside, wrap inside")'
            ) from None


def make_fsdp_abortable(module: Any) -> int:
    """Give every FSDP2 module in ``module`` (itself included) collectives that the agent's
    abort ends (:class:`AbortableAllGather`, :class:`AbortableReduceScatter`), when its
    parameters live on the CPU; CUDA modules keep NCCL's, whose communicators the agent
    aborts. Returns how many modules were changed (0: no FSDP2 module, or not on the CPU).
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return 0
    changed = 0
    for sub in module.modules():
        if not isinstance(sub, FSDPModule):
            continue
        sub = cast(Any, sub)  # an nn.Module too; the comms follow FSDP2's interfaces by shape
        first = next(iter(sub.parameters()), None)
        if first is None or first.device.type != "cpu":
            continue
        sub.set_custom_all_gather(AbortableAllGather())
        sub.set_custom_reduce_scatter(AbortableReduceScatter())
        changed += 1
    return changed


def install_abort_checks(module: Any) -> Callable[[], None]:
    """Make ``module``'s forward and backward passes leave an aborted attempt at once.

    A survivor of a peer's failure is usually computing (forward, backward) when its agent's
    abort arrives, and would learn of it only at its next collective or ``save``: up to one
    iteration later. This registers :func:`check_abort` as a forward pre-hook on the module
    and on every submodule that holds parameters or submodules, and as a gradient hook on
    every parameter: an abort (or a failed collective) interrupts the pass within one layer,
    raising :class:`AttemptAborted` (or :class:`PeerLost`) out of ``forward()`` or
    ``backward()``. Outside an attempt (or without an agent) the checks do
    nothing. What the interrupted step leaves
    (half-updated DDP buckets, partial gradients) belongs to the attempt being left: the next
    one wraps the module afresh and restores its state.

    Returns:
        A function that removes the hooks.
    """

    def forward_check(_module: Any, _inputs: Any) -> None:
        check_abort()

    def gradient_check(gradient: Any) -> Any:
        check_abort()
        return gradient

    # A check before every module that computes (its own parameters, or a block of them) and
    # after every parameter's gradient: on a loaded host one block's backward takes tens of
    # milliseconds, which a check per block added to every stop. The hooks are cheap against
    # a pass: the headline GPT's step took 122.8 ms with them and 123.4 ms without (one
    # process, medians of 7; a one-off measurement on 2026-12-04).
    handles = [
        sub.register_forward_pre_hook(forward_check)
        for sub in module.modules()
        if any(True for _ in sub.parameters(recurse=False))
        or sub is module
        or any(True for _ in sub.children())
    ]
    handles += [p.register_hook(gradient_check) for p in module.parameters() if p.requires_grad]

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


def checkpoint_modules(
    strategy: str, persists: bool, storage_url: str | None = None
) -> tuple[str, ...]:
    """The modules a trainer's first checkpointer imports lazily, for ``prewarm``.

    ``strategy``: the scenario's ``checkpoint.strategy``; ``persists``: whether the in-memory
    engine also writes to the persistent tier (``checkpoint.persist_every_iterations`` or an
    adaptive ``persist_interval``), which brings in DCP; ``storage_url``: that tier's location
    (``cluster.storage.url``), whose fsspec filesystem is imported when the tier is opened
    (``s3://``: s3fs and botocore, 0.4 s of a spare's first engine build).
    """
    if strategy == "persistent":
        modules: tuple[str, ...] = ("real.persistent.baseline",)
    elif strategy == "gemini" and persists:
        modules = (
            "real.engine.checkpointer",
            "real.engine.restore",
            "real.persistent.from_memory",
            "real.persistent.persister",
        )
    elif strategy == "gemini":
        return ("real.engine.checkpointer", "real.engine.restore")  # no tier to open
    else:
        return ()
    return (*modules, *_filesystem_modules(storage_url))


def _filesystem_modules(url: str | None) -> tuple[str, ...]:
    """The module of the fsspec filesystem that serves ``url`` (none for a local path)."""
    if not url:
        return ()
    from fsspec.registry import known_implementations
    from fsspec.utils import get_protocol

    protocol = get_protocol(url)
    known = known_implementations.get(protocol)
    if protocol in ("file", "local") or known is None:
        return ()
    return (known["class"].rsplit(".", 1)[0],)


def prewarm(modules: tuple[str, ...] = ()) -> None:
    """Pay the lazy imports of a first optimizer step and of the job's checkpointer now, off any
    recovery's path.

    The first ``torch.optim`` step in a process imports dynamo and sympy (about 2 s here);
    a warm spare does it while it waits, on a throwaway parameter. ``modules``
    (``checkpoint_modules``) are the checkpoint engine's: a spare that imported them only when
    it took a failed rank's place arrived 80-130 ms after the survivors at the engine's first
    collective (the persistent tier's group), and every rank waited for it.
    """
    import importlib

    import torch

    for name in modules:
        importlib.import_module(name)

    parameter = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    loss = (parameter * parameter).sum()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    import torch.distributed  # its import is part of the cost too

    # Leaving a failed attempt collects the old group's modules (gc.collect); with torch's
    # ~300k objects that took 0.6 s a pass on a loaded 2-core machine. What exists now lives
    # as long as the process: move it out of the collector's sight.
    gc.collect()
    gc.freeze()


def join_process_group(assignment: Assignment, backend: str, timeout_s: float) -> None:
    """Form this attempt's process group from its rendezvous.

    With ``GEMINI_RDZV_PREFIX`` (the agents' way) ``MASTER_ADDR:MASTER_PORT`` is a rendezvous
    store that a node agent keeps listening for the whole job, and every rank joins under the
    attempt's own key prefix: no rank waits for another to open a port (torch's store client
    retries a refused connection only after a ~0.6 s back-off, paid whenever rank 0 got its
    assignment last), and no attempt reads another's keys. Without it, rank 0 opens a store
    on a fresh port per attempt (``tcp://`` init).
    """
    import torch.distributed as dist

    env = assignment.env
    timeout = datetime.timedelta(seconds=timeout_s)
    prefix = env.get(RDZV_PREFIX_ENV, "")
    if prefix:
        address, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
        join_timeout = datetime.timedelta(seconds=max(timeout_s, JOIN_TIMEOUT_S))
        # Every rank arrives first, however long the slowest takes (a spare still warming up
        # on a loaded machine): gloo's own rendezvous waits only the collective timeout, and a
        # short one made every rank give up on a warming spare, attempt after attempt, and
        # the spare then hang connecting to peers that had left. Then the same client serves
        # the group, with the collective timeout. One connection, not two: torch's store
        # looks the peer's address up in the DNS at both ends of each (for its log lines),
        # and a resolver that drops a query holds the join for its timeout (5 s on our
        # machine, one query in about 50 in a burst: docs/cluster.md, "Troubleshooting").
        store = dist.TCPStore(  # type: ignore[attr-defined]
            address, port, is_master=False, timeout=join_timeout
        )
        store.set(f"{prefix}/arrived/{assignment.rank}", "1")
        store.wait([f"{prefix}/arrived/{r}" for r in range(assignment.world_size)])
        store.set_timeout(timeout)
        dist.init_process_group(
            backend,
            store=dist.PrefixStore(prefix, store),  # type: ignore[attr-defined]
            rank=assignment.rank,
            world_size=assignment.world_size,
            timeout=timeout,
        )
        return
    dist.init_process_group(
        backend,
        init_method=f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
        rank=assignment.rank,
        world_size=assignment.world_size,
        timeout=timeout,
    )


def leave_attempt(*, together: bool) -> None:
    """Tear this attempt's process groups down; after a failure without waiting for peers."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if together:
        from real.runtime.procgroup import leave_process_group

        leave_process_group(together=True)
        return
    gc.collect()
    if dist.get_backend() == "nccl":
        # NCCL can abort its communicators (a rank blocked on a dead peer returns); torch 2.13
        # offers it only privately. gloo has no working abort: its waits end by the timeout.
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is not None:
            with contextlib.suppress(Exception):
                abort()
    from real.runtime.procgroup import abandon_process_groups

    abandon_process_groups()


def _clear_frames(error: BaseException, *, keep_traceback: bool) -> None:
    """Drop the local variables of the frames ``error`` and its causes went through (the
    attempt's model, its process groups); without ``keep_traceback`` the tracebacks too."""
    cause: BaseException | None = error
    while cause is not None:
        traceback.clear_frames(cause.__traceback__)
        if not keep_traceback:
            cause.__traceback__ = None
        cause = cause.__cause__ or cause.__context__


def _planned(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The root's plan in ``env`` (``GEMINI_RESTORE_PLAN``), or None where there is none."""
    text = env.get(GEMINI_RESTORE_PLAN, "")
    if not text:
        return None
    try:
        plan = json.loads(text)
    except ValueError:
        return None
    return plan if isinstance(plan, dict) else None


def plan_restores(env: Mapping[str, str]) -> bool:
    """Whether the root's plan in ``env`` restores a checkpoint on every rank before the first
    step (it names an iteration), as opposed to no plan or one that starts over."""
    plan = _planned(env)
    return plan is not None and plan.get("iteration") is not None


def _from_scratch(assignment: Assignment) -> bool:
    """Whether the root's plan for this attempt restores nothing (every rank starts over)."""
    plan = _planned(assignment.env)
    return plan is not None and plan.get("iteration") is None


def run_attempts(
    body: Callable[[Assignment], None],
    channel: AgentChannel,
    *,
    backend: str,
    timeout_s: float,
    joined: Assignment | None = None,
) -> int:
    """Serve attempts until the job is over; return the number of attempts this process ran.

    Args:
        body: trains one attempt (the process group is formed when it is called). It raises
            when a collective fails; a peer failure parks the trainer for the next attempt,
            anything else propagates (the process exits and its agent reports it).
        channel: the agent's socket.
        backend: ``gloo`` or ``nccl``.
        timeout_s: the collective timeout, s.
        joined: an assignment whose process group this process already formed (the first).
    """
    global _current
    last, served = 0, 0
    # A trainer its agent gives up on gets SIGUSR1 first: its stacks go to its log.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if joined is None:
        channel.send("ready", pid=os.getpid())
    while True:
        assignment = joined or channel.next_assignment(last)
        if assignment is None:
            return served
        last = assignment.attempt
        if served and _from_scratch(assignment):
            # This process trained already: its model, optimizer and data hold a timeline the
            # job abandoned. A fresh process (the agent's spare) takes the rank instead.
            channel.send("retired", attempt=assignment.attempt)
            return served
        served += 1
        os.environ.update(assignment.env)
        _current = (channel, assignment.attempt)
        finished = False
        try:
            if assignment is not joined:
                join_process_group(assignment, backend, timeout_s)
                assignment = dataclasses.replace(assignment, joined_at=time.time())
                channel.send("joined", attempt=assignment.attempt)
            joined = None
            body(assignment)
            finished = True
        except Exception as error:
            if not (is_peer_failure(error) or channel.aborted(assignment.attempt)):
                # The script's own error, which ends this process. Its process groups go
                # first, here: left to the interpreter's exit (the traceback holds the model,
                # the model the groups, and a closed engine's group may still be releasing on
                # a thread of its own), a gloo group's threads aborted the process (SIGABRT,
                # "terminate called without an active exception") instead of exiting with the
                # error (found by a user's script, 2026-12-06). The traceback keeps its lines.
                _clear_frames(error, keep_traceback=True)
                with contextlib.suppress(Exception):
                    from real.runtime.procgroup import finish_releases, leave_process_group

                    leave_process_group(together=False)
                    finish_releases(2.0)  # the error's exit waits that long at most
                raise
            reason = peer_failure_text(error, limit=500)
            # Where the attempt was left (a hook, a save, a collective), for the timeline.
            where = " < ".join(
                f"{Path(frame.filename).name}:{frame.lineno}"
                for frame in reversed(traceback.extract_tb(error.__traceback__)[-3:])
            )
            log.info("left attempt %d at %s", assignment.attempt, where)
            # First the agent hears of it (the root probes the peers), then the cleanup.
            channel.send("failed", attempt=assignment.attempt, error=reason)
            log.warning(
                "rank %d: attempt %d failed (%s); waiting for the next one",
                assignment.rank,
                assignment.attempt,
                reason,
            )
            # The traceback holds the body's frames and the modules in them: drop it, or
            # every recovery leaks the old DDP reducer's threads and sockets, and the group's
            # connections stay open (peers blocked on this rank would wait for their timeout).
            _clear_frames(error, keep_traceback=False)
            del error
            leave_attempt(together=False)
            channel.send("parked", attempt=assignment.attempt, error=reason)
            continue
        finally:
            _current = None
            _broken.pop(assignment.attempt, None)
        try:
            leave_attempt(together=True)
        finally:
            channel.send("done" if finished else "parked", attempt=assignment.attempt)
