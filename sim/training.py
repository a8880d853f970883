"""Training iterations: the phase profile of one iteration, and its time with checkpoint traffic.

An iteration is a sequence of **compute** and **communication** phases. The profile comes from
the scenario, in order of preference:

1. ``training.phases``: a measured profile, taken as it is;
2. ``training.iteration_time_s``: a measured iteration time, split into communication (the
   alpha-beta cost of the data-parallel collectives from ``shared.costs``) and compute (the
   rest);
3. nothing measured: compute from FLOPs (6 P T / (F e A), ``shared.costs``) plus the
   collectives.

Derived profiles lay the phases out without overlap: DDP runs forward and backward compute and
then one gradient all-reduce; ZeRO-3 all-gathers the parameters before the forward pass and
again before the backward pass and reduce-scatters the gradients at the end. The collectives
run over the node links, one ring participant per node. The network is idle during the compute
phases: those are the **idle spans** the Gemini schedule (``shared.scheduling``) fills with
checkpoint chunks.

``steady_iteration`` then runs ONE iteration of one node in SimPy on the flow-level network
(``sim.network``): the training collectives as flows on the node's uplink, the checkpoint
chunks of the previous iteration's checkpoint as flows at their planned start times, and the
GPU-to-CPU capture on the copy engine. Chunks that overlap a collective share the link with it
and slow it down. All nodes are alike, so one node stands for all; the result (iteration time,
when the checkpoint commits) is computed once per configuration and reused for every iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import simpy

from shared import costs
from shared.scenario import Scenario
from shared.scenario_rules import data_parallel_communication_s
from shared.scheduling import IdleSpan, TrafficPlan, plan_traffic
from sim.network import FlowNetwork


@dataclass(frozen=True)
class Phase:
    """One phase of an iteration: ``kind`` is "compute" or "communication"."""

    kind: str
    duration_s: float


@dataclass(frozen=True)
class IterationProfile:
    """The phases of one failure-free iteration without checkpointing.

    Attributes:
        phases: in order.
        source: "phases" (measured profile), "iteration_time" or "flops" (derived).
    """

    phases: tuple[Phase, ...]
    source: str

    @property
    def iteration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    def until_collective_s(self, offset_s: float) -> float | None:
        """Seconds from ``offset_s`` into the iteration until a communication phase is under
        way (0 inside one); None when no communication phase remains in this iteration.

        A rank whose peer has vanished notices it here: its next collective fails (the
        harness's trainers check their collectives at every layer's forward and gradient, so
        they leave within a layer of the failure rather than at the phase's end)."""
        start = 0.0
        for phase in self.phases:
            end = start + phase.duration_s
            if phase.kind == "communication" and offset_s < end:
                return max(0.0, start - offset_s)
            start = end
        return None

    def idle_spans(self) -> tuple[IdleSpan, ...]:
        """The compute phases, as idle spans of the network from the iteration's start."""
        spans, start = [], 0.0
        for phase in self.phases:
            if phase.kind == "compute":
                spans.append(IdleSpan(start, phase.duration_s))
            start += phase.duration_s
        return tuple(spans)


@dataclass(frozen=True)
class SteadyIteration:
    """One iteration with in-memory checkpoint traffic, in steady state.

    Attributes:
        progress_s: from the iteration's start to its optimizer update (the iteration's end).
        cycle_s: from one iteration's start to the next one's (``progress_s`` plus any
            blocking send of the checkpoint).
        last_replica_delay_s: from an iteration's end until its checkpoint is captured and every
            replica received (when it commits with ``checkpoint.commit: on_arrival``).
        capture_s: GPU-to-CPU copy of the node's shard.
        spill_bytes: checkpoint bytes sent outside the idle spans.
        plan: the traffic plan of one node.
    """

    progress_s: float
    cycle_s: float
    last_replica_delay_s: float
    capture_s: float
    spill_bytes: int
    plan: TrafficPlan


def iteration_profile(scenario: Scenario) -> IterationProfile:
    """The failure-free iteration profile of a scenario (see the module docstring)."""
    training = scenario.training
    if training.phases is not None:
        return IterationProfile(
            tuple(Phase(p.kind, p.duration_s) for p in training.phases), "phases"
        )
    cluster = scenario.cluster
    parameters = max(1, round(scenario.model.parameter_count))
    communication_s = data_parallel_communication_s(scenario)
    if training.iteration_time_s is not None:
        total = training.iteration_time_s
        communication_s = min(communication_s, total)
        compute_s = total - communication_s
        source = "iteration_time"
    else:
        tokens = training.batch_size_per_rank * scenario.model.context * cluster.ranks
        compute_s = costs.training_compute_s(
            parameters,
            tokens,
            flops_per_s=training.accelerator_tflops * 1e12,
            efficiency=training.efficiency,
            accelerators=cluster.ranks,
        )
        source = "flops"
    return IterationProfile(_layout(training.parallelism, compute_s, communication_s), source)


def _layout(parallelism: str, compute_s: float, communication_s: float) -> tuple[Phase, ...]:
    forward, backward = compute_s / 3, 2 * compute_s / 3
    if parallelism == "zero3":
        third = communication_s / 3
        phases = [
            Phase("communication", third),
            Phase("compute", forward),
            Phase("communication", third),
            Phase("compute", backward),
            Phase("communication", third),
        ]
    else:
        phases = [
            Phase("compute", forward),
            Phase("compute", backward),
            Phase("communication", communication_s),
        ]
    return tuple(p for p in phases if p.duration_s > 0)


def traffic_plan(
    scenario: Scenario, profile: IterationProfile, destinations: Sequence[int]
) -> TrafficPlan:
    """The ``shared`` schedule of one node's checkpoint copies (no spans when blocking)."""
    ckpt = scenario.checkpoint
    spans = profile.idle_spans() if ckpt.traffic == "interleaved" else ()
    return plan_traffic(
        spans,
        round(scenario.checkpoint_bytes_per_node),
        destinations,
        bandwidth_bytes_per_s=scenario.cluster.network_bytes_per_s,
        alpha_s=scenario.cluster.network_alpha_s,
        safety_factor=ckpt.safety_factor,
        buffer_bytes=ckpt.buffer_bytes,
        sub_buffers=ckpt.sub_buffers,
    )


def steady_iteration(
    scenario: Scenario, profile: IterationProfile, plan: TrafficPlan
) -> SteadyIteration:
    """Run one iteration with checkpoint traffic on the flow network (module docstring)."""
    env = simpy.Environment()
    bandwidth = scenario.cluster.network_bytes_per_s
    network = FlowNetwork(env, {"uplink": bandwidth})
    alpha = scenario.cluster.network_alpha_s
    capture_s = scenario.checkpoint_bytes_per_node / scenario.cluster.copy_bytes_per_s
    blocking = scenario.checkpoint.traffic == "blocking"
    marks: dict[str, float] = {}

    def training() -> simpy.events.ProcessGenerator:
        for phase in profile.phases:
            if phase.kind == "compute":
                yield env.timeout(phase.duration_s)
            else:  # a collective: bytes the link moves in the phase's measured time
                yield network.transfer(phase.duration_s * bandwidth, ["uplink"])
        marks["phases"] = env.now

    def checkpoint(phases_done: simpy.Process | None) -> simpy.events.ProcessGenerator:
        if phases_done is not None:  # blocking: the copy waits until training stops
            yield phases_done
        origin = env.now
        for chunk in plan.chunks:
            start = origin + (chunk.start_s if not blocking else 0.0)
            if env.now < start:
                yield env.timeout(start - env.now)
            yield env.timeout(alpha)
            yield network.transfer(chunk.size_bytes, ["uplink"])
            if blocking:
                origin = env.now
        marks["chunks"] = env.now

    phases = env.process(training())
    env.process(checkpoint(phases if blocking else None))
    env.run()
    phases_s = marks["phases"]
    chunks_s = marks.get("chunks", 0.0)
    if blocking:
        send_s = chunks_s - phases_s
        commit = max(send_s, capture_s)
        return SteadyIteration(
            phases_s, phases_s + commit, commit, capture_s, plan.spill_bytes, plan
        )
    # Interleaved: the chunks of the previous checkpoint ride in this iteration; the update
    # waits for the last one (and for the capture, which must finish before the update).
    end = max(phases_s, chunks_s, capture_s)
    return SteadyIteration(end, end, max(chunks_s, capture_s), capture_s, plan.spill_bytes, plan)
