"""In-process recovery, trainer side: the agent's socket, attempts, parking, retiring.

The trainer's end (``real.trainer.inprocess``) is driven here by a test standing in for the agent,
on
a socket pair; the process group is a one-rank gloo group, so every attempt forms and leaves a
real group (``tests/integration/test_cluster.py`` runs the whole thing with agents).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch.distributed as dist

from real.runtime.processes import free_port
from real.trainer.inprocess import (
    JOIN_TIMEOUT_S,
    RDZV_PREFIX_ENV,
    AgentChannel,
    Assignment,
    StaleProcessGroupError,
    abortable,
    check_abort,
    install_abort_checks,
    is_peer_failure,
    require_live_groups,
    run_attempts,
)
from shared.errors import AttemptAborted, PeerLost


class Agent:
    """The agent's end of the socket: sends JSON lines, collects the trainer's."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received: list[dict[str, Any]] = []
        self._buffer = b""
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):  # the test closed its end
            self._read_lines()

    def _read_lines(self) -> None:
        while data := self.sock.recv(65536):
            self._buffer += data
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                with self._changed:
                    self.received.append(json.loads(line))
                    self._changed.notify_all()

    def send(self, op: str, **fields: Any) -> None:
        self.sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")

    def assign(self, attempt: int, plan: dict[str, Any] | None = None) -> None:
        env = {
            "RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "GEMINI_RESTORE_PLAN": "" if plan is None else json.dumps(plan),
        }
        self.send("assign", attempt=attempt, env=env)

    def wait_for(self, op: str, attempt: int, timeout_s: float = 30.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next(
                (m for m in self.received if m["op"] == op and m.get("attempt") == attempt), None
            )

        with self._changed:
            assert self._changed.wait_for(lambda: found() is not None, timeout_s), self.received
            message = found()
            assert message is not None
            return message

    def ops(self) -> list[tuple[str, int | None]]:
        return [(m["op"], m.get("attempt")) for m in self.received]


def park_after_attempt_1(
    agent: Agent, channel: AgentChannel, body: Callable[[Assignment], None]
) -> None:
    """Give the trainer attempt 1, let ``body`` leave it, then end the job."""
    agent.assign(1)
    thread = threading.Thread(
        target=run_attempts, args=(body, channel), kwargs={"backend": "gloo", "timeout_s": 30.0}
    )
    thread.start()
    agent.wait_for("parked", 1)
    agent.send("finish")
    thread.join(30)


def wait_aborted(channel: AgentChannel, attempt: int) -> None:
    """Until the channel has read the agent's abort of ``attempt`` (bounded)."""
    deadline = time.monotonic() + 20
    while not channel.aborted(attempt) and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture
def pair() -> Iterator[tuple[Agent, AgentChannel]]:
    ours, theirs = socket.socketpair()
    channel = AgentChannel(theirs)
    yield Agent(ours), channel
    channel.close()
    ours.close()
    if dist.is_initialized():
        dist.destroy_process_group()


def test_newest_assignment_wins_and_aborted_ones_are_skipped(
    pair: tuple[Agent, AgentChannel],
) -> None:
    agent, channel = pair
    agent.assign(1)
    agent.assign(2)
    agent.assign(3)
    agent.send("abort", attempt=3)
    deadline = time.monotonic() + 10
    while not channel.aborted(3):  # the last message is read, so are the others
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert channel.next_assignment(0, timeout_s=5).attempt == 2  # type: ignore[union-attr]
    assert not channel.aborted(2)
    agent.send("finish")
    assert channel.next_assignment(2, timeout_s=5) is None
    assert channel.aborted(2)  # the job is over: every attempt is


def test_peer_failure_parks_and_the_next_attempt_runs(pair: tuple[Agent, AgentChannel]) -> None:
    """A body whose collective broke leaves its attempt (the group torn down, the process
    kept) and serves the next; the agent hears ``failed`` before ``parked``."""
    agent, channel = pair
    calls: list[int] = []

    def body(assignment: Assignment) -> None:
        calls.append(assignment.attempt)
        assert dist.is_initialized() and dist.get_world_size() == 1
        if assignment.attempt == 1:
            raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Connection reset by peer")

    agent.assign(1)
    served: list[int] = []
    thread = threading.Thread(
        target=lambda: served.append(run_attempts(body, channel, backend="gloo", timeout_s=30.0)),
        daemon=True,
    )
    thread.start()
    agent.wait_for("parked", 1)
    assert not dist.is_initialized()  # the failed attempt's group is gone
    agent.assign(2)
    agent.wait_for("done", 2)
    agent.send("finish")
    thread.join(30)
    assert served == [2] and calls == [1, 2]
    ops = agent.ops()
    assert ops[0] == ("ready", None)
    assert ops.index(("failed", 1)) < ops.index(("parked", 1)) < ops.index(("joined", 2))


def test_a_bug_is_not_a_peer_failure(pair: tuple[Agent, AgentChannel]) -> None:
    """The script's own error propagates, with its traceback, and the process group is
    left before it does: at the interpreter's exit, a gloo group still held by the
    traceback's frames aborted the process (SIGABRT) instead of its error's exit status."""
    agent, channel = pair

    def body(assignment: Assignment) -> None:
        raise KeyError("a typo in the training script")

    agent.assign(1)
    with pytest.raises(KeyError) as raised:
        run_attempts(body, channel, backend="gloo", timeout_s=30.0)
    assert not dist.is_initialized()
    assert raised.traceback[-1].name == "body"


def test_abort_is_raised_at_the_next_checkpoint(pair: tuple[Agent, AgentChannel]) -> None:
    agent, channel = pair
    seen: list[str] = []

    def body(assignment: Assignment) -> None:
        check_abort()  # nothing yet
        agent.send("abort", attempt=assignment.attempt)
        for _ in range(500):
            try:
                check_abort()
            except AttemptAborted as error:
                seen.append(str(error))
                raise
            threading.Event().wait(0.01)

    park_after_attempt_1(agent, channel, body)
    assert seen == ["attempt 1 aborted by the node agent"]


def test_a_trained_process_retires_when_the_job_starts_over(
    pair: tuple[Agent, AgentChannel],
) -> None:
    """The plan restores nothing: a process that trained holds the abandoned run in its
    objects, so it hands its rank back (the agent gives it to a fresh spare)."""
    agent, channel = pair
    calls: list[int] = []

    def body(assignment: Assignment) -> None:
        calls.append(assignment.attempt)
        if assignment.attempt == 1:
            raise ConnectionError("peer gone")

    agent.assign(1, {"iteration": None, "sources": []})  # a first attempt starts from scratch
    thread = threading.Thread(
        target=run_attempts, args=(body, channel), kwargs={"backend": "gloo", "timeout_s": 30.0}
    )
    thread.start()
    agent.wait_for("parked", 1)
    agent.assign(2, {"iteration": None, "sources": []})
    agent.wait_for("retired", 2)
    thread.join(30)
    assert not thread.is_alive() and calls == [1]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError("Connection closed by peer [127.0.0.1]:5556"), True),
        (RuntimeError("wait timeout after 120000ms, keys: /default_pg/0//cpu//0/0"), True),
        (ConnectionResetError(), True),
        (AttemptAborted("attempt 3 aborted"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("bad learning rate"), False),
    ],
)
def test_peer_failures_are_told_from_bugs(error: BaseException, expected: bool) -> None:
    assert is_peer_failure(error) is expected


