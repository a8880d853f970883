"""Will the emulated cluster fit on this host? An estimate, before anything starts.

``gemini-ckpt real`` runs every node of a scenario as processes on this one machine: per node a
node agent, its checkpoint store, and per accelerator an active trainer and its warm spares
(``real.agent.trainer_processes``), the same for every standby node (live agents waiting to replace
a
lost node), plus one coordination store for the job. Nothing of that is cheap:
each trainer is a Python process with torch imported (about 330 MB before its model, measured
with torch 2.13), a trainer start costs seconds of CPU, and the stores keep two checkpoint
slots per rank and per replica held in ``/dev/shm``. A scenario written for a real cluster
(500 nodes) would start launching agents until the machine stalls.

So the launcher first estimates what the run needs (``estimate_run``: processes, memory per
node split into stores, slots and trainers, shared memory, the CPU time to start the trainers),
compares it with this host (``probe_host``: CPUs, available memory, free ``/dev/shm``, the
process limit) in ``fit_problems``, and refuses with the estimate and the limit that is
exceeded (``HostCapacityError``), unless the run is forced (``gemini-ckpt real --force``).

The footprints (``Footprint``) are measured figures of this project's processes, not
guarantees; the CPU bound is the scenario's own: the trainers must be able to start within
``real.timeout_s``, or the run would time out before it trains.
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass

from shared.errors import HostCapacityError
from shared.scenario import Scenario
from shared.scenario_rules import gemini_slots

log = logging.getLogger(__name__)

MB = 1024 * 1024
GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Footprint:
    """What one process of the emulated cluster costs (measured on the 2-core machine).

    Attributes:
        trainer_bytes: resident memory of a trainer before its model (Python, torch, gloo).
        agent_bytes: resident memory of a node agent.
        store_bytes: resident memory of a checkpoint store, its slots not counted.
        coordinator_bytes: the job's coordination store.
        bytes_per_parameter: a trainer's model state per parameter it holds: fp32 weights,
            gradients and two Adam moments.
        trainer_start_cpu_s: CPU time to start a trainer: import torch (2.1-2.6 s) and build
            the first optimizer (about 2 s).
        node_start_cpu_s: CPU time to start a node agent and its store.
    """

    trainer_bytes: int = 330 * MB
    agent_bytes: int = 40 * MB
    store_bytes: int = 25 * MB
    coordinator_bytes: int = 40 * MB
    bytes_per_parameter: float = 16.0
    trainer_start_cpu_s: float = 4.5
    node_start_cpu_s: float = 0.5


@dataclass(frozen=True, slots=True)
class HostLimits:
    """What this host offers.

    Attributes:
        cpus: CPUs this process may run on.
        memory_bytes: memory available to new processes (``MemAvailable``).
        shm_bytes: free space in ``/dev/shm``.
        processes: further processes this user may start (None: no limit).
    """

    cpus: int
    memory_bytes: int
    shm_bytes: int
    processes: int | None


@dataclass(frozen=True, slots=True)
class RunEstimate:
    """What a run of a scenario needs on one host.

    Attributes:
        nodes: nodes with processes at the peak: the scenario's, its standby nodes (live
            agents with warm trainers), and nodes kept frozen by a network failure until their
            replacement is up.
        processes: processes at the peak.
        trainers: trainer processes (active and warm spares).
        slots_bytes_per_node: checkpoint slots of one node's store in ``/dev/shm``.
        store_bytes_per_node: one node's store process.
        trainer_bytes_per_node: one node's trainers, with their model state.
        agent_bytes_per_node: one node's agent.
        memory_bytes: all of it, slots included, plus the coordination store.
        shm_bytes: every node's slots.
        start_cpu_s: CPU time to start every node and trainer.
    """

    nodes: int
    processes: int
    trainers: int
    slots_bytes_per_node: float
    store_bytes_per_node: float
    trainer_bytes_per_node: float
    agent_bytes_per_node: float
    memory_bytes: float
    shm_bytes: float
    start_cpu_s: float

    @property
    def bytes_per_node(self) -> float:
        return (
            self.slots_bytes_per_node
            + self.store_bytes_per_node
            + self.trainer_bytes_per_node
            + self.agent_bytes_per_node
        )

    def describe(self) -> str:
        """The estimate as one paragraph."""
        return (
            f"{self.nodes} nodes: {self.processes} processes ({self.trainers} trainers with "
            f"warm spares); memory {_gib(self.memory_bytes)}, per node "
            f"{_gib(self.bytes_per_node)} (checkpoint slots {_gib(self.slots_bytes_per_node)}, "
            f"store {_gib(self.store_bytes_per_node)}, trainers "
            f"{_gib(self.trainer_bytes_per_node)}, agent {_gib(self.agent_bytes_per_node)}); "
            f"/dev/shm {_gib(self.shm_bytes)}; {self.start_cpu_s:.0f} CPU-seconds to start"
        )


def estimate_run(
    scenario: Scenario, strategy: str, footprint: Footprint = Footprint()
) -> RunEstimate:
    """What ``scenario`` needs when run with ``strategy`` on one host (pure).

    Each rank has its active trainer and ``recovery.warm_spares`` spares, standby nodes
    included. Each rank's state is the model's (``model.parameter_count``) with DDP, its share
    with ZeRO-3; a checkpoint holds ``model.checkpoint_bytes_per_parameter`` bytes per parameter.
    A Gemini store keeps the slots the scenario check counts
    (``shared.scenario_rules.gemini_slots``: by default two, committed and in progress, of its
    node's state and of each replica it holds); the persistent baseline keeps none.
    """
    cluster, model = scenario.cluster, scenario.model
    per_node = cluster.accelerators_per_node
    parameters = model.parameter_count
    if scenario.training.parallelism == "zero3":
        parameters /= cluster.ranks
    node_state = scenario.checkpoint_bytes_per_node
    slots = (gemini_slots(scenario) if strategy == "gemini" else 0) * node_state
    trainers_per_node = per_node * (1 + scenario.recovery.warm_spares)
    trainer_bytes = trainers_per_node * (
        footprint.trainer_bytes + parameters * footprint.bytes_per_parameter
    )
    frozen = {
        node
        for failure in scenario.failures.schedule
        if failure.kind == "network"
        for node in failure.nodes
    }
    # Standby nodes are live agents with warm trainers, their stores empty until they replace
    # a lost node (whose slots are gone with it).
    nodes = cluster.nodes + cluster.standby_nodes + len(frozen)
    with_slots = cluster.nodes + len(frozen)
    processes = 1 + nodes * (2 + trainers_per_node)
    memory = (
        footprint.coordinator_bytes
        + nodes * (footprint.store_bytes + trainer_bytes + footprint.agent_bytes)
        + with_slots * slots
    )
    start_cpu_s = nodes * (
        footprint.node_start_cpu_s + trainers_per_node * footprint.trainer_start_cpu_s
    )
    return RunEstimate(
        nodes=nodes,
        processes=processes,
        trainers=nodes * trainers_per_node,
        slots_bytes_per_node=slots,
        store_bytes_per_node=footprint.store_bytes,
        trainer_bytes_per_node=trainer_bytes,
        agent_bytes_per_node=footprint.agent_bytes,
        memory_bytes=memory,
        shm_bytes=with_slots * slots,
        start_cpu_s=start_cpu_s,
    )


def fit_problems(estimate: RunEstimate, host: HostLimits, timeout_s: float) -> list[str]:
    """Every limit of ``host`` the run would exceed, one line each (pure; empty: it fits).

    Args:
        estimate: from ``estimate_run``.
        host: from ``probe_host``.
        timeout_s: the run's ``real.timeout_s``: starting the trainers must take less.
    """
    problems = []
    if estimate.memory_bytes > host.memory_bytes:
        problems.append(
            f"memory: the run needs about {_gib(estimate.memory_bytes)}, this host has "
            f"{_gib(host.memory_bytes)} available"
        )
    if estimate.shm_bytes > host.shm_bytes:
        problems.append(
            f"/dev/shm: the checkpoint slots need {_gib(estimate.shm_bytes)}, "
            f"{_gib(host.shm_bytes)} are free"
        )
    if host.processes is not None and estimate.processes > host.processes:
        problems.append(
            f"processes: the run starts {estimate.processes}, this user may start "
            f"{host.processes} more"
        )
    start_wall_s = estimate.start_cpu_s / max(1, host.cpus)
    if start_wall_s > timeout_s:
        problems.append(
            f"CPU: starting {estimate.trainers} trainers takes about "
            f"{estimate.start_cpu_s:.0f} CPU-seconds, {start_wall_s:.0f} s on {host.cpus} "
            f"CPUs, longer than real.timeout_s ({timeout_s:g} s)"
        )
    return problems


def probe_host() -> HostLimits:
    """This host's CPUs, available memory, free ``/dev/shm`` and process limit."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    memory = _meminfo_available()
    try:
        stat = os.statvfs("/dev/shm")
        shm = stat.f_bavail * stat.f_frsize
    except OSError:
        shm = memory  # no /dev/shm: the slots come out of memory
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    processes = None if soft == resource.RLIM_INFINITY else max(0, soft - _user_processes())
    return HostLimits(cpus, memory, shm, processes)


def require_fits(
    scenario: Scenario,
    strategy: str,
    *,
    force: bool = False,
    host: HostLimits | None = None,
    footprint: Footprint = Footprint(),
    source: str | None = None,
) -> RunEstimate:
    """Refuse a run that does not fit this host, before anything starts.

    ``source`` names the scenario in the error (default: its name); ``host`` defaults to
    ``probe_host()``.

    Raises:
        HostCapacityError: the run does not fit and ``force`` is false; the message holds the
            estimate and every limit exceeded.
    """
    estimate = estimate_run(scenario, strategy, footprint)
    host = host or probe_host()
    problems = fit_problems(estimate, host, scenario.real.timeout_s)
    log.info("size check: %s", estimate.describe())
    if problems and force:
        log.warning("the run does not fit this host (forced): %s", "; ".join(problems))
    elif problems:
        raise HostCapacityError(source or scenario.name, estimate.describe(), problems)
    return estimate


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return int(pages * size)


def _user_processes() -> int:
    """Processes (threads count against RLIMIT_NPROC too; they are not counted here)."""
    uid = os.getuid()
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                continue
    return count


def _gib(value: float) -> str:
    if value >= GIB:
        return f"{value / GIB:.3g} GiB"
    return f"{value / MB:.3g} MiB"
