"""Measuring this machine for the simulator: bandwidths, start-up costs, the iteration profile.

The simulator's predictions are only as good as its inputs. ``measure`` runs small benchmarks
of the things a recovery and a checkpoint spend their time on, on the machine the real harness
runs on, and returns the ``measurements`` mapping of a calibration file (see
``analysis/calibration.py`` for the format and how each figure becomes a scenario override):

- **memory copy**: one thread copying a large tensor into a pre-faulted one (checkpoint
  capture and local restore are memory copies);
- **loopback TCP**: one process sending to another over a TCP socket on this host (the
  emulated cluster's links; replication and peer retrieval use them);
- **storage**: writing a file and ``fsync``-ing it in the run folder's filesystem, then reading
  it back after asking the kernel to drop it from the page cache (the persistent tier);
- **process start**: a fresh Python importing torch (a cold replacement node's trainers);
- **cold restart, end to end**: spawning the scenario's ranks until their gloo process group
  has formed (``cold_restart_s``: what a restart cost before in-process recovery), and the
  process group formation alone;
- **in-process recovery** (``measure_recovery``, also what ``gemini-ckpt run`` measures
  first): two warm ranks time a spare's join and a survivor's rejoin, a collective failing when
  a peer vanishes, the teardown that follows and loading a state; a lost node's processes,
  started as a node agent starts them, killed while the survivors train on
  (``_lost_node_rounds``); a probe round trip and the notice of a killed child;
- **iteration profile**: the scenario's model trained with DDP on its world size for a few
  iterations, timed, with the communication profiled by ``real.engine.profiler.CommProfiler``
  so the simulator gets the same compute / communication phases.

Every benchmark is bounded in size and time; ``quick=True`` shrinks them for tests.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import os
import platform
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from benchmarks.exit_chain import ExitChainProbe
from real.engine.shm import SHM_DIR
from real.runtime.env import GEMINI_CALIBRATE_SCRATCH
from real.runtime.processes import end_with_parent, free_port, resident_bytes

log = logging.getLogger(__name__)

MB = 1 << 20


@dataclass(frozen=True)
class CalibrationOptions:
    """What to measure and how hard.

    Attributes:
        scenario: the scenario file whose model and world size are profiled.
        overrides: ``key=value`` overrides of that scenario.
        directory: a folder in the filesystem whose storage bandwidth is measured.
        ranks: world size for the restart and iteration benchmarks (default: the scenario's
            nodes x accelerators_per_node).
        iterations: iterations timed (after two warm-up iterations).
        quick: small buffers and few repetitions (tests).
        spare_warmup: also time a spare of the scenario's trainer getting warm
            (``spare_warmup_s``: seconds of the machine to itself).
    """

    scenario: Path
    overrides: tuple[str, ...] = ()
    directory: Path = Path(".")
    ranks: int | None = None
    iterations: int = 8
    quick: bool = False
    spare_warmup: bool = True


def _best_rate(run: Callable[[], float], repeats: int, size_bytes: int) -> float:
    """Bytes per second of the fastest of ``repeats`` runs (each returns its seconds)."""
    best = min(run() for _ in range(repeats))
    return size_bytes / max(best, 1e-9)


def memory_copy_gbyte_s(size_mb: int = 256, repeats: int = 5) -> float:
    """One thread copying ``size_mb`` between pre-faulted tensors, GB/s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        source = torch.ones(size_mb * MB, dtype=torch.uint8)
        target = torch.zeros_like(source)  # zeros_like touches every page: pre-faulted

        def once() -> float:
            start = time.perf_counter()
            target.copy_(source)
            return time.perf_counter() - start

        return _best_rate(once, repeats, size_mb * MB) / 1e9
    finally:
        torch.set_num_threads(threads)


def loopback_tcp_gbit_s(size_mb: int = 256, chunk_mb: int = 4) -> float:
    """A sender thread to a receiver thread over TCP on 127.0.0.1, Gbit/s."""
    total = size_mb * MB
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = 0

    def receive() -> None:
        nonlocal received
        connection, _ = server.accept()
        with connection:
            buffer = bytearray(chunk_mb * MB)
            view = memoryview(buffer)
            while received < total:
                count = connection.recv_into(view)
                if count == 0:
                    break
                received += count

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    payload = bytes(chunk_mb * MB)
    try:
        with socket.create_connection(("127.0.0.1", port)) as client:
            start = time.perf_counter()
            for _ in range(size_mb // chunk_mb):
                client.sendall(payload)
            thread.join(timeout=60)
            elapsed = time.perf_counter() - start
    finally:
        server.close()
    return received * 8 / max(elapsed, 1e-9) / 1e9


def storage_gbit_s(directory: Path, size_mb: int = 256, chunk_mb: int = 8) -> tuple[float, float]:
    """(write, read) bandwidth of a file in ``directory``, Gbit/s.

    The write includes ``fsync``; before the read the file is dropped from the page cache with
    ``posix_fadvise(DONTNEED)`` where the platform has it (else the read may come from memory).
    """
    directory.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(chunk_mb * MB)
    handle, name = tempfile.mkstemp(prefix=".calibrate-", dir=directory)
    path = Path(name)
    try:
        start = time.perf_counter()
        with os.fdopen(handle, "wb") as out:
            for _ in range(size_mb // chunk_mb):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        write_s = time.perf_counter() - start
        with open(path, "rb") as source:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(source.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            start = time.perf_counter()
            while source.read(chunk_mb * MB):
                pass
            read_s = time.perf_counter() - start
    finally:
        path.unlink(missing_ok=True)
    size_bits = size_mb * MB * 8
    return size_bits / max(write_s, 1e-9) / 1e9, size_bits / max(read_s, 1e-9) / 1e9


def process_start_s(repeats: int = 3) -> float:
    """Median time to start Python and import torch (and torch.distributed), s."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import torch, torch.distributed"],
            check=True,
            timeout=300,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


SPARE_WARM_TIMEOUT_S = 300.0


def spare_warmup_s(scenario_path: Path, overrides: Sequence[str]) -> float:
    """From the start of a spare of the scenario's trainer (the built-in one or
    ``training.entrypoint``), as a node agent starts one (``Worker``, at the trainers'
    niceness: a spare taken by a crash is raised to it), until it says it is warm, s."""
    import secrets

    from real.agent.trainer_processes import TrainerSpec, Worker
    from real.runtime.env import GEMINI_RUN_DIR, GEMINI_TOKEN
    from shared.scenario_loader import load_scenario

    parsed = load_scenario(scenario_path, list(overrides))
    with tempfile.TemporaryDirectory(prefix=".calibrate-spare-") as folder:
        spec = TrainerSpec.of_scenario(scenario_path, overrides, parsed, Path(folder))
        env = {GEMINI_TOKEN: secrets.token_hex(16), GEMINI_RUN_DIR: folder}
        began = time.perf_counter()
        worker = Worker(spec, "calibrate", 0, env)
        try:
            warm = worker.wait_until(lambda: worker.state == "ready", SPARE_WARM_TIMEOUT_S)
            took = time.perf_counter() - began
            if not warm:
                raise RuntimeError(
                    f"a spare of {scenario_path.name}'s trainer was not warm after "
                    f"{SPARE_WARM_TIMEOUT_S:.0f} s ({worker.state}); its log: {worker.log_path}"
                )
        finally:
            worker.stop(5.0)
    return took


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc/PID/stat``), s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BackgroundProbe:
    """A process that spins where a spare warming in the background runs: below everything
    else (``BACKGROUND_NICENESS``, for its session's autogroup too, as the agents start such
    a spare). ``share()`` is the part of one CPU it got since the previous call (or its
    start): what the processes running beside it left to a warming spare."""

    def __init__(self) -> None:
        from real.agent.trainer_processes import BACKGROUND_NICENESS, set_autogroup_niceness

        parent = os.getpid()
        self._process = subprocess.Popen(
            ["nice", "-n", str(BACKGROUND_NICENESS), sys.executable, "-c", "while True: pass"],
            start_new_session=True,  # its own autogroup, whose niceness is set next
            stdin=subprocess.DEVNULL,
            # Its own session: no terminal's Ctrl-C reaches it, so it ends with this process
            # however that ends (a calibration killed outright left it spinning).
            preexec_fn=lambda: end_with_parent(signal.SIGKILL, parent),
        )
        set_autogroup_niceness(self._process.pid, BACKGROUND_NICENESS)
        self._mark = (time.perf_counter(), _cpu_seconds(self._process.pid))

    @property
    def pid(self) -> int:
        return self._process.pid

    def share(self) -> float:
        now, cpu = time.perf_counter(), _cpu_seconds(self._process.pid)
        (then, before), self._mark = self._mark, (now, cpu)
        return min(1.0, max(0.0, (cpu - before) / max(now - then, 1e-9)))

    def close(self) -> None:
        self._process.kill()
        self._process.wait(timeout=10)


def _rank_main(
    rank: int,
    world: int,
    port: int,
    scenario: str,
    overrides: Sequence[str],
    iterations: int,
    results: Any,
) -> None:
    """One spawned rank: form the process group, then time the scenario's model."""
    _leave_interrupts_to_the_parent()
    import torch.distributed as dist

    from real.engine.profiler import CommProfiler
    from real.runtime.procgroup import leave_process_group
    from real.trainer.workload.trainer import Trainer, TrainerConfig
    from shared.scenario_loader import load_scenario

    begin = time.perf_counter()
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    dist.barrier()
    ready_wall = time.time()
    group_s = time.perf_counter() - begin
    loaded = load_scenario(scenario, overrides)
    config = TrainerConfig.from_scenario(loaded)
    trainer = Trainer(config, rank=rank, world_size=world)
    profiler = CommProfiler(iterations)
    if isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel):
        profiler.attach(trainer.model)
    for _ in range(2):  # warm-up: first touches, allocator, DDP's first-iteration bucketing
        trainer.step()
    lengths = []
    for _ in range(iterations):
        started = profiler.iteration_begins()
        trainer.step()
        lengths.append(time.perf_counter() - started)
    profiler.iteration_begins()  # closes the last profiled iteration
    dist.barrier()
    spans = [(s.start_s, s.duration_s) for s in (profiler.spans or ())]
    results.put(
        {
            "rank": rank,
            "ready_wall": ready_wall,
            "group_s": group_s,
            "iteration_s": statistics.median(lengths),
            "spans": spans,
        }
    )
    del trainer, profiler
    leave_process_group(together=True)


def _phases(iteration_s: float, spans: Sequence[tuple[float, float]]) -> list[list[object]]:
    """Alternating compute (network idle) and communication phases of one iteration."""
    phases: list[list[object]] = []
    cursor = 0.0
    for start, duration in sorted(spans):
        if start > cursor:
            phases.append(["communication", start - cursor])
        if duration > 0:
            phases.append(["compute", duration])
        cursor = max(cursor, start + duration)
    if iteration_s > cursor:
        phases.append(["communication", iteration_s - cursor])
    return [[kind, round(float(d), 9)] for kind, d in phases if float(d) > 1e-7]  # type: ignore[arg-type]


def _leave_interrupts_to_the_parent() -> None:
    """In a rank process: ignore Ctrl-C, which the terminal sends to every process of its
    group. The parent stops its ranks itself (``_reap``); a rank that took the interrupt would
    print its traceback, and its peers theirs for the broken group. A parent killed outright
    takes its ranks with it (they would wait in their collectives for minutes). Temporary
    files go to the parent's scratch folder (``_rank_scratch``), which the parent removes
    however its ranks end (``_reap``'s SIGTERM skips a rank's own clean-up)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = mp.parent_process()
    end_with_parent(signal.SIGKILL, parent.pid if parent is not None else None)
    scratch = os.environ.get(GEMINI_CALIBRATE_SCRATCH)
    if scratch:
        tempfile.tempdir = scratch


def _set_environ(name: str, value: str) -> Callable[[], None]:
    """Set environment variable ``name``; returns what puts its earlier value (or absence)
    back."""
    previous = os.environ.get(name)
    os.environ[name] = value

    def restore() -> None:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous

    return restore


@contextlib.contextmanager
def _rank_scratch() -> Iterator[None]:
    """A scratch folder for the rank processes started inside the block (their temporary
    files: ``_leave_interrupts_to_the_parent``), removed with whatever they left in it."""
    with tempfile.TemporaryDirectory(prefix="gemini-calibrate-ranks-") as scratch:
        restore = _set_environ(GEMINI_CALIBRATE_SCRATCH, scratch)
        try:
            yield
        finally:
            restore()


def _next_report(
    results: Any, processes: Sequence[Any], deadline: float, ranks_of: str
) -> dict[str, Any] | None:
    """The next report of the rank processes on ``results``, None after 5 s without one.

    Raises:
        TimeoutError: past ``deadline`` (monotonic seconds).
        RuntimeError: a rank exited with an error (``ranks_of`` names them in both).
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"{ranks_of} ranks did not finish in time")
    try:
        report: dict[str, Any] = results.get(timeout=min(remaining, 5.0))
        return report
    except queue.Empty:  # check that nobody died
        dead = [p for p in processes if p.exitcode not in (None, 0)]
        if dead:
            raise RuntimeError(
                f"{ranks_of} rank exited with code {dead[0].exitcode}; run with -v for its output"
            ) from None
        return None