@pytest.fixture
def checked_model() -> Iterator[Any]:
    """A two-layer model with the abort checks installed (removed afterwards)."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    remove = install_abort_checks(model)
    yield model
    remove()


def test_an_abort_interrupts_forward_and_backward(
    pair: tuple[Agent, AgentChannel], checked_model: Any
) -> None:
    torch = pytest.importorskip("torch")
    agent, channel = pair
    model = checked_model
    left: list[str] = []

    def body(assignment: Assignment) -> None:
        model(torch.ones(2, 4)).sum().backward()  # no abort yet: the checks let it run
        loss = model(torch.ones(2, 4)).sum()
        agent.send("abort", attempt=assignment.attempt)
        wait_aborted(channel, assignment.attempt)
        for name, step in (
            ("forward", lambda: model(torch.ones(2, 4))),  # the first submodule's hook
            ("backward", loss.backward),  # the parameters' gradient hooks
        ):
            try:
                step()
            except AttemptAborted:
                left.append(name)
        raise AttemptAborted("left")

    park_after_attempt_1(agent, channel, body)
    assert left == ["forward", "backward"]
    model(torch.ones(2, 4)).sum().backward()  # outside an attempt the checks do nothing


def test_an_abort_interrupts_backward_at_the_next_parameter(
    pair: tuple[Agent, AgentChannel],
) -> None:
    """Every parameter's gradient checks, not one per block: an abort that comes before
    ``backward()`` leaves at the last layer's gradient, before the first layer's is computed
    (its own hook, registered before the checks, never runs)."""
    torch = pytest.importorskip("torch")
    agent, channel = pair
    first, last = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Sequential(first, last)))
    reached: list[str] = []
    first.weight.register_hook(lambda grad: reached.append("first layer") or grad)
    remove = install_abort_checks(model)
    left: list[str] = []

    def body(assignment: Assignment) -> None:
        loss = model(torch.ones(2, 4)).sum()
        agent.send("abort", attempt=assignment.attempt)
        wait_aborted(channel, assignment.attempt)
        try:
            loss.backward()
        except AttemptAborted:
            left.append("backward")
            raise

    park_after_attempt_1(agent, channel, body)
    assert left == ["backward"] and reached == []
    remove()


def test_a_failed_collective_is_raised_at_the_next_check(
    pair: tuple[Agent, AgentChannel], checked_model: Any
) -> None:
    """A collective that failed while the trainer computes (DDP waits for its buckets only at
    the end of ``backward()``) makes the next check raise :class:`PeerLost`: the trainer
    leaves within one layer and tells its agent, and the next attempt starts clean."""
    torch = pytest.importorskip("torch")
    agent, channel = pair
    model = checked_model
    raised: list[str] = []

    def body(assignment: Assignment) -> None:
        if assignment.attempt == 2:
            model(torch.ones(2, 4)).sum().backward()  # a new attempt: no stale failure
            return
        bug: Any = torch.futures.Future()
        abortable(bug)
        bug.set_exception(ValueError("a bug in a communication hook"))
        check_abort()  # not a peer's failure: it reaches the trainer as raised, not here
        inner: Any = torch.futures.Future()
        outer = abortable(inner)  # as the engine's DDP communication hook returns it
        loss = model(torch.ones(2, 4)).sum()
        check_abort()  # the collective is still running: nothing to raise
        inner.set_exception(RuntimeError("[pair.cc:553] Connection closed by peer [::1]:1"))
        with pytest.raises(RuntimeError, match="Connection closed by peer"):
            outer.wait()  # the collective's own waiter sees gloo's error
        try:
            loss.backward()
        except PeerLost as error:
            raised.append(str(error))
            raise

    agent.assign(1)
    thread = threading.Thread(
        target=run_attempts, args=(body, channel), kwargs={"backend": "gloo", "timeout_s": 30.0}
    )
    thread.start()
    failed = agent.wait_for("failed", 1)
    agent.wait_for("parked", 1)
    agent.assign(2)
    agent.wait_for("done", 2)
    agent.send("finish")
    thread.join(30)
    cause = "RuntimeError: Connection closed by peer [::1]:1"
    assert raised == [f"attempt 1: a collective failed ({cause})"]
    assert failed["error"] == f"PeerLost: attempt 1: a collective failed ({cause})"
    assert is_peer_failure(PeerLost("x"))


def test_a_rendezvous_prefix_joins_through_a_standing_store(
    pair: tuple[Agent, AgentChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, channel = pair
    server = dist.TCPStore(  # type: ignore[attr-defined]
        "127.0.0.1",
        0,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=30),
    )
    joined: list[int] = []
    clients: list[datetime.timedelta] = []
    timeouts: list[datetime.timedelta] = []

    class Client(dist.TCPStore):  # type: ignore[misc,name-defined]
        """Counts the connections a join opens, and the timeouts it gives them."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            clients.append(kwargs["timeout"])

        def set_timeout(self, timeout: datetime.timedelta) -> None:
            super().set_timeout(timeout)
            timeouts.append(timeout)

    monkeypatch.setattr(dist, "TCPStore", Client)

    def body(assignment: Assignment) -> None:
        joined.append(assignment.attempt)
        assert dist.get_rank() == 0

    thread = threading.Thread(
        target=run_attempts, args=(body, channel), kwargs={"backend": "gloo", "timeout_s": 30.0}
    )
    thread.start()
    for attempt in (1, 2):  # two attempts through the same store, each under its prefix
        env = {
            "RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(server.port),
            RDZV_PREFIX_ENV: f"attempt{attempt}",
            "GEMINI_RESTORE_PLAN": "",
        }
        agent.send("assign", attempt=attempt, env=env)
        agent.wait_for("done", attempt)
    agent.send("finish")
    thread.join(30)
    # Both joined through the standing store: a tcp:// init would have had to open that
    # port itself, which the store holds.
    assert joined == [1, 2]
    # One connection per join (each costs a reverse DNS lookup at both ends), opened with
    # the rendezvous's patience and then given the collective timeout for the group.
    assert clients == [datetime.timedelta(seconds=JOIN_TIMEOUT_S)] * 2
    assert timeouts == [datetime.timedelta(seconds=30)] * 2


