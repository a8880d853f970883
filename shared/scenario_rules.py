"""Rules a scenario must satisfy beyond its schema, decided once for every command.

The schema (``shared.scenario``) checks each field and each section on its own. The rules here
relate sections to each other and to what the simulator and the real harness will do with
them, so that a scenario ``gemini-ckpt validate`` accepts is one that ``sim`` and ``real`` can
run: the placement against the nodes and replicas, the staging buffer against its
sub-buffers, the failure process against its distribution and the simulated duration, the
checkpoint memory against the node's memory, the persistent interval rule against the failure
rate, and the scheduled failures against the run they are meant to strike.

Where a rule already exists as the argument check of a policy function (``plan_placement``,
``plan_traffic``, ``sample_failures``), it is called here, not written again: the scenario
gets exactly the check the run would apply, with the field path in front of its message.

Some rules depend on the face that runs the scenario (``sim`` or ``real``): a failure that can
never fire is an error for a real run (the injector would wait for it forever, or the run
would silently skip it) and a warning for the simulator (it simply never strikes). Every
finding names the field path and what is allowed; ``shared.scenario_loader`` raises the errors
as one ``ScenarioError`` and the commands print the warnings.

**Failure storms** (``shared.storms``): a failure process whose failures outpace every
recovery is refused for a simulation, or accepted with a warning when some progress remains.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from shared import costs
from shared.failure_kinds import resolve_failure
from shared.failures import _MAX_EXPECTED_EVENTS, sample_failures
from shared.placement import Placement, plan_placement
from shared.scheduling import plan_traffic
from shared.storms import (
    SECONDS_PER_DAY,
    expected_process_failures,
    fastest_recovery_s,
    job_failure_rate_per_s,
    stall_failure_limit,
)

if TYPE_CHECKING:
    from shared.scenario import Scenario

Face = Literal["sim", "real"]
"""What runs a scenario: the simulator or the real harness."""

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem of a scenario.

    Attributes:
        field: the field path (``checkpoint.placement``, ``failures.schedule.0.at_iteration``).
        message: what is wrong and what is allowed.
        severity: "error" (the scenario is refused) or "warning" (it runs; the user is told).
    """

    field: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class SimFacts:
    """What the simulator derives from a scenario that some of its rules need.

    Attributes:
        iteration_s: the mean failure-free iteration time, persistent saves included, s.
        persist_every: K, iterations between persistent saves (None: none).
    """

    iteration_s: float
    persist_every: int | None


def check_scenario(
    scenario: Scenario, faces: Collection[Face] = (), *, sim: SimFacts | None = None
) -> tuple[Finding, ...]:
    """Every finding of ``scenario``: the rules of every face, then those of ``faces``.

    Args:
        scenario: a scenario that passed its schema.
        faces: the faces that will run it ("sim", "real"); their own rules are added.
        sim: what the simulator derived from the scenario; with it, the "sim" rules also
            check what the iteration count implies: the iterations scheduled failures wait
            for, and the persistent saves to simulate.

    Returns:
        The findings, errors and warnings, rule by rule.
    """
    findings = [
        *_placement(scenario),
        *_traffic(scenario),
        *_failure_process(scenario),
        *_memory(scenario),
        *_persistent_interval(scenario),
    ]
    if "sim" in faces:
        findings += _storm(scenario)
        findings += _communication_over_iteration(scenario)
        findings += _whole_job_lost(scenario, "sim")
        findings += schedule_reach(
            scenario,
            last_iteration=None,
            end_s=scenario.sim.duration_days * SECONDS_PER_DAY,
            face="sim",
        )
        if sim is not None:
            findings += simulated_run_rules(scenario, sim)
    if "real" in faces:
        findings += _whole_job_lost(scenario, "real")
        findings += schedule_reach(
            scenario,
            last_iteration=scenario.training.iterations,
            end_s=scenario.real.timeout_s,
            face="real",
        )
        if scenario.failures.process is not None:
            findings.append(
                Finding(
                    "failures.process",
                    "the real harness injects only failures.schedule; the stochastic process "
                    "is used by the simulator alone",
                    "warning",
                )
            )
    return tuple(findings)