def restart_and_iterations(options: CalibrationOptions, world: int) -> dict[str, Any]:
    """Spawn ``world`` ranks: end-to-end restart time, group formation, iteration profile."""
    with _rank_scratch():
        return _restart_and_iterations(options, world)


def _restart_and_iterations(options: CalibrationOptions, world: int) -> dict[str, Any]:
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    start_wall = time.time()
    processes = [
        context.Process(
            target=_rank_main,
            args=(
                rank,
                world,
                port,
                str(options.scenario),
                list(options.overrides),
                options.iterations,
                results,
            ),
            daemon=True,
        )
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    reports: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 600
        while len(reports) < world:
            report = _next_report(results, processes, deadline, "calibration")
            if report is not None:
                reports.append(report)
    finally:
        _reap(processes, grace_s=30.0 if len(reports) == world else 0.0)
    rank0 = next(r for r in reports if r["rank"] == 0)
    return {
        "restart_s": max(r["ready_wall"] for r in reports) - start_wall,
        "process_group_s": max(r["group_s"] for r in reports),
        "iteration_time_s": statistics.median(r["iteration_s"] for r in reports),
        "iteration_phases": _phases(rank0["iteration_s"], rank0["spans"]) or None,
    }


# --- recovery micro-measurements (``gemini-ckpt run`` calibrates with these first) -------------

MAX_RECOVERY_RANKS = 8
"""Ranks of the recovery micro-benchmark: the scenario's world size up to this many (forked
from a warm process, they start at once), so its group, its all-reduce and its ranks' share of
this host's CPUs are the run's."""

REJOINS = 3
"""Rejoins timed (their median is kept)."""

MIN_EXIT_DETECTIONS = 3
"""The fewest crashes timed beside the ranks (``exit_detection_s``) whose median is kept."""
SPARE_ROUNDS = 3
"""Spares' joins timed, each round in processes that never formed a group (a spare's first
join is the one it pays in a recovery, so a round cannot be repeated in one process): the
median of the rounds' slowest ranks is kept. One round alone moved the predicted restart
between 71 and 109 ms from one calibration to the next on this 2-core machine."""


def _join_group(rank: int, world: int, port: int, number: int, timeout_s: float) -> None:
    """Form a group as the harness's trainers do (``join_process_group``): through a
    rendezvous store that stays listening (the parent's, as a node agent's), under a prefix of
    its own; a ``tcp://`` group per join would time torch's ~0.6 s back-off whenever rank 0
    comes last, which the harness never pays."""
    from real.trainer.inprocess import RDZV_PREFIX_ENV, Assignment, join_process_group

    env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        RDZV_PREFIX_ENV: f"calibrate/{number}",
    }
    join_process_group(Assignment(attempt=number, env=env), "gloo", timeout_s)


def _spare_join(
    config: Any, rank: int, world: int, port: int, number: int, prepared: Any
) -> tuple[float, Any]:
    """A spare taking a dead rank: join group ``number`` and build the trainer around what it
    prepared while it waited (DDP skips its broadcast: the plan's checkpoint overwrites every
    rank; here every rank holds the same seeded weights anyway), until every rank has;
    returns (seconds, the trainer)."""
    import torch.distributed as dist

    from real.trainer.workload.trainer import Trainer

    began = time.perf_counter()
    _join_group(rank, world, port, number, 60.0)
    trainer = Trainer(config, rank=rank, world_size=world, restoring=True, prepared=prepared)
    dist.barrier()
    return time.perf_counter() - began, trainer


def _warm_rank(scenario: str, overrides: Sequence[str]) -> tuple[Any, Any, Any]:
    """In a rank process: pay what a warm spare has paid before it is needed; returns the
    scenario, its trainer's configuration and the DDP model prepared (None under FSDP2)."""
    from real.trainer.workload.trainer import Trainer, TrainerConfig
    from shared.scenario_loader import load_scenario

    # As the harness runs its trainers: one thread each (OMP_NUM_THREADS=1), and what the
    # warm process holds moved out of the collector's sight (real.trainer.inprocess.prewarm).
    torch.set_num_threads(1)
    gc.collect()
    gc.freeze()
    loaded = load_scenario(scenario, overrides)
    config = TrainerConfig.from_scenario(loaded)
    # What a warm spare builds while it waits (real.trainer.main: DDP, on the CPU).
    prepared = Trainer.prepare(config) if config.parallelism == "ddp" else None
    # And what an FSDP2 spare pays while it waits (``Trainer.warm_sharding``): the FSDP2
    # costs of ``_recovery_rank_main`` are then what a spare still pays at its attempt.
    Trainer.warm_sharding(TrainerConfig.from_scenario(_sharded(loaded)))
    return loaded, config, prepared


def _spare_rank_main(
    rank: int,
    world: int,
    port: int,
    scenario: str,
    overrides: list[str],
    number: int,
    results: Any,
    go: Any,
) -> None:
    """One rank of a further spare round (``SPARE_ROUNDS``): as warm as
    ``_recovery_rank_main``'s ranks are before their first join, then timed joining group
    ``number``."""
    _leave_interrupts_to_the_parent()
    _, config, prepared = _warm_rank(scenario, overrides)
    results.put({"rank": rank, "ready": True})
    go.wait(120)
    seconds, _trainer = _spare_join(config, rank, world, port, number, prepared)
    results.put({"rank": rank, "spare_join_s": seconds})
    _exit_without_destructors(results)