def test_an_abort_ends_ddp_waiting_for_a_bucket_all_reduce(
    pair: tuple[Agent, AgentChannel],
) -> None:
    """DDP waits for its buckets' all-reduce futures in C++, beyond any hook: a future from
    ``abortable`` makes that wait, and so ``backward()``, raise once the agent aborts."""
    torch = pytest.importorskip("torch")
    agent, channel = pair
    waited: list[tuple[float, str]] = []

    def body(assignment: Assignment) -> None:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))

        def hook(state, bucket):  # type: ignore[no-untyped-def]
            return abortable(torch.futures.Future())  # an all-reduce whose peer hangs

        model.register_comm_hook(None, hook)
        threading.Timer(0.3, agent.send, ("abort",), {"attempt": assignment.attempt}).start()
        began = time.monotonic()
        try:
            model(torch.ones(2, 4)).sum().backward()
        except RuntimeError as error:
            waited.append((time.monotonic() - began, str(error)))
            raise

    park_after_attempt_1(agent, channel, body)
    assert len(waited) == 1, waited
    seconds, message = waited[0]
    assert 0.2 < seconds < 10 and "attempt 1 aborted by the node agent" in message


def test_a_completed_all_reduce_passes_through_abortable(
    pair: tuple[Agent, AgentChannel],
) -> None:
    torch = pytest.importorskip("torch")
    agent, channel = pair
    values: list[Any] = []

    def body(assignment: Assignment) -> None:
        inner = torch.futures.Future()
        outer = abortable(inner)
        inner.set_result([torch.ones(3)])
        values.append(outer.wait())
        agent.send("abort", attempt=assignment.attempt)  # after completion: nothing to fail
        wait_aborted(channel, assignment.attempt)
        raise AttemptAborted("left")

    park_after_attempt_1(agent, channel, body)
    assert len(values) == 1 and torch.equal(values[0][0], torch.ones(3))
    outside = torch.futures.Future()
    assert abortable(outside) is outside  # outside an attempt: the future itself