def errors(findings: Sequence[Finding]) -> list[str]:
    """The errors among ``findings``, one line each."""
    return [str(f) for f in findings if f.severity == "error"]


def warnings(findings: Sequence[Finding]) -> list[str]:
    """The warnings among ``findings``, one line each."""
    return [str(f) for f in findings if f.severity == "warning"]


# --- rules of every face ----------------------------------------------------------------------


def _job_placement(scenario: Scenario) -> Placement:
    """The scenario's placement (``ValueError`` when it cannot be built)."""
    ckpt, cluster = scenario.checkpoint, scenario.cluster
    return plan_placement(
        cluster.nodes,
        ckpt.replicas,
        ckpt.placement,
        domains=None if ckpt.placement == "explicit" else cluster.domain_names(),
        explicit=ckpt.explicit_placement,
    )


def _placement(scenario: Scenario) -> list[Finding]:
    ckpt, cluster = scenario.checkpoint, scenario.cluster
    explicit = ckpt.placement == "explicit"
    try:
        _job_placement(scenario)
    except ValueError as error:
        where = "checkpoint.explicit_placement" if explicit else "checkpoint.placement"
        return [
            Finding(
                where,
                f"{error} (cluster.nodes = {cluster.nodes}, checkpoint.replicas = {ckpt.replicas})",
            )
        ]
    return []


def _traffic(scenario: Scenario) -> list[Finding]:
    ckpt, cluster = scenario.checkpoint, scenario.cluster
    try:
        plan_traffic(
            (),
            0,
            (),
            bandwidth_bytes_per_s=cluster.network_bytes_per_s,
            alpha_s=cluster.network_alpha_s,
            safety_factor=ckpt.safety_factor,
            buffer_bytes=ckpt.buffer_bytes,
            sub_buffers=ckpt.sub_buffers,
        )
    except ValueError as error:
        return [
            Finding(
                "checkpoint.buffer_mb",
                f"{ckpt.buffer_mb} MB is too small for checkpoint.sub_buffers "
                f"({ckpt.sub_buffers}): {error}; raise buffer_mb or lower sub_buffers",
            )
        ]
    # A chunk per sub-buffer: the simulator plans one iteration's chunks one by one.
    chunk = ckpt.buffer_bytes // ckpt.sub_buffers
    copies = max(0, ckpt.replicas - 1)
    chunks = copies * scenario.checkpoint_bytes_per_node / max(1, chunk)
    if ckpt.strategy == "gemini" and chunks > MAX_CHUNKS_PER_ITERATION:
        return [
            Finding(
                "checkpoint.buffer_mb",
                f"{ckpt.buffer_mb} MB in {ckpt.sub_buffers} sub-buffers cuts each iteration's "
                f"{copies} checkpoint copies of {scenario.checkpoint_bytes_per_node / 1e9:.3g} "
                f"GB into about {chunks:.3g} chunks, more than {MAX_CHUNKS_PER_ITERATION:,}; "
                "raise buffer_mb (the paper uses 128 MB in 4 sub-buffers)",
            )
        ]
    return []


MAX_CHUNKS_PER_ITERATION = 100_000
"""Chunks of one iteration's checkpoint copies that a plan may hold (each chunk is an entry of
the plan and a step of the simulated iteration): beyond it, the buffer is surely mistyped."""


def _rate_field(scenario: Scenario) -> str:
    process = scenario.failures.process
    per_node = process is not None and process.failures_per_node_per_day is not None
    name = "failures_per_node_per_day" if per_node else "failures_per_day"
    return f"failures.process.{name}"


