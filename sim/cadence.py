"""How often Gemini checkpoints in the simulator, and how many bytes each checkpoint sends.

Two scenario fields change the per-iteration checkpoint traffic of ``sim.training``:

- ``checkpoint.compression``: whether replication compresses its chunks, decided by
  ``shared.compression.decide`` from the measured ratio and codec throughput
  (``checkpoint.compression_ratio``, ``checkpoint.compression_gbyte_s``) against the link, as
  the real engine decides from its own measurement; a compressed checkpoint sends
  ``shard / ratio`` bytes per copy (the codec's CPU time overlaps the sends, which is the
  condition under which ``auto`` turns it on).
- ``checkpoint.interval``: a fixed k, or ``adaptive``: the k that
  ``shared.adaptive.IntervalController`` chooses from the profile's idle spans and the link's
  bandwidth (the simulator's replication throughput), as the real engine chooses from its
  profiled spans and measured throughput. The simulated job's profile does not change, so k is
  chosen once.

With k > 1, one checkpoint's chunks are planned over the idle spans of the k iterations that
follow it (the spans of one iteration tiled k times, ``shared.adaptive.tile_spans``), and
``sim.training.steady_iteration`` runs those k iterations as one: their phases repeated k times.
The iteration time the strategy uses is a k-th of that run's time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared import adaptive
from shared.adaptive import IntervalController, IntervalDecision
from shared.compression import CodecMeasurement, CompressionDecision, decide, wire_bytes
from shared.scenario import GBYTE, Scenario
from shared.scheduling import TrafficPlan, plan_traffic
from sim.training import IterationProfile


@dataclass(frozen=True)
class Cadence:
    """Checkpoint interval and traffic of a Gemini scenario.

    Attributes:
        interval: k, iterations between checkpoints.
        decision: how k was chosen.
        compression: whether chunks are compressed, and why.
        wire_bytes: bytes per copy on the network.
        profile: the phases of the k iterations one checkpoint's traffic rides in.
        plan: the traffic plan of one checkpoint over those k iterations.
    """

    interval: int
    decision: IntervalDecision
    compression: CompressionDecision
    wire_bytes: int
    profile: IterationProfile
    plan: TrafficPlan


def compression_decision(scenario: Scenario) -> CompressionDecision:
    """``shared.compression.decide`` with the scenario's measured codec and link."""
    ckpt = scenario.checkpoint
    measurement = None
    if ckpt.compression_ratio is not None:
        speed = (ckpt.compression_gbyte_s or float("inf")) * GBYTE
        speed = min(speed, 1e30)  # none given: never the bottleneck
        measurement = CodecMeasurement(ckpt.compression_ratio, speed, speed)
    return decide(ckpt.compression, scenario.cluster.network_bytes_per_s, measurement)


def checkpoint_cadence(
    scenario: Scenario, profile: IterationProfile, destinations: Sequence[int]
) -> Cadence:
    """The interval, the bytes on the wire and the plan of one checkpoint (module docstring)."""
    ckpt, cluster = scenario.checkpoint, scenario.cluster
    compression = compression_decision(scenario)
    ratio = ckpt.compression_ratio if compression.enabled else None
    sent = wire_bytes(scenario.checkpoint_bytes_per_node, ratio)
    interleaved = ckpt.traffic == "interleaved"
    spans = profile.idle_spans() if interleaved else ()
    controller = IntervalController(ckpt.interval)
    decision = controller.decide(
        spans,
        profile.iteration_s,
        sent,
        len(destinations),
        bandwidth_bytes_per_s=cluster.network_bytes_per_s,
        alpha_s=cluster.network_alpha_s,
        safety_factor=ckpt.safety_factor,
        buffer_bytes=ckpt.buffer_bytes,
        sub_buffers=ckpt.sub_buffers,
    )
    k = decision.interval
    window = IterationProfile(profile.phases * k, profile.source)
    plan = plan_traffic(
        window.idle_spans() if interleaved else (),
        sent,
        destinations,
        bandwidth_bytes_per_s=cluster.network_bytes_per_s,
        alpha_s=cluster.network_alpha_s,
        safety_factor=ckpt.safety_factor,
        buffer_bytes=ckpt.buffer_bytes,
        sub_buffers=ckpt.sub_buffers,
    )
    return Cadence(k, decision, compression, sent, window, plan)


def persist_every(
    scenario: Scenario, save_s: float, iteration_s: float, failures: int, elapsed_s: float
) -> int | None:
    """Gemini's persistence interval (``checkpoint.persist_interval``): the fixed
    ``persist_every_iterations``, or Young's / Daly's interval for the failures seen so far
    (``shared.adaptive.persist_every``, the failure process's job MTBF as the prior); the engine
    re-chooses it after every failure, and so does the simulator."""
    ckpt = scenario.checkpoint
    if ckpt.persist_interval == "fixed" or save_s <= 0:
        return ckpt.persist_every_iterations
    process = scenario.failures.process
    nodes = scenario.cluster.nodes
    prior = None if process is None else process.node_mtbf_s(nodes) / nodes
    return adaptive.persist_every(
        ckpt.persist_interval, save_s, iteration_s, failures, elapsed_s, prior
    )