LEAVER = """
import datetime, sys, time, torch, torch.distributed as dist
from real.trainer.inprocess import leave_attempt
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=sys.argv[2], rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
dist.all_reduce(torch.ones(4))
if rank == 0:
    time.sleep(15)  # alive, never joins the next collective: rank 1's waits on it
    sys.exit(0)
work = dist.all_reduce(torch.ones(4), async_op=True)  # its worker thread now waits on rank 0
time.sleep(0.3)
began = time.monotonic()
leave_attempt(together=False)
print(f"left {time.monotonic() - began:.3f}", flush=True)
time.sleep(30)
"""


def test_leaving_a_failed_attempt_does_not_wait_for_a_hung_collective(tmp_path: Any) -> None:
    """Tearing down a gloo group joins its worker threads, one of which waits for a peer that
    is alive but never comes; a survivor leaving its failed attempt must not wait for it."""
    import subprocess
    import sys

    script = tmp_path / "leaver.py"
    script.write_text(LEAVER)
    address = f"tcp://127.0.0.1:{free_port()}"
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), address], stdout=subprocess.PIPE, text=True
        )
        for rank in (0, 1)
    ]
    try:
        assert ranks[1].stdout is not None
        line = ranks[1].stdout.readline()  # rank 1 stays alive after it left (its wait, too)
        assert ranks[0].poll() is None, f"rank 0 ended before rank 1 left: {line!r}"
        assert line.startswith("left "), line
        assert float(line.split()[1]) < 5.0, line  # rank 0 still sleeps: the wait not joined
    finally:
        for process in ranks:
            process.kill()
            process.wait()