def _failure_process(scenario: Scenario) -> list[Finding]:
    process = scenario.failures.process
    if process is None:
        return []
    cluster = scenario.cluster
    domains = cluster.domain_names()
    with_domains = domains is not None and process.domain_failures_per_day > 0
    node_mtbf_s = process.node_mtbf_s(cluster.nodes)
    domain_mtbf_s = SECONDS_PER_DAY / process.domain_failures_per_day if with_domains else None
    try:
        # The sampler's own argument checks, on a schedule too short to hold a failure.
        sample_failures(
            nodes=cluster.nodes,
            duration_s=min(node_mtbf_s, domain_mtbf_s or math.inf) * 1e-9,
            rng=np.random.default_rng(0),
            distribution=process.distribution,
            mtbf_s=node_mtbf_s,
            weibull_shape=process.weibull_shape,
            hardware_fraction=process.hardware_fraction,
            domains=domains if with_domains else None,
            domain_mtbf_s=domain_mtbf_s,
        )
    except ValueError as error:
        text = str(error)
        field = "failures.process.weibull_shape" if "weibull_shape" in text else "failures.process"
        return [Finding(field, text)]
    expected = expected_process_failures(scenario)
    if expected > _MAX_EXPECTED_EVENTS:
        return [
            Finding(
                _rate_field(scenario),
                f"about {expected:.3g} failures expected in sim.duration_days = "
                f"{scenario.sim.duration_days:g}, at most {_MAX_EXPECTED_EVENTS:,} can be "
                f"simulated; is the rate per node per day? (1.5% of nodes failing a day is "
                f"failures_per_node_per_day: 0.015)",
            )
        ]
    return []


def gemini_slots(scenario: Scenario) -> int:
    """Slots of a node's shard size a Gemini node store holds: ``checkpoint.local_slots`` for
    its own shard and two (committed, in progress) for each of the ``m - 1`` replicas of
    others' it keeps."""
    ckpt = scenario.checkpoint
    return ckpt.local_slots + 2 * (ckpt.replicas - 1)


def checkpoint_memory_bytes(scenario: Scenario) -> float:
    """CPU memory each node needs for checkpoints, bytes.

    Gemini: ``checkpoint.local_slots`` slots for the node's own shard (two by default: the
    last committed checkpoint and the one in progress) and two for each of the ``m - 1``
    replicas it holds: 2 m shards by default, 2 m - 1 with one local slot. The persistent
    baseline keeps a serialised copy in host memory while it uploads (when
    ``storage.save_time_s`` splits the save into a blocking serialisation and a background
    upload), else nothing. The shard is ``Scenario.checkpoint_bytes_per_node`` (under DDP a
    full copy per rank).
    """
    shard = scenario.checkpoint_bytes_per_node
    if scenario.checkpoint.strategy == "gemini":
        return gemini_slots(scenario) * shard
    return shard if scenario.cluster.storage.save_time_s is not None else 0.0


def _memory(scenario: Scenario) -> list[Finding]:
    needed = checkpoint_memory_bytes(scenario)
    capacity = scenario.cluster.cpu_memory_gb * 1e9
    if needed <= capacity:
        return []
    ckpt = scenario.checkpoint
    shard_gb = scenario.checkpoint_bytes_per_node / 1e9
    slots = gemini_slots(scenario)
    how = (
        f"{slots} slots of {shard_gb:.3g} GB: {ckpt.local_slots} for its own shard, 2 per "
        f"replica of another's ({ckpt.replicas - 1})"
        if ckpt.strategy == "gemini"
        else f"a serialised copy of {shard_gb:.3g} GB while it uploads"
    )
    return [
        Finding(
            "cluster.cpu_memory_gb",
            f"checkpoints need {needed / 1e9:.3g} GB per node ({how}), more than the "
            f"{capacity / 1e9:.3g} GB available; lower checkpoint.replicas or add memory",
        )
    ]