def _exit_without_destructors(results: Any) -> None:
    """End a rank process once ``results`` has carried its reports, without running
    destructors: freeing a DDP wrapper holds the GIL while its gloo group joins a worker thread
    that needs the GIL, a deadlock that stopped one calibration for minutes (2026-12-06)."""
    results.close()
    results.join_thread()  # the queue's feeder thread has written everything
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spare_rounds(options: CalibrationOptions, ranks: int, rounds: int) -> list[float]:
    """``rounds`` more spare rounds, each on ``ranks`` fresh ranks forked from this warm
    process; each round's slowest rank, s."""
    slowest = []
    # Group numbers after the first round's and its rejoins' (``_recovery_rank_main``).
    for number in range(1 + REJOINS, 1 + REJOINS + rounds):
        port = free_port()
        args = (port, str(options.scenario), list(options.overrides), number)
        with _forked_ranks(_spare_rank_main, ranks, port, args) as (processes, results, go):
            slowest.append(max(_round_results(results, go, processes, ranks)))
    return slowest


@contextlib.contextmanager
def _forked_ranks(
    target: Callable[..., None], ranks: int, port: int, args: tuple[Any, ...]
) -> Iterator[tuple[list[Any], Any, Any]]:
    """``ranks`` processes forked from this warm process, each running ``target(rank, ranks,
    *args, results, go)``, and the rendezvous store they form their groups through, on
    ``port``, made after the forks (its server thread is not forked into them). Yields
    (processes, results, go); then the ranks are reaped (with a grace period to end on their
    own unless the block raised) and the store closed."""
    import torch.distributed as dist

    context = mp.get_context("fork")
    results, go = context.Queue(), context.Event()
    processes = [
        context.Process(target=target, args=(rank, ranks, *args, results, go), daemon=True)
        for rank in range(ranks)
    ]
    with _rank_scratch():
        for process in processes:
            process.start()
        rendezvous = dist.TCPStore(  # type: ignore[attr-defined]
            "127.0.0.1", port, is_master=True, wait_for_workers=False
        )
        finished = False
        try:
            yield processes, results, go
            finished = True
        finally:
            _reap(processes, grace_s=30.0 if finished else 0.0)
            del rendezvous


def _round_results(results: Any, go: Any, processes: Sequence[Any], ranks: int) -> list[float]:
    """The ``spare_join_s`` of a spare round's ``ranks``; says go once all are ready."""
    ready = 0
    times: list[float] = []
    deadline = time.monotonic() + 300
    while len(times) < ranks:
        report = _next_report(results, processes, deadline, "spare round")
        if report is None:
            continue
        if report.get("ready"):
            ready += 1
            if ready == ranks:
                go.set()
        else:
            times.append(float(report["spare_join_s"]))
    return times


def _recovery_rank_main(
    rank: int,
    world: int,
    ports: tuple[int, ...],
    scenario: str,
    overrides: Sequence[str],
    iterations: int,
    results: Any,
    go: Any,
) -> None:
    """One rank of the recovery micro-benchmark, already started and warm (torch imported,
    a first optimizer step taken, and under DDP the model and optimizer state built: what a
    warm spare has paid before it is needed).

    Times, per rank: joining a fresh process group and building the scenario's trainer (a
    spare taking a dead rank: group, DDP wrapper around the prepared model, bucket warm-up;
    under FSDP2 the model too); a few iterations and
    their communication profile; leaving the group and rejoining a fresh one around the same
    model (a survivor's in-process rejoin, ``REJOINS`` times: the median); loading a copy of
    the state (the fixed part of a restore); the in-memory engine's costs (``_engine_costs``)
    and a save to and a restore from persistent storage (``_persistent_fixed_costs``). Then the last
    rank vanishes (``os._exit``) and
    rank 0 times how long its next all-reduce takes to fail, and how long tearing the broken group
    down takes (parking).
    """
    _leave_interrupts_to_the_parent()
    import datetime

    import torch.distributed as dist

    from real.engine.profiler import CommProfiler
    from real.trainer.inprocess import leave_attempt
    from real.trainer.workload.trainer import Trainer

    loaded, config, prepared = _warm_rank(scenario, overrides)
    timeout = datetime.timedelta(seconds=60)
    results.put({"rank": rank, "ready": True})
    # The parent says go once both ranks are warm: what follows is a restart, not a start.
    go.wait(120)

    def join(number: int) -> None:
        _join_group(rank, world, ports[0], number, timeout.total_seconds())

    spare_join_s, trainer = _spare_join(config, rank, world, ports[0], 0, prepared)
    del prepared
    profiler = CommProfiler(iterations)
    if isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel):
        profiler.attach(trainer.model)
    trainer.step()  # first touches, DDP's first-iteration bucketing
    lengths = []
    for _ in range(iterations):
        started = profiler.iteration_begins()
        trainer.step()
        lengths.append(time.perf_counter() - started)
    profiler.iteration_begins()
    spans = [(s.start_s, s.duration_s) for s in (profiler.spans or ())]
    state = trainer.state()
    copy = {
        "model": {k: v.clone() for k, v in state["model"].items()},
        "optim": _clone_tree(state["optim"]),
        **{k: v for k, v in state.items() if k not in ("model", "optim")},
    }
    began = time.perf_counter()
    trainer.load_state(copy)
    load_s = time.perf_counter() - began
    del profiler
    rejoins = []
    for number in range(1, 1 + REJOINS):  # a few rejoins: the median resists a moment of load
        dist.barrier()
        trainer.detach()
        began = time.perf_counter()
        leave_attempt(together=False)
        join(number)
        if config.parallelism == "zero3":
            # FSDP2's parameters belong to the old group's mesh: the harness builds a new
            # trainer around the new group, and so does this rejoin.
            del trainer
            trainer = Trainer(config, rank=rank, world_size=world)
        else:
            trainer.rejoin()
        dist.barrier()
        rejoins.append(time.perf_counter() - began)
    rejoin_s = statistics.median(rejoins)
    engine = _engine_costs(loaded, rank, world, trainer, join)
    persistent = _persistent_fixed_costs(trainer)
    report = {
        "rank": rank,
        "spare_join_s": spare_join_s,
        "rejoin_s": rejoin_s,
        "load_s": load_s,
        "iteration_s": statistics.median(lengths),
        "spans": spans,
        **engine,
        **persistent,
    }
    if rank == world - 1:
        results.put(report)
        time.sleep(0.3)  # the others' all-reduce is in flight by now
        results.put({"rank": rank, "vanished_at": time.time()})
        _exit_without_destructors(results)  # a peer that dies: its sockets close with it
    failed_at = _collective_failure_at()
    began = time.perf_counter()
    trainer.detach()
    leave_attempt(together=False)
    report["park_s"] = time.perf_counter() - began
    report["failed_at"] = failed_at
    results.put(report)
    _exit_without_destructors(results)


def _collective_failure_at(bound_s: float = 30.0) -> float | None:
    """When this survivor's all-reduce, launched as its peer is about to vanish, fails (None:
    it did not within ``bound_s``).

    As in a scenario, where a node is lost as an iteration ends and its peers train on, the
    survivor computes beside its collective and checks it between layers, as the harness's
    trainers do (``real.trainer.inprocess.check_abort``): the vanished peer's connections
    close only once its process is torn down (its memory unmapped first), and that teardown
    competes with the survivors' compute for the CPUs. Timed with the survivors idle inside
    a blocking all-reduce until 2026-12-07, it read 30-35 ms on our 2-core machine, where the
    harness's lost nodes were reported 104-144 ms after the loss (docs/analysis.md)."""
    import torch.distributed as dist

    work = dist.all_reduce(torch.zeros(1), async_op=True)
    layer = torch.ones(256, 256)
    ends = time.monotonic() + bound_s
    while not work.is_completed():
        if time.monotonic() > ends:
            return None
        torch.mm(layer, layer)  # one layer's compute
    try:
        work.wait()
    except Exception:  # gloo: "Connection closed by peer"
        return time.time()
    return None


LOST_NODE_ROUNDS = 3
"""Lost nodes timed by ``_lost_node_rounds`` (``collective_failure_s``: their median; two
with ``--quick``). One round alone read 40 ms and the next 70 ms for the quickstart on this
2-core machine (2026-12-07)."""

LOST_NODE_ITERATIONS = 2
"""Iterations a lost node's trainer and the survivors train together before the loss (the
first touches the buffers and DDP's bucketing, as a harness trainer's first iterations did)."""

LOST_NODE_GROUP = 200
"""The number of the group a lost-node round forms (each round on a rendezvous store of its
own): apart from the recovery round's numbers in the logs of the joins."""

LOST_NODE_WARM_S = 180.0
"""How long a lost node's fresh processes may take to start and warm (a Python process with
torch takes seconds to start on a loaded host) before the round gives up."""


ROLES = ("agent", "spare", "trainer")
"""A lost node's processes, in the order the injector kills them (a node's agent group, then
its trainers; the trainer's store dies with it here). The agent, whose teardown competes with
the others' for the CPUs, was left out until 2026-12-07 (``benchmarks.lost_node``)."""


def _survivor_rank_main(
    rank: int,
    _forked: int,
    world: int,
    port: int,
    scenario: str,
    overrides: Sequence[str],
    results: Any,
    go: Any,
) -> None:
    """A survivor of ``_lost_node_rounds``: warm as a spare, joins the round's group with the
    others and the lost node's trainer (the last of ``world`` ranks), trains with them, then
    computes beside an all-reduce until it fails (``_collective_failure_at``). Scheduled as a
    harness trainer is (``_as_harness_trainer``)."""
    _leave_interrupts_to_the_parent()
    _as_harness_trainer()
    import torch.distributed as dist

    loaded, config, prepared = _warm_rank(scenario, overrides)
    results.put({"rank": rank, "ready": True})
    go.wait(LOST_NODE_WARM_S)
    _, trainer = _spare_join(config, rank, world, port, LOST_NODE_GROUP, prepared)
    with _trained_before_loss(loaded, rank, world, trainer):
        dist.barrier()
        results.put({"rank": rank, "failed_at": _collective_failure_at()})
    _exit_without_destructors(results)