FSDP_SURVIVOR = """
import json, socket, sys, threading, time, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from real.trainer.inprocess import AgentChannel, make_fsdp_abortable, run_attempts
rank, port, abortable = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "abortable"
ours, theirs = socket.socketpair()
channel = AgentChannel(theirs)

def send(op, **fields):
    ours.sendall(json.dumps({"op": op, **fields}).encode() + b"\\n")

def body(assignment):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    fully_shard(model[0])
    fully_shard(model)
    if abortable:
        print(f"changed {make_fsdp_abortable(model)}", flush=True)
    model(torch.ones(2, 8)).sum().backward()  # a step together: all-gathers, reduce-scatters
    dist.barrier()
    if rank == 0:
        time.sleep(60)  # alive, never joins the next all-gather: rank 1 waits on it
    threading.Timer(0.5, send, ("abort",), {"attempt": 1}).start()
    print("waiting", flush=True)
    began = time.monotonic()
    try:
        model(torch.ones(2, 8))
    finally:
        print(f"left {time.monotonic() - began:.3f}", flush=True)

env = {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
       "GEMINI_RESTORE_PLAN": ""}
send("assign", attempt=1, env=env)
run_attempts(body, channel, backend="gloo", timeout_s=120.0)
"""


@pytest.mark.parametrize("abortable", [True, False], ids=["abortable", "default"])
def test_an_abort_ends_an_fsdp2_all_gather_waiting_for_a_peer_that_left(
    tmp_path: Any, abortable: bool
) -> None:
    """FSDP2 all-gathers from its forward hook and waits in C++: a survivor whose peer has
    left the attempt (alive, its sockets open) waits there until the agent kills it. With the
    collectives of ``make_fsdp_abortable`` (the built-in trainer's and ``attach``'s), the
    agent's abort ends that wait at once. The default collectives stand as the control."""
    import subprocess
    import sys

    script = tmp_path / "fsdp_survivor.py"
    script.write_text(FSDP_SURVIVOR)
    port = str(free_port())
    mode = "abortable" if abortable else "default"
    logs = [tmp_path / f"rank{rank}.log" for rank in (0, 1)]
    ranks = []
    for rank, log in enumerate(logs):
        with log.open("w") as stderr:  # the child keeps its own copy of the descriptor
            ranks.append(
                subprocess.Popen(
                    [sys.executable, str(script), str(rank), port, mode],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                )
            )
    lines: list[str] = []

    def said() -> str:  # what went wrong, when something did
        tails = [f"rank {r}: ...{log.read_text()[-1500:]}" for r, log in enumerate(logs)]
        return "\n".join([repr(lines), *tails])

    try:
        out = ranks[1].stdout
        assert out is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(out.readline, "")))
        reader.daemon = True
        reader.start()

        def until(prefix: str, seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while not any(line.startswith(prefix) for line in lines):
                if time.monotonic() > deadline or ranks[1].poll() is not None:
                    return
                time.sleep(0.05)

        until("waiting", 60)  # imports and the first step
        assert "waiting\n" in lines, said()
        until("left", 10 if abortable else 4)  # the abort comes 0.5 s after "waiting"
        assert ranks[0].poll() is None, said()  # rank 0 is alive throughout
        # Read now: once rank 0 is killed below, rank 1's wait ends with a broken connection.
        left = [float(line.split()[1]) for line in list(lines) if line.startswith("left")]
    finally:
        for process in ranks:
            process.kill()
            process.wait()
    if abortable:
        assert "changed 2\n" in lines, said()  # both FSDP2 modules
        assert len(left) == 1 and 0.4 < left[0] < 10.0, said()
    else:  # waits in C++ past the abort (for as long as rank 0 lives)
        assert left == [], said()


@pytest.mark.parametrize(
    ("strategy", "persists", "dcp"),
    [("gemini", True, True), ("gemini", False, False), ("persistent", False, True)],
)
def test_a_warm_spare_imports_its_jobs_checkpointer_before_it_is_needed(
    strategy: str, persists: bool, dcp: bool
) -> None:
    """What a spare's first engine build would import lazily is imported while it waits: the
    engine, and DCP only when the job writes to the persistent tier (a fresh interpreter)."""
    import subprocess
    import sys

    from real.trainer.inprocess import checkpoint_modules

    modules = checkpoint_modules(strategy, persists)
    script = (
        "import sys\n"
        "from real.trainer.inprocess import prewarm\n"
        "before = set(sys.modules)\n"
        f"prewarm({modules!r})\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    engine = "real.engine.checkpointer" in out
    assert engine == (strategy == "gemini")
    assert ("torch.distributed.checkpoint" in out) == dcp
    if strategy == "gemini":  # the engine's persistent tier (the baseline's is its own)
        assert ("real.persistent.persister" in out) == persists


@pytest.mark.parametrize(
    ("strategy", "persists", "url", "s3"),
    [
        ("gemini", True, "s3://bucket/job", True),
        ("persistent", False, "s3://bucket/job", True),
        ("gemini", False, "s3://bucket/job", False),  # no persistent tier: nothing to open
        ("gemini", True, "/tmp/job/persistent", False),
        ("gemini", True, None, False),
    ],
)
def test_a_warm_spare_imports_its_storage_filesystem(
    strategy: str, persists: bool, url: str | None, s3: bool
) -> None:
    """An object store's fsspec filesystem (s3fs and botocore: 0.4 s) is imported while the
    spare waits, not when its first engine opens the tier during a recovery."""
    from real.trainer.inprocess import checkpoint_modules

    assert ("s3fs" in checkpoint_modules(strategy, persists, url)) == s3


def _world_of_one(tmp_path: Any, name: str) -> None:
    store = dist.FileStore(str(tmp_path / name), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)


def test_attach_refuses_a_model_wrapped_or_sharded_in_an_earlier_attempt(tmp_path: Any) -> None:
    """A DDP wrapper or FSDP2 sharding kept across attempts still holds the old process group:
    its first collective would fail in every later attempt, as a peer's failure would (the
    survivor parked and rejoined forever). ``attach`` names the mistake instead."""
    import torch
    from torch.distributed.fsdp import fully_shard

    from real.runtime.procgroup import leave_process_group

    wrapped: Any = None
    sharded: Any = None
    _world_of_one(tmp_path, "first")
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
        sharded = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
        fully_shard(sharded[0])
        fully_shard(sharded)
        for model in (wrapped, sharded):  # made over this attempt's group: fine
            require_live_groups(model)
        require_live_groups(torch.nn.Linear(4, 4))  # no group at all: fine
        leave_process_group(together=True)  # the attempt ends; the models are kept
        _world_of_one(tmp_path, "second")
        for model, what in ((wrapped, "DDP wrapper"), (sharded, "FSDP2 sharding")):
            with pytest.raises(StaleProcessGroupError, match=f"{what} belongs to") as raised:
                require_live_groups(model)
            assert not is_peer_failure(raised.value)  # a bug: the process exits, not parks
            assert "Build outside, wrap inside" in str(raised.value)
    finally:
        del wrapped, sharded
        leave_process_group(together=True)