def _persistent_interval(scenario: Scenario) -> list[Finding]:
    ckpt = scenario.checkpoint
    rule = ckpt.baseline_interval
    if ckpt.strategy != "persistent" or rule not in ("young", "daly"):
        return []
    if scenario.failures.process is not None:
        return []
    return [
        Finding(
            "checkpoint.baseline_interval",
            f"{rule} needs failures.process for the MTBF; give a failure process or use "
            "fixed, strawman or highfreq",
        )
    ]


def simulated_run_rules(scenario: Scenario, sim: SimFacts) -> list[Finding]:
    """The "sim" rules that need the simulator's iteration time (see ``check_scenario``):
    persistent saves the simulation would step through (an error beyond
    ``MAX_SIMULATED_SAVES``) and scheduled iterations it never reaches (warnings)."""
    duration_s = scenario.sim.duration_days * SECONDS_PER_DAY
    last_iteration = int(min(duration_s / sim.iteration_s, 1e18))
    return [
        *_simulated_saves(scenario, last_iteration, sim.persist_every),
        *schedule_reach(scenario, last_iteration=last_iteration, end_s=math.inf, face="sim"),
    ]


MAX_SIMULATED_SAVES = _MAX_EXPECTED_EVENTS
"""Persistent saves one simulated run may step through: each is a step of the simulation, like
a failure, and the same bound applies (about a microsecond each: ten seconds for the bound)."""


def _simulated_saves(scenario: Scenario, last_iteration: int, every: int | None) -> list[Finding]:
    ckpt = scenario.checkpoint
    if ckpt.strategy == "gemini":
        field = "checkpoint.persist_every_iterations"
    elif ckpt.baseline_interval == "fixed":
        field = (
            "checkpoint.baseline_every_iterations"
            if ckpt.baseline_every_iterations is not None
            else "checkpoint.baseline_interval_s"
        )
    else:
        field = "checkpoint.baseline_interval"
    if not every or last_iteration // every <= MAX_SIMULATED_SAVES:
        return []
    return [
        Finding(
            field,
            f"sim.duration_days = {scenario.sim.duration_days:g} holds about {last_iteration:.3g} "
            f"iterations; a persistent save every {every} of them makes "
            f"{last_iteration // every:.3g} saves, more than the {MAX_SIMULATED_SAVES:,} a "
            "simulation can step through; save less often or simulate a shorter time",
        )
    ]


# --- failure storms (the simulator) -------------------------------------------------------------


MAX_SIMULATED_FAILURES = 1_000_000
"""Failures of the process one simulated run may hold. The simulator plans them all before it
starts (tens of microseconds each) and then recovers each one in SimPy: a million take minutes
on one core; more is surely a rate in the wrong unit or a duration too long."""


def _storm(scenario: Scenario) -> list[Finding]:
    rate = job_failure_rate_per_s(scenario)
    if rate <= 0:
        return []
    recovery_s, made_of = fastest_recovery_s(scenario)
    expected = expected_process_failures(scenario)
    load = rate * recovery_s
    finished = expected * math.exp(-load)
    every = f"the job fails every {_duration(1 / rate)} on average ({rate * 3600:.3g} per hour)"
    recover = f"a recovery takes at least {_duration(recovery_s)} ({made_of})"
    if load > 1 and finished < 1:
        return [
            Finding(
                _rate_field(scenario),
                f"{every}, but {recover}: of the {expected:.3g} failures expected in "
                f"sim.duration_days = {scenario.sim.duration_days:g}, fewer than one is "
                f"expected to be followed by a finished recovery, so training would make no "
                f"progress; is the rate per node per day? (1.5% of nodes failing a day is "
                f"failures_per_node_per_day: 0.015)",
            )
        ]
    # After the storm check: a storm's message says more about a mistyped rate.
    if expected > MAX_SIMULATED_FAILURES:
        return [
            Finding(
                _rate_field(scenario),
                f"about {expected:.3g} failures expected in sim.duration_days = "
                f"{scenario.sim.duration_days:g}, more than the {MAX_SIMULATED_FAILURES:,} a "
                f"simulation handles; is the rate per node per day? (1.5% of nodes failing a "
                f"day is failures_per_node_per_day: 0.015); else simulate a shorter time",
            )
        ]
    if load > 1:
        limit = stall_failure_limit(expected, len(scenario.failures.schedule))
        return [
            Finding(
                _rate_field(scenario),
                f"{every} and {recover}: failures arrive faster than recoveries finish; "
                f"expect an effective training time ratio of at most about "
                f"{math.exp(-load):.2g}; the simulator stops a run once {limit} failures in a "
                f"row leave no training progress",
                "warning",
            )
        ]
    return []