@contextlib.contextmanager
def _trained_before_loss(
    scenario: Any, rank: int, world: int, trainer: Any, prefix: str | None = None
) -> Iterator[None]:
    """Train ``LOST_NODE_ITERATIONS`` with every rank of the lost-node round, each checkpointed
    as the scenario's trainers checkpoint: under Gemini with an engine and a node store of
    this rank's own (``_own_node_store``; ``prefix``: its slot files'), so the loss comes as
    the last save's replicas are still on their way, as the harness's injector strikes at
    the end of an iteration, after its save. The block runs with the store (and the engine)
    still up."""
    if scenario.checkpoint.strategy != "gemini":
        for _ in range(LOST_NODE_ITERATIONS):
            trainer.step()
        yield
        return
    with _own_node_store(rank, world, prefix) as build:
        engine, _ = build(scenario, trainer.state)
        for iteration in range(1, 1 + LOST_NODE_ITERATIONS):
            trainer.step()
            engine.save(iteration, trainer.state())
        yield


def _as_harness_trainer() -> None:
    """In a rank process: be scheduled as a harness trainer is, in a session of its own (a
    scheduling group of its own where the kernel groups processes by session:
    ``real.agent.trainer_processes.set_autogroup_niceness``) at the trainers' niceness. A
    dying process's teardown competes with the survivors for the CPUs: forked ranks left in
    the calibration's session would weigh as one group against the lost node's processes,
    each in a group of its own."""
    from real.agent.trainer_processes import TRAINER_NICENESS, set_autogroup_niceness

    with contextlib.suppress(OSError):  # already a session leader
        os.setsid()
    os.nice(TRAINER_NICENESS)
    set_autogroup_niceness(os.getpid(), TRAINER_NICENESS)


class _LostNode:
    """A lost node's agent, warm spare and trainer (``benchmarks.lost_node``), fresh processes
    in sessions of their own, the spare and the trainer at the trainers' niceness, as the
    launcher starts an agent and the agent its trainers; :meth:`kill` loses them as the
    injector loses a node."""

    def __init__(self, options: CalibrationOptions, world: int, port: int) -> None:
        from real.agent.trainer_processes import TRAINER_NICENESS, set_autogroup_niceness

        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.lines: dict[str, queue.Queue[str]] = {}
        # Its store's slot files, which a store killed outright leaves in /dev/shm.
        self.prefix = f"gemini-calibrate-lost-{os.getpid()}-{port}"
        # Temporary files (its store's ready file) and the processes' output go to the
        # scratch folder, which the calibration removes: a process killed outright cannot.
        scratch = Path(os.environ.get(GEMINI_CALIBRATE_SCRATCH) or tempfile.gettempdir())
        self.logs = {role: scratch / f"lost-node-{port}-{role}.log" for role in ROLES}
        for role in ROLES:
            # The agent starts trainers and spares at theirs; the launcher, the agent at the
            # default niceness.
            niced = role != "agent"
            command = [
                *(("nice", "-n", str(TRAINER_NICENESS)) if niced else ()),
                sys.executable,
                "-m",
                "benchmarks.lost_node",
                f"--role={role}",
                f"--scenario={options.scenario}",
                *(f"--set={item}" for item in options.overrides),
                f"--world={world}",
                f"--port={port}",
                f"--parent={os.getpid()}",
                f"--prefix={self.prefix}",
            ]
            with open(self.logs[role], "ab") as log_file:
                self.processes[role] = subprocess.Popen(
                    command,
                    env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                    text=True,
                    start_new_session=True,  # the terminal's Ctrl-C is the calibration's
                )
            if niced:
                set_autogroup_niceness(self.processes[role].pid, TRAINER_NICENESS)
            self.lines[role] = queue.Queue()
            threading.Thread(
                target=_read_lines,
                args=(self.processes[role], self.lines[role]),
                name=f"lost-node-{role}",
                daemon=True,
            ).start()

    def wait_for(self, role: str, stage: str, deadline: float) -> None:
        """Until ``role`` says ``stage``. Raises RuntimeError if it ended first, TimeoutError
        past ``deadline`` (monotonic seconds)."""
        while True:
            try:
                line = self.lines[role].get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"the lost node's {role} did not say {stage!r} in time"
                ) from None
            if not line:
                code = self.processes[role].wait(5)
                tail = self.logs[role].read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(
                    f"the lost node's {role} ended (code {code}) before {stage!r}: "
                    + (" | ".join(tail) or "no output")
                )
            if line.strip() == stage:
                return

    def kill(self) -> float:
        """Lose the node as the injector does: SIGKILL the agent, the spare, then the trainer
        with its store (its process group), then reap them and remove the store's slot files, while
        the survivors find the loss; returns the wall time just before the first signal."""
        lost_at = time.time()
        for process in self.processes.values():
            if process.poll() is None:  # never a group whose leader we reaped: its PID is free
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for path in SHM_DIR.glob(f"{self.prefix}-*"):
            path.unlink(missing_ok=True)
        return lost_at

    def close(self) -> None:
        """Kill and reap whatever is left, and remove what its store left."""
        self.kill()
        for process in self.processes.values():
            if process.stdout is not None:
                process.stdout.close()