def data_parallel_communication_s(scenario: Scenario) -> float:
    """The data-parallel collectives of an iteration of the scenario's model on its network,
    none overlapping another (``shared.costs.iteration_communication_s``), s: the simulator's
    communication phases when the scenario gives no measured profile."""
    training, cluster = scenario.training, scenario.cluster
    return costs.iteration_communication_s(
        max(1, round(scenario.model.parameter_count)),
        parallelism=training.parallelism,
        ranks=cluster.nodes,
        alpha_s=cluster.network_alpha_s,
        bandwidth_bytes_per_s=cluster.network_bytes_per_s,
    )


def _communication_over_iteration(scenario: Scenario) -> list[Finding]:
    """The simulator's collectives for the model on this network take longer than the
    iteration time the scenario states: the iteration is then all communication and the
    rest of it is cut (``sim.training.iteration_profile``), a profile no cluster has."""
    training, cluster = scenario.training, scenario.cluster
    if training.iteration_time_s is None or training.phases is not None:
        return []
    communication_s = data_parallel_communication_s(scenario)
    if communication_s <= training.iteration_time_s:
        return []
    return [
        Finding(
            "training.iteration_time_s",
            f"the data-parallel collectives of {scenario.model.parameter_count:.3g} parameters "
            f"over {cluster.network_bandwidth_gbit_s:g} Gbit/s take {_duration(communication_s)} "
            f"per iteration, more than the {_duration(training.iteration_time_s)} stated: the "
            "simulator takes the whole iteration as communication; state a longer iteration, "
            "a faster network, or the measured profile (training.phases)",
            "warning",
        )
    ]


def _whole_job_lost(scenario: Scenario, face: Face) -> list[Finding]:
    """A scheduled failure that loses every node of the job at once: nobody would recover it.

    The root agent runs on one of the job's nodes, elected among them; standby agents wait for
    a root's order and never lead. A job that loses all its nodes is started again (it resumes
    from persistent storage), which the harness does not do by itself: an error for a real
    run; for the simulator a warning, since it recovers such a job at once, as if started
    again with no wait (its detection, with no survivor to see the loss, included).
    """
    cluster = scenario.cluster
    try:
        placement = _job_placement(scenario)
    except ValueError:
        return []  # _placement reports it
    # Entries with one trigger strike together (the injector's way of failing nodes of
    # several groups at once): their lost nodes add up.
    together: dict[tuple[object, ...], tuple[list[int], set[int]]] = {}
    for index, entry in enumerate(scenario.failures.schedule):
        named = [n for n in entry.nodes if 0 <= n < cluster.nodes]
        if not named or len(named) < len(entry.nodes):
            continue  # schedule_reach reports a node that does not exist
        resolved = resolve_failure(entry.kind, named, placement=placement, root=None)
        if resolved.effect != "hardware":
            continue
        trigger: tuple[object, ...] = (
            ("recovery", index)  # each strikes during the recovery of the one before
            if entry.during == "recovery"
            else (entry.at_iteration, entry.at_time_s, entry.during)
        )
        entries, lost = together.setdefault(trigger, ([], set()))
        entries.append(index)
        lost.update(resolved.nodes)
    findings = []
    for entries, lost in together.values():
        if len(lost) < cluster.nodes:
            continue
        where = f"failures.schedule[{entries[0]}]"
        what = (
            f"this failure loses all {cluster.nodes} nodes"
            if len(entries) == 1
            else f"entries {entries}, with one trigger, lose all {cluster.nodes} nodes"
        )
        if face == "sim":
            findings.append(
                Finding(
                    where,
                    f"{what} of the job at once: the simulator recovers it from persistent "
                    "storage at once, as if the job were submitted again with no wait, which "
                    "no real job does (a real run refuses this schedule)",
                    "warning",
                )
            )
            continue
        findings.append(
            Finding(
                where,
                f"{what} of the job at once: the root agent runs on one of them and standby "
                "agents never lead, so nothing would recover it (such a job is started again, "
                "and resumes from persistent storage); fail fewer nodes, or use more nodes "
                "than one placement group",
            )
        )
    return findings


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86_400:
        return f"{seconds / 86_400:.3g} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 120:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