def _read_lines(process: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    """Every line ``process`` writes to its stdout onto ``lines``, then "" at its end."""
    assert process.stdout is not None
    with contextlib.suppress(OSError, ValueError):
        for line in process.stdout:
            lines.put(line)
    lines.put("")


class LostNodeRound(NamedTuple):
    """One round of ``_lost_node_rounds``."""

    seconds: float
    """From the kill to the first survivor's failure."""
    trainer_anon_bytes: int | None
    """What the lost trainer held of its own just before the kill (``RssAnon``; None where
    /proc does not say): the pages whose teardown the survivors wait for."""


def _lost_node_rounds(
    options: CalibrationOptions, ranks: int, rounds: int = LOST_NODE_ROUNDS
) -> list[LostNodeRound]:
    """A lost node's collective failure, ``rounds`` times: ``ranks - 1`` survivors forked
    from this warm process and, as their last rank, a trainer started as the harness starts
    one, with its node's warm spare and agent (``benchmarks.lost_node``: fresh processes,
    each owning its pages). Once they have trained together, the survivors compute beside
    an all-reduce and the node's processes are killed at once. Each round's first survivor
    failure after the kill (the harness's detector probes on the first suspect record), with
    what the lost trainer held."""
    with _rank_scratch():
        return [r for _ in range(rounds) if (r := _lost_node_round(options, ranks)) is not None]


def _lost_node_round(options: CalibrationOptions, ranks: int) -> LostNodeRound | None:
    """One round of ``_lost_node_rounds``; None if no survivor's all-reduce failed."""
    port = free_port()
    node = _LostNode(options, ranks, port)
    try:
        deadline = time.monotonic() + LOST_NODE_WARM_S
        for role in ROLES:
            node.wait_for(role, "warm", deadline)
        args = (ranks, port, str(options.scenario), list(options.overrides))
        with _forked_ranks(_survivor_rank_main, ranks - 1, port, args) as (
            processes,
            results,
            go,
        ):
            ready = 0
            while ready < ranks - 1:
                if _next_report(results, processes, deadline, "lost node") is not None:
                    ready += 1
            go.set()
            # At once: the last save's replicas are still on their way, as when the
            # injector strikes (the survivors launch their all-reduce as they leave the
            # barrier, and whenever they do it fails only once the node's sockets close).
            node.wait_for("trainer", "trained", time.monotonic() + 120)
            held = resident_bytes(node.processes["trainer"].pid)  # ``nice`` exec'd it
            lost_at = node.kill()
            failed: list[float] = []
            while len(failed) < ranks - 1:
                report = _next_report(results, processes, deadline + 120, "lost node")
                if report is not None:
                    failed.append(report["failed_at"] or float("inf"))
    finally:
        node.close()
    if min(failed) == float("inf"):
        return None
    return LostNodeRound(max(0.0, min(failed) - lost_at), held["anon"] if held else None)


ENGINE_ITERATIONS = 4
"""Iterations timed with a checkpoint each (``engine_iteration_s``, their median)."""

RESTORE_ROUNDS = 3
"""Restores timed from local memory and from a peer, each with an engine of its own as after a
failure (``engine_restore_fixed_s``, ``engine_restore_peer_fixed_s``: their medians). One
restore alone read 29.8 ms in one calibration of the quickstart and 12.4 ms in the next on this
2-core machine, and moved the predicted crash downtime by 17 ms."""


def _restore_rounds(
    build: Callable[[], Any],
    timed: Callable[[Any, int | None], float | None],
    fetcher: int,
    rounds: int = RESTORE_ROUNDS,
) -> tuple[Any, float | None, float | None]:
    """``rounds`` restores from local memory, each with a new engine (``build()``) after the
    one before was closed as a failure closes it, and after each a restore in which node
    ``fetcher`` fetches from a peer, with a new engine after a plain close: ``timed(engine,
    None)`` and ``timed(engine, fetcher)`` time one. The engine in use before was closed by
    the caller. Returns the last engine (open) and the medians of the two kinds, None where
    nothing was committed to restore (``timed`` returned None)."""
    local: list[float] = []
    peer: list[float] = []
    engine: Any = None
    for _ in range(rounds):
        if engine is not None:
            engine.close(abandon=True)
        engine = build()
        if (seconds := timed(engine, None)) is not None:
            local.append(seconds)
        engine.close(abandon=False)
        engine = build()
        if (seconds := timed(engine, fetcher)) is not None:
            peer.append(seconds)
    return (
        engine,
        statistics.median(local) if local else None,
        statistics.median(peer) if peer else None,
    )


@contextlib.contextmanager
def _own_node_store(
    rank: int, world: int, prefix: str | None = None
) -> Iterator[Callable[..., tuple[Any, float]]]:
    """A node store of this rank's own, a process of its own as a node agent starts one
    (``StoreProcess``: the engine's connections, replicas and restores cross processes, and the
    store takes CPU beside the trainers, as in the harness; the stores' addresses and the
    job's secret are exchanged over the process group), and a function that builds an
    in-memory checkpoint engine against it: ``build(scenario, template) -> (engine, build
    seconds)``. Engines built one after another share the store and the run folder, as a
    trainer's successive attempts do. What they persist is signed with a key of this
    benchmark's own (``GEMINI_PERSISTENT_KEY``: no key file is created for it). The store
    stops on the way out. ``prefix``: its slot files' (default: the store's own)."""
    import secrets

    import torch.distributed as dist

    from real.engine import GeminiCheckpointer
    from real.engine.process import StoreProcess
    from real.engine.protocol import make_token
    from real.persistent.metadata import KEY_ENV

    tokens: list[Any] = [None] * world
    dist.all_gather_object(tokens, (make_token(), secrets.token_hex(16)))
    token, key = tokens[0]
    restore_key = _set_environ(KEY_ENV, key)
    store = StoreProcess(rank, token, prefix=prefix)
    store.start()
    try:
        addresses: list[Any] = [None] * world
        dist.all_gather_object(addresses, store.address)
        with tempfile.TemporaryDirectory(prefix=".calibrate-engine-") as run_dir:

            def build(scenario: Any, template: Callable[[], Any]) -> tuple[Any, float]:
                began = time.perf_counter()
                engine = GeminiCheckpointer(
                    scenario=scenario,
                    rank=rank,
                    world_size=world,
                    node=rank,
                    local_rank=0,
                    run_dir=run_dir,
                    token=token,
                    store_addresses=list(addresses),
                    template=template,
                )
                return engine, time.perf_counter() - began

            yield build
    finally:
        store.stop()
        restore_key()


def _engine_costs(
    scenario: Any, rank: int, world: int, trainer: Any, join: Callable[[int], None]
) -> dict[str, float]:
    """Build this rank's in-memory checkpoint engine, train ``ENGINE_ITERATIONS`` + 1
    iterations that checkpoint every time, close it as a failure does (``abandon``), then
    build the next attempt's engine and restore with it: what a restart's engine build, an
    iteration with its checkpoint, a stop's engine teardown and a restore's fixed cost take,
    s. Under DDP, then, a Gemini survivor's whole rejoin as the harness makes one
    (``_engine_rejoins``: ``engine_rejoin_s``). ``join(number)`` forms process group
    ``number``.

    Every rank runs a node store process of its own (``_own_node_store``). Empty for
    strategies other than Gemini's, or when the engine cannot be built here (the reason is
    logged).
    """
    if scenario.checkpoint.strategy != "gemini":
        return {}
    import importlib

    import torch.distributed as dist

    from real.trainer.inprocess import checkpoint_modules

    # The harness's warm spares import the job's checkpointer before they are needed
    # (``prewarm``): the build timed here, like theirs, does not import it.
    config = scenario.checkpoint
    for name in checkpoint_modules(config.strategy, config.persists_from_memory):
        importlib.import_module(name)
    try:
        with _own_node_store(rank, world) as build:
            engine, build_s = build(scenario, trainer.state)
            # Iterations that checkpoint every time, as Gemini's trainers do: on a host
            # without accelerators the capture and the replication take CPU from training.
            lengths, steps = [], []
            for iteration in range(1, 2 + ENGINE_ITERATIONS):
                began = time.perf_counter()
                trainer.step()
                stepped = time.perf_counter()
                engine.save(iteration, trainer.state())
                if iteration > 1:  # the first one fills the slots
                    lengths.append(time.perf_counter() - began)
                    # The step without its save, as the harness reports a run's iteration
                    # without checkpoints (the replication still shares the CPU with it).
                    steps.append(stepped - began)
            engine.wait(30.0)
            committed = engine.last_committed
            dist.barrier()
            began = time.perf_counter()
            engine.close(abandon=True)
            close_s = time.perf_counter() - began
            # The harness restores with the next attempt's engine, new in the same process;
            # and a lost node's replacement's restore from a peer (the last node's), with the
            # attempt's engine after that one, as the harness's next attempt builds one.
            engine, restore, peer_restore = _restore_rounds(
                lambda: build(scenario, trainer.state)[0],
                lambda engine, fetcher: _engine_restore_fixed_s(
                    engine, trainer, world, committed, fetcher=fetcher
                ),
                fetcher=world - 1,
            )
            rejoin = None
            if scenario.training.parallelism == "ddp":
                engine, rejoin = _engine_rejoins(scenario, engine, trainer, build, join)
            engine.close(abandon=True)
        dist.barrier()
    except Exception as error:  # a micro-benchmark that cannot run says so and is left out
        log.warning("engine micro-benchmark skipped: %s", error)
        return {}
    out = {
        "engine_build_s": build_s,
        "engine_close_s": close_s,
        "engine_iteration_s": statistics.median(lengths),
        "engine_step_s": statistics.median(steps),
        **({} if restore is None else {"engine_restore_fixed_s": restore}),
        **({} if peer_restore is None else {"engine_restore_peer_fixed_s": peer_restore}),
        **({} if rejoin is None else {"engine_rejoin_s": rejoin}),
    }
    if scenario.training.parallelism == "ddp":  # the reference shapes: FSDP2's restore too
        out.update(_fsdp2_costs(scenario, rank, world) or {})
    return out


ENGINE_REJOINS = 3
"""Gemini survivors' rejoins timed with the engine (``engine_rejoin_s``: their median)."""


def _engine_rejoins(
    scenario: Any,
    engine: Any,
    trainer: Any,
    build: Callable[..., tuple[Any, float]],
    join: Callable[[int], None],
) -> tuple[Any, float]:
    """A Gemini survivor's rejoin as the harness makes one, ``ENGINE_REJOINS`` times: an
    iteration checkpointed (replicated, persisted if due), the attempt's engine closed as a
    failure closes it and its groups left without waiting (the stop, not timed), then the
    timed part: a fresh group, the model re-wrapped, the next attempt's engine built, until
    every rank has. The rejoin in ``_recovery_rank_main`` runs with no engine; here the node
    stores and the closed engine's teardown share the CPU with it, as after a crash in the
    harness (its survivors' rejoins took about twice that rejoin's time there, 2026-12-06).
    It starts at once after the teardown, whose release of the closed engine's gloo group
    (19-45 ms, on a thread of its own) still runs; the harness's survivors start only after
    the root's decision. Recorded in the calibration; no rule uses it (taken for Gemini's
    restart, it over-predicted the validation's restarts: docs/analysis.md). Returns (the last
    engine built, the median seconds)."""
    import torch.distributed as dist

    from real.trainer.inprocess import leave_attempt

    seconds = []
    for number in range(ENGINE_REJOIN_GROUPS, ENGINE_REJOIN_GROUPS + ENGINE_REJOINS):
        trainer.step()
        engine.save(number, trainer.state())
        # Replicated and persisted: a crash comes between checkpoints, as a rule (one in a
        # persist would add that write's teardown to the rejoin).
        engine.wait(30.0)
        if engine.persistent is not None:
            engine.persistent.persister.wait(30.0)
        dist.barrier()
        engine.close(abandon=True)
        # The harness's survivor drops its failed engine before it parks (``run_attempts``
        # clears the traceback that holds it): freeing it here, after the next engine was
        # built, put 23-49 ms of that teardown inside the timed part (2026-12-06).
        del engine
        trainer.detach()
        leave_attempt(together=False)
        began = time.perf_counter()
        join(number)
        trainer.rejoin()
        engine, _ = build(scenario, trainer.state)
        dist.barrier()
        seconds.append(time.perf_counter() - began)
    return engine, statistics.median(seconds)


ENGINE_REJOIN_GROUPS = 100
"""The number of the first group ``_engine_rejoins`` forms (after those of the rejoins
without an engine, on the same rendezvous store)."""

FSDP2_SAVES = 2
"""Iterations an FSDP2 engine checkpoints before its restore is timed (the first fills the
slots)."""


def _sharded(scenario: Any) -> Any:
    """The scenario trained with FSDP2 (``parallelism: zero3``), whatever its own."""
    training = scenario.training.model_copy(update={"parallelism": "zero3"})
    return scenario.model_copy(update={"training": training})


def _fsdp2_costs(scenario: Any, rank: int, world: int) -> dict[str, float] | None:
    """The engine's restore as the harness's FSDP2 trainers make one
    (``engine_restore_fixed_zero3_s``), and what a new process's first FSDP2 state and first
    FSDP2 trainer cost beyond later ones (``fsdp2_first_state_s``, ``fsdp2_first_build_s``),
    s; None if it cannot run here (the reason is logged).

    An FSDP2 module's parameters belong to the device mesh of the group it was sharded on, so
    after a failure the harness builds a new trainer around the new group and restores into
    *its* state: the engine copies the shards into the fresh DTensors, the optimizer's state
    (which a fresh AdamW has not allocated yet) comes back in tensors of its own, and the
    trainer loads it all through DCP's state-dict helpers. That path costs several times the
    DDP one (measured here as ``engine_restore_fixed_s`` is: every rank at once, with the next
    attempt's engine, the copy of the bytes left out), so the simulator takes it for
    ``parallelism: zero3``.

    Every recovery puts at least one new process on the path (a spare taking a crashed rank or
    a lost node's), and the recovery waits for its slowest rank: the spare. The first time a
    process asks an FSDP2 trainer for its state, torch builds the optimizer's state through a
    step on DTensors whose dispatch it has never seen, which costs several times what it does
    in a process that has sharded a model before (0.22-0.24 s against 0.02-0.05 s on the
    validation's FSDP2 model, 2 ranks). The restore below runs in a process that has, so the
    difference is measured on its own (``_first_state_extra_s``) and returned beside it: only
    the new process pays it, while the survivors wait, so the laws scale it by one process's
    share of the CPUs, not by every rank's (``analysis.calibration.law_costs``). Its first FSDP2
    trainer likewise costs more to build than one built after it (the first sharding of a
    module on a device mesh in the process): the difference is what a spare's join pays beyond
    the DDP build the join law measures. A warm spare pays part of both while it waits
    (``Trainer.warm_sharding``, on a group of its own); this process did the same before it
    joined, so both differences are what a warm spare still pays (measured 2026-12-05, 2 ranks
    of the validation's FSDP2 model: first state 0.07 s with it, 0.10-0.13 s without)."""
    import torch.distributed as dist

    from real.trainer.workload.trainer import Trainer, TrainerConfig

    sharded = _sharded(scenario)
    config = TrainerConfig.from_scenario(sharded)
    try:
        with _own_node_store(rank, world) as build:
            began = time.perf_counter()
            trainer = Trainer(config, rank=rank, world_size=world)  # this process's first
            first_build_s = time.perf_counter() - began
            began = time.perf_counter()
            trainer.state()  # this process's first FSDP2 state: what a spare's costs
            first_s = time.perf_counter() - began
            engine, _ = build(sharded, trainer.state)
            for iteration in range(1, 1 + FSDP2_SAVES):
                trainer.step()
                engine.save(iteration, trainer.state())
            engine.wait(30.0)
            committed = engine.last_committed
            dist.barrier()
            engine.close(abandon=True)
            del trainer, engine  # as the harness drops them, then builds the next attempt's
            began = time.perf_counter()
            fresh = Trainer(config, rank=rank, world_size=world)
            later_build_s = time.perf_counter() - began
            engine, _ = build(sharded, fresh.state)
            restore = _engine_restore_fixed_s(engine, fresh, world, committed)
            engine.close(abandon=True)
            del fresh, engine
            extra = _first_state_extra_s(first_s, Trainer(config, rank=rank, world_size=world))
        dist.barrier()
        if restore is None:
            return None
        return {
            "engine_restore_fixed_zero3_s": restore,
            "fsdp2_first_state_s": extra,
            "fsdp2_first_build_s": max(0.0, first_build_s - later_build_s),
        }
    except Exception as error:  # left out, with the reason
        log.warning("FSDP2 restore micro-benchmark skipped: %s", error)
        return None


def _first_state_extra_s(first_s: float, later: Any) -> float:
    """What a process's first ask for an FSDP2 trainer's state (``first_s``, timed on the
    first trainer it built) costs beyond the same ask of a ``later`` trainer built in the same
    process after it, s (never below zero). The first pays torch's first dispatch of the
    optimizer-state step on DTensors; a spare pays it during its restore."""
    began = time.perf_counter()
    later.state()
    return max(0.0, first_s - (time.perf_counter() - began))


def _engine_restore_fixed_s(
    engine: Any, trainer: Any, world: int, iteration: int | None, fetcher: int | None = None
) -> float | None:
    """A restore of ``iteration`` from local memory as the harness's trainers make one, every
    rank at once: the root's plan (every node its own memory), the engine's restore into the
    live state, then the trainer's load of it; minus the copy of the bytes (the simulator adds
    that at the copy bandwidth), s. None when nothing was committed to restore. With
    ``fetcher``, that node fetches its shard from the first peer holding its replica instead
    (a lost node's replacement), minus its receipt of the bytes into place (the simulator
    moves them over the links).

    Timed as the harness times a retrieval: from the last rank's start to the last rank's
    state, on the host's monotonic clock the ranks share (the slowest rank's own time, used
    until 2026-12-05, also counted its wait for the last rank to leave the barrier). And, as
    the harness's ranks do, each trains as soon as it has its state: the first to have it
    compute their step while the last still finish their restore, on the same CPUs."""
    import torch
    import torch.distributed as dist

    from real.engine.costs import difference
    from shared.recovery import RecoveryPlan, Source

    if iteration is None:
        return None
    sources = [Source(node, "local", node) for node in range(world)]
    if fetcher is not None:
        sources[fetcher] = Source(fetcher, "peer", engine.placement.peers_of(fetcher)[0])
    plan = RecoveryPlan(iteration, tuple(sources), False, "calibration: a restore")
    dist.barrier()
    before = engine.capturer.costs.snapshot()
    began = time.perf_counter()
    restored = engine.restore(plan=plan, into=trainer.state)
    if restored is not None:
        trainer.load_state(restored.state)
    ended = time.perf_counter()
    copied = difference(engine.capturer.costs.snapshot(), before)
    moved = ("restore: copy", "restore: receive into place")
    copy_s = sum(v["s"] for k, v in copied.items() if k.startswith(moved))
    trainer.step()
    # The latest start, and the latest end net of its rank's copy of the bytes.
    span = torch.tensor([began, ended - copy_s], dtype=torch.float64)
    dist.all_reduce(span, op=dist.ReduceOp.MAX)
    return max(0.0, float(span[1] - span[0]))


def _persistent_fixed_costs(trainer: Any) -> dict[str, float]:
    """A save to and a restore from persistent storage as the harness's baseline trainers
    make them, every rank at once, each minus a plain copy of the same bytes (the simulator
    moves them at the storage's bandwidth), s: ``persistent_save_fixed_s``, the blocking
    save (``PersistentCheckpointer.save``: DCP's plans, its files and their sidecars, the
    index), and ``persistent_restore_fixed_s``, the agreement on the newest iteration, DCP's
    load into the live state (``PersistentCheckpointer.restore(into=...)``), then the
    trainer's load of it. Empty if it cannot run here (the reason is logged).

    The checkpoint is written first to a folder of rank 0's (in the page cache, unthrottled:
    what is left is DCP's own work, not the storage's), under a key of this benchmark's own
    (``GEMINI_PERSISTENT_KEY``: no key file is created for it), and removed afterwards. The
    Gemini engine's fall-back to storage loads through the same ``load_persistent``."""
    import secrets
    import shutil

    import torch.distributed as dist

    from real.engine.state import flatten_state
    from real.persistent.baseline import PersistentCheckpointer
    from real.persistent.metadata import KEY_ENV

    shared: list[Any] = [None]
    if dist.get_rank() == 0:
        shared = [(tempfile.mkdtemp(prefix="gemini-calibrate-dcp-"), secrets.token_hex(16))]
    dist.broadcast_object_list(shared, src=0)
    folder, key = shared[0]
    restore_key = _set_environ(KEY_ENV, key)
    checkpointer = None
    try:
        checkpointer = PersistentCheckpointer(folder, 1, trainer.state)
        checkpointer.save(1, trainer.state())  # the first: the folder and index made
        dist.barrier()
        began = time.perf_counter()
        checkpointer.save(2, trainer.state())  # as the baseline's later saves
        save_s = time.perf_counter() - began
        tensors = [t for t in flatten_state(trainer.state())[0].values() if t.numel()]
        targets = [torch.empty_like(t) for t in tensors]
        began = time.perf_counter()
        for target, tensor in zip(targets, tensors, strict=True):
            target.copy_(tensor)
        copy_s = time.perf_counter() - began
        del targets
        dist.barrier()
        began = time.perf_counter()
        restored = checkpointer.restore(into=trainer.state)
        if restored is not None:
            trainer.load_state(restored.state)
        total = time.perf_counter() - began
        dist.barrier()
        costs = {"persistent_save_fixed_s": max(0.0, save_s - copy_s)}
        if restored is not None:
            costs["persistent_restore_fixed_s"] = max(0.0, total - copy_s)
        return costs
    except Exception as error:  # a micro-benchmark that cannot run says so and is left out
        log.warning("persistent save and restore micro-benchmark skipped: %s", error)
        return {}
    finally:
        if checkpointer is not None:
            checkpointer.close()
        restore_key()
        with contextlib.suppress(Exception):
            dist.barrier()  # every rank is done with the folder
        if dist.get_rank() == 0:
            shutil.rmtree(folder, ignore_errors=True)


def _clone_tree(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone_tree(v) for v in value)
    return value


def _warm_up_torch() -> None:
    """Pay the lazy imports of a first optimizer step in this process (see
    ``real.trainer.inprocess.prewarm``; without freezing the collector, which is this process's)."""
    import torch.distributed

    assert torch.distributed.is_available()

    parameter = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    (parameter * parameter).sum().backward()  # type: ignore[no-untyped-call]
    optimizer.step()


def _probe_round_trip_s(repeats: int = 5) -> float:
    """A probe of a live agent and of a vanished one (refused), the slower median, s."""
    from real.coord.probe import ProbeServer, probe

    server = ProbeServer(7, "127.0.0.1")
    closed = socket.create_server(("127.0.0.1", 0))
    gone = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    live, refused = [], []
    try:
        for _ in range(repeats):
            began = time.perf_counter()
            probe(server.address, 7, 1.0)
            live.append(time.perf_counter() - began)
            began = time.perf_counter()
            probe(gone, 8, 1.0)
            refused.append(time.perf_counter() - began)
    finally:
        server.close()
    return max(statistics.median(live), statistics.median(refused))


def _exit_notice_s(repeats: int = 3) -> float:
    """From SIGKILL of a child process to its node agent's exit watch seeing it, s.

    The agent's pool reads the kernel's exit mark every ``EXIT_WATCH_S``
    (``real.agent.trainer_processes.exiting_status``), so a crash at a random moment waits half
    a period on average: that, plus the signal's delivery (from the kill until the mark is
    there, read here every 0.2 ms; the median of ``repeats`` kills). The process's teardown,
    which a trainer's size makes long, comes after the mark and is not on the path.
    """
    from real.agent.trainer_processes import EXIT_WATCH_S, exiting_status

    times = []
    for _ in range(repeats):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            time.sleep(0.05)
            began = time.perf_counter()
            child.kill()
            while exiting_status(child.pid) is None and child.poll() is None:
                time.sleep(0.0002)
            times.append(time.perf_counter() - began)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)
    return statistics.median(times) + EXIT_WATCH_S / 2