# --- failures that can never fire ------------------------------------------------------------


def schedule_reach(
    scenario: Scenario, *, last_iteration: int | None, end_s: float, face: Face
) -> list[Finding]:
    """Scheduled failures the run of ``face`` can never fire: errors for real, warnings for sim.

    A failure can never fire when it names a node that does not exist, waits for an iteration
    after the last one or a time after the end, or strikes "during recovery" with no failure
    before it to recover from.

    Args:
        scenario: the scenario.
        last_iteration: the last iteration the run trains (None: unknown, not checked).
        end_s: when the run ends at the latest, s (inf: times and ``during`` not checked).
        face: "real" (errors) or "sim" (warnings).
    """
    severity: Severity = "error" if face == "real" else "warning"
    ends = (
        f"training.iterations is {last_iteration}"
        if face == "real"
        else f"the simulation reaches about iteration {last_iteration}"
    )
    end_field = "real.timeout_s" if face == "real" else "sim.duration_days"
    findings: list[Finding] = []
    nodes = scenario.cluster.nodes
    for index, failure in enumerate(scenario.failures.schedule):
        where = f"failures.schedule.{index}"
        missing = [n for n in failure.nodes if not 0 <= n < nodes]
        if missing:
            skipped = "" if face == "real" else "; the simulation skips this failure"
            if math.isfinite(end_s):  # reported once, not again with the iteration check
                findings.append(
                    Finding(
                        f"{where}.nodes",
                        f"{missing} out of range 0..{nodes - 1} (cluster.nodes is {nodes})"
                        f"{skipped}",
                        severity,
                    )
                )
            continue
        if failure.during == "recovery":
            if index == 0 and math.isfinite(end_s):
                findings.append(
                    Finding(
                        f"{where}.during",
                        "recovery strikes while the previous entry's failure is recovered, "
                        "and entry 0 has no previous entry; put the failure it joins before it",
                        severity,
                    )
                )
            continue
        k = failure.at_iteration
        # A real run ends with its last iteration: a failure must strike before that one ends.
        limit = None if last_iteration is None else last_iteration - (face == "real")
        if k is not None and limit is not None and k > limit:
            allowed = (
                f"at most {limit} (iteration {last_iteration} ends the run)"
                if face == "real"
                else f"at most {limit}"
            )
            findings.append(
                Finding(
                    f"{where}.at_iteration",
                    f"{k} is never reached: {ends}; use {allowed}",
                    severity,
                )
            )
        if failure.at_time_s is not None and failure.at_time_s >= end_s:
            findings.append(
                Finding(
                    f"{where}.at_time_s",
                    f"{failure.at_time_s:g} s is never reached: the run ends by {end_field} "
                    f"({end_s:g} s); use a time below it",
                    severity,
                )
            )
    return findings