def _echo_poller(connection: Any, period_s: float) -> None:
    """Poll ``connection`` every ``period_s`` as an agent polls; echo what arrives."""
    _leave_interrupts_to_the_parent()
    while True:
        if connection.poll():
            message = connection.recv()
            if message is None:
                return
            connection.send(message)
            continue
        time.sleep(period_s)


def hop_work_s(period_s: float = 0.05, repeats: int = 12) -> float:
    """What a message to a polling process costs beyond half its period, s.

    A forked process polls a pipe every ``period_s`` (sleeping in between, as the harness's
    agents and root do) and echoes what arrives; messages sent at random phases come back
    after half a period on average plus the time the poller waits for a CPU once woken and
    spends on the message: that remainder, halved (two hops: there and back), is returned.
    """
    import random

    context = mp.get_context("fork")
    parent, child = context.Pipe()
    poller = context.Process(target=_echo_poller, args=(child, period_s), daemon=True)
    poller.start()
    try:
        latencies = []
        for index in range(repeats):
            time.sleep(random.uniform(0, period_s))
            began = time.perf_counter()
            parent.send(index)
            parent.recv()
            latencies.append(time.perf_counter() - began)
        parent.send(None)
    finally:
        poller.join(timeout=5)
        if poller.is_alive():
            poller.kill()
            poller.join(timeout=5)
    return max(0.0, statistics.median(latencies) - period_s / 2) / 2


def _harness_polls() -> dict[str, float]:
    """The polling periods of the harness's agents and root agent, s (its own constants)."""
    from real.agent import node_agent, root

    return {"agent_poll_s": float(node_agent.POLL_S), "root_poll_s": float(root.POLL_S)}


def measure_recovery(
    options: CalibrationOptions, progress: Callable[[str], None] = log.info
) -> dict[str, Any]:
    """Micro-measurements of what an in-process recovery costs on this machine (seconds).

    Warm ranks of the scenario's model, as many as its world size (up to
    ``MAX_RECOVERY_RANKS``; their start is not timed: warm spares pay it before they are
    needed), time a spare's join (in ``SPARE_ROUNDS`` rounds of fresh ranks: the median) and
    a survivor's rejoin, the iteration profile, loading a state, a collective failing when a
    peer vanishes and the teardown that follows, then a lost node's collective failure with
    the node's own processes (``_lost_node_rounds``); the parent times a probe round trip, the
    notice of a killed child, and crashes detected along the harness's chain while the ranks
    train (``benchmarks.exit_chain``: ``exit_detection_s``). Tens of seconds; never the
    scenario's own run. Returns the ``measurements`` (see
    ``analysis.calibration.recovery_costs`` for how they become costs).
    """
    from analysis.calibration import FIXED_LAWS
    from shared.scenario_loader import load_scenario

    scenario = load_scenario(options.scenario, options.overrides)
    progress("probe round trip and exit notice")
    measurements: dict[str, Any] = {
        "probe_s": round(_probe_round_trip_s(), 6),
        "exit_notice_s": round(_exit_notice_s(2 if options.quick else 3), 6),
        **_harness_polls(),
    }
    world = scenario.cluster.nodes * scenario.cluster.accelerators_per_node
    ranks = max(2, min(world, MAX_RECOVERY_RANKS))
    progress(f"rejoin and iteration profile of {scenario.model.name} on {ranks} ranks")
    # The ranks are forked from a process that has paid what a warm spare pays (torch and
    # torch.distributed imported, a first optimizer step taken), so they start at once.
    _warm_up_torch()
    # The rendezvous store every join goes through, listening the whole time (a node agent's).
    ports = (free_port(),)
    iterations = 6 if options.quick else max(6, options.iterations)
    reports: list[dict[str, Any]] = []
    # While the ranks join, train, checkpoint and rejoin (from the go to the first rank's
    # report), a process spinning below them measures the CPU they leave a spare warming in
    # the background (``recovery.spare_background_share``), and crashes are detected along
    # the harness's chain beside them (``exit_detection_s``: ``benchmarks.exit_chain``).
    probe = BackgroundProbe()
    chain: ExitChainProbe | None = None
    background_share: float | None = None
    detections: list[float] = []
    try:
        chain = ExitChainProbe()
        with _forked_ranks(
            _recovery_rank_main,
            ranks,
            ports[0],
            (ports, str(options.scenario), list(options.overrides), iterations),
        ) as (processes, results, go):
            deadline = time.monotonic() + 300
            while sum(1 for r in reports if "iteration_s" in r) < ranks or not any(
                "vanished_at" in r for r in reports
            ):
                report = _next_report(results, processes, deadline, "recovery calibration")
                if report is not None:
                    reports.append(report)
                    if not go.is_set() and sum(1 for r in reports if r.get("ready")) == ranks:
                        probe.share()
                        chain.start()
                        go.set()
                    if background_share is None and "iteration_s" in report:
                        background_share = probe.share()
                        detections = chain.stop()
    finally:
        probe.close()
        if chain is not None:
            chain.stop()
    if chain is not None and chain.error is not None:
        # Recorded, not used by the rules: a calibration goes on without it.
        log.warning("timing a crash's detection failed (not recorded): %s", chain.error)
        detections = []
    timed = [r for r in reports if "iteration_s" in r]
    progress(f"{SPARE_ROUNDS - 1} more spares' joins on {ranks} ranks")
    spare_joins = [
        max(r["spare_join_s"] for r in timed),
        *_spare_rounds(options, ranks, SPARE_ROUNDS - 1),
    ]
    rounds = 2 if options.quick else LOST_NODE_ROUNDS
    progress(f"a lost node's collective failure on {ranks} ranks, {rounds} rounds")
    try:
        lost_rounds = _lost_node_rounds(options, ranks, rounds)
    except (RuntimeError, TimeoutError, OSError) as error:
        # The forked rank's reading stands in: a calibration goes on without the rounds.
        log.warning("timing a lost node's collective failure failed: %s", error)
        lost_rounds = []
    lost_node = [r.seconds for r in lost_rounds]
    held = [r.trainer_anon_bytes for r in lost_rounds if r.trainer_anon_bytes is not None]
    rank0 = next(r for r in timed if r["rank"] == 0)
    vanished = next(r["vanished_at"] for r in reports if "vanished_at" in r)
    failed = [float(r["failed_at"]) for r in timed if r.get("failed_at")]
    forked_failure = max(0.0, min(failed, default=vanished) - vanished)
    cpus = os.cpu_count() or 1
    measurements.update(
        {
            "spare_join_s": round(statistics.median(spare_joins), 6),
            "spare_join_rounds_s": [round(x, 6) for x in spare_joins],
            "rejoin_s": round(max(r["rejoin_s"] for r in timed), 6),
            **(
                {"engine_rejoin_s": round(max(r["engine_rejoin_s"] for r in timed), 6)}
                if all("engine_rejoin_s" in r for r in timed)
                else {}
            ),
            "state_load_s": round(max(r["load_s"] for r in timed), 6),
            **{
                key: round(max(float(r[key]) for r in timed), 6)
                for key in FIXED_LAWS  # the engine's fixed costs: the slowest rank's
                if all(key in r for r in timed)
            },
            **{
                key: round(statistics.median(float(r[key]) for r in timed), 6)
                for key in ("engine_iteration_s", "engine_step_s")
                if all(key in r for r in timed)
            },
            "park_s": round(float(rank0["park_s"]), 6),
            # The first survivor whose all-reduce raises: the harness's detector probes on
            # the first suspect record. (Rank 0's alone waited, when its ring neighbour was
            # not the vanished rank, for that neighbour to fail first and leave.) A lost
            # node's fresh processes (``_lost_node_rounds``); the forked rank's vanishing,
            # the rule's source until 2026-12-07, is recorded beside it.
            "collective_failure_s": round(
                statistics.median(lost_node) if lost_node else forked_failure, 6
            ),
            "collective_failure_rounds_s": [round(x, 6) for x in lost_node],
            "collective_failure_forked_s": round(forked_failure, 6),
            # What the rounds' lost trainer held: the laws' teardown term subtracts it.
            **({"lost_trainer_anon_bytes": float(statistics.median(held))} if held else {}),
            "recovery_ranks": ranks,
            "cpus": cpus,
            "world_size": world,
            "single_host": scenario.cluster.single_host,
            "micro_iteration_time_s": round(statistics.median(r["iteration_s"] for r in timed), 6),
        }
    )
    if background_share is not None:
        measurements["spare_background_share"] = round(background_share, 4)
        if len(detections) >= MIN_EXIT_DETECTIONS:
            measurements["exit_detection_s"] = round(statistics.median(detections), 6)
            measurements["exit_detections"] = len(detections)
    phases = _phases(rank0["iteration_s"], rank0["spans"])
    if phases:
        measurements["micro_iteration_phases"] = phases
    if options.spare_warmup:
        progress(f"a spare of {scenario.name}'s trainer getting warm")
        warmup = spare_warmup_s(options.scenario, options.overrides)
        measurements["spare_warmup_s"] = round(warmup, 4)
    return measurements


def measure(
    options: CalibrationOptions, progress: Callable[[str], None] = log.info
) -> dict[str, Any]:
    """Run every benchmark; returns the calibration document (without ``overrides``)."""
    from shared.scenario_loader import load_scenario

    scenario = load_scenario(options.scenario, options.overrides)
    world = options.ranks or scenario.cluster.nodes * scenario.cluster.accelerators_per_node
    size = 32 if options.quick else 256
    repeats = 2 if options.quick else 5
    measurements: dict[str, Any] = {}
    progress("memory copy")
    measurements["memory_copy_gbyte_s"] = round(memory_copy_gbyte_s(size, repeats), 4)
    progress("loopback TCP")
    measurements["loopback_tcp_gbit_s"] = round(loopback_tcp_gbit_s(size), 4)
    progress(f"storage in {options.directory}")
    write, read = storage_gbit_s(options.directory, size)
    measurements["storage_write_gbit_s"] = round(write, 4)
    measurements["storage_read_gbit_s"] = round(read, 4)
    progress("process start (python + import torch)")
    measurements["process_start_s"] = round(process_start_s(1 if options.quick else 3), 4)
    progress(f"restart of {world} ranks and iteration profile of {scenario.model.name}")
    spawned = restart_and_iterations(options, world)
    # A cold start of every rank: what a restart cost before in-process recovery; the
    # restart is now a rejoin (measure_recovery below).
    measurements["cold_restart_s"] = round(spawned["restart_s"], 4)
    measurements["process_group_s"] = round(spawned["process_group_s"], 4)
    measurements["iteration_time_s"] = round(spawned["iteration_time_s"], 6)
    if spawned["iteration_phases"]:
        measurements["iteration_phases"] = spawned["iteration_phases"]
    measurements.update(measure_recovery(options, progress))
    return {
        "version": 1,
        "machine": {
            "hostname": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "world_size": world,
        },
        "scenario": scenario.name,
        "scenarios_used": [],
        "measurements": measurements,
    }


# --- Laws: reference shapes measured, laws fitted (``gemini-ckpt calibrate``) ----------------

REFERENCE_SHAPES: tuple[tuple[int, int], ...] = ((2, 96), (4, 96), (3, 160))
"""(ranks, hidden width) of the reference shapes whose micro-measurements the laws are fitted
to: a 2-layer GPT of 0.25M and 0.68M parameters on 2, 3 and 4 ranks of this host. No scenario
shipped in ``scenarios/validation/`` has these shapes (their models are 0.12M and 1.28M
parameters, on 4 and 8 ranks), so the laws are validated only on shapes they were not fitted
to."""

LAW_REPEATS = 3
"""Micro-measurements of each reference shape; the laws are fitted to their medians (one moment
of load from other jobs moves a single sample by tens of percent)."""


def _median_sample(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the median of repeated micro-measurements; the iteration profile of the repeat
    whose iteration time is the median."""
    ordered = sorted(samples, key=lambda s: float(s["micro_iteration_time_s"]))
    out = dict(ordered[len(ordered) // 2])
    for key, value in samples[0].items():
        if isinstance(value, float):  # of the repeats that measured it
            found = [float(s[key]) for s in samples if isinstance(s.get(key), float)]
            out[key] = round(statistics.median(found), 6)
    return out


def reference_scenario(ranks: int, hidden: int) -> dict[str, Any]:
    """The scenario document of one reference shape (one rank per node, DDP, this host)."""
    return {
        "name": f"reference-{ranks}x{hidden}",
        "description": "a reference shape of the calibration's laws",
        "targets": ["sim", "real"],
        "cluster": {
            "nodes": ranks,
            "accelerators_per_node": 1,
            "single_host": True,
            "network_bandwidth_gbit_s": 16,
            "storage": {"bandwidth_gbit_s": 1.0},
        },
        "model": {
            "name": f"gpt-reference-{hidden}",
            "layers": 2,
            "hidden": hidden,
            "heads": 4,
            "context": 64,
        },
        "training": {"parallelism": "ddp", "iterations": 20, "batch_size_per_rank": 4},
        "checkpoint": {"strategy": "gemini", "replicas": 2, "placement": "ring"},
        "failures": {"schedule": []},
    }


def measure_laws(
    directory: Path, progress: Callable[[str], None] = log.info, *, quick: bool = False
) -> dict[str, Any]:
    """Micro-measure the reference shapes and fit the laws (``analysis.calibration.fit_laws``).

    Each reference shape runs ``measure_recovery`` (warm ranks: a spare's join, a survivor's
    rejoin, loading a state, the iteration profile, a collective failing, the teardown), then
    the hop's work and the teardown's growth in a killed process's resident bytes
    (``benchmarks.teardown.seconds_per_gib``); the
    samples and the fitted laws are returned as ``{"laws": ..., "law_samples": [...]}``.
    """
    import yaml

    from analysis.calibration import fit_laws, runnable_processes
    from benchmarks.teardown import seconds_per_gib
    from shared.costs import node_checkpoint_bytes
    from shared.scenario_loader import load_scenario

    samples = []
    shapes = REFERENCE_SHAPES[:2] if quick else REFERENCE_SHAPES
    with tempfile.TemporaryDirectory(prefix=".calibrate-", dir=directory) as folder:
        for ranks, hidden in shapes:
            path = Path(folder) / f"reference-{ranks}x{hidden}.yaml"
            path.write_text(yaml.safe_dump(reference_scenario(ranks, hidden)), encoding="utf-8")
            scenario = load_scenario(path)
            progress(f"reference shape: {ranks} ranks, hidden {hidden}")
            repeats = []
            for _ in range(1 if quick else LAW_REPEATS):
                # Other jobs' runnable processes as it measures (the laws' background).
                load = runnable_processes(0.5, 10)
                options = CalibrationOptions(path, quick=quick, spare_warmup=False)
                sample = measure_recovery(options, progress)
                work = hop_work_s()
                # How a killed process's teardown grows with what it holds: the laws carry a
                # lost trainer's teardown from the reference shapes' to a scenario's.
                teardown = seconds_per_gib(rounds=1 if quick else 3)
                repeats.append(
                    {
                        **sample,
                        "load_average": round(load, 2),
                        "hop_work_s": round(work, 6),
                        "teardown_s_per_gib": round(teardown, 6),
                    }
                )
            measured = _median_sample(repeats)
            measured.update(
                {
                    "ranks": ranks,
                    "parameters": scenario.model.parameter_count,
                    "state_bytes": node_checkpoint_bytes(
                        scenario.model.checkpoint_bytes,
                        nodes=ranks,
                        ranks_per_node=1,
                        parallelism="ddp",
                    ),
                    "tokens_per_rank": scenario.training.batch_size_per_rank
                    * scenario.model.context,
                }
            )
            samples.append(measured)
        # The built-in trainer's spare (the largest reference model: the import of torch
        # and the job's modules dominate, not the model); and the CPU the reference ranks
        # left a process below them, the median over the shapes.
        progress("a spare of the built-in trainer getting warm")
        spare = {"spare_warmup_s": round(spare_warmup_s(path, ()), 4)}
        key = "spare_background_share"
        shares = [float(sample[key]) for sample in samples if key in sample]
        if shares:
            spare[key] = round(statistics.median(shares), 4)
    laws = fit_laws(samples, os.cpu_count() or 1)
    return {"laws": laws, "law_samples": samples, **spare}


def measure_machine(
    directory: Path, progress: Callable[[str], None] = log.info, *, quick: bool = False
) -> dict[str, Any]:
    """What ``gemini-ckpt calibrate`` measures: bandwidths, process start and the laws.

    Returns the calibration document (without ``overrides``); nothing here depends on a
    scenario: ``analysis.calibration.scenario_overrides`` applies it to one.
    """
    size = 32 if quick else 256
    repeats = 2 if quick else 5
    measurements: dict[str, Any] = {}
    progress("memory copy")
    measurements["memory_copy_gbyte_s"] = round(memory_copy_gbyte_s(size, repeats), 4)
    progress("loopback TCP")
    measurements["loopback_tcp_gbit_s"] = round(loopback_tcp_gbit_s(size), 4)
    progress(f"storage in {directory}")
    write, read = storage_gbit_s(directory, size)
    measurements["storage_write_gbit_s"] = round(write, 4)
    measurements["storage_read_gbit_s"] = round(read, 4)
    progress("process start (python + import torch)")
    measurements["process_start_s"] = round(process_start_s(1 if quick else 3), 4)
    measurements.update(measure_laws(directory, progress, quick=quick))
    return {
        "version": 2,
        "machine": {
            "hostname": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": str(torch.__version__),
        },
        "source": "laws",
        "scenarios_used": [],
        "measurements": measurements,
    }


def _reap(processes: Sequence[Any], grace_s: float) -> None:
    """End the calibration's rank processes: after a normal end each gets what is left of
    ``grace_s`` (shared, not per process) to exit on its own; after an error none waits (the
    others would only wait for the dead one). Then SIGTERM, then SIGKILL, whatever is left."""
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
